"""Dataset specs -> TFDS builders: TFDS names, and folders converted once.

`config.dataset` is either a TFDS dataset name (`shapes`, `shapes/tiny`,
`coco/2017`, `voc/2007`, `imagenette`, ...) or a folder spec, `coco_json:DIR`,
`voc:DIR`, `yolo:DIR` (detection) or `folder:DIR` (classification; layouts
in `detector.data.formats`). A folder is read, checked
(`detector.data.quality`) and written once as a TFDS dataset under

  DATA_DIR/detector_folders/<kind>_<folder name>_<fingerprint>/

(DATA_DIR: `config.data_dir`, else $TFDS_DATA_DIR, else
~/tensorflow_datasets), with `report.json`, `box_sizes.png` and
`aspect_ratios.png` beside it. The fingerprint covers every file's path,
size and modification time, so an edited folder is converted again (and the
stale conversion removed); an unchanged one is read from the cache. Training
then reads the same fast format whatever the source.

Every detection builder has the features of TFDS's `coco/2017` that the
pipeline reads (`image`, `image/id`, `objects/{bbox, label, is_crowd}`); a
classification folder has `image`, `label`, `image/id` and `image/filename`,
as TFDS's classification datasets have `image` and `label`. `category_ids(builder)`
gives the dataset's own id of each contiguous label, written back into
`detections_*.json` and `groundtruth_*.json`: a folder's own ids, COCO's 80
ids (1-90 with gaps) for `coco/*`, else label + 1.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import List

from absl import logging
from etils import epath
import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from detector import errors
from detector.data import formats
from detector.data import quality
from detector.data.formats import class_folder

CONVERTER_VERSION = '1'
# COCO's category ids of TFDS coco/*'s 80 labels (TFDS keeps COCO's order).
COCO_CATEGORY_IDS = (list(range(1, 12)) + list(range(13, 26)) + [27, 28]
                     + list(range(31, 45)) + list(range(46, 66)) + [67, 70]
                     + list(range(72, 83)) + list(range(84, 91)))
CATEGORIES_FILE = 'detector_categories.json'


class FolderDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The checked examples of a folder dataset, written in TFDS's format."""

  name = 'detector_folder'
  VERSION = tfds.core.Version('1.0.0')
  # As in shapes/__init__.py: TFDS cannot derive code_path outside its package.
  code_path = epath.Path(__file__)

  def __init__(self, *, class_names, examples, description, **kwargs):
    self._class_names = list(class_names)
    self._examples = examples
    self._description = description
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=self._description,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'image/id': tf.int64,
            'image/filename': tfds.features.Text(),
            **self._annotation_features(),
        }),
        supervised_keys=self._supervised_keys,
    )

  _supervised_keys = None

  def _annotation_features(self):
    return {'objects': tfds.features.Sequence({
        'bbox': tfds.features.BBoxFeature(),
        'label': tfds.features.ClassLabel(names=self._class_names),
        'is_crowd': tf.bool,
        'area': tf.float32,
    })}

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._examples}

  def _generate_examples(self, split):
    for ex in self._examples[split]:
      h, w = ex.height, ex.width
      boxes = ex.boxes
      bbox = [tfds.features.BBox(ymin=b[1] / h, xmin=b[0] / w, ymax=b[3] / h,
                                 xmax=b[2] / w) for b in boxes]
      yield ex.image_id, {
          'image': ex.encoded,
          'image/id': ex.image_id,
          'image/filename': ex.filename,
          'objects': {
              'bbox': bbox,
              'label': ex.labels,
              'is_crowd': ex.crowd,
              'area': ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                       ).astype('float32'),
          },
      }


class ClassFolderDataset(FolderDataset, skip_registration=True):
  """The checked images of a `folder:` classification dataset."""

  name = 'detector_class_folder'
  _supervised_keys = ('image', 'label')

  def _annotation_features(self):
    return {'label': tfds.features.ClassLabel(names=self._class_names)}

  def _generate_examples(self, split):
    for ex in self._examples[split]:
      yield ex.image_id, {'image': ex.encoded, 'image/id': ex.image_id,
                          'image/filename': ex.filename, 'label': ex.label}


def _builder_class(kind):
  return ClassFolderDataset if kind == 'folder' else FolderDataset


def data_dir(config_data_dir=None) -> str:
  return os.path.expanduser(config_data_dir or os.environ.get('TFDS_DATA_DIR')
                            or '~/tensorflow_datasets')


