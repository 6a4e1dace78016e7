"""Folder datasets: `coco_json:DIR`, `voc:DIR` and `yolo:DIR`, read and checked.

A reader turns a folder, as labelling tools export it, into a `Source`: class
names, the dataset's own category ids, and per split the images with their
boxes in pixels of the image as annotated, `[x0, y0, x1, y1]` with pixel-edge
coordinates (pixel column i spans [i, i + 1)). `check` then opens every
image and applies the data-quality rules, recording each thing it changes in
a `Report`:

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

Nothing is dropped without being counted: the report's totals satisfy
boxes_read = boxes_kept + boxes_dropped and images_read = images_kept +
images_skipped, and every problem lists its files.

Layouts (split folder names `train`, `valid`/`val`/`validation`, `test`
become TFDS splits `train`, `validation`, `test`):

  coco_json:DIR  DIR/<split>/{_annotations.coco.json | annotations.json}, the
                 images beside it or in DIR/<split>/images/. Labels are the
                 categories in ascending id order; detections are written back
                 with the file's own ids. A category no box uses whose name is
                 another category's supercategory (Roboflow's placeholder) is
                 left out, and reported.
  voc:DIR        DIR/Annotations/*.xml, DIR/JPEGImages/, and the split lists
                 DIR/ImageSets/Main/{train,val,trainval,test}.txt. Classes:
                 DIR/labels.txt (one per line) if present, else the 20 Pascal
                 VOC classes if every name is one of them, else the sorted
                 names. VOC's 1-based inclusive pixel boxes become pixel-edge
                 boxes [xmin - 1, ymin - 1, xmax, ymax]; `difficult` objects
                 become crowd (ignored) boxes, as VOC's evaluation ignores them.
  yolo:DIR       DIR/data.yaml with `names` (a list, or a dict index -> name),
                 DIR/images/<split>/ and DIR/labels/<split>/<stem>.txt (or
                 DIR/<split>/images/ and DIR/<split>/labels/, as Roboflow
                 exports), one `class cx cy w h` line per box, normalised to
                 the image (a polygon line, `class x1 y1 x2 y2 ...`, gives its
                 bounding box). An image without a label file has no boxes.
  folder:DIR     Image classification: DIR/<split>/<class>/*.jpg, or without
                 split folders DIR/<class>/*.jpg, split at random into
                 train/validation/test by `split_fractions` (each file's
                 split is a hash of its path inside DIR, so it never changes
                 and adding images moves no other image). Classes: the
                 sorted union of the class folder names.
"""

import collections
import dataclasses
import hashlib
import io
import json
import os
import re
from typing import Dict, List, Optional, Tuple
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image
from PIL import ImageOps

from detector import errors

KINDS = ('coco_json', 'voc', 'yolo', 'folder')
DETECTION_KINDS = ('coco_json', 'voc', 'yolo')
SPLIT_ALIASES = {'train': 'train', 'valid': 'validation', 'val': 'validation',
                 'validation': 'validation', 'test': 'test',
                 'trainval': 'trainval'}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')
COCO_ANNOTATION_FILES = ('_annotations.coco.json', 'annotations.json')
VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse',
               'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')


# folder: without split folders, the (train, validation, test) fractions.
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


class DataError(errors.ConfigError):
  """A dataset folder or file that cannot be read as its spec says."""


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


@dataclasses.dataclass
class Box:
  xyxy: Tuple[float, float, float, float]   # Pixels, pixel-edge.
  label: int                                # Contiguous, 0..K-1.
  crowd: bool = False
  where: str = ''                           # Annotation id / file:line.


@dataclasses.dataclass
class Record:
  """One image as annotated; `path` may not exist (checked later)."""
  path: str
  image_id: int
  boxes: List[Box]
  size: Optional[Tuple[int, int]] = None    # (height, width) as annotated.
  annotation_file: str = ''
  label: int = -1                           # The image's class (folder:), else -1.


@dataclasses.dataclass
class Source:
  kind: str
  root: str
  class_names: List[str]
  category_ids: List[int]                   # The dataset's id of each label.
  splits: Dict[str, List[Record]]
  # Found while reading, reported by `check`: categories left out (COCO
  # placeholders) and YOLO label files without an image, with their box counts.
  unused_categories: List[str] = dataclasses.field(default_factory=list)
  orphan_labels: List[Tuple[str, int]] = dataclasses.field(default_factory=list)
  # folder: files skipped while listing, as (problem kind, path).
  skipped_files: List[Tuple[str, str]] = dataclasses.field(default_factory=list)


