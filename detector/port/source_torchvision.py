"""torchvision ImageNet classifiers -> our backbones.

ResNets (`resnet18/34/50/101/152`, v1.5) map one to one (torchvision -> ours):
  conv1, bn1                          -> stem/{conv, norm}
  layer{s}.{j}.conv{k}, .bn{k}        -> stage{s+1}_block{j}/conv{k}/{conv, norm}
  layer{s}.{j}.downsample.{0, 1}      -> stage{s+1}_block{j}/downsample/{conv, norm}
  fc                                  -> classifier
EfficientNets (`efficientnet_b0..b7`; symmetric padding) likewise:
  features.0.{0, 1}                   -> stem/{conv, norm}
  features.{s}.{j}.block.{k}.{0, 1}   -> stage{s}_block{j}/{expand, depthwise,
                                         project}/{conv, norm}
  features.{s}.{j}.block.{k}.fc{1, 2} -> stage{s}_block{j}/se/{reduce, expand}
  features.8.{0, 1}                   -> head/{conv, norm}
  classifier.1                        -> classifier
where block k counts expand (absent in stage 1, whose expansion is 1),
depthwise, SE, project.
BatchNorm weight/bias/running_mean/running_var become scale/bias/mean/var;
`num_batches_tracked` carries nothing and is skipped.
"""

import re
from typing import Dict, Optional

from detector.port import common

# IMAGENET1K_V1 weights: resize 256, centre crop 224, bilinear.
_RESNET_PREPROCESSING = common.preprocessing(224, 256)

ARCHS: Dict[str, common.Spec] = {
    f'resnet{d}': common.Spec('resnet', dict(depth=d), 1e-5,
                              _RESNET_PREPROCESSING)
    for d in (18, 34, 50, 101, 152)}

# torchvision/models/efficientnet.py (0.29): the DEFAULT weights' transforms
# (crop_size, resize_size, interpolation; ImageNet mean/std), and the BatchNorm
# eps: b0-b4 use nn.BatchNorm2d's default 1e-5 (weights trained in PyTorch by
# timm), b5-b7 pass eps=0.001 (weights ported from TensorFlow). b1's DEFAULT
# is IMAGENET1K_V2 (240 / 255 bilinear; V1 was 240 / 256 bicubic).
_EFFICIENTNET = {  # variant: (crop, resize, interpolation, eps)
    'b0': (224, 256, 'bicubic', 1e-5),
    'b1': (240, 255, 'bilinear', 1e-5),
    'b2': (288, 288, 'bicubic', 1e-5),
    'b3': (300, 320, 'bicubic', 1e-5),
    'b4': (380, 384, 'bicubic', 1e-5),
    'b5': (456, 456, 'bicubic', 1e-3),
    'b6': (528, 528, 'bicubic', 1e-3),
    'b7': (600, 600, 'bicubic', 1e-3),
}
ARCHS.update({
    f'efficientnet_{v}': common.Spec(
        'efficientnet', dict(variant=v, padding='symmetric'), eps,
        common.preprocessing(crop, resize, interpolation))
    for v, (crop, resize, interpolation, eps) in _EFFICIENTNET.items()})

read = common.read_torch


def download(arch: str):
  """torchvision's default ImageNet weights for `arch` (needs internet)."""
  torchvision = common.require('torchvision', 'torchvision',
                               '--source=torchvision without --input')
  model = torchvision.models.get_model(arch, weights='DEFAULT')
  tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  return tensors, f'torchvision.models.{arch}(weights="DEFAULT")'


# PyTorch module -> (our path, kind) for `common.torch_tensor`.
_RESNET_ENDS = {'conv1': ('stem', 'conv'), 'bn1': ('stem', 'norm'),
                'fc': ('classifier', 'linear')}
_EFFICIENTNET_ENDS = {'features.0.0': ('stem', 'conv'),
                      'features.0.1': ('stem', 'norm'),
                      'features.8.0': ('head', 'conv'),
                      'features.8.1': ('head', 'norm'),
                      'classifier.1': ('classifier', 'linear')}


@common.torch_target(_RESNET_ENDS)
def resnet_target(name: str, spec: Optional[common.Spec] = None):
  """torchvision/timm ResNet tensor name -> (collection, path), None or BAD
  (the same for every depth: `spec` is ignored)."""
  del spec
  m = re.fullmatch(r'layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)', name)
  if m:
    stage, block, kind, k, field = m.groups()
    return common.conv_or_norm(f'stage{int(stage) + 1}_block{block}/conv{k}',
                               kind == 'conv', field)
  m = re.fullmatch(r'layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)', name)
  if m:
    stage, block, index, field = m.groups()
    return common.conv_or_norm(
        f'stage{int(stage) + 1}_block{block}/downsample', index == '0', field)
  return common.BAD


@common.torch_target(_EFFICIENTNET_ENDS)
def efficientnet_target(name: str, spec: Optional[common.Spec] = None):
  """torchvision EfficientNet tensor name -> (collection, path), None or BAD
  (block k counts from the stage's first part, so `spec` is not needed)."""
  del spec
  m = re.fullmatch(r'features\.([1-7])\.(\d+)\.block\.(\d)\.(0|1|fc1|fc2)\.(\w+)',
                   name)
  if m:
    stage, block, k, part, field = m.groups()
    parts = ('expand', 'depthwise', 'se', 'project')
    if stage == '1':  # Expansion 1: no expand conv.
      parts = parts[1:]
    if int(k) >= len(parts):
      return common.BAD
    base = f'stage{stage}_block{block}/{parts[int(k)]}'
    if (parts[int(k)] == 'se') != part.startswith('fc'):
      return common.BAD
    if part.startswith('fc'):
      return common.torch_tensor(
          f'{base}/{"reduce" if part == "fc1" else "expand"}', 'linear', field)
    return common.conv_or_norm(base, part == '0', field)
  return common.BAD


target = common.by_backbone(ARCHS, resnet=resnet_target,
                            efficientnet=efficientnet_target)
