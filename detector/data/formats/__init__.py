"""Dataset folder formats: a folder as labelling tools export it -> a `Source`.

A spec `KIND:DIR` names a folder and its format; each format is one module
here, whose docstring describes its layout, with a reader

  read(root: str, split_fractions) -> Source

  | kind       | module          | task                 |
  |------------|-----------------|----------------------|
  | coco_json  | coco_json.py    | detection            |
  | voc        | voc.py          | detection            |
  | yolo       | yolo.py         | detection            |
  | folder     | class_folder.py | image classification |

A `Source` holds the class names, the dataset's own category ids, and per
split the images (`Record`) with their boxes (`Box`) as annotated: pixels of
the image, `[x0, y0, x1, y1]` with pixel-edge coordinates (pixel column i spans
[i, i + 1)); YOLO's stay normalised to the image until its size is known.
Readers open no image: `detector.data.quality.check` does, and applies the
data-quality rules. Split folder names `train`, `valid`/`val`/`validation`,
`test` become TFDS splits `train`, `validation`, `test`.

A new format is a new module here with `read` and one entry in `READERS`.
"""

import dataclasses
import importlib
import os
from typing import Dict, Iterator, List, Optional, Tuple

from detector import errors

# kind -> the module of this package that reads it.
READERS = {'coco_json': 'coco_json', 'voc': 'voc', 'yolo': 'yolo',
           'folder': 'class_folder'}
KINDS = tuple(READERS)
SPLIT_ALIASES = {'train': 'train', 'valid': 'validation', 'val': 'validation',
                 'validation': 'validation', 'test': 'test',
                 'trainval': 'trainval'}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')
# folder: without split folders, the (train, validation, test) fractions.
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


class DataError(errors.ConfigError):
  """A dataset folder or file that cannot be read as its spec says."""


@dataclasses.dataclass
class Box:
  xyxy: Tuple[float, float, float, float]   # Pixels, pixel-edge (YOLO: 0-1).
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
  """The folder `root` read by the reader of `kind` (one of KINDS).

  `split_fractions` (train, validation, test) split a format whose folder has
  no split folders (`folder:`); the others take their splits from the folder.
  """
  reader = importlib.import_module(f'{__name__}.{READERS[kind]}')
  return reader.read(root, split_fractions)


def split_name(folder: str) -> Optional[str]:
  """The TFDS split a folder (or split list) name stands for, else None."""
  return SPLIT_ALIASES.get(folder.lower())


def is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def visible_files(root: str) -> Iterator[str]:
  """Every file under root, sorted, leaving out hidden files and folders."""
  for directory, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    for name in sorted(files):
      if not name.startswith('.'):
        yield os.path.join(directory, name)
