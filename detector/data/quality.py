"""Data-quality rules: every image of a `Source` opened and checked, and the report.

`check` opens every image a reader (`detector.data.formats`) listed and
applies the rules below, recording each thing it changes in a `Report`;
`build_report` adds the dataset's statistics (`statistics`) and gives the
dict written as `report.json`, `format_report` its text.

  | problem                       | what happens                              |
  |-------------------------------|-------------------------------------------|
  | image file missing            | image skipped, its boxes dropped, counted |
  | image unreadable or corrupt   | image skipped, its boxes dropped, counted |
  | box partly outside the image  | clipped to the image, counted             |
  | box entirely outside          | dropped, counted                          |
  | zero-area or inverted box     | dropped, counted                          |
  | unknown category id / class   | error naming the file and the id          |
  | same image bytes in 2 splits  | warned (train/test leakage), counted      |
  | same image bytes twice in one | warned, counted                           |
  | EXIF-rotated photograph       | turned upright (as labelling tools show   |
  |                               | it), boxes kept, counted                  |
  | size differs from annotation  | warned (boxes kept as annotated), counted |
  | YOLO label file with no image | its boxes dropped, counted                |
  | unused placeholder category   | left out of the classes, reported         |
  | split without a usable image  | left out of the dataset, reported         |
  | (folder:) file not an image   | skipped, counted                          |
  | (folder:) image outside any   | skipped, counted                          |
  | class folder                  |                                           |
  | (folder:) same image bytes    | warned (contradicting labels), counted    |
  | under two classes             |                                           |
  | (folder:) class without images| warned per split, counted                 |
  | in a split                    |                                           |

(Unknown ids and classes are errors of the readers, raised while reading.)
Nothing is dropped without being counted: the report's totals satisfy
boxes_read = boxes_kept + boxes_dropped and images_read = images_kept +
images_skipped, and every problem lists its files.
"""

import collections
import dataclasses
import hashlib
import io
import os
from typing import Dict, List, Optional

import numpy as np
from PIL import Image
from PIL import ImageOps

from detector.data import formats

# What each problem kind does, for the report.
ACTIONS = {
    'missing_image': 'image skipped, its boxes dropped',
    'unreadable_image': 'image skipped, its boxes dropped',
    'box_clipped': 'box clipped to the image',
    'box_outside_image': 'box dropped',
    'box_degenerate': 'box dropped (zero area or inverted)',
    'duplicate_across_splits': 'warning: the same image is in two splits',
    'duplicate_within_split': 'warning: the same image twice in one split',
    'exif_rotated': 'image turned upright as its EXIF orientation says',
    'size_mismatch': 'warning: the image size differs from the annotation',
    'unused_category': 'category left out (no boxes; a supercategory name)',
    'empty_split': 'split left out: none of its images could be used',
    'label_without_image': 'label file skipped, its boxes dropped (no image '
                           'of that name)',
    'not_an_image': 'file skipped (not an image file name)',
    'outside_class_folder': 'image skipped (not inside a class folder)',
    'duplicate_conflicting_labels': 'warning: the same image under two '
                                    'classes',
    'class_without_images': 'warning: a class has no image in a split',
}


class Report:
  """Counts and files of every problem, and the totals of images and boxes."""

  def __init__(self):
    self.problems = collections.defaultdict(collections.Counter)
    # images_read/kept/skipped, boxes_read/kept/dropped, in the order first counted.
    self.totals = collections.Counter()

  def add(self, kind: str, where: str, n: int = 1):
    assert kind in ACTIONS, kind
    self.problems[kind][where] += n

  def count(self, kind: str) -> int:
    return sum(self.problems[kind].values())

  def problems_json(self):
    return {kind: {'action': ACTIONS[kind], 'count': sum(files.values()),
                   'files': dict(sorted(files.items()))}
            for kind, files in sorted(self.problems.items()) if files}


@dataclasses.dataclass
class Example:
  """A checked image, ready to be written."""
  split: str
  image_id: int
  filename: str
  encoded: bytes
  height: int
  width: int
  boxes: np.ndarray       # [N, 4] float64 x0, y0, x1, y1 pixels (clipped).
  labels: np.ndarray      # [N] int64
  crowd: np.ndarray       # [N] bool
  sha1: str
  label: int = -1         # The image's class (folder:), else -1.


