"""The report as one static HTML page with its PNGs in a folder beside it."""

import html
import os
from typing import List

from detector import visualize

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 0 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
"""


def write(path: str, title: str, subtitle: str, blocks: List[tuple]) -> dict:
  """Writes `path` (.html) and its figures as PNG in `<path without .html>/`.

  Args:
    blocks: ('h2', text), ('p', text), ('table', header, rows) or
      ('figure', name, caption, uint8 [H, W, 3]).

  Returns:
    {'html': path, 'figures': {name: PNG path}}.
  """
  folder = os.path.splitext(path)[0]
  os.makedirs(folder, exist_ok=True)
  relative = os.path.basename(folder)
  parts = [f'<!doctype html><html><head><meta charset="utf-8"><title>'
           f'{html.escape(title)}</title><style>{_STYLE}</style></head><body>',
           f'<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>']
  written = {}
  for block in blocks:
    kind = block[0]
    if kind == 'h2':
      parts.append(f'<h2>{html.escape(block[1])}</h2>')
    elif kind == 'p':
      parts.append(f'<p>{html.escape(block[1])}</p>')
    elif kind == 'table':
      header, rows = block[1], block[2]
      parts.append('<table><tr>' + ''.join(
          f'<th>{html.escape(str(h))}</th>' for h in header) + '</tr>')
      for row in rows:
        parts.append('<tr>' + ''.join(
            f'<td>{html.escape(str(v))}</td>' for v in row) + '</tr>')
      parts.append('</table>')
    elif kind == 'figure':
      name, caption, pixels = block[1], block[2], block[3]
      file = os.path.join(folder, f'{name}.png')
      visualize.save_png(pixels, file)
      written[name] = file
      parts.append(f'<figure><img src="{html.escape(relative)}/{name}.png" '
                   f'alt="{html.escape(name)}" width="{pixels.shape[1]}">'
                   f'<figcaption>{html.escape(caption)}</figcaption></figure>')
    else:
      raise ValueError(f'unknown block kind {kind!r}')
  parts.append('</body></html>')
  with open(path, 'w') as f:
    f.write('\n'.join(parts))
  return {'html': path, 'figures': written}