class Report:
  """Counts and files of every problem, and the dataset's statistics."""

  def __init__(self):
    self.problems = collections.defaultdict(collections.Counter)

  def add(self, kind: str, where: str, n: int = 1):
    assert kind in ACTIONS, kind
    self.problems[kind][where] += n

  def count(self, kind: str) -> int:
    return sum(self.problems[kind].values())

  def problems_json(self):
    return {kind: {'action': ACTIONS[kind], 'count': sum(files.values()),
                   'files': dict(sorted(files.items()))}
            for kind, files in sorted(self.problems.items()) if files}


def parse_spec(spec: str) -> Optional[Tuple[str, str]]:
  """'coco_json:DIR' -> ('coco_json', DIR); None for anything else (a TFDS name)."""
  kind, sep, root = spec.partition(':')
  if not sep or kind not in KINDS:
    return None
  if not root:
    raise DataError(f'dataset spec {spec!r}: expected {kind}:DIR, a folder')
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DataError(f'dataset spec {spec!r}: {root} is not a folder')
  return kind, root


def read(kind: str, root: str, split_fractions=DEFAULT_SPLIT_FRACTIONS) -> Source:
  if kind == 'folder':
    return read_class_folder(root, split_fractions)
  return {'coco_json': read_coco_json, 'voc': read_voc, 'yolo': read_yolo}[kind](root)


def _split_name(folder: str) -> Optional[str]:
  return SPLIT_ALIASES.get(folder.lower())


def _find_image(directory: str, name: str) -> str:
  """The image `name` beside the annotations or in images/ (missing: the first)."""
  candidates = [os.path.join(directory, name),
                os.path.join(directory, 'images', name)]
  for path in candidates:
    if os.path.isfile(path):
      return path
  return candidates[0]


# COCO JSON.


def _load_json(path):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: not valid JSON ({e})') from None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'{path}: cannot read ({e})') from None


def _field(obj, key, where, types):
  if not isinstance(obj, dict) or key not in obj:
    raise DataError(f'{where}: missing field {key!r}')
  value = obj[key]
  if not isinstance(value, types) or isinstance(value, bool):
    raise DataError(f'{where}: field {key!r} is {value!r}, expected '
                    f'{" or ".join(t.__name__ for t in np.atleast_1d(types))}')
  return value


