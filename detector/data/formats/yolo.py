"""`yolo:DIR`: YOLO label files and data.yaml.

  DIR/data.yaml with `names` (a list, or a dict index -> name; `nc`, if
  given, must equal their number), DIR/images/<split>/ and
  DIR/labels/<split>/<stem>.txt (or DIR/<split>/images/ and
  DIR/<split>/labels/, as Roboflow exports).

One `class cx cy w h` line per box, normalised to the image (a polygon line,
`class x1 y1 x2 y2 ...`, gives its bounding box). Boxes stay normalised in
the `Source`: `quality.check` scales them once the image's size is known.
An image without a label file has no boxes; a label file without an image
is counted (its boxes dropped). Category ids are the class indices.
"""

import os
from typing import Dict, List, Tuple

from detector.data import formats


def read(root: str, split_fractions=None) -> formats.Source:
  """The YOLO folder `root`; a DataError names the file and line at fault."""
  del split_fractions  # The folder has its own splits.
  names = _names(root)
  splits, next_id = {}, 1
  orphans = []
  for split, (image_dir, label_dir) in _split_dirs(root).items():
    records = []
    stems = set()
    for name in sorted(os.listdir(image_dir)):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in formats.IMAGE_EXTENSIONS:
        continue
      stems.add(stem)
      label_path = os.path.join(label_dir, stem + '.txt')
      boxes = []
      if os.path.isfile(label_path):
        boxes = _boxes(label_path, len(names))
      records.append(formats.Record(os.path.join(image_dir, name), next_id,
                                    boxes, annotation_file=label_path))
      next_id += 1
    if os.path.isdir(label_dir):
      for name in sorted(os.listdir(label_dir)):
        stem, ext = os.path.splitext(name)
        if ext == '.txt' and stem not in stems:
          path = os.path.join(label_dir, name)
          orphans.append((path, len(_boxes(path, len(names)))))
    splits[split] = records
  return formats.Source('yolo', root, names, list(range(len(names))), splits,
                        orphan_labels=orphans)


def _names(root) -> List[str]:
  """The class names of data.yaml."""
  import yaml  # pylint: disable=g-import-not-at-top
  path = os.path.join(root, 'data.yaml')
  if not os.path.isfile(path):
    raise formats.DataError(
        f'{root}: no data.yaml (a YOLO folder has data.yaml with the class '
        'names, images/<split>/ and labels/<split>/)')
  try:
    with open(path, encoding='utf-8') as f:
      data = yaml.safe_load(f)
  except yaml.YAMLError as e:
    raise formats.DataError(f'{path}: not valid YAML ({e})') from None
  names = data.get('names') if isinstance(data, dict) else None
  if isinstance(names, dict):
    if sorted(names) != list(range(len(names))):
      raise formats.DataError(
          f'{path}: names keys {sorted(names)} are not 0..{len(names) - 1}')
    names = [names[i] for i in range(len(names))]
  if not isinstance(names, list) or not names:
    raise formats.DataError(f'{path}: expected "names", a list of class names')
  if 'nc' in data and data['nc'] != len(names):
    raise formats.DataError(f'{path}: nc is {data["nc"]} but names has {len(names)}')
  return [str(n) for n in names]


def _split_dirs(root) -> Dict[str, Tuple[str, str]]:
  """{split: (images dir, labels dir)} in either layout."""
  found = {}
  images_root = os.path.join(root, 'images')
  if os.path.isdir(images_root):
    for folder in sorted(os.listdir(images_root)):
      split = formats.split_name(folder)
      if split and os.path.isdir(os.path.join(images_root, folder)):
        found[split] = (os.path.join(images_root, folder),
                        os.path.join(root, 'labels', folder))
  for folder in sorted(os.listdir(root)):
    split = formats.split_name(folder)
    if split and os.path.isdir(os.path.join(root, folder, 'images')):
      found.setdefault(split, (os.path.join(root, folder, 'images'),
                               os.path.join(root, folder, 'labels')))
  if not found:
    raise formats.DataError(
        f'{root}: no images/<split>/ folders (expected images/train/, '
        'images/val/, ... and labels/<split>/)')
  return found


def _boxes(path, num_classes) -> List[formats.Box]:
  """Normalised boxes of a label file (pixels come once the image is open)."""
  boxes = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      where = f'{path}:{n}'
      try:
        cls, values = int(fields[0]), [float(v) for v in fields[1:]]
      except ValueError:
        raise formats.DataError(
            f'{where}: {line.strip()!r} is not "class cx cy w h"') from None
      if len(values) == 4:
        cx, cy, w, h = values
        xyxy = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
      elif len(values) >= 6 and len(values) % 2 == 0:  # A polygon.
        xs, ys = values[0::2], values[1::2]
        xyxy = (min(xs), min(ys), max(xs), max(ys))
      else:
        raise formats.DataError(f'{where}: {line.strip()!r} is not "class cx cy w h"')
      if not 0 <= cls < num_classes:
        raise formats.DataError(f'{where}: class {cls} is not in data.yaml names '
                                f'(0..{num_classes - 1})')
      boxes.append(formats.Box(xyxy, cls, False, where))
  return boxes
