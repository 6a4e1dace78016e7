"""Helpers shared by the port tests and by torch_reference.py (which runs torch
in its own process); nothing here imports torch or TensorFlow.

- `port(*args)` runs `python -m detector.port` (optionally with torch made
  unimportable); `convert` runs it and loads the weights file it wrote.
- `assert_follows_timm(arch, spec, cfg)`: a source_timm Spec records what
  timm's pretrained configuration says.
- `describe(obj, leaf)` is a JSON-able description of a loaded checkpoint
  (containers, values, and per tensor its dtype, shape and the SHA-256 of its
  bytes), so that what torch.load returns in one process and what
  detector.port.torch_file returns in another compare with `==`.
- `float32_digest(array)`: the SHA-256 of a float32 array's bytes, with each
  NaN replaced by the quiet NaN of its sign (numpy and torch convert float16
  and float8 NaNs to float32 NaNs with different payloads).
"""

import hashlib
import math
import subprocess
import sys
from typing import Any, Callable, Optional

import numpy as np

# Runs `python -m detector.port ARGS` with None in sys.modules['torch'], so
# that any `import torch` (also inside torchvision or timm) fails.
_WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; "
                  "runpy.run_module('detector.port', run_name='__main__', "
                  "alter_sys=True)")


def port(*args: str, without_torch: bool = False) -> subprocess.CompletedProcess:
  """`python -m detector.port ARGS` in a new process (its output captured)."""
  command = ['-c', _WITHOUT_TORCH] if without_torch else ['-m', 'detector.port']
  return subprocess.run([sys.executable, *command, *args], capture_output=True,
                        text=True, check=False)


def convert(source: str, arch: str, path, out):
  """Converts `path` through the command line; (variables, metadata)."""
  from detector.port import weights  # pylint: disable=g-import-not-at-top
  result = port(f'--source={source}', f'--arch={arch}', f'--input={path}',
                f'--output={out}')
  assert result.returncode == 0, result.stderr
  return weights.load(str(out))


def assert_follows_timm(arch: str, spec, cfg: dict):
  """`spec` (source_timm.ARCHS[arch]) records its default tag's eval settings
  as timm applies them (resize floor(size / crop_pct), centre crop) and the
  model's BatchNorm epsilon; `cfg` is what torch_reference.py's timm job
  wrote for `arch` into pretrained_cfg.json."""
  import pytest  # pylint: disable=g-import-not-at-top
  from detector.port import source_timm  # pylint: disable=g-import-not-at-top
  assert cfg['tag'] == source_timm._TAGS[arch], arch  # pylint: disable=protected-access
  assert cfg['crop_mode'] == 'center' and cfg['num_classes'] == 1000, arch
  size = cfg['input_size'][1]
  assert spec.preprocessing == dict(
      image_size=size, resize=math.floor(size / cfg['crop_pct']),
      interpolation=cfg['interpolation'],
      mean=pytest.approx([255 * m for m in cfg['mean']]),
      std=pytest.approx([255 * s for s in cfg['std']])), arch
  assert cfg['bn_epsilons'] == [spec.norm_epsilon], arch


def tensor_description(dtype: str, shape, data: np.ndarray) -> dict:
  """A tensor of `dtype` (torch's name without 'torch.'), `shape`, and its
  elements' bytes `data` (C order, native byte order)."""
  return {'tensor': dtype, 'shape': [int(n) for n in shape],
          'sha256': hashlib.sha256(data.tobytes()).hexdigest()}


def describe(obj: Any, leaf: Callable[[Any], Optional[dict]]) -> dict:
  """`obj` as nested JSON-able dicts; `leaf(obj)` describes the objects the
  loader makes its own way (tensors, dtypes, devices), None for the rest."""
  mine = leaf(obj)
  if mine is not None:
    return mine
  kind = type(obj).__name__
  if isinstance(obj, dict):
    out = {'type': kind, 'items': [[describe(k, leaf), describe(v, leaf)]
                                   for k, v in obj.items()]}
    if hasattr(obj, '_metadata'):
      out['_metadata'] = describe(obj._metadata, leaf)  # pylint: disable=protected-access
    return out
  if isinstance(obj, (list, tuple)):  # torch.Size is a tuple.
    return {'type': 'list' if isinstance(obj, list) else 'tuple',
            'items': [describe(v, leaf) for v in obj]}
  if isinstance(obj, set):
    return {'type': kind, 'items': sorted(repr(v) for v in obj)}
  if isinstance(obj, (bytes, bytearray)):
    return {'type': kind, 'hex': obj.hex()}
  if isinstance(obj, complex):
    return {'type': kind, 'value': [obj.real, obj.imag]}
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return {'type': kind, 'value': obj}
  return {'type': kind, 'repr': repr(obj)}


def numpy_leaf(obj: Any) -> Optional[dict]:
  """`describe`'s leaf for what detector.port.torch_file returns."""
  if isinstance(obj, np.ndarray):
    data = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
    return tensor_description(obj.dtype.name, obj.shape, data)
  if isinstance(obj, np.dtype):
    return {'type': 'dtype', 'value': obj.name}
  return None


def float32_digest(array: np.ndarray) -> dict:
  """dtype, shape and SHA-256 of a float32 array, NaNs made canonical."""
  array = np.array(array, copy=True, order='C')
  assert array.dtype == np.float32, array.dtype
  nan = np.isnan(array)
  array[nan] = np.copysign(np.float32('nan'), np.where(np.signbit(array[nan]),
                                                       -1, 1))
  return tensor_description('float32', array.shape, array.reshape(-1).view(np.uint8))

