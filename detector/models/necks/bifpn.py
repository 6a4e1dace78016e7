"""BiFPN: the weighted bi-directional feature pyramid of EfficientDet.

Tan, Pang and Le, "EfficientDet: Scalable and Efficient Object Detection",
CVPR 2020 (arXiv:1911.09070). With an EfficientNet backbone and EfficientDet's
head (`detector.models.heads.efficientdet`) this is EfficientDet.

Input: {level: [B, H_l, W_l, C_l]} from a backbone (levels 2..5 for the ones
in this repo; level 2 is ignored unless min_level=2). Output: {level: [B, H_l,
W_l, width]} for min_level..max_level.

Structure, following the paper and the official implementation
(google/automl efficientdet, `efficientdet_arch.py` and `fpn_configs.py`):
  * Levels above the backbone's coarsest one (P6, P7) come from that level by
    a 1x1 conv + norm (only where its channels differ from `width`) and a 3x3
    stride-2 max pooling per extra level.
  * Each of the `repeats` layers is a top-down path followed by a bottom-up
    path. For levels lo..hi:
      top-down   td_l  = node(p_l, up(td_{l+1}))           l = hi-1 .. lo,
                 with td_hi = p_hi;
      bottom-up  out_l = node(p_l, td_l, down(out_{l-1}))  l = lo+1 .. hi-1,
                 out_hi = node(p_hi, down(out_{hi-1})), out_lo = td_lo;
    where p are the layer's inputs, `up` is nearest-neighbour 2x upsampling
    and `down` the same 3x3 stride-2 max pooling as for the extra levels.
  * A node fuses its inputs with learned per-input weights (see
    `fusion_weights`), then applies act -> depthwise 3x3 conv -> pointwise
    1x1 conv -> norm. The pointwise conv has a bias only without norm.
  * In the first layer the inputs from the backbone still have the
    backbone's channel counts: as in the official code, every edge that
    carries such an input gets its own 1x1 conv + norm to `width` (so P4 and
    P5, each read by a top-down and a bottom-up node, get two each). This is
    what EfficientDet's and effdet's parameter counts include.

Padding of the max pooling (`pool_padding`): 'same' (the default, any case)
pads only the bottom/right where needed, as TensorFlow and the official
EfficientDet do; 'symmetric' pads one pixel on every side, as effdet's
PyTorch-trained models (`efficientdet_d0`, pad_type='') do. The two give
different numbers on even sizes; pick the one that matches weights being
ported. Either way a level of size n pools to ceil(n / 2), and upsampling
crops 2 * ceil(n / 2) back to n, so odd sizes work (sizes that do not halve
this way raise a ConfigError naming them); EfficientDet itself uses sizes
divisible by 2**max_level, and so do this repo's anchors.
"""

import functools
import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from detector import errors
from detector.models import layers

ACTIVATIONS = {'swish': nn.swish, 'silu': nn.silu, 'relu': nn.relu,
               'relu6': nn.relu6}
FUSIONS = ('fast', 'softmax', 'sum')
FAST_FUSION_EPSILON = 1e-4  # The paper's epsilon: keeps the division stable.


class EfficientDetScale(NamedTuple):
  """One row of EfficientDet's compound scaling (paper Table 1)."""
  width: int         # W_bifpn: BiFPN channels (and box/class head width).
  repeats: int       # D_bifpn: BiFPN layers.
  image_size: int    # R_input: square input side in pixels.
  head_depth: int    # D_class: conv layers of the box and class subnets.
  backbone: str      # EfficientNet variant.
  fusion: str        # BiFPN fusion of the official config ('sum' for D6, D7).


# EfficientDet D0..D7 (phi = 0..7), from Table 1 of the paper (arXiv:1911.09070
# v7, CVPR 2020), checked against `efficientdet_model_param_dict` in the
# official google/automl `efficientdet/hparams_config.py` (fpn_num_filters,
# fpn_cell_repeats, image_size, box_class_repeats, backbone_name,
# fpn_weight_method). The paper's formulas W = 64 * 1.35**phi,
# D = 3 + phi, R = 512 + 128 * phi, D_class = 3 + phi // 3 are not followed
# exactly: the widths are hand-rounded (1.35**2 * 64 = 116.6 -> 112), D5 and D6
# have 7 and 8 BiFPN layers rather than 8 and 9, D5 uses 1280 px rather than
# 1152 and D7 (D6 at a higher resolution) 1536 px rather than 1408. The table
# is what the released models use. D7x (EfficientNet-B7, max_level 8) is left
# out.
EFFICIENTDET_SCALING = (
    EfficientDetScale(64, 3, 512, 3, 'efficientnet-b0', 'fast'),
    EfficientDetScale(88, 4, 640, 3, 'efficientnet-b1', 'fast'),
    EfficientDetScale(112, 5, 768, 3, 'efficientnet-b2', 'fast'),
    EfficientDetScale(160, 6, 896, 4, 'efficientnet-b3', 'fast'),
    EfficientDetScale(224, 7, 1024, 4, 'efficientnet-b4', 'fast'),
    EfficientDetScale(288, 7, 1280, 4, 'efficientnet-b5', 'fast'),
    EfficientDetScale(384, 8, 1280, 5, 'efficientnet-b6', 'sum'),
    EfficientDetScale(384, 8, 1536, 5, 'efficientnet-b6', 'sum'),
)


