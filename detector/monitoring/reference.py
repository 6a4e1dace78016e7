"""The reference a deployed model is watched against, written beside it.

`write_for_model(PATH)` runs the model at PATH through `detector.load` on
the validation split of its training data (or on given images) and writes
`path_for(PATH)`: `WORKDIR/monitoring.json` for a training workdir,
`ARTEFACT.monitoring.json` beside an exported artefact. The file holds:

  version, task, model {format, step, source}, score_threshold, images;
  signals   {name: {'bins': `signals.binning`, 'counts': [...]}};
  canary    {'images': [{'name', 'png'}] (base64 PNG),
             'outputs': [`canary.record`, ...]}.
"""

import base64
import io
import json
import logging
import os
from typing import Iterable, Optional, Tuple

import numpy as np

from detector import errors
from detector.monitoring import canary
from detector.monitoring import signals

VERSION = 1
FILE_NAME = 'monitoring.json'
SUFFIX = '.monitoring.json'
CANARY_IMAGES = 4
DEFAULT_SCORE_THRESHOLD = 0.3
_CHUNK = 32


def path_for(model_path: str) -> str:
  """Where the reference of the model at `model_path` lives."""
  model_path = model_path.rstrip('/')
  if (os.path.isdir(model_path)
      and not os.path.isfile(os.path.join(model_path, 'saved_model.pb'))):
    return os.path.join(model_path, FILE_NAME)
  return model_path + SUFFIX


def png(image: np.ndarray) -> str:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return base64.b64encode(buffer.getvalue()).decode('ascii')


def unpng(text: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(base64.b64decode(text))) as image:
    return np.asarray(image.convert('RGB'), np.uint8)


def build(predictor, named_images: Iterable[Tuple[str, np.ndarray]],
          score_threshold: float, source: str = '',
          canary_images: int = CANARY_IMAGES) -> dict:
  """The reference of `predictor` (`detector.load`'s) on (name, uint8
  image) pairs; the first `canary_images` become the canary."""
  info = predictor.info
  names = signals.names(info.task)
  values = {name: [] for name in names}
  canary_set, outputs, count = [], [], 0
  chunk = []

  def flush():
    for (name, image), prediction in zip(
        chunk, predictor.predict_images(chunk)):
      for key, vals in signals.measure(prediction, image,
                                       score_threshold).items():
        values[key].extend(vals)
      if len(canary_set) < canary_images:
        canary_set.append({'name': name, 'png': png(image)})
        outputs.append(canary.record(prediction))
    chunk.clear()

  for item in named_images:
    chunk.append(item)
    count += 1
    if len(chunk) == _CHUNK:
      flush()
  flush()
  if not count:
    raise errors.ConfigError(f'{source or info.source}: no images to make the '
                             'monitoring reference of')
  reference_signals = {}
  for name in names:
    bins = signals.binning(name, values[name], len(info.class_names))
    reference_signals[name] = {
        'bins': bins,
        'counts': signals.histogram(bins, values[name]).tolist()}
  return {'version': VERSION, 'task': info.task,
          'model': {'format': info.format, 'step': info.step,
                    'source': info.source},
          'score_threshold': float(score_threshold), 'images': count,
          'source': source, 'signals': reference_signals,
          'canary': {'images': canary_set, 'outputs': outputs}}


def write(path: str, reference: dict):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(reference, f)
  os.replace(tmp, path)


def read(path: str) -> dict:
  """The reference in `path`.

  Raises:
    errors.ConfigError: unreadable, or not a reference of this version.
  """
  try:
    with open(path) as f:
      reference = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'{path}: cannot read the monitoring reference '
                             f'({e})') from None
  if not isinstance(reference, dict) or reference.get('version') != VERSION:
    raise errors.ConfigError(
        f'{path}: not a monitoring reference of version {VERSION}; write it '
        'again with python -m detector.monitoring --model=MODEL')
  for key in ('task', 'score_threshold', 'signals', 'canary'):
    if key not in reference:
      raise errors.ConfigError(f'{path}: the monitoring reference has no '
                               f'{key!r}')
  return reference


def write_for_model(model_path: str, images_dir: str = '',
                    split: Optional[str] = None,
                    max_images: int = 1000) -> str:
  """Writes the reference of the model at `model_path` (see the module
  docstring) from `images_dir` (any images, recursively) or else from
  `split` (default: the run's `eval_split`) of its training data; returns
  the file written.

  Raises:
    errors.ConfigError: no images (a weights file without `images_dir`).
  """
  # pylint: disable=g-import-not-at-top
  import detector
  predictor = detector.load(model_path)
  info = predictor.info
  config = info.config
  if images_dir:
    from detector.predict import images as images_lib
    paths = [p for kind, p in images_lib.expand([images_dir])
             if kind == 'image'][:max_images]
    named = ((p, images_lib.read(p)) for p in paths)
    source = f'{len(paths)} images of {images_dir}'
  else:
    if info.step is None:
      raise errors.ConfigError(f'{model_path}: a weights file has no training '
                               'data; pass --images=DIR')
    import ml_collections
    from detector.data import loading
    split = split or config.get('eval_split') or 'validation'
    named = loading.split_images(ml_collections.ConfigDict(config), split,
                                 max_images)
    source = f'split {split} of {config.get("dataset")}'
  threshold = float(config.get('prf_score_threshold', DEFAULT_SCORE_THRESHOLD))
  reference = build(predictor, named, threshold, source)
  path = path_for(model_path)
  write(path, reference)
  logging.info('Wrote the monitoring reference %s (%d images of %s).', path,
               reference['images'], source)
  return path
