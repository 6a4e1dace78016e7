"""The evaluation report's figures, each returned as uint8 [H, W, 3] RGB
(written as PNG and into TensorBoard). Matplotlib's object API on the Agg
canvas, not pyplot: no global state, safe beside training threads."""

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

ERROR_COLOURS = {  # RGB per TIDE kind, and the true positives.
    'TP': (40, 110, 255), 'Cls': (255, 150, 0), 'Loc': (230, 210, 0),
    'Both': (170, 60, 220), 'Dupe': (0, 200, 220), 'Bkg': (255, 40, 40),
    'Miss': (255, 0, 200)}
GROUND_TRUTH = (0, 200, 0)


def _canvas(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height), dpi=100)
  return fig, FigureCanvasAgg(fig)


def _pixels(fig, canvas) -> np.ndarray:
  fig.tight_layout()
  canvas.draw()
  return np.ascontiguousarray(
      np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3])


def _grid(count: int, columns: int = 4) -> Tuple[int, int]:
  columns = max(1, min(columns, count))
  return int(math.ceil(count / columns)), columns


def pr_curves(curves: Dict[float, Dict[str, dict]],
              points: Dict[float, Dict[str, dict]],
              class_names: Sequence[str]) -> np.ndarray:
  """One panel per class: precision against recall at each IoU, the
  operating point marked.

  Args:
    curves: {IoU: {class: `curves.precision_recall_curves` entry}}.
    points: {IoU: {class: {'precision', 'recall'}}} operating points.
    class_names: the classes to draw, in panel order.
  """
  rows, cols = _grid(len(class_names))
  fig, canvas = _canvas(3.2 * cols, 2.8 * rows)
  axes = fig.subplots(rows, cols, squeeze=False)
  styles = ('tab:blue', 'tab:orange', 'tab:green')
  for n, name in enumerate(class_names):
    ax = axes[n // cols][n % cols]
    for colour, (iou, by_class) in zip(styles, curves.items()):
      c = by_class[name]
      ap = c['ap']
      ax.plot(np.r_[0, c['recall']], np.r_[1, c['precision']], color=colour,
              lw=0.8, alpha=0.5)
      ax.plot(np.linspace(0, 1, 101), c['interpolated'], color=colour, lw=1.5,
              label=f'IoU {iou:.2f}: AP {ap:.3f}' if ap >= 0 else
              f'IoU {iou:.2f}: no ground truth')
      p = points[iou][name]
      ax.plot([p['recall']], [p['precision']], 'o', color=colour, ms=6,
              mec='black')
    ax.set_title(str(name), fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel('recall', fontsize=8)
    ax.set_ylabel('precision', fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='lower left')
  for n in range(len(class_names), rows * cols):
    axes[n // cols][n % cols].axis('off')
  return _pixels(fig, canvas)


def f1_curves(sweep: dict, best: dict, class_names: Sequence[str],
              operating_threshold: float) -> np.ndarray:
  """F1 against score threshold, per class (thin) and over all classes
  (thick), each with its F1-optimal threshold marked."""
  fig, canvas = _canvas(8, 5)
  ax = fig.subplots()
  thresholds = sweep['score_thresholds']
  for name in class_names:
    line, = ax.plot(thresholds, sweep['per_class'][name]['f1'], lw=1,
                    alpha=0.8, label=str(name))
    b = best['per_class'][name]
    if b is not None:
      ax.plot([b['score_threshold']], [b['f1']], 'o', color=line.get_color(),
              ms=5)
  ax.plot(thresholds, sweep['f1'], color='black', lw=2.5, label='all classes')
  if best['overall'] is not None:
    b = best['overall']
    ax.plot([b['score_threshold']], [b['f1']], 'o', color='black', ms=8)
    ax.annotate(f'best F1 {b["f1"]:.3f} at {b["score_threshold"]:.3f}',
                (b['score_threshold'], b['f1']), textcoords='offset points',
                xytext=(8, 8), fontsize=9)
  ax.axvline(operating_threshold, color='grey', ls='--', lw=1,
             label=f'prf_score_threshold {operating_threshold:g}')
  ax.set_xlabel('score threshold')
  ax.set_ylabel('F1 at IoU 0.5')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2 if len(class_names) > 8 else 1,
            loc='upper right')
  return _pixels(fig, canvas)


def error_breakdown(delta_ap: Dict[str, float], counts: Dict[str, int],
                    main: Sequence[str], special: Sequence[str]) -> np.ndarray:
  """TIDE: the AP gained by fixing each error kind, and how many errors."""
  fig, canvas = _canvas(10, 3.8)
  left, right = fig.subplots(1, 2)
  kinds = list(main) + list(special)
  values = [delta_ap[k] for k in kinds]
  colours = [np.array(ERROR_COLOURS.get(k, (120, 120, 120))) / 255
             for k in kinds]
  bars = left.barh(kinds[::-1], values[::-1], color=colours[::-1])
  left.bar_label(bars, fmt='%.2f', fontsize=8)
  left.set_xlabel('AP50 points gained by fixing (TIDE)')
  left.set_title('Error breakdown')
  right.barh(list(main)[::-1], [counts[k] for k in main][::-1],
             color=colours[:len(main)][::-1])
  right.set_xlabel('errors')
  right.set_title('Error counts (every detection)')
  return _pixels(fig, canvas)


def ap_by_range(groups: Dict[str, Dict[str, dict]]) -> np.ndarray:
  """AP@[.5:.95] and AP50 per range, one panel per grouping (size,
  aspect ratio)."""
  fig, canvas = _canvas(4.5 * len(groups), 3.6)
  axes = np.atleast_1d(fig.subplots(1, len(groups)))
  for ax, (title, ranges) in zip(axes, groups.items()):
    labels = list(ranges)
    x = np.arange(len(labels))
    for offset, key in ((-0.2, 'AP'), (0.2, 'AP50')):
      values = [max(ranges[k][key], 0.0) for k in labels]
      bars = ax.bar(x + offset, values, width=0.4, label=key)
      ax.bar_label(bars, fmt='%.3f', fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels([f'{k}\n({ranges[k]["num_gt"]} objects)'
                        for k in labels], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
  return _pixels(fig, canvas)


def labelled_image(image: np.ndarray, boxes: List[Tuple], upscale: int = 2
                   ) -> np.ndarray:
  """Draws labelled boxes on a copy of `image`.

  Args:
    image: uint8 [H, W, 3].
    boxes: (xywh in pixels of `image`, RGB colour, label text) tuples.
    upscale: integer enlargement, so that labels stay legible on small
      images.
  """
  from PIL import Image, ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.uint8)
  scale = max(1, int(upscale))
  pil = Image.fromarray(image).resize(
      (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
  draw = ImageDraw.Draw(pil)
  font = ImageFont.load_default(size=10)
  for (x, y, w, h), colour, text in boxes:
    x0, y0, x1, y1 = x * scale, y * scale, (x + w) * scale, (y + h) * scale
    draw.rectangle([x0, y0, max(x1 - 1, x0), max(y1 - 1, y0)],
                   outline=tuple(colour), width=2)
    if text:
      left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), text,
                                               font=font)
      draw.rectangle([left - 1, top - 1, right + 1, bottom + 1],
                     fill=tuple(colour))
      draw.text((x0 + 2, y0 + 1), text, fill=(0, 0, 0), font=font)
  return np.asarray(pil)


def image_grid(images: List[np.ndarray], titles: List[str],
               columns: int = 4) -> np.ndarray:
  """Images in a grid with a title above each (matplotlib)."""
  rows, cols = _grid(len(images), columns)
  fig, canvas = _canvas(3.4 * cols, 3.6 * rows)
  axes = fig.subplots(rows, cols, squeeze=False)
  for n in range(rows * cols):
    ax = axes[n // cols][n % cols]
    ax.axis('off')
    if n < len(images):
      ax.imshow(images[n], interpolation='nearest')
      ax.set_title(titles[n], fontsize=8)
  return _pixels(fig, canvas)


def legend_strip() -> np.ndarray:
  """The colour of each box kind in the drawn images."""
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  fig, canvas = _canvas(10, 0.5)
  ax = fig.subplots()
  ax.axis('off')
  entries = [('ground truth', GROUND_TRUTH)] + list(ERROR_COLOURS.items())
  for n, (name, colour) in enumerate(entries):
    ax.add_patch(Rectangle((n / len(entries), 0.2), 0.02, 0.6,
                           color=np.array(colour) / 255,
                           transform=ax.transAxes))
    ax.text(n / len(entries) + 0.025, 0.5, name, va='center', fontsize=9,
            transform=ax.transAxes)
  return _pixels(fig, canvas)
