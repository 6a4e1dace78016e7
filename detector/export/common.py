"""What the export formats share: metadata beside an artefact, and the
calibration images of a quantised export."""

import dataclasses
import os

import numpy as np

from detector import errors
from detector.predict import base

SIDECAR_SUFFIX = '.json'


def sidecar_path(path: str) -> str:
  return path + SIDECAR_SUFFIX


def with_format(info: base.ModelInfo, fmt: str) -> base.ModelInfo:
  return dataclasses.replace(info, format=fmt)


def write_sidecar(path: str, info: base.ModelInfo, fmt: str):
  """The artefact's ModelInfo as JSON beside it (`<path>.json`)."""
  with open(sidecar_path(path), 'w') as f:
    f.write(with_format(info, fmt).to_json())


def read_sidecar(path: str, fmt: str) -> base.ModelInfo:
  file = sidecar_path(path)
  if not os.path.isfile(file):
    raise errors.ConfigError(f'{path}: its metadata {file} is missing (it is '
                             'written beside the artefact by detector.export)')
  with open(file) as f:
    return base.ModelInfo.from_json(f.read(), source=path, format=fmt)


def calibration_images(info: base.ModelInfo, count: int, directory: str = ''
                       ) -> np.ndarray:
  """uint8 [N, H, W, 3] inputs for calibrating a quantised model: `count`
  images of `directory` (any images; required for a weights file) or else of
  the training split of the workdir's dataset, preprocessed as predictions
  are.

  Raises:
    errors.ConfigError: no images to calibrate with.
  """
  # pylint: disable=g-import-not-at-top
  from detector.predict import images as images_lib
  from detector.predict import preprocessing
  prepare = preprocessing.for_model(info)
  if directory:
    paths = [p for kind, p in images_lib.expand([directory]) if kind == 'image']
    arrays = (images_lib.read(p) for p in paths[:count])
  else:
    arrays = _training_images(info, count)
  batch = [prepare(image).image for image in arrays]
  if not batch:
    raise errors.ConfigError('no calibration images: pass --calibration_dir=DIR '
                             '(a folder of representative images)')
  return np.stack(batch)


def _training_images(info: base.ModelInfo, count: int):
  """The first `count` images of the workdir's training split, decoded."""
  # pylint: disable=g-import-not-at-top
  import ml_collections
  from detector.data import loading
  if info.step is None:
    raise errors.ConfigError(f'{info.source} is a weights file: pass '
                             '--calibration_dir=DIR for the quantisation')
  config = ml_collections.ConfigDict(info.config)
  for _, image in loading.split_images(config, config.train_split, count):
    yield image
