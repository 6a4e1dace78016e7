"""Drives the service's web page in headless Chromium (Playwright, sync API).

`check_page` uploads one image through the page and reads back what the page
drew, for a test that compares it with the API's own answer. Chromium is
Debian's (/usr/bin/chromium, from scripts/install_system_packages.sh):
Playwright's browser download is not used.
"""

from playwright.sync_api import sync_playwright

CHROMIUM = '/usr/bin/chromium'
TIMEOUT_MS = 60_000  # The first request may wait for the model to compile.

# Reads every box of the card: its data, whether it is rendered, and its
# rectangle mapped back to the image's natural pixels (x0, y0, x1, y1).
READ_BOXES = """card => {
  const img = card.querySelector('img');
  const frame = img.getBoundingClientRect();
  const sx = img.naturalWidth / frame.width;
  const sy = img.naturalHeight / frame.height;
  return [...card.querySelectorAll('.box')].map(box => {
    const r = box.getBoundingClientRect();
    return {
      class: box.dataset.class,
      score: Number(box.dataset.score),
      label: box.querySelector('.label').textContent,
      visible: !box.hidden && getComputedStyle(box).display !== 'none',
      xyxy: box.hidden ? null : [(r.left - frame.left) * sx,
                                 (r.top - frame.top) * sy,
                                 (r.right - frame.left) * sx,
                                 (r.bottom - frame.top) * sy],
    };
  });
}"""

READ_COUNTS = """card => {
  const table = card.querySelector('table.counts');
  if (table === null) return null;
  const counts = {};
  for (const row of table.querySelectorAll('tbody tr')) {
    counts[row.dataset.class] = Number(row.cells[1].textContent);
  }
  const total = Number(table.querySelector('tr.total td').textContent);
  return {counts, total};
}"""

SET_THRESHOLD = """(slider, value) => {
  slider.value = value;
  slider.dispatchEvent(new Event('input', {bubbles: true}));
}"""


def check_page(base_url, image_path, screenshot_path, threshold=0.9,
               screenshot_before=None):
  """Uploads an image through the page and reads back what it drew.

  Args:
    base_url: the server's root, e.g. 'http://127.0.0.1:8000'.
    image_path: the image file to upload through `#file-input`.
    screenshot_path: where the full-page PNG screenshot is written.
    threshold: the slider value set after the first reading, in [0, 1].
    screenshot_before: where to write a screenshot at the default slider
      (none when None).

  Returns:
    A dict:
      model: the model fields the page shows {name, format, step, task}.
      name: the card's `data-name`; state: 'done' or 'error'; error: the
        card's error text or None.
      slider_default: the slider's value before any change (float).
      boxes: the boxes at the default slider, in page order, each {class,
        score, label, visible, xyxy}; xyxy is the drawn rectangle in pixels
        of the image's natural size (None when hidden).
      counts: {counts: {class_name: int}, total: int} at the default slider
        (None without a counts table, e.g. for a classifier).
      threshold: the slider value set; threshold_text: `#threshold-value`.
      boxes_after, counts_after: the same after the slider moved.
      top_k: for a classifier, [{class, probability}] of the card, else [].
      latency: {server_ms, round_trip_ms, text} of `.latency`, or None.
      requests: URLs of every request the page made, in order.
      console_errors: console errors and uncaught page errors.
  """
  base_url = base_url.rstrip('/')
  requests, console_errors = [], []
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                args=['--no-sandbox'])
    try:
      page = browser.new_page(viewport={'width': 1280, 'height': 900})
      page.set_default_timeout(TIMEOUT_MS)
      page.on('request', lambda r: requests.append(r.url))
      page.on('console', lambda m: m.type == 'error' and console_errors.append(
          m.text))
      page.on('pageerror', lambda e: console_errors.append(str(e)))

      page.goto(base_url + '/')
      # The model's fields arrive with /v1/model; '…' is the placeholder.
      page.wait_for_function(
          "document.getElementById('model-task').textContent !== '…'"
          " || !document.getElementById('model-error').hidden")
      model = {k: page.text_content(f'#model-{k}')
               for k in ('name', 'format', 'step', 'task')}
      slider_default = float(page.input_value('#threshold'))

      page.set_input_files('#file-input', image_path)
      card = page.wait_for_selector(
          '.result[data-state="done"], .result[data-state="error"]')
      error = card.query_selector('.error')
      result = {
          'model': model,
          'name': card.get_attribute('data-name'),
          'state': card.get_attribute('data-state'),
          'error': error.text_content() if error else None,
          'slider_default': slider_default,
          'boxes': card.evaluate(READ_BOXES),
          'counts': card.evaluate(READ_COUNTS),
          'top_k': card.eval_on_selector_all(
              '.top-k li', "items => items.map(li => ({class: "
              "li.dataset.class, probability: Number(li.dataset.probability)"
              "}))"),
          'latency': card.eval_on_selector_all(
              '.latency', "els => els.length ? {server_ms: "
              "Number(els[0].dataset.serverMs), round_trip_ms: "
              "Number(els[0].dataset.roundTripMs), text: els[0].textContent}"
              " : null"),
      }

      if screenshot_before:
        page.screenshot(path=str(screenshot_before), full_page=True)
      page.eval_on_selector('#threshold', SET_THRESHOLD, str(threshold))
      result['threshold'] = float(page.input_value('#threshold'))
      result['threshold_text'] = page.text_content('#threshold-value')
      result['boxes_after'] = card.evaluate(READ_BOXES)
      result['counts_after'] = card.evaluate(READ_COUNTS)

      page.screenshot(path=str(screenshot_path), full_page=True)
      result['requests'] = list(requests)
      result['console_errors'] = list(console_errors)
      return result
    finally:
      browser.close()
