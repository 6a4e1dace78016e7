"""Which backend opens a path: a workdir, a weights file or an artefact."""

import importlib
import os
from typing import Optional

from detector import errors
from detector.predict import base

# File suffix -> the export module that loads it (`load(path) -> Backend`).
ARTEFACT_SUFFIXES = {
    '.tflite': 'detector.export.tflite',
    '.onnx': 'detector.export.onnx',
    '.stablehlo': 'detector.export.stablehlo',
}
SAVED_MODEL = 'detector.export.saved_model'


def open_backend(path: str, step: Optional[int] = None) -> base.Backend:
  """The backend of `path`; `step` picks a workdir's checkpoint."""
  from detector.predict import jax_backend  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, 'saved_model.pb')):
      return _artefact(SAVED_MODEL, path, step)
    return jax_backend.load_workdir(path, step)
  if path.endswith('.npz'):
    _no_step(path, step)
    return jax_backend.load_weights(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix in ARTEFACT_SUFFIXES:
    return _artefact(ARTEFACT_SUFFIXES[suffix], path, step)
  raise errors.ConfigError(
      f'{path}: not a model; expected a training workdir, a weights file '
      f'(.npz from detector.port), a SavedModel directory or a '
      f'{", ".join(sorted(ARTEFACT_SUFFIXES))} file (detector.export)')


def _artefact(module, path, step):
  _no_step(path, step)
  return importlib.import_module(module).load(path)


def _no_step(path, step):
  if step is not None:
    raise errors.ConfigError(f'{path}: --step picks a workdir\'s checkpoint; '
                             'this file holds one set of weights')
