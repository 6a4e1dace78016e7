"""Anchor-free centre-based head on one stride-4 level (CenterNet / TTFNet style).

Outputs, on pyramid level `level` (stride s = 2**level) of size [h, w]:
  `heatmap`: [B, h, w, C] logits; a cell's class score is the probability that an
    object of that class has its centre in the cell.
  `tlbr`: [B, h, w, 4] non-negative distances in input pixels from the cell's
    centre ((y + 0.5) s, (x + 0.5) s) to the box's top, left, bottom and
    right edges (the order of yxyx boxes).

Training targets (Zhou et al. 2019 for the heatmap; Liu et al. 2019, TTFNet,
for the box regression), computed inside the jitted step from the padded
ground truth:
  * heatmap: per class, the maximum over that class's boxes of an elliptical
    Gaussian centred on the cell holding the box centre, sigma = alpha * size / 6;
    it is exactly 1 at that cell; loss = penalty-reduced focal loss.
  * boxes: every cell whose centre lies inside a box (or that holds its centre)
    regresses that box with a GIoU loss weighted by the Gaussian; a cell inside
    several boxes takes the one whose Gaussian is highest there. Each box's
    weights sum to 1, so small and large objects count alike.
Both losses are normalised by the number of boxes in the global batch.
"""

import dataclasses
import math
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from detector import errors
from detector.models import layers
from detector.models.heads import base
from detector.ops import losses

NAME = 'centernet'
# The class prediction layer (re-initialised or fitted by init_from).
CLASS_LAYERS = ('heatmap_out',)


@dataclasses.dataclass(frozen=True)
class Options:
  """`config.model.centernet`: architecture, loss and decoding."""
  level: int = 2              # Pyramid level read (stride 2**level).
  width: int = 64             # Channels of the convs in each branch.
  num_convs: int = 1          # 3x3 conv-norm-relu layers in each branch.
  shared_convs: bool = True   # One conv tower feeding both outputs.
  output_kernel: int = 1      # Kernel size of the two output convs.
  use_norm: bool = True       # The towers' convs get config.model.norm.
  prior_prob: float = 0.01    # Initial heatmap probability (focal-loss prior).
  box_scale: float = 16.0     # tlbr = softplus(raw) * box_scale pixels.
  gaussian_alpha: float = 0.54  # Heatmap Gaussian size relative to the box.
  box_loss_weight: float = 5.0
  topk: int = 100             # Heatmap peaks decoded per image.

  def __post_init__(self):
    _check_positive(self, 'width', 'output_kernel', 'box_scale',
                    'gaussian_alpha', 'topk')
    if self.num_convs < 0 or self.box_loss_weight < 0:
      raise errors.ConfigError(f'config.model.{NAME}: num_convs and '
                               'box_loss_weight must be >= 0')
    if not 0 < self.prior_prob < 1:
      raise errors.ConfigError(f'config.model.{NAME}.prior_prob='
                               f'{self.prior_prob}: must be in (0, 1)')

  @property
  def levels(self) -> Tuple[int, ...]:
    return (self.level,)


def _check_positive(options, *names):
  for name in names:
    if not getattr(options, name) > 0:
      raise errors.ConfigError(f'config.model.{NAME}.{name}='
                               f'{getattr(options, name)}: must be > 0')


def _cell_centres(h, w, stride):
  ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) * stride
  xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) * stride
  return ys, xs


def _tlbr_to_boxes(tlbr, stride):
  """[..., h, w, 4] distances -> [..., h, w, 4] yxyx pixel boxes."""
  h, w = tlbr.shape[-3:-1]
  ys, xs = _cell_centres(h, w, stride)
  cy = ys[:, None]
  cx = xs[None, :]
  return jnp.stack([cy - tlbr[..., 0], cx - tlbr[..., 1],
                    cy + tlbr[..., 2], cx + tlbr[..., 3]], axis=-1)