def efficientdet_scaling(phi: int) -> EfficientDetScale:
  """The (width, repeats, image_size, head_depth, ...) of EfficientDet-D`phi`."""
  if not 0 <= phi < len(EFFICIENTDET_SCALING):
    raise errors.ConfigError(f'EfficientDet scaling phi={phi}: expected 0..'
                             f'{len(EFFICIENTDET_SCALING) - 1} (D0..D7)')
  return EFFICIENTDET_SCALING[phi]


def fusion_weights(raw: jax.Array, method: str) -> jax.Array:
  """Per-input weights of a node from its raw parameters.

  'fast' is the paper's fast normalised fusion, relu(w) / (sum relu(w) + eps):
  non-negative, summing to just under 1, and cheaper than 'softmax'. 'sum'
  weighs every input 1 (the official choice for D6 and D7, for stability).
  """
  if method == 'fast':
    w = nn.relu(raw)
    return w / (jnp.sum(w) + FAST_FUSION_EPSILON)
  if method == 'softmax':
    return jax.nn.softmax(raw)
  if method == 'sum':
    return jnp.ones_like(raw)
  raise errors.ConfigError(f'BiFPN fusion={method!r}: expected one of {FUSIONS}')


class WeightedFusion(nn.Module):
  """Weighted sum of same-shaped inputs; the weights are float32 parameters.

  One scalar per input, initialised to 1 (equal weights), as in the paper.
  'sum' has no parameters.
  """
  method: str = 'fast'

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array]) -> jax.Array:
    if self.method == 'sum':
      return sum(inputs[1:], inputs[0])
    raw = self.param('weights', nn.initializers.ones, (len(inputs),),
                     jnp.float32)
    w = fusion_weights(raw, self.method).astype(inputs[0].dtype)
    return sum(w[i] * x for i, x in enumerate(inputs))


def max_pool_down(x, padding: str = 'same'):
  """3x3 stride-2 max pooling, [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C].

  Padded cells count as -inf, as in TensorFlow and PyTorch.
  """
  if padding.lower() == 'same':
    pad = 'SAME'
  elif padding.lower() == 'symmetric':
    pad = ((1, 1), (1, 1))
  else:
    raise errors.ConfigError(f'BiFPN pool_padding={padding!r}: expected same '
                             'or symmetric')
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad)


def upsample_to(x, size):
  """Nearest-neighbour 2x upsampling cropped to `size` = (H, W).

  The crop undoes the rounding up of `max_pool_down` on odd sizes.
  """
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)[:, :size[0], :size[1]]


class FusionNode(nn.Module):
  """One BiFPN node: resample inputs, fuse, act -> separable conv -> norm.

  `inputs[0]` is the node's own level and sets the output size; `resize[i]`
  is 'keep' (same level), 'up' (one level coarser) or 'down' (one level
  finer).
  Inputs whose channels are not `width` (backbone features entering the first
  layer) get their own 1x1 conv + norm first, before any resizing, as in the
  official implementation.
  """
  width: int
  norm: Optional[layers.ModuleDef] = None
  act: Callable[[jax.Array], jax.Array] = nn.swish
  fusion: str = 'fast'
  pool_padding: str = 'same'
  dtype: Any = jnp.float32
  depthwise_impl: str = 'auto'  # layers.DepthwiseConv.impl.
  redundant_bias: bool = False  # Biases before the norms (BiFPN.redundant_bias).

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], resize: Sequence[str]):
    size = inputs[0].shape[1:3]
    resized = []
    for i, (x, how) in enumerate(zip(inputs, resize)):
      if x.shape[-1] != self.width:
        x = layers.ConvNormAct(self.width, kernel_size=1, norm=self.norm,
                               act=None, dtype=self.dtype,
                               use_bias=_bias(self.redundant_bias),
                               name=f'resample{i}')(x)
      if how == 'up':
        x = upsample_to(x, size)
      elif how == 'down':
        x = max_pool_down(x, self.pool_padding)
      resized.append(x)
    x = WeightedFusion(self.fusion, name='fuse')(resized)
    x = self.act(x)
    # fan_in of a depthwise 3x3 kernel is 9: unit gain per channel.
    x = layers.DepthwiseConv(self.width, 3, padding='SAME', use_bias=False,
                             kernel_init=nn.initializers.variance_scaling(
                                 1.0, 'fan_in', 'normal'),
                             impl=self.depthwise_impl, dtype=self.dtype,
                             name='depthwise')(x)
    return layers.ConvNormAct(self.width, kernel_size=1, norm=self.norm,
                              act=None, dtype=self.dtype,
                              use_bias=_bias(self.redundant_bias),
                              name='pointwise')(x)


def _bias(redundant_bias: bool):
  """ConvNormAct's use_bias for a 1x1 conv before a norm: also a bias with
  `redundant_bias`, else its default (a bias only without norm)."""
  return True if redundant_bias else None


