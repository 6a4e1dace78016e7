"""timm ImageNet classifiers -> our backbones.

ResNets (`resnet18/34/50/101/152`): timm's `resnet*` are v1.5 with
torchvision's module names (conv1, bn1, layer{s}.{j}.conv{k}/bn{k},
layer{s}.{j}.downsample.{0, 1}, fc), so they map exactly as
`source_torchvision.resnet_target` maps torchvision's; BatchNorm epsilon is
PyTorch's default 1e-5.

Preprocessing is that of the pretrained tag timm downloads by default for
each architecture (`timm.models.get_pretrained_cfg(arch)` in timm 1.0.31,
recorded in `_TAGS`): `resnet18/34/50.a1_in1k` and `resnet101/152.a1h_in1k`
all give input_size 224, crop_pct 0.95, 'bicubic', ImageNet mean/std. timm
evaluates by resizing the shorter side to floor(224 / 0.95) = 235 and centre
cropping 224 (`timm.data.transforms_factory.transforms_imagenet_eval`). These
tags also name a `test_input_size` of 288 (test_crop_pct 1.0), which timm uses
only when asked (`use_test_size=True`) and which scores a little higher; the
metadata records the default 224 setting. `download` asks for the tag
explicitly, so the file it converts always matches the recorded preprocessing.
A file given with `--input` converts whatever tag it holds (e.g.
`resnet50.tv_in1k`, trained at 224 / 256 bilinear); its metadata still records
the settings above, as the file itself does not say which tag it is.
"""

import math
from typing import Dict

from detector.port import common
from detector.port import source_torchvision

# arch -> the pretrained tag timm 1.0.31 downloads by default (see above).
_TAGS = {'resnet18': 'a1_in1k', 'resnet34': 'a1_in1k', 'resnet50': 'a1_in1k',
         'resnet101': 'a1h_in1k', 'resnet152': 'a1h_in1k'}

# Those tags' pretrained_cfg: input_size 224, crop_pct 0.95, bicubic, mean
# (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) = common.IMAGENET_*/255.
_RESNET_PREPROCESSING = common.preprocessing(
    224, math.floor(224 / 0.95), 'bicubic')

ARCHS: Dict[str, common.Spec] = {
    arch: common.Spec('resnet', dict(depth=int(arch[len('resnet'):])), 1e-5,
                      _RESNET_PREPROCESSING)
    for arch in _TAGS}

read = common.read_torch


def download(arch: str):
  """timm's ImageNet weights for `arch`, of the tag in `_TAGS` (needs internet)."""
  import timm  # pylint: disable=g-import-not-at-top
  name = f'{arch}.{_TAGS[arch]}'
  model = timm.create_model(name, pretrained=True)
  tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  return tensors, f'timm.create_model("{name}", pretrained=True)'


def target(name: str, arch: str):
  spec = ARCHS[arch]
  if spec.backbone == 'resnet':
    return source_torchvision.resnet_target(name)
  raise AssertionError(spec.backbone)