def read_coco_json(root: str) -> Source:
  split_files = {}
  for folder in sorted(os.listdir(root)):
    split = _split_name(folder)
    directory = os.path.join(root, folder)
    if split is None or not os.path.isdir(directory):
      continue
    found = [n for n in COCO_ANNOTATION_FILES
             if os.path.isfile(os.path.join(directory, n))]
    if not found:
      raise DataError(f'{directory}: no COCO annotation file (expected one of '
                      f'{", ".join(COCO_ANNOTATION_FILES)})')
    if split in split_files:
      raise DataError(f'{root}: two folders for split {split!r} '
                      f'({os.path.dirname(split_files[split])} and {directory})')
    split_files[split] = os.path.join(directory, found[0])
  if not split_files:
    raise DataError(f'{root}: no split folders (expected train/, valid/ or '
                    'validation/, test/, each with a COCO annotation file)')
  data = {split: _load_json(path) for split, path in split_files.items()}

  # Categories: the union over splits, one name per id.
  categories = {}
  for split, d in data.items():
    where = split_files[split]
    if not isinstance(d, dict):
      raise DataError(f'{where}: expected a JSON object with images, '
                      'annotations and categories')
    for i, c in enumerate(d.get('categories') or []):
      cid = _field(c, 'id', f'{where}: categories[{i}]', int)
      name = str(_field(c, 'name', f'{where}: categories[{i}]', str))
      if categories.get(cid, (name,))[0] != name:
        raise DataError(f'{where}: category id {cid} is {name!r} here but '
                        f'{categories[cid][0]!r} in another split')
      categories[cid] = (name, c.get('supercategory'))
  used = set()
  for split, d in data.items():
    for i, a in enumerate(d.get('annotations') or []):
      used.add(_field(a, 'category_id', f'{split_files[split]}: annotations[{i}]', int))
  if not categories:
    raise DataError(f'{", ".join(split_files.values())}: no "categories"; '
                    'a COCO file must name its classes')
  report_unused = []
  supercategories = {sc for _, sc in categories.values() if sc}
  for cid, (name, _) in list(categories.items()):
    if cid not in used and name in supercategories and len(categories) > 1:
      del categories[cid]
      report_unused.append(f'category {cid} {name!r}')
  ids = sorted(categories)
  label_of = {cid: i for i, cid in enumerate(ids)}

  splits = {}
  for split, d in data.items():
    path = split_files[split]
    directory = os.path.dirname(path)
    images = d.get('images')
    if not isinstance(images, list):
      raise DataError(f'{path}: missing "images" list')
    records, by_id = [], {}
    for i, im in enumerate(images):
      where = f'{path}: images[{i}]'
      image_id = _field(im, 'id', where, int)
      name = _field(im, 'file_name', where, str)
      if image_id in by_id:
        raise DataError(f'{where}: image id {image_id} appears twice')
      size = None
      if isinstance(im.get('height'), int) and isinstance(im.get('width'), int):
        size = (im['height'], im['width'])
      by_id[image_id] = Record(path=_find_image(directory, name),
                               image_id=image_id, boxes=[], size=size,
                               annotation_file=path)
      records.append(by_id[image_id])
    for i, a in enumerate(d.get('annotations') or []):
      where = f'{path}: annotations[{i}]'
      image_id = _field(a, 'image_id', where, int)
      cid = _field(a, 'category_id', where, int)
      if image_id not in by_id:
        raise DataError(f'{where}: image_id {image_id} is not in "images"')
      if cid not in label_of:
        raise DataError(f'{where}: category_id {cid} is not in "categories" '
                        f'(ids {ids})')
      bbox = _field(a, 'bbox', where, list)
      if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise DataError(f'{where}: bbox {bbox!r} is not [x, y, width, height]')
      x, y, w, h = (float(v) for v in bbox)
      by_id[image_id].boxes.append(Box(
          (x, y, x + w, y + h), label_of[cid], bool(a.get('iscrowd', 0)),
          where=f'{os.path.basename(path)} annotation {a.get("id", i)}'))
    splits[split] = records
  return Source('coco_json', root, [categories[c][0] for c in ids], ids, splits,
                unused_categories=report_unused)


# Pascal VOC.


def _xml_text(node, tag, where):
  child = node.find(tag)
  if child is None or child.text is None:
    raise DataError(f'{where}: missing <{tag}>')
  return child.text.strip()


def _xml_number(node, tag, where):
  text = _xml_text(node, tag, where)
  try:
    return float(text)
  except ValueError:
    raise DataError(f'{where}: <{tag}> is {text!r}, not a number') from None


def read_voc(root: str) -> Source:
  annotations = os.path.join(root, 'Annotations')
  images = os.path.join(root, 'JPEGImages')
  lists = os.path.join(root, 'ImageSets', 'Main')
  for path in (annotations, images, lists):
    if not os.path.isdir(path):
      raise DataError(f'{root}: no {os.path.relpath(path, root)}/ folder '
                      '(a VOC folder has Annotations/, JPEGImages/ and '
                      'ImageSets/Main/{train,val,test}.txt)')
  split_ids = {}
  for name in sorted(os.listdir(lists)):
    stem, ext = os.path.splitext(name)
    split = _split_name(stem)
    if ext == '.txt' and split:
      with open(os.path.join(lists, name), encoding='utf-8') as f:
        split_ids[split] = [line.split()[0] for line in f if line.strip()]
  if not split_ids:
    raise DataError(f'{lists}: no split lists (expected train.txt, val.txt, '
                    'test.txt)')
  parsed, names = {}, set()
  for stem in sorted({s for ids in split_ids.values() for s in ids}):
    path = os.path.join(annotations, stem + '.xml')
    try:
      tree = ET.parse(path)
    except FileNotFoundError:
      raise DataError(f'{path}: no annotation file for {stem!r}, listed in '
                      f'{lists}') from None
    except ET.ParseError as e:
      raise DataError(f'{path}: not valid XML ({e})') from None
    node = tree.getroot()
    objects = []
    for i, obj in enumerate(node.findall('object')):
      where = f'{path}: object {i}'
      name = _xml_text(obj, 'name', where)
      box = obj.find('bndbox')
      if box is None:
        raise DataError(f'{where}: missing <bndbox>')
      coords = [_xml_number(box, t, where) for t in ('xmin', 'ymin', 'xmax', 'ymax')]
      difficult = obj.find('difficult')
      hard = difficult is not None and (difficult.text or '').strip() == '1'
      objects.append((name, coords, hard, f'{os.path.basename(path)} object {i}'))
      names.add(name)
    size = node.find('size')
    hw = None
    if size is not None:
      hw = (int(_xml_number(size, 'height', path)), int(_xml_number(size, 'width', path)))
    filename = node.findtext('filename') or stem + '.jpg'
    parsed[stem] = (os.path.join(images, filename.strip()), objects, hw, path)
  labels_file = os.path.join(root, 'labels.txt')
  if os.path.isfile(labels_file):
    with open(labels_file, encoding='utf-8') as f:
      class_names = [line.strip() for line in f if line.strip()]
    unknown = sorted(names - set(class_names))
    if unknown:
      stem, obj = next((s, o) for s, (_, objs, _, _) in parsed.items()
                       for o in objs if o[0] == unknown[0])
      raise DataError(f'{obj[3]} ({parsed[stem][3]}): class {unknown[0]!r} is not '
                      f'in {labels_file}')
  elif names <= set(VOC_CLASSES):
    class_names = list(VOC_CLASSES)
  else:
    class_names = sorted(names)
  label_of = {n: i for i, n in enumerate(class_names)}
  image_ids = {stem: i + 1 for i, stem in enumerate(sorted(parsed))}
  splits = {}
  for split, stems in split_ids.items():
    records = []
    for stem in stems:
      image_path, objects, hw, path = parsed[stem]
      boxes = [Box((x0 - 1, y0 - 1, x1, y1), label_of[n], hard, where)
               for n, (x0, y0, x1, y1), hard, where in objects]
      records.append(Record(image_path, image_ids[stem], boxes, hw, path))
    splits[split] = records
  return Source('voc', root, class_names, list(range(1, len(class_names) + 1)),
                splits)


