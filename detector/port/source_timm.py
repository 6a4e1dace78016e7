"""timm ImageNet classifiers -> our backbones.

ResNets (`resnet18/34/50/101/152`): timm's `resnet*` are v1.5 with
torchvision's module names (conv1, bn1, layer{s}.{j}.conv{k}/bn{k},
layer{s}.{j}.downsample.{0, 1}, fc), so they map exactly as
`source_torchvision.resnet_target` maps torchvision's; BatchNorm epsilon is
PyTorch's default 1e-5.

EfficientNets, two families in timm 1.0.31 (timm/models/efficientnet.py):
  `efficientnet_b0..b4, b6, b7`, `efficientnet_lite0`: trained in PyTorch;
    PyTorch's symmetric padding ((k - 1) // 2 on every side, timm's default
    pad_type '') and nn.BatchNorm2d's eps 1e-5 -> padding='symmetric'.
  `tf_efficientnet_b0..b7`, `tf_efficientnet_lite0..4`: the TensorFlow
    originals' weights; their builders set pad_type='same' (Conv2dSame, which
    pads TF SAME: the odd pixel after the image) and bn_eps=BN_EPS_TF_DEFAULT
    (1e-3) -> padding='same'.
The `lite` ones have no SE and ReLU6, like our `lite*` variants. timm's
`efficientnet_b5` is left out: its only ImageNet-1k tag (sw_in12k_ft_in1k)
is evaluated with crop_mode 'squash' (the whole image resized to 448 x 448,
aspect ratio not kept), which the metadata's resize-then-centre-crop cannot
express. Tensor names (timm -> ours), timm's stages s counting from 0:
  conv_stem, bn1                    -> stem/{conv, norm}
  blocks.0.{j}: conv_dw, bn1        -> stage1_block{j}/depthwise/{conv, norm}
    se.conv_{reduce, expand}        -> stage1_block{j}/se/{reduce, expand}
    conv_pw, bn2                    -> stage1_block{j}/project/{conv, norm}
  blocks.{s}.{j} (s >= 1): conv_pw, bn1 -> stage{s+1}_block{j}/expand/...
    conv_dw, bn2                    -> .../depthwise/{conv, norm}
    se.conv_{reduce, expand}        -> .../se/{reduce, expand}
    conv_pwl, bn3                   -> .../project/{conv, norm}
  conv_head, bn2                    -> head/{conv, norm}
  classifier                        -> classifier
(stage 1, expansion 1, is timm's DepthwiseSeparable block: no expand conv,
and its conv_pw is the projection).

Preprocessing is that of the pretrained tag timm downloads by default for
each architecture (`timm.models.get_pretrained_cfg(arch)` in timm 1.0.31,
recorded in `_TAGS`): input_size, crop_pct, interpolation, mean and std.
timm evaluates by resizing the shorter side to floor(size / crop_pct) and
centre cropping `size` (`timm.data.transforms_factory.
transforms_imagenet_eval`); the Specs record exactly that. For the ResNets
(`resnet18/34/50.a1_in1k`, `resnet101/152.a1h_in1k`): 224, crop_pct 0.95,
bicubic, ImageNet mean/std. These tags also name a `test_input_size` (e.g.
288 for the ResNets), which timm uses only when asked (`use_test_size=True`);
the metadata records the default setting. `download` asks for the tag
explicitly, so the file it converts always matches the recorded
preprocessing. A file given with `--input` converts whatever tag it holds
(e.g. `resnet50.tv_in1k`, trained at 224 / 256 bilinear); its metadata still
records the settings above, as the file itself does not say which tag it is.
`efficientnet_b6/b7` have no weights in timm 1.0.31 (tag 'untrained'): they
convert files given with --input (one's own training), with timm's default
configuration for them as the preprocessing.
"""

import math
import re
from typing import Dict

from detector import errors
from detector.models.backbones import efficientnet
from detector.port import common
from detector.port import source_torchvision

_IMAGENET = (common.IMAGENET_MEAN, common.IMAGENET_STD)
_HALF = ((127.5,) * 3, (127.5,) * 3)  # mean = std = (0.5, 0.5, 0.5) x 255.

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

