"""ResNet v1.5 (He et al., 2016; torchvision's layout): depths 18, 34, 50, 101, 152.

v1.5: in bottleneck blocks the stride sits on the 3x3 conv, not on the first
1x1 (as in torchvision and timm `resnet*`). `stride_in_1x1=True` gives v1
instead, the original Caffe ResNet that keras.applications `ResNet50/101/152`
reproduce; those also give every conv a bias before its BatchNorm
(`conv_bias=True`), redundant with the norm but part of their weights. Both
settings keep the parameter names, so the same converters and checkpoints
address either variant. Convolutions pad symmetrically by
(k - 1) // 2, like PyTorch, not with XLA's 'SAME' (which pads a stride-2 conv
on an even input only after the last pixel): the same weights then compute the
same function as the original models, which ported ImageNet weights need.

Returns features {2: C2, 3: C3, 4: C4, 5: C5} (strides 4-32) and, with
`num_classes > 0`, also 'logits' from global average pooling and a dense
layer (the ImageNet classifier).
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from detector import errors
from detector.models import layers

# depth -> (block kind, blocks per stage)
STAGES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}


class _BiasedConvNormAct(layers.ConvNormAct):
  """`layers.ConvNormAct` whose conv keeps a bias although a norm follows.

  Same submodule names ('conv', 'norm'), so the variables sit where the
  bias-free version puts them, plus `conv/bias`.
  """

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                strides=(self.strides, self.strides), padding=self.padding,
                use_bias=True, feature_group_count=self.feature_group_count,
                kernel_init=self.kernel_init, dtype=self.dtype,
                param_dtype=jnp.float32, name='conv')(x)
    x = self.norm(name='norm')(x)
    return x if self.act is None else self.act(x)


def _conv(features, kernel, strides, norm, dtype, name, act=nn.relu,
          zero_scale=False, conv_bias=False):
  pad = (kernel - 1) // 2
  block_norm = norm
  if zero_scale:
    block_norm = lambda name: norm(name=name, scale_init=nn.initializers.zeros)
  module = _BiasedConvNormAct if conv_bias else layers.ConvNormAct
  return module(features, kernel_size=kernel, strides=strides,
                padding=((pad, pad), (pad, pad)), norm=block_norm, act=act,
                dtype=dtype, name=name)


class Block(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block.

  stride_in_1x1: a strided bottleneck strides in its first 1x1 (v1) instead
  of its 3x3 (v1.5); basic blocks stride in their first 3x3 either way.
  conv_bias: every conv has a bias (see the module docstring).
  """
  kind: str
  width: int
  strides: int
  norm: layers.ModuleDef
  dtype: Any = jnp.float32
  stride_in_1x1: bool = False
  conv_bias: bool = False

  @nn.compact
  def __call__(self, x):
    out = self.width * (4 if self.kind == 'bottleneck' else 1)
    conv = functools.partial(_conv, conv_bias=self.conv_bias)
    # Zero-initialised last norm scale: a fresh block is the identity
    # (ported weights overwrite it).
    if self.kind == 'basic':
      y = conv(self.width, 3, self.strides, self.norm, self.dtype, 'conv1')(x)
      y = conv(out, 3, 1, self.norm, self.dtype, 'conv2', act=None,
               zero_scale=True)(y)
    else:
      stride1, stride3 = ((self.strides, 1) if self.stride_in_1x1
                          else (1, self.strides))
      y = conv(self.width, 1, stride1, self.norm, self.dtype, 'conv1')(x)
      y = conv(self.width, 3, stride3, self.norm, self.dtype, 'conv2')(y)
      y = conv(out, 1, 1, self.norm, self.dtype, 'conv3', act=None,
               zero_scale=True)(y)
    if self.strides != 1 or x.shape[-1] != out:
      x = conv(out, 1, self.strides, self.norm, self.dtype, 'downsample',
               act=None)(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Images [B, H, W, 3] (normalised) -> {2..5: features} (+ 'logits')."""
  depth: int = 50
  num_classes: int = 0     # > 0 adds the classifier's 'logits'.
  norm: layers.ModuleDef = nn.BatchNorm
  dtype: Any = jnp.float32
  stride_in_1x1: bool = False  # True: v1 (Caffe, Keras); False: v1.5.
  conv_bias: bool = False      # True: convs have biases (Keras).

  levels = (2, 3, 4, 5)

  @nn.compact
  def __call__(self, x):
    if self.depth not in STAGES:
      raise errors.ConfigError(f'config.model.resnet.depth={self.depth}: '
                               f'choose one of {sorted(STAGES)}')
    kind, blocks = STAGES[self.depth]
    x = _conv(64, 7, 2, self.norm, self.dtype, 'stem',
              conv_bias=self.conv_bias)(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {}
    for i, count in enumerate(blocks):
      for j in range(count):
        x = Block(kind, 64 * 2 ** i, 2 if (j == 0 and i > 0) else 1,
                  norm=self.norm, dtype=self.dtype,
                  stride_in_1x1=self.stride_in_1x1, conv_bias=self.conv_bias,
                  name=f'stage{i + 2}_block{j}')(x)
      features[i + 2] = x
    if self.num_classes > 0:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      features['logits'] = nn.Dense(self.num_classes, dtype=jnp.float32,
                                    name='classifier')(pooled)
    return features
