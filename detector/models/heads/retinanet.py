"""RetinaNet-style anchor head (Lin et al., 2017): shared class and box subnets.

Outputs, concatenated over levels min_level..max_level in the order of
`detector.ops.anchors.generate_anchors` (level, y, x, anchor):
  `cls_logits`: [B, A, C] per-anchor class logits (sigmoid, no background class).
  `box_deltas`: [B, A, 4] (dy, dx, dh, dw) relative to the anchors.

Training (inside the jitted step): anchors are matched to the padded ground
truth by IoU (positive >= `positive_iou`, negative < `negative_iou`, ignored in
between, plus each box's best anchors as low-quality positives); sigmoid focal
loss over non-ignored anchors and a box loss over positives (GIoU on decoded
boxes or Huber on deltas), both normalised by the number of positives in the
global batch.
"""

import dataclasses
import math
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from detector import errors
from detector.models import layers
from detector.models.heads import base
from detector.ops import anchors as anchor_ops
from detector.ops import boxes as box_ops
from detector.ops import losses
from detector.ops import matching

NAME = 'retinanet'
BOX_LOSSES = ('giou', 'huber')
# The class prediction layer (re-initialised or fitted by init_from).
CLASS_LAYERS = ('cls_out',)


@dataclasses.dataclass(frozen=True)
class Options:
  """`config.model.retinanet`: architecture, anchors, matching, loss, decoding."""
  min_level: int = 2
  max_level: int = 5
  num_scales: int = 3           # Anchor scales per octave.
  # Height / width ratios, or (height, width) multiplier pairs (see
  # detector.ops.anchors.generate_anchors).
  aspect_ratios: Sequence[Any] = (0.5, 1.0, 2.0)
  anchor_scale: float = 3.0     # Anchor side = anchor_scale * stride (x scale).
  # 'retinanet' or 'torchvision' (its AnchorGenerator's grid, rounding and
  # order: what torchvision's ported RetinaNets were trained with).
  anchor_style: str = 'retinanet'
  width: int = 64               # Channels of the subnet convs.
  num_convs: int = 2            # 3x3 conv-relu layers per subnet (4 in the paper).
  use_norm: bool = False        # Subnet convs get config.model.norm (shared over levels).
  prior_prob: float = 0.01
  positive_iou: float = 0.5
  negative_iou: float = 0.4
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  box_loss: str = 'giou'        # 'giou' (decoded boxes) or 'huber' (deltas).
  huber_delta: float = 0.1
  box_loss_weight: float = 2.0
  pre_nms_topk: int = 1000      # (anchor, class) candidates decoded per image.

  def __post_init__(self):
    object.__setattr__(self, 'aspect_ratios', tuple(
        tuple(r) if isinstance(r, (list, tuple)) else r
        for r in self.aspect_ratios))
    where = f'config.model.{NAME}'
    if self.box_loss not in BOX_LOSSES:
      raise errors.ConfigError(f'{where}.box_loss={self.box_loss!r}: expected '
                               f'one of {BOX_LOSSES}')
    if not 1 <= self.min_level <= self.max_level:
      raise errors.ConfigError(f'{where}: need 1 <= min_level <= max_level, got '
                               f'{self.min_level}..{self.max_level}')
    if not 0 <= self.negative_iou <= self.positive_iou <= 1:
      raise errors.ConfigError(
          f'{where}: need 0 <= negative_iou ({self.negative_iou}) <= '
          f'positive_iou ({self.positive_iou}) <= 1')
    if not 0 < self.prior_prob < 1:
      raise errors.ConfigError(f'{where}.prior_prob={self.prior_prob}: must be '
                               'in (0, 1)')
    for name in ('num_scales', 'anchor_scale', 'width', 'pre_nms_topk'):
      if not getattr(self, name) > 0:
        raise errors.ConfigError(f'{where}.{name}={getattr(self, name)}: must '
                                 'be > 0')
    try:
      anchor_ops.ratio_sides(self.aspect_ratios)
    except ValueError:
      raise errors.ConfigError(
          f'{where}.aspect_ratios={self.aspect_ratios}: need positive '
          'height / width ratios or (height, width) pairs') from None
    if self.anchor_style not in anchor_ops.STYLES:
      raise errors.ConfigError(f'{where}.anchor_style={self.anchor_style!r}: '
                               f'expected one of {anchor_ops.STYLES}')

  @property
  def levels(self) -> Tuple[int, ...]:
    return tuple(range(self.min_level, self.max_level + 1))

  def anchors(self, image_size):
    """Anchors [A, 4] yxyx pixels for a padded input of `image_size` (numpy)."""
    return anchor_ops.generate_anchors(
        tuple(image_size), self.min_level, self.max_level,
        num_scales=self.num_scales, aspect_ratios=self.aspect_ratios,
        anchor_scale=self.anchor_scale, style=self.anchor_style, uneven=True)