# EfficientNets: arch -> (default tag, input size, crop_pct, interpolation,
# (mean, std)), from timm 1.0.31's get_pretrained_cfg(arch) (mean and std
# there in 0-1 units: ImageNet's, or 0.5 for efficientnet_b1's ra4 tag and
# the tf lite ones).
_EFFICIENTNET = {
    'efficientnet_b0': ('ra_in1k', 224, 0.875, 'bicubic', _IMAGENET),
    'efficientnet_b1': ('ra4_e3600_r240_in1k', 240, 0.9, 'bicubic', _HALF),
    'efficientnet_b2': ('ra_in1k', 256, 0.875, 'bicubic', _IMAGENET),
    'efficientnet_b3': ('ra2_in1k', 288, 0.875, 'bicubic', _IMAGENET),
    'efficientnet_b4': ('ra2_in1k', 320, 0.875, 'bicubic', _IMAGENET),
    'efficientnet_b6': ('untrained', 528, 0.942, 'bicubic', _IMAGENET),
    'efficientnet_b7': ('untrained', 600, 0.949, 'bicubic', _IMAGENET),
    'efficientnet_lite0': ('ra_in1k', 224, 0.875, 'bicubic', _IMAGENET),
    'tf_efficientnet_b0': ('ns_jft_in1k', 224, 0.875, 'bicubic', _IMAGENET),
    'tf_efficientnet_b1': ('ns_jft_in1k', 240, 0.882, 'bicubic', _IMAGENET),
    'tf_efficientnet_b2': ('ns_jft_in1k', 260, 0.89, 'bicubic', _IMAGENET),
    'tf_efficientnet_b3': ('ns_jft_in1k', 300, 0.904, 'bicubic', _IMAGENET),
    'tf_efficientnet_b4': ('ns_jft_in1k', 380, 0.922, 'bicubic', _IMAGENET),
    'tf_efficientnet_b5': ('ns_jft_in1k', 456, 0.934, 'bicubic', _IMAGENET),
    'tf_efficientnet_b6': ('ns_jft_in1k', 528, 0.942, 'bicubic', _IMAGENET),
    'tf_efficientnet_b7': ('ns_jft_in1k', 600, 0.949, 'bicubic', _IMAGENET),
    'tf_efficientnet_lite0': ('in1k', 224, 0.875, 'bicubic', _HALF),
    'tf_efficientnet_lite1': ('in1k', 240, 0.882, 'bicubic', _HALF),
    'tf_efficientnet_lite2': ('in1k', 260, 0.89, 'bicubic', _HALF),
    'tf_efficientnet_lite3': ('in1k', 300, 0.904, 'bilinear', _HALF),
    'tf_efficientnet_lite4': ('in1k', 380, 0.92, 'bilinear', _HALF),
}


def _efficientnet_spec(arch, size, crop_pct, interpolation, mean_std):
  tf = arch.startswith('tf_')
  return common.Spec(
      'efficientnet',
      dict(variant=arch.split('_')[-1], padding='same' if tf else 'symmetric'),
      1e-3 if tf else 1e-5,
      common.preprocessing(size, math.floor(size / crop_pct), interpolation,
                           *mean_std))


_TAGS.update({arch: cfg[0] for arch, cfg in _EFFICIENTNET.items()})
ARCHS.update({arch: _efficientnet_spec(arch, *cfg[1:])
              for arch, cfg in _EFFICIENTNET.items()})

read = common.read_torch


def download(arch: str):
  """timm's ImageNet weights for `arch`, of the tag in `_TAGS` (needs internet)."""
  if _TAGS[arch] == 'untrained':
    raise errors.ConfigError(
        f'--arch={arch}: timm has no ImageNet weights for it; pass '
        '--input=FILE (a timm state dict)')
  timm = common.require('timm', 'timm', '--source=timm without --input')
  name = f'{arch}.{_TAGS[arch]}'
  model = timm.create_model(name, pretrained=True)
  tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  return tensors, f'timm.create_model("{name}", pretrained=True)'


# PyTorch module -> (our path, kind) for `common.torch_tensor`: the stem,
# head and classifier; the parts of stage 1's DepthwiseSeparable blocks and
# of the other stages' InvertedResidual blocks.
_ENDS = {'conv_stem': ('stem', 'conv'), 'bn1': ('stem', 'norm'),
         'conv_head': ('head', 'conv'), 'bn2': ('head', 'norm'),
         'classifier': ('classifier', 'linear')}
_SE = {'se.conv_reduce': ('se/reduce', 'linear'),
       'se.conv_expand': ('se/expand', 'linear')}
_SEPARABLE = {'conv_dw': ('depthwise', 'conv'), 'bn1': ('depthwise', 'norm'),
              'conv_pw': ('project', 'conv'), 'bn2': ('project', 'norm'), **_SE}
_INVERTED = {'conv_pw': ('expand', 'conv'), 'bn1': ('expand', 'norm'),
             'conv_dw': ('depthwise', 'conv'), 'bn2': ('depthwise', 'norm'),
             'conv_pwl': ('project', 'conv'), 'bn3': ('project', 'norm'), **_SE}


@common.torch_target(_ENDS)
def efficientnet_target(name: str, spec: common.Spec):
  """timm EfficientNet tensor name -> (collection, path), None or BAD."""
  m = re.fullmatch(r'blocks\.(\d+)\.(\d+)\.([\w.]+?)\.(\w+)', name)
  if not m:
    return common.BAD
  stage, block, part, field = int(m.group(1)), *m.groups()[1:]
  stages = efficientnet.stages(spec.kwargs['variant'])
  if stage >= len(stages):
    return common.BAD
  parts = _SEPARABLE if stages[stage].expansion == 1 else _INVERTED
  if part not in parts:
    return common.BAD
  sub, kind = parts[part]
  return common.torch_tensor(f'stage{stage + 1}_block{block}/{sub}', kind,
                             field)


target = common.by_backbone(ARCHS, resnet=source_torchvision.resnet_target,
                            efficientnet=efficientnet_target)
