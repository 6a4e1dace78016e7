"""A small residual CNN backbone for CPU-sized detectors.

A stride-2 3x3 stem conv and four stages; each stage halves the resolution
with a stride-2 3x3 conv and then applies `depth` residual basic blocks.
Returns features for levels 2..5 (strides 4, 8, 16, 32) and, with
`num_classes > 0`, 'logits' from global average pooling and a dense
classifier.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from detector import errors
from detector.models import layers


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
  norm: layers.ModuleDef = nn.BatchNorm
  dtype: Any = jnp.float32
  num_classes: int = 0            # > 0 adds the classifier's 'logits'.

  levels = (2, 3, 4, 5)

  @nn.compact
  def __call__(self, x):
    if len(self.widths) != 4 or len(self.depths) != 4:
      raise errors.ConfigError(
          'CNN backbone needs 4 widths and 4 depths (levels 2-5), got '
          f'widths={self.widths} depths={self.depths}')
    x = layers.ConvNormAct(self.stem_width, strides=2, norm=self.norm,
                           dtype=self.dtype, name='stem')(x)
    features = {}
    for level, width, depth in zip(self.levels, self.widths, self.depths):
      x = layers.ConvNormAct(width, strides=2, norm=self.norm,
                             dtype=self.dtype, name=f'stage{level}_down')(x)
      for j in range(depth):
        x = BasicBlock(width, norm=self.norm, dtype=self.dtype,
                       name=f'stage{level}_block{j}')(x)
      features[level] = x
    if self.num_classes > 0:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      features['logits'] = nn.Dense(self.num_classes, dtype=jnp.float32,
                                    name='classifier')(pooled)
    return features
