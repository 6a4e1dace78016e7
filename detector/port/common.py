"""Pieces shared by the source converters: reading files and checked mapping.

A source module (`detector/port/source_*.py`) provides
  ARCHS: {arch name: Spec} -- what it converts and into which model;
  read(path) -> {tensor name: np.ndarray}, the checkpoint as the source names it;
  download(arch) -> (tensors, origin), where the source library can fetch
    its own ImageNet weights (needs internet; tests never call it);
  target(name, arch) -> (collection, our path), None (skip) or BAD;
  layout(array, path) -> the array in Flax layout (optional; default
    `torch_layout`).
`convert` below applies them with every check; `detector.port.port` writes
the result.
"""

import dataclasses
import os
from typing import Any, Callable, Dict, Optional

import numpy as np

from detector import errors

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


def preprocessing(image_size: int, resize: Optional[int] = None,
                  interpolation: str = 'bilinear', mean=IMAGENET_MEAN,
                  std=IMAGENET_STD) -> Dict[str, Any]:
  return dict(resize=int(resize or round(image_size / 0.875)),
              image_size=int(image_size), interpolation=interpolation,
              mean=[float(m) for m in mean], std=[float(s) for s in std])


def read_torch(path: str) -> Dict[str, np.ndarray]:
  """A PyTorch state dict (.pth/.pt/.bin, or .safetensors) as numpy arrays.

  Pickled files load with `weights_only=True`: no code in the file runs.
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
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(
        f'--input={path}: not a PyTorch state dict loadable with '
        f'weights_only=True ({type(e).__name__}: {str(e)[:200]})') from None
  for key in ('state_dict', 'model', 'state_dict_ema'):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise errors.ConfigError(f'--input={path}: holds a {type(obj).__name__}, '
                             'expected a state dict of tensors')
  return {k: v.detach().float().numpy() for k, v in obj.items()
          if hasattr(v, 'detach')}


def torch_layout(array: np.ndarray, path: str) -> np.ndarray:
  """PyTorch -> Flax: conv [O, I, kh, kw] -> HWIO (depthwise [C, 1, kh, kw]
  -> [kh, kw, 1, C]); linear [out, in] -> [in, out]."""
  if path.endswith('kernel') and array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if path.endswith('kernel') and array.ndim == 2:
    return array.T
  return array


def convert(tensors: Dict[str, np.ndarray],
            expected: Dict[str, Dict[str, tuple]], origin: str,
            target: Callable[[str], Any],
            layout: Callable[[np.ndarray, str], np.ndarray] = torch_layout,
            ) -> Dict[str, Dict[str, np.ndarray]]:
  """Maps named tensors onto the model; `expected`: collection -> {path: shape}.

  Raises ConfigError naming every unknown tensor, every model variable left
  unfilled and every shape mismatch (which is what a wrong `--arch` gives).
  """
  out = {c: {} for c in expected}
  unknown, mismatched, twice = [], [], []
  for name, value in tensors.items():
    where = target(name)
    if where is None:
      continue
    if where == BAD or where[1] not in expected.get(where[0], {}):
      unknown.append(name)
      continue
    collection, path = where
    array = layout(np.asarray(value, np.float32), path)
    want = tuple(expected[collection][path])
    if array.shape != want:
      mismatched.append(f'{name} {tuple(np.shape(value))} -> {path} needs {want}')
      continue
    if path in out[collection]:
      twice.append(f'{name} -> {path}')
    out[collection][path] = array
  missing = [f'{c}/{p}' for c, paths in expected.items() for p in paths
             if p not in out[c]]
  problems = []
  if mismatched:
    problems.append('shape mismatches: ' + '; '.join(mismatched[:10]))
  if unknown:
    problems.append('tensors with no place in the model: ' + ', '.join(unknown[:10]))
  if missing:
    problems.append('model variables not in the file: ' + ', '.join(missing[:10]))
  if twice:
    problems.append('variables written twice: ' + ', '.join(twice[:10]))
  if problems:
    raise errors.ConfigError(
        f'{origin}: cannot convert ({len(mismatched)} mismatched, '
        f'{len(unknown)} unknown, {len(missing)} missing): '
        + ' | '.join(problems) + ' -- is --arch right for this file?')
  return out
