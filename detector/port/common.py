"""Pieces shared by the source converters: reading files and checked mapping.

A source module (`detector/port/source_*.py`) provides
  ARCHS: {arch name: Spec} -- what it converts and into which model;
  read(path) -> {tensor name: np.ndarray}, the checkpoint as the source names it;
  download(arch) -> (tensors, origin), where the source library can fetch
    its own ImageNet weights (needs internet and that library, imported
    through `require`; tests never call it);
  target(name, arch) -> (collection, our path), None (skip), BAD, or a
    `Constant` (a tensor the model has no variable for but whose value the
    conversion relies on); `by_backbone` makes it from one function per
    backbone;
  layout(array, path, arch) -> the array in Flax layout (optional; default
    `torch_layout`); `path` is what `target` returned, `arch` lets a source
    treat one architecture's tensor specially (Keras' BGR ResNets).
`convert` below applies them with every check; `detector.port.port` writes
the result.
"""

import dataclasses
import functools
import importlib
import os
from typing import Any, Callable, Dict, Optional

import numpy as np

from detector import errors
from detector.port import torch_file

BAD = 'bad'

# ImageNet statistics in 0-255 units, as torchvision and timm use them.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class Spec:
  """What one converted architecture becomes.

  backbone: name in `detector.models.BACKBONES`; kwargs: its constructor
  arguments (without `num_classes`, `norm`, `dtype`); norm_epsilon: the
  BatchNorm epsilon the weights were trained with; preprocessing: `resize`
  (shorter side, pixels), `image_size` (centre crop), `interpolation`, `mean`
  and `std` (RGB, 0-255 units).
  """
  backbone: str
  kwargs: Dict[str, Any]
  norm_epsilon: float
  preprocessing: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Constant:
  """A tensor that fills no model variable but must hold `value`.

  For constants a conversion folds elsewhere (Keras EfficientNets'
  normalisation layer becomes the metadata's mean/std): `convert` checks the
  file holds `value` (relative tolerance 1e-5) and otherwise fails, naming the
  tensor and `why` the value is needed, instead of writing weights that
  compute something else.
  """
  value: tuple
  why: str


def preprocessing(image_size: int, resize: Optional[int] = None,
                  interpolation: str = 'bilinear', mean=IMAGENET_MEAN,
                  std=IMAGENET_STD) -> Dict[str, Any]:
  return dict(resize=int(resize or round(image_size / 0.875)),
              image_size=int(image_size), interpolation=interpolation,
              mean=[float(m) for m in mean], std=[float(s) for s in std])