def check(source: formats.Source, report: Report) -> Dict[str, List[Example]]:
  """Opens every image and applies the rules of the module docstring.

  Returns {split: the images kept, in the reader's order}; a split none of
  whose images is kept is left out. Counts every problem into `report`.
  """
  _count_reading_problems(source, report)
  out, seen = {}, {}  # seen: image sha1 -> (split, path, label), for duplicates.
  for split, records in source.splits.items():
    examples = []
    for record in records:
      example = _check_image(source, split, record, seen, report)
      if example is not None:
        examples.append(example)
    if examples:
      out[split] = examples
    else:
      report.add('empty_split', f'{split} ({len(records)} images listed)')
  if source.kind == 'folder':
    for split, exs in out.items():
      present = {ex.label for ex in exs}
      for i, name in enumerate(source.class_names):
        if i not in present:
          report.add('class_without_images', f'{name} ({split})')
  return out


def _count_reading_problems(source, report):
  """What the reader found and left out: placeholders, orphans, skipped files."""
  for name in source.unused_categories:
    report.add('unused_category', name)
  for path, num_boxes in source.orphan_labels:
    report.add('label_without_image', path)
    report.totals['boxes_read'] += num_boxes
    report.totals['boxes_dropped'] += num_boxes
  for kind, path in source.skipped_files:
    report.add(kind, path)
    if kind == 'outside_class_folder':
      report.totals['images_read'] += 1
      report.totals['images_skipped'] += 1


def _open_image(path):
  """(encoded bytes to store, height, width, rotated) or raises OSError."""
  with open(path, 'rb') as f:
    raw = f.read()
  with Image.open(io.BytesIO(raw)) as image:
    image.load()  # Decodes every pixel: truncated files fail here.
    orientation = image.getexif().get(0x0112, 1)
    upright = ImageOps.exif_transpose(image) if orientation != 1 else image
    keep = (orientation == 1 and
            ((image.format == 'JPEG' and image.mode in ('RGB', 'L')) or
             (image.format == 'PNG' and image.mode in ('RGB', 'L', 'RGBA'))))
    width, height = upright.size
    if keep:
      return raw, height, width, False
    out = io.BytesIO()
    upright.convert('RGB').save(out, format='PNG')
    return out.getvalue(), height, width, orientation != 1