# YOLO.


def _yolo_names(root):
  import yaml  # pylint: disable=g-import-not-at-top
  path = os.path.join(root, 'data.yaml')
  if not os.path.isfile(path):
    raise DataError(f'{root}: no data.yaml (a YOLO folder has data.yaml with '
                    'the class names, images/<split>/ and labels/<split>/)')
  try:
    with open(path, encoding='utf-8') as f:
      data = yaml.safe_load(f)
  except yaml.YAMLError as e:
    raise DataError(f'{path}: not valid YAML ({e})') from None
  names = data.get('names') if isinstance(data, dict) else None
  if isinstance(names, dict):
    if sorted(names) != list(range(len(names))):
      raise DataError(f'{path}: names keys {sorted(names)} are not 0..{len(names) - 1}')
    names = [names[i] for i in range(len(names))]
  if not isinstance(names, list) or not names:
    raise DataError(f'{path}: expected "names", a list of class names')
  if 'nc' in data and data['nc'] != len(names):
    raise DataError(f'{path}: nc is {data["nc"]} but names has {len(names)}')
  return [str(n) for n in names]


def _yolo_split_dirs(root):
  """{split: (images dir, labels dir)} in either layout."""
  found = {}
  images_root = os.path.join(root, 'images')
  if os.path.isdir(images_root):
    for folder in sorted(os.listdir(images_root)):
      split = _split_name(folder)
      if split and os.path.isdir(os.path.join(images_root, folder)):
        found[split] = (os.path.join(images_root, folder),
                        os.path.join(root, 'labels', folder))
  for folder in sorted(os.listdir(root)):
    split = _split_name(folder)
    if split and os.path.isdir(os.path.join(root, folder, 'images')):
      found.setdefault(split, (os.path.join(root, folder, 'images'),
                               os.path.join(root, folder, 'labels')))
  if not found:
    raise DataError(f'{root}: no images/<split>/ folders (expected '
                    'images/train/, images/val/, ... and labels/<split>/)')
  return found


def read_yolo(root: str) -> Source:
  names = _yolo_names(root)
  splits, next_id = {}, 1
  orphans = []
  for split, (image_dir, label_dir) in _yolo_split_dirs(root).items():
    records = []
    stems = set()
    for name in sorted(os.listdir(image_dir)):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in IMAGE_EXTENSIONS:
        continue
      stems.add(stem)
      label_path = os.path.join(label_dir, stem + '.txt')
      boxes = []
      if os.path.isfile(label_path):
        boxes = _yolo_boxes(label_path, len(names))
      records.append(Record(os.path.join(image_dir, name), next_id, boxes,
                            annotation_file=label_path))
      next_id += 1
    if os.path.isdir(label_dir):
      for name in sorted(os.listdir(label_dir)):
        stem, ext = os.path.splitext(name)
        if ext == '.txt' and stem not in stems:
          path = os.path.join(label_dir, name)
          orphans.append((path, len(_yolo_boxes(path, len(names)))))
    splits[split] = records
  return Source('yolo', root, names, list(range(len(names))), splits,
                orphan_labels=orphans)


