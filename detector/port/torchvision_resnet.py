"""torchvision `resnet18/34/50/101/152` state dicts -> `backbones.resnet.ResNet`.

Names map one to one (torchvision -> ours):
  conv1, bn1                          -> stem/{conv, norm}
  layer{s}.{j}.conv{k}, .bn{k}        -> stage{s+1}_block{j}/conv{k}/{conv, norm}
  layer{s}.{j}.downsample.{0, 1}      -> stage{s+1}_block{j}/downsample/{conv, norm}
  fc                                  -> classifier
Conv weights [out, in, kh, kw] become HWIO kernels, linear weights [out, in]
become [in, out]; BatchNorm weight/bias/running_mean/running_var become
scale/bias/mean/var. `num_batches_tracked` carries nothing and is skipped.
"""

import re
from typing import Dict

import numpy as np

from detector import errors

# torchvision's ImageNet preprocessing (IMAGENET1K_V1 weights), 0-255 units.
PREPROCESSING = {'resize': 256, 'image_size': 224, 'interpolation': 'bilinear',
                 'mean': [123.675, 116.28, 103.53], 'std': [58.395, 57.12, 57.375]}

_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def _conv_or_norm(base: str, is_conv: bool, field: str):
  """A conv weight or a BatchNorm tensor of the ConvNormAct at `base`."""
  if is_conv:
    return ('params', f'{base}/conv/kernel') if field == 'weight' else 'bad'
  if field in _BN:
    return _BN[field][0], f'{base}/norm/{_BN[field][1]}'
  return 'bad'


def _target(name: str):
  """torchvision tensor name -> (collection, our path), None to skip, or 'bad'."""
  if name.endswith('num_batches_tracked'):
    return None
  m = re.fullmatch(r'(conv1|bn1)\.(\w+)', name)
  if m:
    return _conv_or_norm('stem', m.group(1) == 'conv1', m.group(2))
  m = re.fullmatch(r'layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)', name)
  if m:
    stage, block, kind, k, field = m.groups()
    return _conv_or_norm(f'stage{int(stage) + 1}_block{block}/conv{k}',
                         kind == 'conv', field)
  m = re.fullmatch(r'layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)', name)
  if m:
    stage, block, index, field = m.groups()
    return _conv_or_norm(f'stage{int(stage) + 1}_block{block}/downsample',
                         index == '0', field)
  m = re.fullmatch(r'fc\.(weight|bias)', name)
  if m:
    return 'params', 'classifier/' + ('kernel' if m.group(1) == 'weight' else 'bias')
  return 'bad'


def _layout(array: np.ndarray, path: str) -> np.ndarray:
  if path.endswith('conv/kernel'):
    return array.transpose(2, 3, 1, 0)
  if path == 'classifier/kernel':
    return array.T
  return array


def convert(state_dict: Dict[str, np.ndarray], expected: Dict[str, Dict[str, tuple]],
            source: str) -> Dict[str, Dict[str, np.ndarray]]:
  """Converts; `expected` maps collection -> {path: shape} of the target model.

  Raises ConfigError naming every unknown tensor, every target left unfilled
  and every shape mismatch (which is what a wrong `--arch` produces).
  """
  out = {c: {} for c in expected}
  unknown, mismatched = [], []
  for name, value in state_dict.items():
    target = _target(name)
    if target is None:
      continue
    if target == 'bad' or target[1] not in expected.get(target[0], {}):
      unknown.append(name)
      continue
    collection, path = target
    array = _layout(np.asarray(value, np.float32), path)
    want = tuple(expected[collection][path])
    if array.shape != want:
      mismatched.append(f'{name} {tuple(np.shape(value))} -> {path} needs {want}')
      continue
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
  if problems:
    raise errors.ConfigError(f'{source}: cannot convert ({len(mismatched)} '
                             f'mismatched, {len(unknown)} unknown, '
                             f'{len(missing)} missing): ' + ' | '.join(problems)
                             + ' -- is --arch right for this file?')
  return out