class Head(base.Head):
  """Pyramid features {level: [B, h, w, C]} -> {'heatmap', 'tlbr'} (float32)."""
  options: Options = Options()

  @nn.compact
  def __call__(self, features):
    o = self.options
    x = features[o.level]
    norm = self.conv_norm()

    def tower(name):
      y = x
      for i in range(o.num_convs):
        y = layers.ConvNormAct(o.width, norm=norm, dtype=self.dtype,
                               name=f'{name}_conv{i}')(y)
      return y

    def output(y, name, out, bias_init):
      k = o.output_kernel
      return nn.Conv(out, (k, k), padding='SAME', dtype=self.dtype,
                     param_dtype=jnp.float32,
                     kernel_init=nn.initializers.normal(0.01),
                     bias_init=bias_init, name=f'{name}_out')(y)

    heat_in = tower('shared' if o.shared_convs else 'heatmap')
    box_in = heat_in if o.shared_convs else tower('box')
    prior = -math.log((1 - o.prior_prob) / o.prior_prob)
    heatmap = output(heat_in, 'heatmap', self.num_classes,
                     nn.initializers.constant(prior))
    tlbr = output(box_in, 'box', 4, nn.initializers.zeros)
    tlbr = nn.softplus(tlbr.astype(jnp.float32)) * o.box_scale
    return {'heatmap': heatmap.astype(jnp.float32), 'tlbr': tlbr}

  def loss(self, outputs, batch):
    """Heatmap focal loss + weighted GIoU box loss (the module docstring).

    Returns:
      (scalar loss, {'heatmap_loss', 'box_loss', 'normalizer'}): both terms
      are sums over the batch divided by max(normalizer, 1), the number of
      boxes (gradient accumulation rebuilds a whole batch's loss from it).
    """
    o = self.options
    heat_logits = outputs['heatmap']
    _, h, w, c = heat_logits.shape
    stride = 2 ** o.level
    heatmap, box_targets, box_weights = jax.vmap(
        lambda bx, lb, m: targets_one_image(bx, lb, m, c, (h, w), stride,
                                            alpha=o.gaussian_alpha))(
                                                batch['boxes'], batch['labels'],
                                                batch['box_mask'])
    count = batch['box_mask'].sum().astype(jnp.float32)
    num_boxes = jnp.maximum(count, 1.0)
    heat_loss = losses.gaussian_focal_loss(heat_logits, heatmap).sum() / num_boxes
    pred_boxes = _tlbr_to_boxes(outputs['tlbr'], stride)
    giou = losses.giou_loss(pred_boxes, box_targets)
    box_loss = (giou * box_weights).sum() / num_boxes
    total = heat_loss + o.box_loss_weight * box_loss
    return total, {'heatmap_loss': heat_loss, 'box_loss': box_loss,
                   'normalizer': count}

  def merge_flipped(self, outputs, flipped, image_size):
    """Averages the outputs for images and for their horizontal mirror images.

    `flipped` holds the head's outputs for `images[:, :, ::-1]`. Mirrored
    back, its cell x sits over cell w - 1 - x (cell centres are symmetric
    about the middle of the padded input) and its left and right distances
    swap places. Heatmaps are averaged as probabilities, as in CenterNet's
    flip test.
    """
    del image_size  # The cell grid is the outputs' own.
    heat = 0.5 * (jax.nn.sigmoid(outputs['heatmap'])
                  + jax.nn.sigmoid(flipped['heatmap'][:, :, ::-1]))
    heat = jnp.clip(heat, 1e-7, 1 - 1e-7)
    tlbr_back = flipped['tlbr'][:, :, ::-1][..., jnp.array([0, 3, 2, 1])]
    return {'heatmap': jnp.log(heat) - jnp.log1p(-heat),
            'tlbr': 0.5 * (outputs['tlbr'] + tlbr_back)}

  def decode(self, outputs, image_size):
    """Top-k heatmap peaks -> candidate boxes (before NMS).

    A cell is a peak when its score is the maximum of its 3x3 neighbourhood
    for that class; the `topk` highest peaks are returned.

    Returns:
      dict of `boxes` [B, k, 4] yxyx input pixels, `scores` [B, k] in [0, 1],
      `classes` [B, k] int32, `valid` [B, k] bool.
    """
    del image_size  # Boxes come from the cells' own positions.
    o = self.options
    heat = jax.nn.sigmoid(outputs['heatmap'])
    b, h, w, c = heat.shape
    pooled = jax.lax.reduce_window(heat, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                                   (1, 1, 1, 1), 'SAME')
    heat = jnp.where(heat == pooled, heat, 0.)
    k = min(o.topk, h * w * c)
    scores, idx = jax.lax.top_k(heat.reshape(b, -1), k)
    cell = idx // c
    classes = (idx % c).astype(jnp.int32)
    boxes = _tlbr_to_boxes(outputs['tlbr'], 2 ** o.level).reshape(b, h * w, 4)
    boxes = jnp.take_along_axis(boxes, cell[..., None], axis=1)
    return {'boxes': boxes, 'scores': scores, 'classes': classes,
            'valid': scores > 0}