def _yolo_boxes(path, num_classes):
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
        raise DataError(f'{where}: {line.strip()!r} is not "class cx cy w h"') from None
      if len(values) == 4:
        cx, cy, w, h = values
        xyxy = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
      elif len(values) >= 6 and len(values) % 2 == 0:  # A polygon.
        xs, ys = values[0::2], values[1::2]
        xyxy = (min(xs), min(ys), max(xs), max(ys))
      else:
        raise DataError(f'{where}: {line.strip()!r} is not "class cx cy w h"')
      if not 0 <= cls < num_classes:
        raise DataError(f'{where}: class {cls} is not in data.yaml names '
                        f'(0..{num_classes - 1})')
      # Normalised: `check` scales them once the image's size is known.
      boxes.append(Box(xyxy, cls, False, where))
  return boxes


# Checking.


# Class folders (image classification).


def check_split_fractions(fractions) -> Tuple[float, float, float]:
  fractions = tuple(float(f) for f in fractions)
  if (len(fractions) != 3 or not all(0 <= f <= 1 for f in fractions)
      or not abs(sum(fractions) - 1) <= 1e-6):  # NaN fails both.
    raise errors.ConfigError(
        f'config.folder_split={fractions}: expected three fractions '
        '(train, validation, test), each >= 0, summing to 1')
  return fractions


def hash_split(relpath: str, fractions) -> Optional[str]:
  """The split of a file: a hash of its path inside the folder, so it never
  changes and does not depend on the other files."""
  u = int(hashlib.sha1(relpath.encode()).hexdigest()[:12], 16) / 16 ** 12
  edge = 0.0
  for split, fraction in zip(('train', 'validation', 'test'), fractions):
    edge += fraction
    if u < edge:
      return split
  return 'test' if fractions[2] else None


def _listdir(path):
  return sorted(n for n in os.listdir(path) if not n.startswith('.'))


def split_folders(root: str) -> Dict[str, str]:
  """{folder name: split} of a `folder:` root with split folders, {} for a
  root of class folders; a DataError when it has both kinds of folder."""
  dirs = [n for n in _listdir(root) if os.path.isdir(os.path.join(root, n))]
  splits = {n: _split_name(n) for n in dirs if _split_name(n)}
  others = [n for n in dirs if n not in splits]
  if splits and others:
    raise DataError(
        f'folder:{root} holds split folders {sorted(splits)} and other folders '
        f'{others[:10]}: use either {root}/<split>/<class>/<image> or '
        f'{root}/<class>/<image> (a class may not be named like a split)')
  return splits


def read_class_folder(root: str, split_fractions=DEFAULT_SPLIT_FRACTIONS) -> Source:
  """folder:DIR -> a Source whose records carry an image-level `label`."""
  fractions = check_split_fractions(split_fractions)
  split_dirs = split_folders(root)
  skipped = []
  if split_dirs:
    layout = {}  # split -> [(class, path)]
    for name in _listdir(root):
      path = os.path.join(root, name)
      if name not in split_dirs:  # A file: split_folders refused other folders.
        skipped.append(('outside_class_folder' if _is_image(name) else
                        'not_an_image', path))
        continue
      layout.setdefault(split_dirs[name], []).extend(
          _class_files(path, skipped))
  else:
    layout = {}
    for cls, path in _class_files(root, skipped):
      # '/'-separated, so a folder splits the same way on every OS.
      relpath = os.path.relpath(path, root).replace(os.sep, '/')
      split = hash_split(relpath, fractions)
      if split:
        layout.setdefault(split, []).append((cls, path))
  names = sorted({cls for files in layout.values() for cls, _ in files})
  if not names:
    raise DataError(
        f'folder:{root}: no images in class folders; expected '
        f'{root}/<class>/<image> or {root}/<split>/<class>/<image> with '
        f'splits train, valid (or val, validation) and test, and images '
        f'{"/".join(IMAGE_EXTENSIONS)}')
  index = {n: i for i, n in enumerate(names)}
  splits, next_id = {}, 1
  for split in sorted(layout):
    records = []
    for cls, path in sorted(layout[split], key=lambda cp: cp[1]):
      records.append(Record(path, next_id, [], label=index[cls]))
      next_id += 1
    splits[split] = records
  return Source('folder', root, names, list(range(len(names))), splits,
                skipped_files=skipped)