class Head(base.Head):
  """Pyramid features {level: [B, h_l, w_l, C]} -> {'cls_logits', 'box_deltas'}."""
  options: Options = Options()

  @nn.compact
  def __call__(self, features):
    o = self.options
    num_anchors = anchor_ops.anchors_per_location(o.num_scales, o.aspect_ratios)
    init = nn.initializers.normal(0.01)
    norm = self.conv_norm()
    cls_convs = [layers.ConvNormAct(o.width, norm=norm, dtype=self.dtype,
                                    kernel_init=init, name=f'cls_conv{i}')
                 for i in range(o.num_convs)]
    box_convs = [layers.ConvNormAct(o.width, norm=norm, dtype=self.dtype,
                                    kernel_init=init, name=f'box_conv{i}')
                 for i in range(o.num_convs)]
    prior = -math.log((1 - o.prior_prob) / o.prior_prob)
    cls_out = nn.Conv(num_anchors * self.num_classes, (3, 3), padding='SAME',
                      dtype=self.dtype, kernel_init=init,
                      bias_init=nn.initializers.constant(prior), name='cls_out')
    box_out = nn.Conv(num_anchors * 4, (3, 3), padding='SAME', dtype=self.dtype,
                      kernel_init=init, name='box_out')
    cls_all, box_all = [], []
    for level in o.levels:
      x = y = features[level]
      for conv in cls_convs:
        x = conv(x)
      for conv in box_convs:
        y = conv(y)
      b = x.shape[0]
      cls_all.append(cls_out(x).reshape(b, -1, self.num_classes))
      box_all.append(box_out(y).reshape(b, -1, 4))
    return {'cls_logits': jnp.concatenate(cls_all, 1).astype(jnp.float32),
            'box_deltas': jnp.concatenate(box_all, 1).astype(jnp.float32)}

  def loss(self, outputs, batch):
    """Focal classification loss + box loss; see the module docstring.

    Returns:
      (scalar loss, {'cls_loss', 'box_loss', 'num_positives' (per image),
      'normalizer'}): both terms are sums over the batch divided by
      max(normalizer, 1), the number of positive anchors.
    """
    o = self.options
    anchors = jnp.asarray(o.anchors(batch['image'].shape[1:3]))
    logits = outputs['cls_logits']
    matched, match_labels = jax.vmap(
        lambda gt, m: matching.match_anchors(
            anchors, gt, m, positive_iou=o.positive_iou,
            negative_iou=o.negative_iou))(batch['boxes'], batch['box_mask'])
    positive = match_labels == 1
    count = positive.sum().astype(jnp.float32)
    num_pos = jnp.maximum(count, 1.0)

    gt_labels = jnp.take_along_axis(batch['labels'], matched, axis=1)
    cls_targets = jax.nn.one_hot(gt_labels, logits.shape[-1]) * positive[..., None]
    cls_weight = (match_labels >= 0).astype(jnp.float32)[..., None]
    cls_loss = (losses.sigmoid_focal_loss(logits, cls_targets,
                                          alpha=o.focal_alpha,
                                          gamma=o.focal_gamma)
                * cls_weight).sum() / num_pos

    gt_boxes = jnp.take_along_axis(batch['boxes'], matched[..., None], axis=1)
    if o.box_loss == 'giou':
      pred_boxes = box_ops.decode(outputs['box_deltas'], anchors)
      per_anchor = losses.giou_loss(pred_boxes, gt_boxes)
    else:
      per_anchor = losses.huber_loss(outputs['box_deltas'],
                                     box_ops.encode(gt_boxes, anchors),
                                     delta=o.huber_delta).sum(-1)
    box_loss = jnp.where(positive, per_anchor, 0.).sum() / num_pos
    total = cls_loss + o.box_loss_weight * box_loss
    return total, {'cls_loss': cls_loss, 'box_loss': box_loss,
                   'num_positives': positive.sum() / positive.shape[0],
                   'normalizer': count}

  def merge_flipped(self, outputs, flipped, image_size):
    """Averages the outputs for images and for their horizontal mirror images.

    `flipped` holds the head's outputs for `images[:, :, ::-1]`. On each
    level the anchor grid is symmetric about the middle of the padded input
    and every anchor shape is symmetric too, so anchor (y, x, a) of the
    mirror image sits over anchor (y, w - 1 - x, a) of the original; its dx
    changes sign. Class scores are averaged as probabilities, box deltas as
    they are.
    """
    o = self.options
    if o.anchor_style != 'retinanet':
      raise errors.ConfigError(
          f'config.model.flip_test needs anchors symmetric about the image '
          f'centre, and anchor_style={o.anchor_style!r} has none (its grid '
          'starts at 0): set --config.model.flip_test=False')
    sizes = anchor_ops.level_sizes(tuple(image_size), o.min_level, o.max_level,
                                   uneven=True)
    per_cell = anchor_ops.anchors_per_location(o.num_scales, o.aspect_ratios)

    def mirror(x):
      b, parts, start = x.shape[0], [], 0
      for h, w in sizes:
        n = h * w * per_cell
        grid = x[:, start:start + n].reshape(b, h, w, per_cell, -1)
        parts.append(grid[:, :, ::-1].reshape(b, n, -1))
        start += n
      return jnp.concatenate(parts, axis=1)

    probs = 0.5 * (jax.nn.sigmoid(outputs['cls_logits'])
                   + jax.nn.sigmoid(mirror(flipped['cls_logits'])))
    probs = jnp.clip(probs, 1e-7, 1 - 1e-7)
    deltas_back = mirror(flipped['box_deltas']) * jnp.array([1., -1., 1., 1.])
    return {'cls_logits': jnp.log(probs) - jnp.log1p(-probs),
            'box_deltas': 0.5 * (outputs['box_deltas'] + deltas_back)}

  def decode(self, outputs, image_size):
    """Top-k (anchor, class) scores -> candidate boxes (before NMS).

    Returns:
      dict of `boxes` [B, k, 4] yxyx input pixels, `scores` [B, k] in [0, 1],
      `classes` [B, k] int32, `valid` [B, k] bool, k = `pre_nms_topk`.
    """
    anchors = jnp.asarray(self.options.anchors(image_size))
    logits = outputs['cls_logits']
    b, a, c = logits.shape
    k = min(self.options.pre_nms_topk, a * c)
    scores, idx = jax.lax.top_k(jax.nn.sigmoid(logits).reshape(b, -1), k)
    anchor_idx = idx // c
    deltas = jnp.take_along_axis(outputs['box_deltas'], anchor_idx[..., None], 1)
    boxes = box_ops.decode(deltas, anchors[anchor_idx])
    return {'boxes': boxes, 'scores': scores,
            'classes': (idx % c).astype(jnp.int32), 'valid': scores > 0}
