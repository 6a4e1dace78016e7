"""`coco_json:DIR`: COCO JSON annotation files, one per split folder.

  DIR/<split>/{_annotations.coco.json | annotations.json}, the images beside
  it or in DIR/<split>/images/ (`file_name` relative to either).

Labels are the categories in ascending id order; detections are written back
with the file's own ids. A category no box uses whose name is another
category's supercategory (Roboflow's placeholder) is left out, and reported.
Boxes are COCO's `[x, y, width, height]` in pixels, which become pixel-edge
`[x, y, x + width, y + height]`; `iscrowd` boxes become crowd boxes.
"""

import json
import os
from typing import Dict, List, Tuple

import numpy as np

from detector.data import formats

ANNOTATION_FILES = ('_annotations.coco.json', 'annotations.json')


def read(root: str, split_fractions=None) -> formats.Source:
  """The COCO folder `root`; a DataError names the file and field at fault."""
  del split_fractions  # The folder has its own splits.
  split_files = _annotation_files(root)
  data = {split: _load_json(path) for split, path in split_files.items()}
  categories, unused = _categories(data, split_files)
  ids = sorted(categories)
  label_of = {cid: i for i, cid in enumerate(ids)}
  splits = {split: _records(split_files[split], d, label_of, ids)
            for split, d in data.items()}
  return formats.Source('coco_json', root, [categories[c][0] for c in ids], ids,
                        splits, unused_categories=unused)


def _annotation_files(root) -> Dict[str, str]:
  """{split: the annotation file of its folder}."""
  split_files = {}
  for folder in sorted(os.listdir(root)):
    split = formats.split_name(folder)
    directory = os.path.join(root, folder)
    if split is None or not os.path.isdir(directory):
      continue
    found = [n for n in ANNOTATION_FILES
             if os.path.isfile(os.path.join(directory, n))]
    if not found:
      raise formats.DataError(
          f'{directory}: no COCO annotation file (expected one of '
          f'{", ".join(ANNOTATION_FILES)})')
    if split in split_files:
      raise formats.DataError(
          f'{root}: two folders for split {split!r} '
          f'({os.path.dirname(split_files[split])} and {directory})')
    split_files[split] = os.path.join(directory, found[0])
  if not split_files:
    raise formats.DataError(
        f'{root}: no split folders (expected train/, valid/ or validation/, '
        'test/, each with a COCO annotation file)')
  return split_files


def _load_json(path):
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise formats.DataError(f'{path}: not valid JSON ({e})') from None
  except (OSError, UnicodeDecodeError) as e:
    raise formats.DataError(f'{path}: cannot read ({e})') from None


def _field(obj, key, where, types):
  """obj[key], checked to be of `types` (never a bool), or a DataError."""
  if not isinstance(obj, dict) or key not in obj:
    raise formats.DataError(f'{where}: missing field {key!r}')
  value = obj[key]
  if not isinstance(value, types) or isinstance(value, bool):
    raise formats.DataError(
        f'{where}: field {key!r} is {value!r}, expected '
        f'{" or ".join(t.__name__ for t in np.atleast_1d(types))}')
  return value


def _categories(data, split_files) -> Tuple[Dict[int, Tuple[str, str]], List[str]]:
  """({id: (name, supercategory)} over every split, [placeholders left out])."""
  categories = {}
  for split, d in data.items():
    where = split_files[split]
    if not isinstance(d, dict):
      raise formats.DataError(f'{where}: expected a JSON object with images, '
                              'annotations and categories')
    for i, c in enumerate(d.get('categories') or []):
      cid = _field(c, 'id', f'{where}: categories[{i}]', int)
      name = str(_field(c, 'name', f'{where}: categories[{i}]', str))
      if categories.get(cid, (name,))[0] != name:
        raise formats.DataError(
            f'{where}: category id {cid} is {name!r} here but '
            f'{categories[cid][0]!r} in another split')
      categories[cid] = (name, c.get('supercategory'))
  used = set()
  for split, d in data.items():
    for i, a in enumerate(d.get('annotations') or []):
      used.add(_field(a, 'category_id', f'{split_files[split]}: annotations[{i}]', int))
  if not categories:
    raise formats.DataError(f'{", ".join(split_files.values())}: no "categories"; '
                            'a COCO file must name its classes')
  unused = []
  supercategories = {sc for _, sc in categories.values() if sc}
  for cid, (name, _) in list(categories.items()):
    if cid not in used and name in supercategories and len(categories) > 1:
      del categories[cid]
      unused.append(f'category {cid} {name!r}')
  return categories, unused


def _find_image(directory: str, name: str) -> str:
  """The image `name` beside the annotations or in images/ (missing: the first)."""
  candidates = [os.path.join(directory, name),
                os.path.join(directory, 'images', name)]
  for path in candidates:
    if os.path.isfile(path):
      return path
  return candidates[0]


def _records(path, d, label_of, ids) -> List[formats.Record]:
  """The images of one annotation file `path` (its JSON `d`) with their boxes."""
  directory = os.path.dirname(path)
  images = d.get('images')
  if not isinstance(images, list):
    raise formats.DataError(f'{path}: missing "images" list')
  records, by_id = [], {}
  for i, im in enumerate(images):
    where = f'{path}: images[{i}]'
    image_id = _field(im, 'id', where, int)
    name = _field(im, 'file_name', where, str)
    if image_id in by_id:
      raise formats.DataError(f'{where}: image id {image_id} appears twice')
    size = None
    if isinstance(im.get('height'), int) and isinstance(im.get('width'), int):
      size = (im['height'], im['width'])
    by_id[image_id] = formats.Record(
        path=_find_image(directory, name), image_id=image_id, boxes=[],
        size=size, annotation_file=path)
    records.append(by_id[image_id])
  for i, a in enumerate(d.get('annotations') or []):
    where = f'{path}: annotations[{i}]'
    image_id = _field(a, 'image_id', where, int)
    cid = _field(a, 'category_id', where, int)
    if image_id not in by_id:
      raise formats.DataError(f'{where}: image_id {image_id} is not in "images"')
    if cid not in label_of:
      raise formats.DataError(f'{where}: category_id {cid} is not in '
                              f'"categories" (ids {ids})')
    bbox = _field(a, 'bbox', where, list)
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
      raise formats.DataError(f'{where}: bbox {bbox!r} is not [x, y, width, height]')
    x, y, w, h = (float(v) for v in bbox)
    by_id[image_id].boxes.append(formats.Box(
        (x, y, x + w, y + h), label_of[cid], bool(a.get('iscrowd', 0)),
        where=f'{os.path.basename(path)} annotation {a.get("id", i)}'))
  return records