def get_builder(spec: str, config_data_dir=None, verbose=True,
                split_fractions=formats.DEFAULT_SPLIT_FRACTIONS):
  """The prepared-or-preparable TFDS builder of a dataset spec.

  `split_fractions` (train, validation, test) split a `folder:` without
  split folders.
  """
  parsed = formats.parse_spec(spec)
  if parsed is None:
    from detector.data import shapes  # pylint: disable=g-import-not-at-top,unused-import
    try:
      return tfds.builder(spec, data_dir=config_data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise errors.ConfigError(
          f'config.dataset={spec!r} is neither a known TFDS dataset nor '
          f'a folder spec ({", ".join(k + ":DIR" for k in formats.KINDS)}): '
          f'{e}') from None
  kind, root = parsed
  directory = None
  if jax.process_index() == 0:
    directory, _ = convert(kind, root, data_dir(config_data_dir), verbose=verbose,
                           split_fractions=split_fractions)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('folder dataset converted')
    directory = _cache_path(kind, root, data_dir(config_data_dir),
                            split_fractions)
  return tfds.builder_from_directory(_version_dir(directory, kind))


def _cache_path(kind, root, base, split_fractions=formats.DEFAULT_SPLIT_FRACTIONS):
  version = CONVERTER_VERSION
  if kind == 'folder':
    fractions = class_folder.check_split_fractions(split_fractions)
    if not class_folder.split_folders(root):  # The random split is content.
      version += f' {fractions}'
  fp = fingerprint(kind, root, version)
  return os.path.join(base, 'detector_folders',
                      f'{kind}_{safe_name(root)}_{fp[:16]}')


def fingerprint(kind: str, root: str, version: str) -> str:
  """A hash of the converter version and every file's path, size and mtime."""
  h = hashlib.sha256(f'{version}\n{kind}\n{root}\n'.encode())
  for path in formats.visible_files(root):
    st = os.stat(path)
    h.update(f'{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


def safe_name(root: str) -> str:
  """The folder's name, as a cache folder name may hold it."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', os.path.basename(root.rstrip('/')) or 'root')


def _version_dir(directory, kind):
  cls = _builder_class(kind)
  return os.path.join(directory, cls.name, str(cls.VERSION))


def convert(kind: str, root: str, base_dir: str, verbose=True, force=False,
            split_fractions=formats.DEFAULT_SPLIT_FRACTIONS):
  """Converts the folder unless an up-to-date conversion exists.

  Returns (directory, report dict). Raises formats.DataError on a folder or
  file that cannot be read as the spec says.
  """
  directory = _cache_path(kind, root, base_dir, split_fractions)
  report_path = os.path.join(directory, 'report.json')
  if os.path.isfile(report_path) and not force:
    with open(report_path) as f:
      report = json.load(f)
    if verbose:
      logging.info('Dataset %s:%s: using the conversion in %s', kind, root, directory)
    return directory, report
  source = formats.read(kind, root, split_fractions)
  problems = quality.Report()
  examples = quality.check(source, problems)
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.converting_', dir=parent)
  try:
    builder = _builder_class(kind)(
        class_names=source.class_names, examples=examples, data_dir=tmp,
        description=f'{kind}:{root} converted by detector.data.datasets')
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    report = quality.build_report(f'{kind}:{root}', source, examples, problems)
    report['plots'] = [os.path.join(directory, os.path.basename(p)) for p in
                       quality.plot(examples, tmp, source.class_names
                                    if kind == 'folder' else None)]
    report['dataset_dir'] = _version_dir(directory, kind)
    if kind == 'folder' and not class_folder.split_folders(root):
      report['split_fractions'] = list(
          class_folder.check_split_fractions(split_fractions))
    report['report'] = report_path
    with open(os.path.join(_version_dir(tmp, kind), CATEGORIES_FILE), 'w') as f:
      json.dump({'names': source.class_names,
                 'category_ids': source.category_ids}, f)
    with open(os.path.join(tmp, 'report.json'), 'w') as f:
      json.dump(report, f, indent=1)
    # Stale conversions of the same folder (and random split) go; the new
    # one appears whole. Another split of the same folder is another dataset.
    prefix = f'{kind}_{safe_name(root)}_'
    for name in os.listdir(parent):
      old = os.path.join(parent, name)
      if name.startswith(prefix) and _source_of(old) == (
          root, report.get('split_fractions')):
        shutil.rmtree(old, ignore_errors=True)
    # An interrupted earlier conversion of the same content has no report.
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if verbose:
    print(quality.format_report(report), flush=True)
  return directory, report


def _source_of(directory):
  """(source folder, random split fractions or None) of a conversion."""
  try:
    with open(os.path.join(directory, 'report.json')) as f:
      report = json.load(f)
    return report['source'], report.get('split_fractions')
  except (OSError, ValueError, KeyError):
    return None


def category_ids(builder, num_classes: int) -> List[int]:
  """The dataset's own category id of each label (see the module docstring)."""
  path = os.path.join(str(builder.data_dir), CATEGORIES_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      return list(json.load(f)['category_ids'])
  if builder.info.name == 'coco' and num_classes == len(COCO_CATEGORY_IDS):
    return list(COCO_CATEGORY_IDS)
  return list(range(1, num_classes + 1))