class BiFPNLayer(nn.Module):
  """One top-down + bottom-up pass over consecutive levels {lo..hi: features}."""
  node: Callable[..., FusionNode]  # FusionNode with its settings, but `name`.

  @nn.compact
  def __call__(self, p: Dict[int, jax.Array]) -> Dict[int, jax.Array]:
    lo, hi = min(p), max(p)
    node = lambda name: self.node(name=name)

    td = {hi: p[hi]}
    for level in range(hi - 1, lo - 1, -1):
      td[level] = node(f'top_down{level}')([p[level], td[level + 1]],
                                           ('keep', 'up'))
    out = {lo: td[lo]}
    for level in range(lo + 1, hi):
      out[level] = node(f'bottom_up{level}')(
          [p[level], td[level], out[level - 1]], ('keep', 'keep', 'down'))
    out[hi] = node(f'bottom_up{hi}')([p[hi], out[hi - 1]], ('keep', 'down'))
    return {level: out[level] for level in range(lo, hi + 1)}


class BiFPN(nn.Module):
  """{level: [B, H_l, W_l, C_l]} -> {level: [B, H_l, W_l, width]}, min..max level."""
  min_level: int = 3
  max_level: int = 7
  width: int = 64          # W_bifpn.
  repeats: int = 3         # D_bifpn: number of BiFPN layers.
  norm: Optional[layers.ModuleDef] = None  # EfficientDet: BatchNorm. None: biases.
  act: Union[str, Callable[[jax.Array], jax.Array]] = 'swish'
  fusion: str = 'fast'     # 'fast' (normalised), 'softmax' or 'sum'.
  pool_padding: str = 'same'  # Max pooling: 'same' (TF) or 'symmetric' (effdet).
  dtype: Any = jnp.float32
  depthwise_impl: str = 'auto'  # layers.DepthwiseConv.impl.
  # Every 1x1 conv before a norm keeps a bias as well: the official
  # EfficientDets (TensorFlow, and effdet's tf_* ports) have them, so their
  # checkpoints and parameter counts do; effdet's PyTorch-trained ones do not.
  redundant_bias: bool = False

  def _check(self, features):
    if self.fusion not in FUSIONS:
      raise errors.ConfigError(f'BiFPN fusion={self.fusion!r}: expected one of '
                               f'{FUSIONS}')
    if self.max_level <= self.min_level:
      raise errors.ConfigError(f'BiFPN needs max_level > min_level, got '
                               f'{self.min_level}..{self.max_level}')
    if self.repeats < 1:
      raise errors.ConfigError(f'BiFPN repeats={self.repeats}: expected >= 1')
    if self.pool_padding.lower() not in ('same', 'symmetric'):
      raise errors.ConfigError(f'BiFPN pool_padding={self.pool_padding!r}: '
                               'expected same or symmetric')
    available = sorted(features)
    wanted = range(self.min_level, min(self.max_level, available[-1]) + 1)
    missing = [l for l in wanted if l not in features]
    if missing or self.min_level not in features:
      raise errors.ConfigError(
          f'BiFPN min_level={self.min_level} needs consecutive backbone levels '
          f'from {self.min_level}, the backbone returns {available} (missing '
          f'{missing or [self.min_level]}); change min_level or backbone')

  def _activation(self):
    if callable(self.act):
      return self.act
    if self.act not in ACTIVATIONS:
      raise errors.ConfigError(f'BiFPN act={self.act!r}: expected one of '
                               f'{sorted(ACTIVATIONS)} or a function')
    return ACTIVATIONS[self.act]

  @nn.compact
  def __call__(self, features: Dict[int, jax.Array]) -> Dict[int, jax.Array]:
    self._check(features)
    act = self._activation()
    top = min(self.max_level, max(features))
    p = {level: features[level] for level in range(self.min_level, top + 1)}
    x = p[top]
    for level in range(top + 1, self.max_level + 1):
      if x.shape[-1] != self.width:
        x = layers.ConvNormAct(self.width, kernel_size=1, norm=self.norm,
                               act=None, dtype=self.dtype,
                               use_bias=_bias(self.redundant_bias),
                               name=f'resample{level}')(x)
      x = max_pool_down(x, self.pool_padding)
      p[level] = x
    sizes = {level: tuple(x.shape[1:3]) for level, x in p.items()}
    for level in range(self.min_level + 1, self.max_level + 1):
      expected = tuple(math.ceil(s / 2) for s in sizes[level - 1])
      if sizes[level] != expected:
        raise errors.ConfigError(
            f'BiFPN needs each level half the size of the one below (rounded '
            f'up), got level sizes {sizes}: level {level} is {sizes[level]}, '
            f'expected {expected}. Use input sizes divisible by '
            f'2**max_level = {2 ** self.max_level}')
    node = functools.partial(
        FusionNode, self.width, norm=self.norm, act=act, fusion=self.fusion,
        pool_padding=self.pool_padding, dtype=self.dtype,
        depthwise_impl=self.depthwise_impl, redundant_bias=self.redundant_bias)
    for i in range(self.repeats):
      p = BiFPNLayer(node, name=f'layer{i}')(p)
    return p