def _check_image(source, split, record, seen, report) -> Optional[Example]:
  """One image opened and checked, or None when it cannot be used."""
  report.totals['images_read'] += 1
  report.totals['boxes_read'] += len(record.boxes)
  problem = None
  if not os.path.isfile(record.path):
    problem = 'missing_image'
  else:
    try:
      encoded, height, width, rotated = _open_image(record.path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
      problem = 'unreadable_image'
  if problem:
    report.add(problem, record.path)
    report.totals['images_skipped'] += 1
    report.totals['boxes_dropped'] += len(record.boxes)
    return None
  if rotated:
    report.add('exif_rotated', record.path)
  if record.size is not None and record.size != (height, width):
    report.add('size_mismatch', f'{record.path}: annotated {record.size[1]}x'
               f'{record.size[0]}, image {width}x{height}')
  sha1 = hashlib.sha1(encoded).hexdigest()
  if sha1 in seen:
    other_split, other_path, other_label = seen[sha1]
    kind = ('duplicate_within_split' if other_split == split
            else 'duplicate_across_splits')
    report.add(kind, f'{other_path} ({other_split}) = {record.path} ({split})')
    if other_label != record.label:
      report.add('duplicate_conflicting_labels',
                 f'{other_path} ({source.class_names[other_label]}) = '
                 f'{record.path} ({source.class_names[record.label]})')
  else:
    seen[sha1] = (split, record.path, record.label)
  boxes, labels, crowd = _check_boxes(source, record, height, width, report)
  report.totals['images_kept'] += 1
  report.totals['boxes_kept'] += len(boxes)
  return Example(
      split=split, image_id=record.image_id,
      filename=os.path.relpath(record.path, source.root), encoded=encoded,
      height=height, width=width,
      boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
      labels=np.asarray(labels, np.int64), crowd=np.asarray(crowd, bool),
      sha1=sha1, label=record.label)


def _check_boxes(source, record, height, width, report):
  """([[x0, y0, x1, y1] clipped to the image], [label], [crowd]) of the
  boxes kept, in pixels; degenerate boxes and boxes outside the image dropped."""
  boxes, labels, crowd = [], [], []
  for box in record.boxes:
    x0, y0, x1, y1 = box.xyxy
    if source.kind == 'yolo':  # Normalised: the image's size is known now.
      x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    where = f'{box.where} ({record.path})'
    if not (x1 > x0 and y1 > y0) or not np.all(np.isfinite([x0, y0, x1, y1])):
      report.add('box_degenerate', where)
      report.totals['boxes_dropped'] += 1
      continue
    cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    if not (cx1 > cx0 and cy1 > cy0):
      report.add('box_outside_image', where)
      report.totals['boxes_dropped'] += 1
      continue
    if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
      report.add('box_clipped', where)
    boxes.append((cx0, cy0, cx1, cy1))
    labels.append(box.label)
    crowd.append(box.crowd)
  return boxes, labels, crowd


# The report.


def statistics(source: formats.Source, examples: Dict[str, List[Example]]) -> dict:
  """Images and boxes per class and split; box size and aspect ratio quantiles.

  For `folder:` (classification): images per class and image size quantiles.
  """
  if source.kind == 'folder':
    return _class_statistics(source, examples)
  stats = {}
  for split, exs in examples.items():
    boxes_per_class = collections.Counter()
    images_per_class = collections.Counter()
    crowd = 0
    for ex in exs:
      for label in ex.labels[~ex.crowd]:
        boxes_per_class[source.class_names[label]] += 1
      for label in set(ex.labels[~ex.crowd].tolist()):
        images_per_class[source.class_names[label]] += 1
      crowd += int(ex.crowd.sum())
    all_boxes = np.concatenate([ex.boxes for ex in exs] + [np.zeros((0, 4))])
    w, h = all_boxes[:, 2] - all_boxes[:, 0], all_boxes[:, 3] - all_boxes[:, 1]
    q = [0, 0.05, 0.25, 0.5, 0.75, 0.95, 1]
    stats[split] = {
        'images': len(exs),
        'images_without_boxes': sum(1 for ex in exs if not len(ex.labels)),
        'boxes': int(len(all_boxes)),
        'crowd_boxes': crowd,           # Ignored regions (COCO iscrowd, VOC difficult).
        'boxes_per_class': {n: boxes_per_class[n] for n in source.class_names},
        'images_per_class': {n: images_per_class[n] for n in source.class_names},
        'box_size_quantiles': (dict(zip(map(str, q), np.quantile(
            np.sqrt(w * h), q).round(2).tolist())) if len(all_boxes) else {}),
        'aspect_ratio_quantiles': (dict(zip(map(str, q), np.quantile(
            w / h, q).round(3).tolist())) if len(all_boxes) else {}),
    }
  return stats


def _class_statistics(source, examples):
  q = [0, 0.05, 0.5, 0.95, 1]
  stats = {}
  for split, exs in examples.items():
    counts = collections.Counter(source.class_names[ex.label] for ex in exs)
    sides = np.array([[ex.height, ex.width] for ex in exs], np.float64)
    stats[split] = {
        'images': len(exs),
        'images_per_class': {n: counts[n] for n in source.class_names},
        'image_height_quantiles': dict(zip(map(str, q), np.quantile(
            sides[:, 0], q).tolist())),
        'image_width_quantiles': dict(zip(map(str, q), np.quantile(
            sides[:, 1], q).tolist())),
    }
  return stats


def build_report(spec: str, source: formats.Source,
                 examples: Dict[str, List[Example]], problems: Report) -> dict:
  """The report dict (`report.json`): classes, statistics, totals, problems."""
  totals = dict(problems.totals)
  keys = ['images_read', 'images_kept', 'images_skipped']
  if source.kind != 'folder':
    keys += ['boxes_read', 'boxes_kept', 'boxes_dropped']
    totals['boxes_clipped'] = problems.count('box_clipped')
  for key in keys:
    totals.setdefault(key, 0)
  if source.kind == 'folder':
    totals = {k: v for k, v in totals.items() if not k.startswith('boxes')}
  return {
      'spec': spec,
      'source': source.root,
      'classes': source.class_names,
      'category_ids': source.category_ids,
      'splits': statistics(source, examples),
      'totals': totals,
      'problems': problems.problems_json(),
  }


def format_report(report: dict, max_files: int = 5) -> str:
  """The report as text, for the log and the console."""
  lines = [f'Data-quality report for {report["spec"]}']
  t = report['totals']
  images = (f'  images: {t["images_read"]} read, {t["images_kept"]} kept, '
            f'{t["images_skipped"]} skipped')
  if 'boxes_read' not in t:  # Classification.
    lines.append(images)
    for split, s in report['splits'].items():
      per_class = ', '.join(f'{n} {c}' for n, c in s['images_per_class'].items())
      lines.append(f'  {split}: {s["images"]} images: {per_class}')
  else:
    lines.append(f'{images}; boxes: {t["boxes_read"]} read, '
                 f'{t["boxes_kept"]} kept ({t["boxes_clipped"]} clipped), '
                 f'{t["boxes_dropped"]} dropped')
  for split, s in (report['splits'] if 'boxes_read' in t else {}).items():
    per_class = ', '.join(f'{n} {c}' for n, c in s['boxes_per_class'].items())
    lines.append(f'  {split}: {s["images"]} images ({s["images_without_boxes"]} '
                 f'without boxes), {s["boxes"]} boxes: {per_class}')
  if not report['problems']:
    lines.append('  no problems found')
  for kind, p in report['problems'].items():
    lines.append(f'  {kind}: {p["count"]} ({p["action"]})')
    for i, (where, n) in enumerate(p['files'].items()):
      if i == max_files:
        lines.append(f'    ... and {len(p["files"]) - max_files} more '
                     '(all in report.json)')
        break
      lines.append(f'    {where}' + (f' x{n}' if n > 1 else ''))
  if report.get('plots'):
    lines.append(f'  plots: {", ".join(report["plots"])}')
  if report.get('report'):
    lines.append(f'  full report: {report["report"]}')
  return '\n'.join(lines)


def plot(examples: Dict[str, List[Example]], directory: str,
         class_names=None) -> List[str]:
  """box_sizes.png and aspect_ratios.png: histograms per split; with
  `class_names` (classification) images_per_class.png instead."""
  # A Figure of its own, not pyplot's: no global backend or figure state.
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  if class_names is not None:
    return [_plot_class_counts(Figure, examples, class_names, directory)]
  written = []
  for name, title, fn in (
      ('box_sizes.png', 'box size: sqrt(width x height), pixels',
       lambda b: np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))),
      ('aspect_ratios.png', 'aspect ratio: width / height (log scale)',
       lambda b: (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1]))):
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    for split, exs in examples.items():
      boxes = np.concatenate([ex.boxes for ex in exs] + [np.zeros((0, 4))])
      if len(boxes):
        values = fn(boxes)
        bins = np.geomspace(max(values.min(), 1e-3), max(values.max(), 1e-3) * 1.001, 40)
        ax.hist(values, bins=bins, histtype='step', label=f'{split} ({len(values)})')
    ax.set_xscale('log')
    ax.set_xlabel(title)
    ax.set_ylabel('boxes')
    ax.legend()
    fig.tight_layout()
    path = os.path.join(directory, name)
    fig.savefig(path)
    written.append(path)
  return written


def _plot_class_counts(figure, examples, class_names, directory):
  k = len(class_names)
  fig = figure(figsize=(min(4 + 0.3 * k, 30), 4), dpi=100)
  ax = fig.subplots()
  width = 0.8 / max(len(examples), 1)
  for i, (split, exs) in enumerate(examples.items()):
    counts = np.bincount([ex.label for ex in exs], minlength=k)
    ax.bar(np.arange(k) + i * width, counts, width, label=f'{split} ({len(exs)})')
  ax.set_xticks(np.arange(k) + 0.4 - width / 2)
  ax.set_xticklabels([n[:20] for n in class_names], rotation=90 if k > 8 else 0)
  ax.set_ylabel('images')
  ax.legend()
  fig.tight_layout()
  path = os.path.join(directory, 'images_per_class.png')
  fig.savefig(path)
  return path
