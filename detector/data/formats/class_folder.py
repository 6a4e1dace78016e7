"""`folder:DIR`: image classification, one folder per class.

  DIR/<split>/<class>/*.jpg (split folders train, valid/val/validation,
  test), or without split folders DIR/<class>/*.jpg, split at random into
  train/validation/test by `split_fractions`: each file's split is a hash of
  its path inside DIR, so it never changes and adding images moves no other
  image.

Classes: the sorted union of the class folder names; category ids are the
labels 0..K-1. Images anywhere below a class folder belong to it; hidden
files and folders are ignored; other files, and images outside any class
folder, are skipped and counted. Records carry the image's class in `label`
and no boxes.
"""

import hashlib
import os
from typing import Dict, Optional, Tuple

from detector import errors
from detector.data import formats


def read(root: str, split_fractions=formats.DEFAULT_SPLIT_FRACTIONS) -> formats.Source:
  """folder:DIR -> a Source whose records carry an image-level `label`."""
  fractions = check_split_fractions(split_fractions)
  split_dirs = split_folders(root)
  skipped = []
  if split_dirs:
    layout = {}  # split -> [(class, path)]
    for name in _listdir(root):
      path = os.path.join(root, name)
      if name not in split_dirs:  # A file: split_folders refused other folders.
        skipped.append(('outside_class_folder' if formats.is_image(name) else
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
    raise formats.DataError(
        f'folder:{root}: no images in class folders; expected '
        f'{root}/<class>/<image> or {root}/<split>/<class>/<image> with '
        f'splits train, valid (or val, validation) and test, and images '
        f'{"/".join(formats.IMAGE_EXTENSIONS)}')
  index = {n: i for i, n in enumerate(names)}
  splits, next_id = {}, 1
  for split in sorted(layout):
    records = []
    for cls, path in sorted(layout[split], key=lambda cp: cp[1]):
      records.append(formats.Record(path, next_id, [], label=index[cls]))
      next_id += 1
    splits[split] = records
  return formats.Source('folder', root, names, list(range(len(names))), splits,
                        skipped_files=skipped)


def check_split_fractions(fractions) -> Tuple[float, float, float]:
  """`config.folder_split` as three floats, or a ConfigError."""
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


def split_folders(root: str) -> Dict[str, str]:
  """{folder name: split} of a `folder:` root with split folders, {} for a
  root of class folders; a DataError when it has both kinds of folder."""
  dirs = [n for n in _listdir(root) if os.path.isdir(os.path.join(root, n))]
  splits = {n: formats.split_name(n) for n in dirs if formats.split_name(n)}
  others = [n for n in dirs if n not in splits]
  if splits and others:
    raise formats.DataError(
        f'folder:{root} holds split folders {sorted(splits)} and other folders '
        f'{others[:10]}: use either {root}/<split>/<class>/<image> or '
        f'{root}/<class>/<image> (a class may not be named like a split)')
  return splits


def _listdir(path):
  return sorted(n for n in os.listdir(path) if not n.startswith('.'))


def _class_files(directory, skipped):
  """[(class, image path)] of directory/<class>/*; the rest into `skipped`."""
  out = []
  for cls in _listdir(directory):
    path = os.path.join(directory, cls)
    if not os.path.isdir(path):
      skipped.append(('outside_class_folder' if formats.is_image(cls) else
                      'not_an_image', path))
      continue
    for file in formats.visible_files(path):
      if formats.is_image(file):
        out.append((cls, file))
      else:
        skipped.append(('not_an_image', file))
  return out