def _is_image(name):
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_files(directory, skipped):
  """[(class, image path)] of directory/<class>/*; the rest into `skipped`."""
  out = []
  for cls in _listdir(directory):
    path = os.path.join(directory, cls)
    if not os.path.isdir(path):
      skipped.append(('outside_class_folder' if _is_image(cls) else
                      'not_an_image', path))
      continue
    for file in _visible_files(path):
      if _is_image(file):
        out.append((cls, file))
      else:
        skipped.append(('not_an_image', file))
  return out


def _visible_files(root):
  """Every file under root, sorted, leaving out hidden files and folders."""
  for directory, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      if not name.startswith('.'):
        yield os.path.join(directory, name)


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


def check(source: Source, report: Report) -> Dict[str, List[Example]]:
  """Opens every image and applies the rules of the module docstring."""
  for name in source.unused_categories:
    report.add('unused_category', name)
  report.totals = collections.Counter()
  for path, num_boxes in source.orphan_labels:
    report.add('label_without_image', path)
    report.totals['boxes_read'] += num_boxes
    report.totals['boxes_dropped'] += num_boxes
  for kind, path in source.skipped_files:
    report.add(kind, path)
    if kind == 'outside_class_folder':
      report.totals['images_read'] += 1
      report.totals['images_skipped'] += 1
  out, seen = {}, {}
  for split, records in source.splits.items():
    examples = []
    for record in records:
      report.totals['images_read'] += 1
      report.totals['boxes_read'] += len(record.boxes)
      if not os.path.isfile(record.path):
        report.add('missing_image', record.path)
        report.totals['images_skipped'] += 1
        report.totals['boxes_dropped'] += len(record.boxes)
        continue
      try:
        encoded, height, width, rotated = _open_image(record.path)
      except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        report.add('unreadable_image', record.path)
        report.totals['images_skipped'] += 1
        report.totals['boxes_dropped'] += len(record.boxes)
        continue
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
      boxes, labels, crowd = [], [], []
      for box in record.boxes:
        x0, y0, x1, y1 = box.xyxy
        if source.kind == 'yolo':
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
      report.totals['images_kept'] += 1
      report.totals['boxes_kept'] += len(boxes)
      examples.append(Example(
          split=split, image_id=record.image_id,
          filename=os.path.relpath(record.path, source.root), encoded=encoded,
          height=height, width=width,
          boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
          labels=np.asarray(labels, np.int64), crowd=np.asarray(crowd, bool),
          sha1=sha1, label=record.label))
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


def statistics(source: Source, examples: Dict[str, List[Example]]) -> dict:
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
        'box_size_quantiles': (dict(zip(map(str, q), np.quantile(np.sqrt(w * h), q).round(2).tolist()))
                               if len(all_boxes) else {}),
        'aspect_ratio_quantiles': (dict(zip(map(str, q), np.quantile(w / h, q).round(3).tolist()))
                                   if len(all_boxes) else {}),
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


def plot(examples: Dict[str, List[Example]], directory: str,
         class_names=None) -> List[str]:
  """box_sizes.png and aspect_ratios.png: histograms per split; with
  `class_names` (classification) images_per_class.png instead."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  if class_names is not None:
    return [_plot_class_counts(plt, examples, class_names, directory)]
  written = []
  for name, title, fn in (
      ('box_sizes.png', 'box size: sqrt(width x height), pixels',
       lambda b: np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))),
      ('aspect_ratios.png', 'aspect ratio: width / height (log scale)',
       lambda b: (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1]))):
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
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
    plt.close(fig)
    written.append(path)
  return written


def _plot_class_counts(plt, examples, class_names, directory):
  k = len(class_names)
  fig, ax = plt.subplots(figsize=(min(4 + 0.3 * k, 30), 4), dpi=100)
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
  plt.close(fig)
  return path


def fingerprint(kind: str, root: str, version: str) -> str:
  """A hash of the converter version and every file's path, size and mtime."""
  h = hashlib.sha256(f'{version}\n{kind}\n{root}\n'.encode())
  for path in _visible_files(root):
    st = os.stat(path)
    h.update(f'{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


def safe_name(root: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(root.rstrip('/')) or 'root')
