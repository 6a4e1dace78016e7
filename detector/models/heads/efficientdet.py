"""EfficientDet's class and box head (Tan, Pang and Le, CVPR 2020).

The outputs, anchors, matching, loss and decoding are the RetinaNet head's
(`detector.models.heads.retinanet`, whose Options this head extends); the
subnets are EfficientDet's, as the official implementation (google/automl
`efficientdet/efficientdet_arch.py`, `ClassNet` / `BoxNet`) and effdet
(`effdet/efficientdet.py`, `HeadNet`) build them:
  * `num_convs` depthwise-separable 3x3 convs (depthwise 3x3 without bias,
    pointwise 1x1), their weights shared over the levels,
  * each followed by a BatchNorm of its own per level (the statistics of P3
    and P7 differ too much to share), then the activation (swish; ReLU6 for
    the Lite models),
  * a separable 3x3 prediction conv with a bias (the focal-loss prior for
    the classes).
`redundant_bias` keeps a bias on the pointwise convs before the BatchNorms,
as the TensorFlow originals do (and so effdet's `tf_*` ports and their
parameter counts); the PyTorch-trained `efficientdet_*` have none.

Parameter names: `class_conv{i}/{depthwise, pointwise}`,
`class_norm{i}_level{l}`, `class_predict/{depthwise, pointwise}` and the same
with `box_`.
"""

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from detector import errors
from detector.models import layers
from detector.models.heads import retinanet
from detector.ops import anchors as anchor_ops

NAME = 'efficientdet'
# The class prediction layer (re-initialised or fitted by init_from): its
# pointwise conv; the depthwise one before it does not depend on the classes.
CLASS_LAYERS = ('class_predict/pointwise',)
ACTIVATIONS = {'swish': nn.swish, 'silu': nn.silu, 'relu': nn.relu,
               'relu6': nn.relu6}


@dataclasses.dataclass(frozen=True)
class Options(retinanet.Options):
  """`config.model.efficientdet`: the RetinaNet head's options plus these.

  `width` is the BiFPN's width and `num_convs` EfficientDet's D_class (3 for
  D0-D2, 4 for D3-D5, 5 for D6-D7). `use_norm` is ignored: the head always
  has its per-level BatchNorms (config.model.norm).
  """
  act: str = 'swish'            # 'swish' (D0-D7) or 'relu6' (Lite).
  redundant_bias: bool = True   # Pointwise biases before the norms (TF models).

  def __post_init__(self):
    super().__post_init__()
    if self.act not in ACTIVATIONS:
      raise errors.ConfigError(f'config.model.{NAME}.act={self.act!r}: '
                               f'expected one of {sorted(ACTIVATIONS)}')


class SeparableConv(nn.Module):
  """Depthwise 3x3 (no bias) -> pointwise 1x1 (bias if `use_bias`)."""
  features: int
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  depthwise_impl: str = 'auto'
  bias_init: layers.ModuleDef = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    x = layers.DepthwiseConv(x.shape[-1], 3, padding='SAME', use_bias=False,
                             impl=self.depthwise_impl, dtype=self.dtype,
                             name='depthwise')(x)
    # The official initialisation: variance scaling (fan-in, unit gain).
    return nn.Conv(self.features, (1, 1), use_bias=self.use_bias,
                   kernel_init=nn.initializers.variance_scaling(
                       1.0, 'fan_in', 'normal'),
                   bias_init=self.bias_init, dtype=self.dtype,
                   param_dtype=jnp.float32, name='pointwise')(x)


class Head(retinanet.Head):
  """Pyramid features {level: [B, h_l, w_l, C]} -> {'cls_logits', 'box_deltas'}."""
  options: Options = Options()
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, features):
    o = self.options
    if self.norm is None:
      raise errors.ConfigError(f'config.model.{NAME} needs a norm '
                               '(config.model.norm)')
    act = ACTIVATIONS[o.act]
    num_anchors = anchor_ops.anchors_per_location(o.num_scales, o.aspect_ratios)
    prior = -math.log((1 - o.prior_prob) / o.prior_prob)
    outputs = {}
    for net, channels, bias_init in (
        ('class', num_anchors * self.num_classes,
         nn.initializers.constant(prior)),
        ('box', num_anchors * 4, nn.initializers.zeros)):
      convs = [SeparableConv(o.width, use_bias=o.redundant_bias,
                             dtype=self.dtype,
                             depthwise_impl=self.depthwise_impl,
                             name=f'{net}_conv{i}')
               for i in range(o.num_convs)]
      predict = SeparableConv(channels, dtype=self.dtype,
                              depthwise_impl=self.depthwise_impl,
                              bias_init=bias_init, name=f'{net}_predict')
      per_level = []
      for level in o.levels:
        x = features[level]
        for i, conv in enumerate(convs):
          x = act(self.norm(name=f'{net}_norm{i}_level{level}')(conv(x)))
        y = predict(x)
        per_level.append(y.reshape(y.shape[0], -1, channels // num_anchors))
      outputs[net] = jnp.concatenate(per_level, 1).astype(jnp.float32)
    return {'cls_logits': outputs['class'], 'box_deltas': outputs['box']}
