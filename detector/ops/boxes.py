"""Box geometry: areas, IoU, GIoU, delta encoding and format conversions.

Convention used throughout the project unless a function says otherwise:

  * A box is `[ymin, xmin, ymax, xmax]` ("yxyx"), float32, in pixels of the
    padded model input. `ymax - ymin` is the height; there is no "+1" pixel
    convention (a box from 0 to 10 is 10 pixels tall).
  * A box whose max is below its min on either axis is "inverted" and has
    area 0. Such boxes appear as padding or as raw network outputs and must
    never produce NaNs.

All functions except the two format conversions are written in `jax.numpy`
with static shapes, so they work under `jax.jit` and `jax.vmap`. The format
conversions also accept NumPy arrays and return NumPy arrays for them, because
they are used in data pipelines and COCO evaluation outside of JAX.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

# Default clamp for the log-scale deltas in `decode`, as in Detectron2
# (`_DEFAULT_SCALE_CLAMP`): without it a large predicted dh/dw overflows exp()
# to inf early in training and the loss becomes NaN.
DEFAULT_MAX_LOG_SCALE = math.log(1000.0 / 16.0)

# Smallest side length (pixels) used when taking logs in `encode`. Padding
# boxes are all-zero; their deltas are masked out by the loss, but a -inf or
# NaN that is multiplied by a zero mask is still NaN, so it must not appear.
_MIN_SIDE = 1e-6


def area(boxes):
  """Areas of boxes.

  Args:
    boxes: float array [..., 4], `[ymin, xmin, ymax, xmax]` in pixels.

  Returns:
    float array [...], same dtype as `boxes`, >= 0. Inverted or degenerate boxes
    (max <= min on either axis) have area 0.
  """
  boxes = jnp.asarray(boxes)
  height = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  width = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return height * width


def _safe_divide(numerator, denominator):
  """numerator / denominator, and 0 where denominator <= 0.

  The inner `where` keeps the division itself finite so that the gradient of the
  unused branch is not NaN (a NaN there would leak through `where`'s VJP).
  """
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0),
                   0.0)


def _intersection(a, b):
  """Intersection area of broadcastable box arrays a [..., 4] and b [..., 4]."""
  height = jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0])
  width = jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1])
  return jnp.maximum(height, 0.0) * jnp.maximum(width, 0.0)


def pairwise_iou(a, b):
  """Intersection over union between every box of `a` and every box of `b`.

  Args:
    a: float array [..., N, 4], `[ymin, xmin, ymax, xmax]` in pixels.
    b: float array [..., M, 4], same format. Leading dimensions of `a` and `b`
      broadcast against each other.

  Returns:
    float array [..., N, M] with values in [0, 1]. Pairs whose union is 0 (both
    boxes empty or inverted) get IoU 0 rather than NaN.
  """
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  inter = _intersection(a[..., :, None, :], b[..., None, :, :])
  union = area(a)[..., :, None] + area(b)[..., None, :] - inter
  return _safe_divide(inter, union)


def giou(a, b):
  """Generalised IoU (Rezatofighi et al., 2019) of corresponding boxes.

  GIoU = IoU - (C - U) / C, where U is the union area and C the area of the
  smallest axis-aligned box enclosing both.

  Args:
    a: float array [..., 4], `[ymin, xmin, ymax, xmax]` in pixels.
    b: float array [..., 4], same format, broadcastable against `a`.

  Returns:
    float array [...] with values in [-1, 1]; 1 for identical non-empty boxes,
    approaching -1 for small boxes far apart. Where the union is 0 the IoU term
    is 0, and where the enclosing box is empty the penalty term is 0, so two
    empty boxes give 0 instead of NaN. Inverted boxes count as area 0 but still
    stretch the enclosing box, so the loss keeps a useful gradient for them.
  """
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  inter = _intersection(a, b)
  union = area(a) + area(b) - inter
  iou = _safe_divide(inter, union)
  enclosing = jnp.concatenate([
      jnp.minimum(a[..., :2], b[..., :2]),
      jnp.maximum(a[..., 2:], b[..., 2:]),
  ], axis=-1)
  enclosing_area = area(enclosing)
  return iou - _safe_divide(enclosing_area - union, enclosing_area)


def _center_size(boxes):
  """Splits yxyx boxes [..., 4] into (cy, cx, h, w), each [...]."""
  height = boxes[..., 2] - boxes[..., 0]
  width = boxes[..., 3] - boxes[..., 1]
  cy = boxes[..., 0] + 0.5 * height
  cx = boxes[..., 1] + 0.5 * width
  return cy, cx, height, width


def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
  """Encodes boxes as regression deltas relative to anchors (Faster R-CNN).

    dy = wy * (cy - cya) / ha      dx = wx * (cx - cxa) / wa
    dh = wh * log(h / ha)          dw = ww * log(w / wa)

  where (cy, cx, h, w) are the centre and size of a box and the `a` suffix
  marks the anchor.

  Args:
    boxes: float array [..., 4], target boxes `[ymin, xmin, ymax, xmax]` in
      pixels, broadcastable against `anchors`.
    anchors: float array [..., 4], anchors in the same format.
    weights: four floats `(wy, wx, wh, ww)`. Note the y-first order, which
      differs from Detectron2's `(wx, wy, ww, wh)`; Faster R-CNN's second stage
      uses `(10, 10, 5, 5)`.

  Returns:
    float array [..., 4] of deltas `(dy, dx, dh, dw)`, unbounded. Box and anchor
    sides are floored at 1e-6 pixels before the logs, so empty padding boxes
    give large but finite deltas (they must be masked out by the caller).
  """
  boxes = jnp.asarray(boxes)
  anchors = jnp.asarray(anchors)
  wy, wx, wh, ww = weights
  cy, cx, h, w = _center_size(boxes)
  cya, cxa, ha, wa = _center_size(anchors)
  h = jnp.maximum(h, _MIN_SIDE)
  w = jnp.maximum(w, _MIN_SIDE)
  ha = jnp.maximum(ha, _MIN_SIDE)
  wa = jnp.maximum(wa, _MIN_SIDE)
  dy = wy * (cy - cya) / ha
  dx = wx * (cx - cxa) / wa
  dh = wh * jnp.log(h / ha)
  dw = ww * jnp.log(w / wa)
  return jnp.stack([dy, dx, dh, dw], axis=-1)


def decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0),
           max_log_scale=DEFAULT_MAX_LOG_SCALE):
  """Inverse of `encode`: applies regression deltas to anchors.

  Args:
    deltas: float array [..., 4], `(dy, dx, dh, dw)` as produced by `encode`
      (or predicted by a box head), broadcastable against `anchors`.
    anchors: float array [..., 4], `[ymin, xmin, ymax, xmax]` in pixels.
    weights: four floats `(wy, wx, wh, ww)`, the same as given to `encode`.
    max_log_scale: upper clamp for dh / wh and dw / ww (after dividing by the
      weights, as Detectron2 does) before `exp`, so a box can grow at most by
      exp(max_log_scale) (62.5x with the default) relative to its anchor.

  Returns:
    float array [..., 4], decoded boxes `[ymin, xmin, ymax, xmax]` in pixels,
    not clipped to the image (use `clip`). Always finite for finite inputs.
  """
  deltas = jnp.asarray(deltas)
  anchors = jnp.asarray(anchors)
  wy, wx, wh, ww = weights
  cya, cxa, ha, wa = _center_size(anchors)
  cy = deltas[..., 0] / wy * ha + cya
  cx = deltas[..., 1] / wx * wa + cxa
  h = ha * jnp.exp(jnp.minimum(deltas[..., 2] / wh, max_log_scale))
  w = wa * jnp.exp(jnp.minimum(deltas[..., 3] / ww, max_log_scale))
  return jnp.stack(
      [cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def _array_module(x):
  """jax.numpy for JAX arrays and tracers, NumPy for everything else."""
  return jnp if isinstance(x, jax.Array) else np


def yxyx_to_xywh(boxes):
  """Converts `[ymin, xmin, ymax, xmax]` to COCO `[xmin, ymin, width, height]`.

  Args:
    boxes: float array [..., 4] (NumPy array, list, or JAX array) in pixels.

  Returns:
    array [..., 4] `[xmin, ymin, width, height]`, a NumPy array for NumPy or
    list input and a JAX array for JAX input; same dtype as the input array.
    Widths and heights of inverted boxes come out negative (nothing is clipped),
    so the conversion is exactly invertible.
  """
  xp = _array_module(boxes)
  boxes = xp.asarray(boxes)
  return xp.stack([
      boxes[..., 1],
      boxes[..., 0],
      boxes[..., 3] - boxes[..., 1],
      boxes[..., 2] - boxes[..., 0],
  ], axis=-1)


def xywh_to_yxyx(boxes):
  """Converts COCO `[xmin, ymin, width, height]` to `[ymin, xmin, ymax, xmax]`.

  Args:
    boxes: float array [..., 4] (NumPy array, list, or JAX array) in pixels.

  Returns:
    array [..., 4] `[ymin, xmin, ymax, xmax]`, a NumPy array for NumPy or list
    input and a JAX array for JAX input; same dtype as the input array.
  """
  xp = _array_module(boxes)
  boxes = xp.asarray(boxes)
  return xp.stack([
      boxes[..., 1],
      boxes[..., 0],
      boxes[..., 1] + boxes[..., 3],
      boxes[..., 0] + boxes[..., 2],
  ], axis=-1)


def clip(boxes, height, width):
  """Clips boxes to the image rectangle [0, height] x [0, width].

  Args:
    boxes: float array [..., 4], `[ymin, xmin, ymax, xmax]` in pixels.
    height: image height in pixels, a scalar or an array broadcastable against
      `boxes[..., 0]` (e.g. [B, 1] for per-image sizes with boxes [B, N, 4]).
    width: image width in pixels, same rules as `height`.

  Returns:
    float array [..., 4], same dtype as `boxes`, with y coordinates in
    [0, height] and x coordinates in [0, width]. A box entirely outside the
    image collapses to a zero-area box on the border.
  """
  # NumPy in, NumPy out: host-side callers (COCO export) must not pay for
  # eager JAX dispatch and a compilation per distinct number of boxes.
  xp = _array_module(boxes)
  boxes = xp.asarray(boxes)
  # Clip per coordinate so that `height` / `width` broadcast against the box
  # dimensions rather than against the trailing 4.
  ymin = xp.clip(boxes[..., 0], 0.0, height)
  xmin = xp.clip(boxes[..., 1], 0.0, width)
  ymax = xp.clip(boxes[..., 2], 0.0, height)
  xmax = xp.clip(boxes[..., 3], 0.0, width)
  return xp.stack([ymin, xmin, ymax, xmax], axis=-1).astype(boxes.dtype)
