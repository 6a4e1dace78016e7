"""EfficientNet B0-B7 (Tan & Le, 2019) and EfficientNet-Lite0-4.

One base network (seven stages of MBConv blocks) scaled by a width multiplier
(channels, rounded to multiples of 8) and a depth multiplier (blocks per
stage, rounded up), as torchvision's `efficientnet_b*`, timm's and the
TensorFlow originals build it. The Lite variants (the TensorFlow
`efficientnet/lite` builder, timm `tf_efficientnet_lite*`) change, for mobile
accelerators and quantisation: no squeeze-excitation, ReLU6 instead of swish,
stem (32) and head (1280) channels not scaled, and the first and last stages
keep one block at every depth multiplier.

Padding: 'symmetric' pads every conv by (k - 1) // 2 like PyTorch (torchvision
and timm `efficientnet_*` weights); 'same' is TensorFlow's SAME (XLA 'SAME'),
which for stride 2 puts the extra pixel after the image (keras.applications,
timm `tf_efficientnet_*` and the efficientnet_lite_pytorch port, which
reproduce TF). Converted weights only compute the original function with the
padding they were trained with.

Returns {2: C2, 3: C3, 4: C4, 5: C5}: the outputs of the last block at strides
4, 8, 16 and 32 (stages 2, 3, 5 and 7; C5 is the last MBConv stage, 320
channels for B0, not the 1280-channel head conv, as EfficientDet uses it).
With `num_classes > 0` also 'logits': head 1x1 conv -> norm -> act -> global
average pool (float32) -> dropout -> dense.

Module names, with torchvision `efficientnet_b*` (tv) and
efficientnet_lite_pytorch (lite) names:
  stem/{conv, norm}          tv features.0.{0, 1};   lite _conv_stem, _bn0
  stage{s}_block{j}/expand   tv features.{s}.{j}.block.0;
                             lite _blocks.{n}._expand_conv, ._bn0
  .../depthwise              tv ...block.{0|1};  lite ._depthwise_conv, ._bn1
  .../se/{reduce, expand}    tv ...block.{1|2}.fc{1, 2};
                             lite ._se_reduce, ._se_expand
  .../project                tv ...block.{2|3};  lite ._project_conv, ._bn2
  head/{conv, norm}          tv features.8.{0, 1};   lite _conv_head, _bn1
  classifier                 tv classifier.1;        lite _fc
Stages s = 1..7 (torchvision's `features` index), blocks j from 0; the
package numbers its blocks n flat over all stages. Stage 1 (expansion 1) has
no `expand` conv; Lite blocks have no `se`.
"""

import dataclasses
import math
from typing import Any, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from detector import errors
from detector.models import layers

# The B0 baseline (paper Table 1): (expansion, kernel, stride, channels, blocks).
BASE_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# Stage (1-based) whose last block gives each feature level.
LEVEL_STAGES = {2: 2, 3: 3, 4: 5, 5: 7}

# variant -> (width multiplier, depth multiplier, classifier dropout), as in
# torchvision's efficientnet_b* and the TF lite builder's efficientnet_lite_params.
VARIANTS = {
    'b0': (1.0, 1.0, 0.2),
    'b1': (1.0, 1.1, 0.2),
    'b2': (1.1, 1.2, 0.3),
    'b3': (1.2, 1.4, 0.3),
    'b4': (1.4, 1.8, 0.4),
    'b5': (1.6, 2.2, 0.4),
    'b6': (1.8, 2.6, 0.5),
    'b7': (2.0, 3.1, 0.5),
    'lite0': (1.0, 1.0, 0.2),
    'lite1': (1.0, 1.1, 0.2),
    'lite2': (1.1, 1.2, 0.3),
    'lite3': (1.2, 1.4, 0.3),
    'lite4': (1.4, 1.8, 0.3),
}
PADDINGS = ('symmetric', 'same')


def round_channels(channels: float, divisor: int = 8) -> int:
  """Nearest multiple of `divisor` (at least `divisor`), never more than 10%
  below `channels`: the TF original's round_filters, torchvision's
  _make_divisible."""
  rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * channels:
    rounded += divisor
  return int(rounded)


@dataclasses.dataclass(frozen=True)
class Stage:
  expansion: int
  kernel: int
  stride: int
  in_channels: int   # of the stage's first block; later blocks take `channels`.
  channels: int
  blocks: int


def stages(variant: str) -> List[Stage]:
  """The scaled stages of `variant`; also used by the weight converters."""
  if variant not in VARIANTS:
    raise errors.ConfigError(f'config.model.efficientnet.variant={variant!r}: '
                             f'choose one of {sorted(VARIANTS)}')
  width, depth, _ = VARIANTS[variant]
  lite = variant.startswith('lite')
  out, previous = [], stem_channels(variant)
  for i, (expansion, kernel, stride, channels, blocks) in enumerate(BASE_STAGES):
    # Lite keeps the first and last stage at one block (fix_first_last).
    if not (lite and i in (0, len(BASE_STAGES) - 1)):
      blocks = int(math.ceil(blocks * depth))
    channels = round_channels(channels * width)
    out.append(Stage(expansion, kernel, stride, previous, channels, blocks))
    previous = channels
  return out


def stem_channels(variant: str) -> int:
  if variant.startswith('lite'):
    return 32
  return round_channels(32 * VARIANTS[variant][0])


def head_channels(variant: str) -> int:
  if variant.startswith('lite'):
    return 1280
  return round_channels(1280 * VARIANTS[variant][0])


