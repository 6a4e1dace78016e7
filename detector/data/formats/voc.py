"""`voc:DIR`: Pascal VOC annotation XML files and split lists.

  DIR/Annotations/<stem>.xml, DIR/JPEGImages/ (the XML's <filename>, else
  <stem>.jpg), and the split lists DIR/ImageSets/Main/{train,val,trainval,
  test}.txt (one stem per line).

Classes: DIR/labels.txt (one per line) if present, else the 20 Pascal VOC
classes if every name is one of them, else the sorted names; category ids are
label + 1. VOC's 1-based inclusive pixel boxes become pixel-edge boxes
[xmin - 1, ymin - 1, xmax, ymax]; `difficult` objects become crowd (ignored)
boxes, as VOC's evaluation ignores them.
"""

import os
from typing import Dict, List
import xml.etree.ElementTree as ET

from detector.data import formats

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car',
               'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse',
               'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')


def read(root: str, split_fractions=None) -> formats.Source:
  """The VOC folder `root`; a DataError names the file and object at fault."""
  del split_fractions  # The split lists are the splits.
  annotations = os.path.join(root, 'Annotations')
  images = os.path.join(root, 'JPEGImages')
  lists = os.path.join(root, 'ImageSets', 'Main')
  for path in (annotations, images, lists):
    if not os.path.isdir(path):
      raise formats.DataError(
          f'{root}: no {os.path.relpath(path, root)}/ folder (a VOC folder has '
          'Annotations/, JPEGImages/ and ImageSets/Main/{train,val,test}.txt)')
  split_ids = _split_lists(lists)
  parsed = {}
  for stem in sorted({s for ids in split_ids.values() for s in ids}):
    parsed[stem] = _parse_annotation(os.path.join(annotations, stem + '.xml'),
                                     stem, images, lists)
  class_names = _class_names(root, parsed)
  label_of = {n: i for i, n in enumerate(class_names)}
  image_ids = {stem: i + 1 for i, stem in enumerate(sorted(parsed))}
  splits = {}
  for split, stems in split_ids.items():
    records = []
    for stem in stems:
      image_path, objects, hw, path = parsed[stem]
      boxes = [formats.Box((x0 - 1, y0 - 1, x1, y1), label_of[n], hard, where)
               for n, (x0, y0, x1, y1), hard, where in objects]
      records.append(formats.Record(image_path, image_ids[stem], boxes, hw, path))
    splits[split] = records
  return formats.Source('voc', root, class_names,
                        list(range(1, len(class_names) + 1)), splits)


def _split_lists(lists) -> Dict[str, List[str]]:
  """{split: [stem]} of the folder of split lists."""
  split_ids = {}
  for name in sorted(os.listdir(lists)):
    stem, ext = os.path.splitext(name)
    split = formats.split_name(stem)
    if ext == '.txt' and split:
      with open(os.path.join(lists, name), encoding='utf-8') as f:
        split_ids[split] = [line.split()[0] for line in f if line.strip()]
  if not split_ids:
    raise formats.DataError(f'{lists}: no split lists (expected train.txt, '
                            'val.txt, test.txt)')
  return split_ids


def _xml_text(node, tag, where):
  child = node.find(tag)
  if child is None or child.text is None:
    raise formats.DataError(f'{where}: missing <{tag}>')
  return child.text.strip()


def _xml_number(node, tag, where):
  text = _xml_text(node, tag, where)
  try:
    return float(text)
  except ValueError:
    raise formats.DataError(f'{where}: <{tag}> is {text!r}, not a number') from None


def _parse_annotation(path, stem, images, lists):
  """(image path, [(name, VOC box, difficult, where)], (height, width) or
  None, path) of the annotation file `path`."""
  try:
    tree = ET.parse(path)
  except FileNotFoundError:
    raise formats.DataError(f'{path}: no annotation file for {stem!r}, listed '
                            f'in {lists}') from None
  except ET.ParseError as e:
    raise formats.DataError(f'{path}: not valid XML ({e})') from None
  node = tree.getroot()
  objects = []
  for i, obj in enumerate(node.findall('object')):
    where = f'{path}: object {i}'
    name = _xml_text(obj, 'name', where)
    box = obj.find('bndbox')
    if box is None:
      raise formats.DataError(f'{where}: missing <bndbox>')
    coords = [_xml_number(box, t, where) for t in ('xmin', 'ymin', 'xmax', 'ymax')]
    difficult = obj.find('difficult')
    hard = difficult is not None and (difficult.text or '').strip() == '1'
    objects.append((name, coords, hard, f'{os.path.basename(path)} object {i}'))
  size = node.find('size')
  hw = None
  if size is not None:
    hw = (int(_xml_number(size, 'height', path)), int(_xml_number(size, 'width', path)))
  filename = node.findtext('filename') or stem + '.jpg'
  return os.path.join(images, filename.strip()), objects, hw, path


def _class_names(root, parsed) -> List[str]:
  """labels.txt, else VOC's 20 classes if they hold every name, else sorted."""
  names = {o[0] for _, objects, _, _ in parsed.values() for o in objects}
  labels_file = os.path.join(root, 'labels.txt')
  if os.path.isfile(labels_file):
    with open(labels_file, encoding='utf-8') as f:
      class_names = [line.strip() for line in f if line.strip()]
    unknown = sorted(names - set(class_names))
    if unknown:
      stem, obj = next((s, o) for s, (_, objs, _, _) in parsed.items()
                       for o in objs if o[0] == unknown[0])
      raise formats.DataError(f'{obj[3]} ({parsed[stem][3]}): class {unknown[0]!r} '
                              f'is not in {labels_file}')
    return class_names
  if names <= set(VOC_CLASSES):
    return list(VOC_CLASSES)
  return sorted(names)
