"""`GET /monitoring`: recent traffic against the reference, as plots.

One bar chart per signal (the reference's share of each bin beside the
drift window's), its PSI, and the last canary check. The PNGs are inline
(data: URLs) and drawn with matplotlib's object API, which is safe to use
from the server's worker threads (pyplot is not).
"""

import base64
import html
import io
import math
import time

import numpy as np
from matplotlib.figure import Figure

from detector.monitoring import drift


def _labels(bins: dict, class_names) -> list:
  if bins['kind'] == 'categorical':
    return list(class_names)[:bins['size']]
  edges = bins['edges']
  fmt = lambda v: f'{v:.3g}'
  if not edges:
    return ['all']
  return ([f'<{fmt(edges[0])}']
          + [f'{fmt(a)}-{fmt(b)}' for a, b in zip(edges[:-1], edges[1:])]
          + [f'>={fmt(edges[-1])}'])


def _plot(name, labels, expected, actual, value) -> str:
  fig = Figure(figsize=(6.4, 2.8), dpi=80)
  ax = fig.add_subplot()
  x = np.arange(len(labels))
  ax.bar(x - 0.2, drift.shares(expected) if len(expected) else [], 0.4,
         label='reference', color='#8a9bb0')
  if actual.sum():
    ax.bar(x + 0.2, actual / actual.sum(), 0.4, label='recent traffic',
           color='#d9822b')
  ax.set_xticks(x, labels, rotation=30, ha='right', fontsize=7)
  ax.set_ylabel('share')
  psi = 'n/a' if value is None else f'{value:.3f}'
  ax.set_title(f'{name}  (PSI {psi})', fontsize=10)
  ax.legend(fontsize=7)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  return base64.b64encode(buffer.getvalue()).decode('ascii')


def render(service) -> str:
  """The page's HTML."""
  title = f'detector monitoring: {html.escape(service.name)}'
  head = (f'<!doctype html><html><head><meta charset="utf-8"><title>{title}'
          '</title><link rel="stylesheet" href="/static/style.css"></head>'
          f'<body class="monitoring"><h1>{title}</h1>')
  if service.reference is None:
    return (head + '<p>No monitoring reference beside this model: drift and '
            'canary checks are off. Write one with <code>python -m '
            'detector.monitoring --model=MODEL</code>.</p></body></html>')
  values = service.update_drift()
  counts = service.window.counts()
  ref = service.reference
  rows, plots = [], []
  for name, entry in ref['signals'].items():
    value = values.get(name)
    alarm = value is not None and not math.isnan(value) and value > drift.ALARM
    shown = 'n/a' if value is None else f'{value:.3f}'
    rows.append(f'<tr class="{"alarm" if alarm else ""}"><td>{name}</td>'
                f'<td>{shown}</td></tr>')
    labels = _labels(entry['bins'], service.info.class_names)
    png = _plot(name, labels, np.asarray(entry['counts'], np.float64),
                counts[name].astype(np.float64), value)
    plots.append(f'<figure><img alt="{name}" src="data:image/png;base64,'
                 f'{png}"></figure>')
  if service.last_canary:
    when, ok, problems = service.last_canary
    canary = (f'<p>Canary ({time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))}'
              f' UTC): {"outputs equal the recorded ones" if ok else "FAILING"}'
              '</p>')
    if problems:
      canary += '<ul>' + ''.join(f'<li>{html.escape(p)}</li>'
                                 for p in problems[:10]) + '</ul>'
  else:
    canary = '<p>Canary: not run yet.</p>'
  return (head + f'<p>Reference: {ref["images"]} images '
          f'({html.escape(ref.get("source", ""))}), detections scoring at '
          f'least {ref["score_threshold"]}. Window: the last '
          f'{len(service.window)} images (PSI from '
          f'{service.window.min_images}; alarm above {drift.ALARM}).</p>'
          + canary + '<table class="psi"><tr><th>signal</th><th>PSI</th></tr>'
          + ''.join(rows) + '</table>' + ''.join(plots) + '</body></html>')
