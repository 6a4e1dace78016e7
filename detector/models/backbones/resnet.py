"""ResNet v1.5 (He et al., 2016; torchvision's layout): depths 18, 34, 50, 101, 152.

v1.5: in bottleneck blocks the stride sits on the 3x3 conv, not on the first
1x1 (as in torchvision and timm `resnet*`). Convolutions pad symmetrically by
(k - 1) // 2, like PyTorch, not with XLA's 'SAME' (which pads a stride-2 conv
on an even input only after the last pixel): the same weights then compute the
same function as the original models, which ported ImageNet weights need.

Returns features {2: C2, 3: C3, 4: C4, 5: C5} (strides 4-32) and, with
`num_classes > 0`, also 'logits' from global average pooling and a dense
layer (the ImageNet classifier).
"""

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


def _conv(features, kernel, strides, norm, dtype, name, act=nn.relu,
          zero_scale=False):
  pad = (kernel - 1) // 2
  block_norm = norm
  if zero_scale:
    block_norm = lambda name: norm(name=name, scale_init=nn.initializers.zeros)
  return layers.ConvNormAct(features, kernel_size=kernel, strides=strides,
                            padding=((pad, pad), (pad, pad)), norm=block_norm,
                            act=act, dtype=dtype, name=name)


class Block(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block."""
  kind: str
  width: int
  strides: int
  norm: layers.ModuleDef
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = self.width * (4 if self.kind == 'bottleneck' else 1)
    # Zero-initialised last norm scale: a fresh block is the identity
    # (ported weights overwrite it).
    if self.kind == 'basic':
      y = _conv(self.width, 3, self.strides, self.norm, self.dtype, 'conv1')(x)
      y = _conv(out, 3, 1, self.norm, self.dtype, 'conv2', act=None,
                zero_scale=True)(y)
    else:
      y = _conv(self.width, 1, 1, self.norm, self.dtype, 'conv1')(x)
      y = _conv(self.width, 3, self.strides, self.norm, self.dtype, 'conv2')(y)
      y = _conv(out, 1, 1, self.norm, self.dtype, 'conv3', act=None,
                zero_scale=True)(y)
    if self.strides != 1 or x.shape[-1] != out:
      x = _conv(out, 1, self.strides, self.norm, self.dtype, 'downsample',
                act=None)(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Images [B, H, W, 3] (normalised) -> {2..5: features} (+ 'logits')."""
  depth: int = 50
  num_classes: int = 0     # > 0 adds the classifier's 'logits'.
  norm: layers.ModuleDef = nn.BatchNorm
  dtype: Any = jnp.float32

  levels = (2, 3, 4, 5)

  @nn.compact
  def __call__(self, x):
    if self.depth not in STAGES:
      raise errors.ConfigError(f'config.model.resnet.depth={self.depth}: '
                               f'choose one of {sorted(STAGES)}')
    kind, blocks = STAGES[self.depth]
    x = _conv(64, 7, 2, self.norm, self.dtype, 'stem')(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {}
    for i, count in enumerate(blocks):
      for j in range(count):
        x = Block(kind, 64 * 2 ** i, 2 if (j == 0 and i > 0) else 1,
                  norm=self.norm, dtype=self.dtype,
                  name=f'stage{i + 2}_block{j}')(x)
      features[i + 2] = x
    if self.num_classes > 0:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      features['logits'] = nn.Dense(self.num_classes, dtype=jnp.float32,
                                    name='classifier')(pooled)
    return features
