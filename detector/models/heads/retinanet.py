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

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from detector import errors
from detector.models import layers
from detector.ops import anchors as anchor_ops
from detector.ops import boxes as box_ops
from detector.ops import losses
from detector.ops import matching


class Head(nn.Module):
  """Pyramid features {level: [B, h_l, w_l, C]} -> {'cls_logits', 'box_deltas'}."""
  num_classes: int
  min_level: int = 3
  max_level: int = 5
  num_scales: int = 3
  aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0)
  width: int = 64           # Channels of the subnet convs.
  num_convs: int = 2        # 3x3 conv-relu layers per subnet (4 in the paper).
  norm: Optional[layers.ModuleDef] = None  # Shared over levels: None by default.
  prior_prob: float = 0.01
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features):
    missing = [l for l in range(self.min_level, self.max_level + 1)
               if l not in features]
    if missing:
      raise errors.ConfigError(f'retinanet head needs levels {self.min_level}..'
                       f'{self.max_level}, the neck lacks {missing}')
    num_anchors = anchor_ops.anchors_per_location(self.num_scales,
                                                  self.aspect_ratios)
    init = nn.initializers.normal(0.01)
    cls_convs = [layers.ConvNormAct(self.width, norm=self.norm, dtype=self.dtype,
                                    kernel_init=init, name=f'cls_conv{i}')
                 for i in range(self.num_convs)]
    box_convs = [layers.ConvNormAct(self.width, norm=self.norm, dtype=self.dtype,
                                    kernel_init=init, name=f'box_conv{i}')
                 for i in range(self.num_convs)]
    prior = -math.log((1 - self.prior_prob) / self.prior_prob)
    cls_out = nn.Conv(num_anchors * self.num_classes, (3, 3), padding='SAME',
                      dtype=self.dtype, kernel_init=init,
                      bias_init=nn.initializers.constant(prior), name='cls_out')
    box_out = nn.Conv(num_anchors * 4, (3, 3), padding='SAME', dtype=self.dtype,
                      kernel_init=init, name='box_out')
    cls_all, box_all = [], []
    for level in range(self.min_level, self.max_level + 1):
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


def anchors_for(config: ml_collections.ConfigDict):
  """Anchors [A, 4] yxyx pixels for `config.image_size` (a numpy constant)."""
  cfg = config.retinanet
  return anchor_ops.generate_anchors(
      tuple(config.image_size), cfg.min_level, cfg.max_level,
      num_scales=cfg.num_scales, aspect_ratios=tuple(cfg.aspect_ratios),
      anchor_scale=cfg.anchor_scale)


def loss(outputs, batch, config: ml_collections.ConfigDict):
  """Focal classification loss + box loss; see the module docstring.

  Returns:
    (scalar loss, {'cls_loss', 'box_loss', 'num_positives' (per image),
    'normalizer'}): both terms are sums over the batch divided by
    max(normalizer, 1), the number of positive anchors.
  """
  cfg = config.retinanet
  anchors = jnp.asarray(anchors_for(config))
  logits = outputs['cls_logits']
  num_classes = logits.shape[-1]
  matched, match_labels = jax.vmap(
      lambda gt, m: matching.match_anchors(
          anchors, gt, m, positive_iou=cfg.positive_iou,
          negative_iou=cfg.negative_iou))(batch['boxes'], batch['box_mask'])
  positive = match_labels == 1
  count = positive.sum().astype(jnp.float32)
  num_pos = jnp.maximum(count, 1.0)

  gt_labels = jnp.take_along_axis(batch['labels'], matched, axis=1)
  cls_targets = jax.nn.one_hot(gt_labels, num_classes) * positive[..., None]
  cls_weight = (match_labels >= 0).astype(jnp.float32)[..., None]
  cls_loss = (losses.sigmoid_focal_loss(logits, cls_targets, alpha=cfg.focal_alpha,
                                        gamma=cfg.focal_gamma)
              * cls_weight).sum() / num_pos

  gt_boxes = jnp.take_along_axis(batch['boxes'], matched[..., None], axis=1)
  if cfg.box_loss == 'giou':
    pred_boxes = box_ops.decode(outputs['box_deltas'], anchors)
    per_anchor = losses.giou_loss(pred_boxes, gt_boxes)
  elif cfg.box_loss == 'huber':
    per_anchor = losses.huber_loss(outputs['box_deltas'],
                                   box_ops.encode(gt_boxes, anchors),
                                   delta=cfg.huber_delta).sum(-1)
  else:
    raise errors.ConfigError(f'config.model.retinanet.box_loss={cfg.box_loss!r}: '
                     'expected giou or huber')
  box_loss = jnp.where(positive, per_anchor, 0.).sum() / num_pos
  total = cls_loss + cfg.box_loss_weight * box_loss
  return total, {'cls_loss': cls_loss, 'box_loss': box_loss,
                 'num_positives': positive.sum() / positive.shape[0],
                 'normalizer': count}


def merge_flipped(outputs, flipped, config: ml_collections.ConfigDict):
  """Averages the outputs for images and for their horizontal mirror images.

  `flipped` holds the head's outputs for `images[:, :, ::-1]`. On each level
  the anchor grid is symmetric about the middle of the padded input and every
  anchor shape is symmetric too, so anchor (y, x, a) of the mirror image sits
  over anchor (y, w - 1 - x, a) of the original; its dx changes sign. Class
  scores are averaged as probabilities, box deltas as they are.
  """
  cfg = config.retinanet
  sizes = anchor_ops.level_sizes(tuple(config.image_size), cfg.min_level,
                                 cfg.max_level)
  per_cell = anchor_ops.anchors_per_location(cfg.num_scales,
                                             tuple(cfg.aspect_ratios))

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


def decode(outputs, config: ml_collections.ConfigDict):
  """Top-k (anchor, class) scores -> candidate boxes (before NMS).

  Returns:
    dict of `boxes` [B, k, 4] yxyx input pixels, `scores` [B, k] in [0, 1],
    `classes` [B, k] int32, `valid` [B, k] bool, k = `retinanet.pre_nms_topk`.
  """
  cfg = config.retinanet
  anchors = jnp.asarray(anchors_for(config))
  logits = outputs['cls_logits']
  b, a, c = logits.shape
  k = min(cfg.pre_nms_topk, a * c)
  scores, idx = jax.lax.top_k(jax.nn.sigmoid(logits).reshape(b, -1), k)
  anchor_idx = idx // c
  deltas = jnp.take_along_axis(outputs['box_deltas'], anchor_idx[..., None], 1)
  boxes = box_ops.decode(deltas, anchors[anchor_idx])
  return {'boxes': boxes, 'scores': scores,
          'classes': (idx % c).astype(jnp.int32), 'valid': scores > 0}
