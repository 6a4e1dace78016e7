"""A small residual CNN backbone for CPU-sized detectors.

A stem and four stages; each stage halves the resolution and then applies
`depth` residual basic blocks. Returns features for levels 2..5 (strides 4,
8, 16, 32) and, with `num_classes > 0`, 'logits' from global average pooling
and a dense classifier.

Two ways to downsample, chosen by `downsample`:
  'conv': a 3x3 stride-2 conv (the usual ResNet choice);
  'space_to_depth': fold each 2x2 block of pixels into channels, then a 3x3
    stride-1 conv. Same receptive field class, and on CPUs much faster to
    train: XLA's strided-conv weight gradients run several times below the
    FLOP rate of stride-1 convs (measured on a 2-core x86 CPU, see README).
The stem likewise is either a 3x3 stride-2 conv followed by the level-2
downsampling, or (`stem='space_to_depth'`) a 4x4 space-to-depth to stride 4
followed by one 3x3 conv, a patchify stem as in ConvNeXt.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from detector import errors
from detector.models import layers


def space_to_depth(x, block=2):
  """[B, H, W, C] -> [B, H/block, W/block, block*block*C] (pixel unshuffle)."""
  b, h, w, c = x.shape
  if h % block or w % block:
    raise errors.ConfigError(f'space_to_depth needs sizes divisible by {block}, got '
                     f'{h}x{w}')
  x = x.reshape(b, h // block, block, w // block, block, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block,
                                               block * block * c)


class BasicBlock(nn.Module):
  """Two 3x3 conv-norm layers with an identity shortcut (ResNet v1 style)."""
  features: int
  norm: layers.ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = layers.ConvNormAct(self.features, norm=self.norm, dtype=self.dtype,
                           name='conv1')(x)
    # Zero-initialised last norm scale: each block starts as the identity,
    # which lets a freshly initialised network train at a high learning rate.
    y = layers.ConvNormAct(
        self.features, norm=lambda name: self.norm(
            name=name, scale_init=nn.initializers.zeros),
        act=None, dtype=self.dtype, name='conv2')(y)
    return nn.relu(x + y)


class CNN(nn.Module):
  """Residual CNN. Images [B, H, W, 3] float -> {level: [B, H/2**l, W/2**l, C]}."""
  stem_width: int = 24
  widths: Sequence[int] = (32, 64, 128, 192)  # Levels 2, 3, 4, 5.
  depths: Sequence[int] = (1, 2, 2, 1)        # Residual blocks per stage.
  stem: str = 'conv'              # 'conv' or 'space_to_depth' (see above).
  downsample: str = 'conv'        # 'conv' or 'space_to_depth' (see above).
  norm: layers.ModuleDef = nn.BatchNorm
  dtype: Any = jnp.float32
  num_classes: int = 0            # > 0 adds the classifier's 'logits'.

  levels = (2, 3, 4, 5)

  def _down(self, x, width, name):
    if self.downsample == 'space_to_depth':
      return layers.ConvNormAct(width, norm=self.norm, dtype=self.dtype,
                                name=name)(space_to_depth(x))
    return layers.ConvNormAct(width, strides=2, norm=self.norm,
                              dtype=self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, x):
    if len(self.widths) != 4 or len(self.depths) != 4:
      raise errors.ConfigError('CNN backbone needs 4 widths and 4 depths (levels 2-5), '
                       f'got widths={self.widths} depths={self.depths}')
    for option in ('stem', 'downsample'):
      if getattr(self, option) not in ('conv', 'space_to_depth'):
        raise errors.ConfigError(f'config.model.cnn.{option}={getattr(self, option)!r}: '
                         "expected 'conv' or 'space_to_depth'")
    if self.stem == 'space_to_depth':
      # Straight to stride 4 at level 2's width (`stem_width` is unused).
      x = layers.ConvNormAct(self.widths[0], norm=self.norm, dtype=self.dtype,
                             name='stem')(space_to_depth(x, 4))
    else:
      x = layers.ConvNormAct(self.stem_width, strides=2, norm=self.norm,
                             dtype=self.dtype, name='stem')(x)
    features = {}
    for i, (width, depth) in enumerate(zip(self.widths, self.depths)):
      level = i + 2
      if level > 2 or self.stem == 'conv':
        x = self._down(x, width, f'stage{level}_down')
      for j in range(depth):
        x = BasicBlock(width, norm=self.norm, dtype=self.dtype,
                       name=f'stage{level}_block{j}')(x)
      features[level] = x
    if self.num_classes > 0:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      features['logits'] = nn.Dense(self.num_classes, dtype=jnp.float32,
                                    name='classifier')(pooled)
    return features