def require(module: str, package: str, what: str):
  """Imports `module`, or raises a one-line ConfigError saying that `what`
  needs it and which package to `pip install`."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise errors.ConfigError(f'{what} needs the Python package {package}, '
                             f'which cannot be imported ({e}): pip install '
                             f'{package}') from None


def read_torch(path: str) -> Dict[str, np.ndarray]:
  """A PyTorch state dict (.pth/.pt/.bin, or .safetensors) as float32 arrays.

  Pickled files are read by `torch_file` (no torch needed; no code in the
  file runs). A checkpoint dict is unwrapped at its 'state_dict', 'model' or
  'state_dict_ema' entry; entries that are not tensors are left out.
  """
  if not os.path.exists(path):
    raise errors.ConfigError(f'--input={path}: no such file')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as e:  # pylint: disable=broad-except
      raise errors.ConfigError(f'--input={path}: not a safetensors file '
                               f'({type(e).__name__}: {str(e)[:200]})') from None
  obj = torch_file.load(path, name=f'--input={path}')
  for key in ('state_dict', 'model', 'state_dict_ema'):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise errors.ConfigError(f'--input={path}: holds a {type(obj).__name__}, '
                             'expected a state dict of tensors')
  return {k: v.astype(np.float32, copy=False) for k, v in obj.items()
          if isinstance(v, np.ndarray)}


def by_backbone(archs: Dict[str, Spec],
                **targets: Callable[[str, Spec], Any]) -> Callable[[str, str], Any]:
  """A source's `target(name, arch)`: `targets[backbone](name, spec)` for the
  backbone of `archs[arch]`."""

  def target(name: str, arch: str):
    spec = archs[arch]
    return targets[spec.backbone](name, spec)
  return target


_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def torch_tensor(path: str, kind: str, field: str):
  """A PyTorch module's tensor `field` (weight, bias, running_mean,
  running_var) -> (collection, our path), or BAD for a field the module does
  not have. `kind` says what the module becomes at our `path`: 'conv' (the
  conv of the ConvNormAct at `path`), 'norm' (its BatchNorm) or 'linear' (a
  Dense, or a conv without norm such as SE's: `path`/kernel and bias) or
  'batch_norm' (a BatchNorm module at `path` itself)."""
  if kind == 'conv':
    path, kind = f'{path}/conv', 'linear'
  if kind == 'norm':
    path, kind = f'{path}/norm', 'batch_norm'
  if kind == 'linear':
    names = {'weight': 'kernel', 'bias': 'bias'}
    return ('params', f'{path}/{names[field]}') if field in names else BAD
  if kind == 'batch_norm' and field in _BN:
    return _BN[field][0], f'{path}/{_BN[field][1]}'
  return BAD


def conv_or_norm(base: str, is_conv: bool, field: str):
  """`torch_tensor` of the conv (`is_conv`) or norm of the ConvNormAct at
  `base`."""
  return torch_tensor(base, 'conv' if is_conv else 'norm', field)


def torch_target(modules: Dict[str, tuple]):
  """Decorates a PyTorch backbone's `fn(name, spec)` into its target: names
  ending in `num_batches_tracked` (a BatchNorm counter that carries nothing)
  -> None; '<module>.<field>' of a module in `modules` ({PyTorch module: (our
  path, kind)}) -> `torch_tensor(path, kind, field)`; every other name ->
  `fn(name, spec)`."""

  def decorate(fn):
    @functools.wraps(fn)
    def target(name: str, spec: Optional[Spec] = None):
      if name.endswith('num_batches_tracked'):
        return None
      module, _, field = name.rpartition('.')
      if module in modules:
        return torch_tensor(*modules[module], field)
      return fn(name, spec)
    return target
  return decorate


def torch_layout(array: np.ndarray, path: str, arch: str) -> np.ndarray:
  """PyTorch -> Flax: conv [O, I, kh, kw] -> HWIO (depthwise [C, 1, kh, kw]
  -> [kh, kw, 1, C]); linear [out, in] -> [in, out]. The same for every
  architecture: `arch` is ignored."""
  del arch
  if path.endswith('kernel') and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if path.endswith('kernel') and array.ndim == 2:
    return array.T
  return array


def convert(tensors: Dict[str, np.ndarray],
            expected: Dict[str, Dict[str, tuple]], origin: str,
            target: Callable[[str], Any],
            layout: Callable[[np.ndarray, str, str], np.ndarray] = torch_layout,
            *, arch: str) -> Dict[str, Dict[str, np.ndarray]]:
  """Maps named tensors onto the model; `expected`: collection -> {path: shape}.

  `arch` is passed on to `layout`. Raises ConfigError naming every unknown
  tensor, every model variable left unfilled, every shape mismatch (which is
  what a wrong `--arch` gives) and every `Constant` the file contradicts.
  """
  out = {c: {} for c in expected}
  unknown, mismatched, twice, contradicted = [], [], [], []
  for name, value in tensors.items():
    where = target(name)
    if where is None:
      continue
    if isinstance(where, Constant):
      have = np.asarray(value, np.float32)
      want = np.asarray(where.value, np.float32)
      if have.shape != want.shape or not np.allclose(have, want, rtol=1e-5,
                                                      atol=0):
        contradicted.append(
            f'{name} = {np.round(have, 6).tolist()} but {where.why} needs '
            f'{np.round(np.asarray(where.value, np.float64), 6).tolist()}')
      continue
    if where == BAD or where[1] not in expected.get(where[0], {}):
      unknown.append(name)
      continue
    collection, path = where
    array = layout(np.asarray(value, np.float32), path, arch)
    want = tuple(expected[collection][path])
    if array.shape != want:
      mismatched.append(f'{name} {tuple(np.shape(value))} -> {path} needs {want}')
      continue
    if path in out[collection]:
      twice.append(f'{name} -> {path}')
    out[collection][path] = array
  missing = [f'{c}/{p}' for c, paths in expected.items() for p in paths
             if p not in out[c]]
  _raise_problems(origin, mismatched, unknown, missing, twice, contradicted)
  return out


def _raise_problems(origin, mismatched, unknown, missing, twice, contradicted):
  """Raises the ConfigError `convert` describes, if any list is non-empty."""
  problems = []
  if mismatched:
    problems.append('shape mismatches: ' + '; '.join(mismatched[:10]))
  if unknown:
    problems.append('tensors with no place in the model: ' + ', '.join(unknown[:10]))
  if missing:
    problems.append('model variables not in the file: ' + ', '.join(missing[:10]))
  if twice:
    problems.append('variables written twice: ' + ', '.join(twice[:10]))
  if contradicted:
    problems.append('values the conversion cannot carry: '
                    + '; '.join(contradicted[:10]))
  if problems:
    raise errors.ConfigError(
        f'{origin}: cannot convert ({len(mismatched)} mismatched, '
        f'{len(unknown)} unknown, {len(missing)} missing'
        + (f', {len(contradicted)} contradicted' if contradicted else '')
        + '): ' + ' | '.join(problems)
        + (' -- is --arch right for this file?'
           if mismatched or unknown or missing or twice else ''))