def targets_one_image(boxes, labels, mask, num_classes, feature_size, stride,
                      alpha=0.54, min_sigma=0.35):
  """Training targets for one image.

  Args:
    boxes: [K, 4] `[ymin, xmin, ymax, xmax]` in pixels of the padded input.
    labels: [K] int32 class indices.
    mask: [K] bool, False for padding.
    num_classes: number of classes C.
    feature_size: (h, w) of the output level.
    stride: its stride in input pixels.
    alpha: Gaussian size relative to the box (TTFNet's 0.54).
    min_sigma: lower bound on sigma in cells, so tiny boxes still get a peak.

  Returns:
    heatmap [h, w, C] in [0, 1], exactly 1 at each box's centre cell;
    box_targets [h, w, 4] yxyx pixels; box_weights [h, w], summing to 1 per box.
  """
  h, w = feature_size
  ymin, xmin, ymax, xmax = jnp.moveaxis(boxes, -1, 0)
  cy = jnp.clip(jnp.floor((ymin + ymax) / 2 / stride), 0, h - 1)
  cx = jnp.clip(jnp.floor((xmin + xmax) / 2 / stride), 0, w - 1)
  sy = jnp.maximum(alpha * (ymax - ymin) / stride / 6, min_sigma)
  sx = jnp.maximum(alpha * (xmax - xmin) / stride / 6, min_sigma)
  gy = jnp.arange(h, dtype=jnp.float32)
  gx = jnp.arange(w, dtype=jnp.float32)
  dy = (gy[None, :] - cy[:, None]) ** 2 / (2 * sy[:, None] ** 2)  # [K, h]
  dx = (gx[None, :] - cx[:, None]) ** 2 / (2 * sx[:, None] ** 2)  # [K, w]
  gauss = jnp.exp(-(dy[:, :, None] + dx[:, None, :]))              # [K, h, w]
  gauss = jnp.where(mask[:, None, None], gauss, 0.)

  onehot = jax.nn.one_hot(labels, num_classes) * mask[:, None]
  heatmap = jnp.max(gauss[..., None] * onehot[:, None, None, :], axis=0)

  ys, xs = _cell_centres(h, w, stride)
  inside = ((ys[None, :, None] > ymin[:, None, None])
            & (ys[None, :, None] < ymax[:, None, None])
            & (xs[None, None, :] > xmin[:, None, None])
            & (xs[None, None, :] < xmax[:, None, None]))
  centre = gauss >= 1.0 - 1e-6
  region = jnp.where((inside | centre) & mask[:, None, None], gauss, 0.)
  region = region / jnp.maximum(region.sum(axis=(1, 2), keepdims=True), 1e-12)
  best = jnp.argmax(region, axis=0)                                 # [h, w]
  box_weights = jnp.max(region, axis=0)
  box_targets = boxes[best]
  return heatmap, box_targets, box_weights