# He-normal over the fan of one depthwise filter (k * k), as the TF original
# and timm initialise it; 'fan_out' of the [k, k, 1, C] kernel would count all
# C channels and shrink the signal by sqrt(C) in every block.
_DEPTHWISE_INIT = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def _padding(kind: str, kernel: int):
  if kind == 'same':
    return 'SAME'
  pad = (kernel - 1) // 2
  return ((pad, pad), (pad, pad))


class SqueezeExcite(nn.Module):
  """Channel gate: x * sigmoid(expand(act(reduce(mean(x)))))."""
  squeeze: int
  act: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    s = nn.Conv(self.squeeze, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                name='reduce')(s)
    s = nn.Conv(channels, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                name='expand')(self.act(s))
    return x * nn.sigmoid(s)


class MBConv(nn.Module):
  """Inverted residual: [1x1 expand] -> depthwise kxk -> [SE] -> 1x1 project.

  The residual (with stochastic depth: the whole branch dropped per example
  with probability `drop_rate`, kept ones scaled by 1 / (1 - drop_rate)) only
  exists where stride is 1 and channels do not change.
  """
  channels: int
  expansion: int
  kernel: int
  strides: int
  squeeze: Optional[int]   # SE bottleneck channels; None: no SE (Lite).
  act: Any
  norm: layers.ModuleDef
  padding: str = 'symmetric'
  drop_rate: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32
  depthwise_impl: str = 'auto'  # layers.DepthwiseConv.impl.

  @nn.compact
  def __call__(self, x):
    in_channels = x.shape[-1]
    y = x
    if self.expansion != 1:
      y = layers.ConvNormAct(in_channels * self.expansion, kernel_size=1,
                             padding='VALID', norm=self.norm, act=self.act,
                             dtype=self.dtype, name='expand')(y)
    y = layers.ConvNormAct(y.shape[-1], kernel_size=self.kernel,
                           strides=self.strides,
                           padding=_padding(self.padding, self.kernel),
                           feature_group_count=y.shape[-1], norm=self.norm,
                           act=self.act, dtype=self.dtype,
                           kernel_init=_DEPTHWISE_INIT,
                           depthwise_impl=self.depthwise_impl,
                           name='depthwise')(y)
    if self.squeeze is not None:
      y = SqueezeExcite(self.squeeze, self.act, dtype=self.dtype, name='se')(y)
    y = layers.ConvNormAct(self.channels, kernel_size=1, padding='VALID',
                           norm=self.norm, act=None, dtype=self.dtype,
                           name='project')(y)
    if self.strides != 1 or in_channels != self.channels:
      return y
    if not self.deterministic and self.drop_rate > 0:
      keep = 1.0 - self.drop_rate
      mask = jax.random.bernoulli(self.make_rng('dropout'), keep,
                                  (y.shape[0], 1, 1, 1))
      y = jnp.where(mask, y / jnp.asarray(keep, y.dtype), jnp.zeros_like(y))
    return x + y


class EfficientNet(nn.Module):
  """Images [B, H, W, 3] (normalised) -> {2..5: features} (+ 'logits')."""
  variant: str = 'b0'      # 'b0'..'b7', 'lite0'..'lite4'.
  num_classes: int = 0     # > 0 adds the head conv and the classifier's 'logits'.
  norm: layers.ModuleDef = nn.BatchNorm
  dtype: Any = jnp.float32  # Compute dtype; parameters stay float32.
  padding: str = 'symmetric'  # 'symmetric' (PyTorch) or 'same' (TensorFlow).
  # Stochastic depth: block b of N drops its branch with rate * b / N.
  drop_connect_rate: float = 0.2
  dropout_rate: Optional[float] = None  # Before the classifier; None: the variant's.
  deterministic: bool = True  # False: stochastic depth and dropout ('dropout' rng).
  depthwise_impl: str = 'auto'  # layers.DepthwiseConv.impl.

  levels = (2, 3, 4, 5)

  @nn.compact
  def __call__(self, x):
    config = stages(self.variant)
    if self.padding not in PADDINGS:
      raise errors.ConfigError(f'config.model.efficientnet.padding={self.padding!r}: '
                               f'choose one of {PADDINGS}')
    lite = self.variant.startswith('lite')
    act = nn.relu6 if lite else nn.swish
    x = layers.ConvNormAct(stem_channels(self.variant), kernel_size=3, strides=2,
                           padding=_padding(self.padding, 3), norm=self.norm,
                           act=act, dtype=self.dtype, name='stem')(x)
    total = sum(stage.blocks for stage in config)
    index = 0
    features = {}
    for s, stage in enumerate(config, start=1):
      for j in range(stage.blocks):
        in_channels = stage.in_channels if j == 0 else stage.channels
        x = MBConv(stage.channels, stage.expansion, stage.kernel,
                   stage.stride if j == 0 else 1,
                   squeeze=None if lite else max(1, in_channels // 4),
                   act=act, norm=self.norm, padding=self.padding,
                   drop_rate=self.drop_connect_rate * index / total,
                   deterministic=self.deterministic, dtype=self.dtype,
                   depthwise_impl=self.depthwise_impl,
                   name=f'stage{s}_block{j}')(x)
        index += 1
      for level, level_stage in LEVEL_STAGES.items():
        if level_stage == s:
          features[level] = x
    if self.num_classes > 0:
      x = layers.ConvNormAct(head_channels(self.variant), kernel_size=1,
                             padding='VALID', norm=self.norm, act=act,
                             dtype=self.dtype, name='head')(x)
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      rate = (VARIANTS[self.variant][2] if self.dropout_rate is None
              else self.dropout_rate)
      pooled = nn.Dropout(rate, deterministic=self.deterministic)(pooled)
      features['logits'] = nn.Dense(self.num_classes, dtype=jnp.float32,
                                    name='classifier')(pooled)
    return features
