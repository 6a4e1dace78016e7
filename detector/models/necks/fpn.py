"""Feature Pyramid Network (Lin et al., 2017) with optional extra levels.

Lateral 1x1 convs bring every backbone level to `width` channels; a top-down
pass adds each coarser level, upsampled 2x (nearest), to the next finer one;
a 3x3 conv smooths each sum. Levels above the backbone's coarsest one (P6,
P7 as in RetinaNet) come from stride-2 3x3 convs on the coarsest output.
Their padding (`extra_padding`) is TensorFlow's 'same' (the odd pixel after
the image) or 'symmetric' (one pixel each side, PyTorch's padding=1, which
torchvision's RetinaNets were trained with): on even sizes the two shift P6
and P7 by a pixel.
"""

from typing import Any, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from detector import errors
from detector.models import layers


EXTRA_PADDINGS = {'same': 'SAME', 'symmetric': ((1, 1), (1, 1))}


def upsample2x(x):
  """Nearest-neighbour 2x upsampling of NHWC features."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class FPN(nn.Module):
  """{level: [B, H_l, W_l, C_l]} -> {level: [B, H_l, W_l, width]}, min..max level."""
  min_level: int = 3
  max_level: int = 5
  width: int = 64
  norm: Optional[layers.ModuleDef] = None  # None keeps the classic FPN (bias, no norm).
  extra_padding: str = 'same'  # P6/P7 convs: 'same' or 'symmetric'.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Dict[int, jax.Array]) -> Dict[int, jax.Array]:
    available = sorted(features)
    if self.min_level not in features:
      raise errors.ConfigError(f'FPN min_level={self.min_level} but the backbone returns '
                       f'levels {available}; lower the level or change backbone')
    if self.extra_padding not in EXTRA_PADDINGS:
      raise errors.ConfigError(f'FPN extra_padding={self.extra_padding!r}: '
                               f'expected one of {sorted(EXTRA_PADDINGS)}')
    top = min(self.max_level, available[-1])
    inner = {}
    for level in range(top, self.min_level - 1, -1):
      lateral = layers.ConvNormAct(self.width, kernel_size=1, norm=self.norm,
                                   act=None, dtype=self.dtype,
                                   name=f'lateral{level}')(features[level])
      if level < top:
        lateral = lateral + upsample2x(inner[level + 1])
      inner[level] = lateral
    outputs = {
        level: layers.ConvNormAct(self.width, norm=self.norm, act=None,
                                  dtype=self.dtype, name=f'output{level}')(x)
        for level, x in inner.items()}
    x = outputs[top]
    for level in range(top + 1, self.max_level + 1):
      # P7 sees a ReLU of P6, as in RetinaNet; P6 sees P5's linear output.
      x = layers.ConvNormAct(self.width, strides=2, norm=self.norm, act=None,
                             padding=EXTRA_PADDINGS[self.extra_padding],
                             dtype=self.dtype, name=f'extra{level}')(
                                 x if level == top + 1 else nn.relu(x))
      outputs[level] = x
    return {level: outputs[level] for level in sorted(outputs)}
