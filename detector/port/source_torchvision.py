"""torchvision ImageNet classifiers -> our backbones.

ResNets (`resnet18/34/50/101/152`, v1.5) map one to one (torchvision -> ours):
  conv1, bn1                          -> stem/{conv, norm}
  layer{s}.{j}.conv{k}, .bn{k}        -> stage{s+1}_block{j}/conv{k}/{conv, norm}
  layer{s}.{j}.downsample.{0, 1}      -> stage{s+1}_block{j}/downsample/{conv, norm}
  fc                                  -> classifier
BatchNorm weight/bias/running_mean/running_var become scale/bias/mean/var;
`num_batches_tracked` carries nothing and is skipped.
"""

import re
from typing import Dict

import numpy as np

from detector.port import common

# IMAGENET1K_V1 weights: resize 256, centre crop 224, bilinear.
_RESNET_PREPROCESSING = common.preprocessing(224, 256)

ARCHS: Dict[str, common.Spec] = {
    f'resnet{d}': common.Spec('resnet', dict(depth=d), 1e-5,
                              _RESNET_PREPROCESSING)
    for d in (18, 34, 50, 101, 152)}

_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}

read = common.read_torch


def download(arch: str):
  """torchvision's default ImageNet weights for `arch` (needs internet)."""
  import torchvision  # pylint: disable=g-import-not-at-top
  model = torchvision.models.get_model(arch, weights='DEFAULT')
  tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  return tensors, f'torchvision.models.{arch}(weights="DEFAULT")'


def conv_or_norm(base: str, is_conv: bool, field: str, conv='conv', norm='norm'):
  """A conv weight/bias or BatchNorm tensor of the ConvNormAct at `base`."""
  if is_conv:
    return {'weight': ('params', f'{base}/{conv}/kernel'),
            'bias': ('params', f'{base}/{conv}/bias')}.get(field, common.BAD)
  if field in _BN:
    return _BN[field][0], f'{base}/{norm}/{_BN[field][1]}'
  return common.BAD


def resnet_target(name: str):
  """torchvision/timm ResNet tensor name -> (collection, path), None or BAD."""
  if name.endswith('num_batches_tracked'):
    return None
  m = re.fullmatch(r'(conv1|bn1)\.(\w+)', name)
  if m:
    return conv_or_norm('stem', m.group(1) == 'conv1', m.group(2))
  m = re.fullmatch(r'layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)', name)
  if m:
    stage, block, kind, k, field = m.groups()
    return conv_or_norm(f'stage{int(stage) + 1}_block{block}/conv{k}',
                        kind == 'conv', field)
  m = re.fullmatch(r'layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)', name)
  if m:
    stage, block, index, field = m.groups()
    return conv_or_norm(f'stage{int(stage) + 1}_block{block}/downsample',
                        index == '0', field)
  m = re.fullmatch(r'fc\.(weight|bias)', name)
  if m:
    return 'params', 'classifier/' + ('kernel' if m.group(1) == 'weight' else 'bias')
  return common.BAD


def target(name: str, arch: str):
  spec = ARCHS[arch]
  if spec.backbone == 'resnet':
    return resnet_target(name)
  raise AssertionError(spec.backbone)
