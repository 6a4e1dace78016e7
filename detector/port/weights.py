"""The project's weights file: a NumPy `.npz` that loads without PyTorch or Keras.

Layout: one array per variable, keyed `<collection>/<module path>/<name>`
(e.g. `params/stage2_block0/conv1/conv/kernel`, `batch_stats/stem/norm/mean`),
in the Flax layout (conv kernels HWIO, dense kernels [in, out]), float32; and
`__metadata__`, a JSON string with
  arch, source, origin: what was converted (`origin`: the file's base name or
    the library call that downloaded it);
  backbone, backbone_kwargs, num_classes, norm_epsilon: the model the
    variables belong to, `detector.models.BACKBONES[backbone](**kwargs)`;
  preprocessing: what the weights were trained with: `resize` (shorter side),
    `image_size` (centre crop), `interpolation`, RGB `mean` and `std` in 0-255
    pixel units;
  labels: the names of the `num_classes` classes.
"""

import json
from typing import Any, Dict, Tuple

from flax import traverse_util
import numpy as np

from detector import errors

METADATA_KEY = '__metadata__'


def flatten(variables: Dict[str, Any]) -> Dict[str, Any]:
  """{'params': {'stem': {...}}} -> {'params/stem/...': leaf}."""
  return traverse_util.flatten_dict(dict(variables), sep='/')


def unflatten(flat: Dict[str, Any]) -> Dict[str, Any]:
  return traverse_util.unflatten_dict(flat, sep='/')


def save(path: str, variables: Dict[str, Any], metadata: Dict[str, Any]):
  """Writes `variables` ({'params': ..., 'batch_stats': ...}) and metadata."""
  flat = {k: np.asarray(v, np.float32) for k, v in flatten(variables).items()}
  flat[METADATA_KEY] = np.asarray(json.dumps(metadata, sort_keys=True))
  with open(path, 'wb') as f:
    np.savez(f, **flat)


def json_lists(value):
  """Tuples -> lists, recursively: a value as the JSON metadata reads back."""
  if isinstance(value, dict):
    return {k: json_lists(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_lists(v) for v in value]
  return value


def config_tuples(value):
  """Lists -> tuples, recursively: a metadata value as a config holds it."""
  if isinstance(value, dict):
    return {k: config_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(config_tuples(v) for v in value)
  return value


def load_metadata(path: str) -> Dict[str, Any]:
  """Only the metadata of a weights file (the arrays are not read)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      if METADATA_KEY not in data.files:
        raise errors.ConfigError(f'{path}: no {METADATA_KEY} entry; not a file '
                                 'written by `python -m detector.port`')
      return json.loads(str(data[METADATA_KEY]))
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'{path}: not a detector weights file ({e})') from None


def load(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Returns (variables, metadata) from a file written by `save`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      flat = {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise errors.ConfigError(f'{path}: not a detector weights file ({e})') from None
  if METADATA_KEY not in flat:
    raise errors.ConfigError(f'{path}: no {METADATA_KEY} entry; not a file '
                             'written by `python -m detector.port`')
  metadata = json.loads(str(flat.pop(METADATA_KEY)))
  return unflatten(flat), metadata
