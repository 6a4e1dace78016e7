"""Random box-aware augmentations for the tf.data input pipeline.

The conventions (image, boxes in pixel-edge `[ymin, xmin, ymax, xmax]`,
labels, stateless seeds) are those of `detector.data.preprocess`, which
holds the deterministic geometry these build on.
"""

from typing import Dict, Optional, Tuple

import tensorflow as tf

from detector.data import preprocess
from detector.data.preprocess import TensorLike

# ITU-R BT.601 luma weights. They sum to exactly 1 (unlike the 4-digit ones in
# tf.image.rgb_to_grayscale), so the saturation blend leaves grey pixels
# unchanged.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def random_horizontal_flip(
    image: tf.Tensor,
    boxes: tf.Tensor,
    seed: tf.Tensor,
    probability: float = 0.5,
) -> Tuple[tf.Tensor, tf.Tensor]:
  """Flips image and boxes left-right with the given probability.

  Flips within the full image width, so apply it before `resize_and_pad`:
  flipping a padded canvas would move the padding to the left.

  Args:
    image: `uint8` or `float32` tensor [h, w, C]; h, w may be dynamic.
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixels.
    seed: `int32`/`int64` tensor [2], stateless seed.
    probability: chance of flipping, in [0, 1].

  Returns:
    image: same dtype and shape as the input.
    boxes: `float32` [N, 4], `[ymin, xmin, ymax, xmax]` in pixels; when flipped
      x becomes `width - x` (xmin and xmax swap roles), exact in pixel-edge
      coordinates.
  """
  image = tf.convert_to_tensor(image)
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  do_flip = tf.random.stateless_uniform([], seed) < probability
  width = tf.cast(tf.shape(image)[1], tf.float32)

  def flip():
    # Indexing, not tf.unstack: works even when the last dim is not static.
    flipped = tf.stack([boxes[:, 0], width - boxes[:, 3],
                        boxes[:, 2], width - boxes[:, 1]], axis=-1)
    return tf.reverse(image, axis=[1]), flipped

  image, boxes = tf.cond(do_flip, flip, lambda: (image, boxes))
  return image, boxes


def random_scale_jitter(
    image: tf.Tensor,
    boxes: tf.Tensor,
    output_size: Tuple[int, int],
    min_scale: float,
    max_scale: float,
    seed: tf.Tensor,
    pad_value: TensorLike = 0,
    fit_size: Optional[Tuple[int, int]] = None,
) -> Tuple[tf.Tensor, tf.Tensor, Dict[str, tf.Tensor]]:
  """Random aspect-preserving rescale, random crop if too large, then pad.

  The scale multiplier is drawn **uniformly** in [min_scale, max_scale] (as in
  the large-scale-jitter recipes, so their ranges carry over) and multiplies
  the fitting scale `min(FH / h, FW / w)`, where `(FH, FW)` is `fit_size`
  (default: the output size). A `fit_size` larger than the output trains on
  crops at the scale of a larger evaluation input: objects keep the size they
  will have at test time while each training image costs less. Along each
  axis where the scaled image is larger than the output, the crop offset is
  drawn uniformly among the integer offsets 0..(scaled - output); elsewhere
  it is 0 and the image sits at the top-left with padding after it.

  Args:
    image: `uint8` or `float32` tensor [h, w, C]; h, w may be dynamic.
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixels of
      `image`.
    output_size: python `(H, W)`, the static output size.
    min_scale: smallest scale multiplier (> 0).
    max_scale: largest scale multiplier (>= min_scale).
    seed: `int32`/`int64` tensor [2], stateless seed.
    pad_value: value of output pixels the image does not cover.
    fit_size: python `(FH, FW)` the multiplier is relative to (None: the
      output size).

  Returns:
    image, boxes, info exactly as `preprocess.resize_and_pad`.
  """
  out_h, out_w = int(output_size[0]), int(output_size[1])
  image = tf.convert_to_tensor(image)
  scale_seed, offset_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  multiplier = tf.random.stateless_uniform(
      [], scale_seed, minval=min_scale, maxval=max_scale)

  # The scaled image has about round(size * scale) pixels (those whose centre
  # is inside it, see resize_and_pad); offsets up to that minus the output
  # size keep the output filled. In a float32 tie at k + 0.5 the last offset
  # may leave one row of padding, which valid_size then reports.
  size_f = tf.cast(tf.shape(image)[:2], tf.float32)
  fit_h, fit_w = (out_h, out_w) if fit_size is None else (
      int(fit_size[0]), int(fit_size[1]))
  # resize_and_pad applies its multiplier to the output's own fitting scale.
  out_fit = tf.minimum(out_h / size_f[0], out_w / size_f[1])
  multiplier *= tf.minimum(fit_h / size_f[0], fit_w / size_f[1]) / out_fit
  scale = out_fit * multiplier
  scaled_size = tf.cast(tf.floor(size_f * scale + 0.5), tf.int32)
  max_offset = tf.maximum(scaled_size - [out_h, out_w], 0)
  return preprocess.resize_and_pad(
      image, boxes, (out_h, out_w), scale_multiplier=multiplier,
      offset=_uniform_offset(max_offset, offset_seed), pad_value=pad_value)


def _uniform_offset(max_offset, seed):
  """int32 [2], each uniform over 0..max_offset."""
  # floor(u * (max_offset + 1)) with u in [0, 1) is uniform over
  # 0..max_offset; the minimum guards against float rounding when u ~ 1.
  u = tf.random.stateless_uniform([2], seed)
  offset = tf.cast(tf.floor(u * tf.cast(max_offset + 1, tf.float32)), tf.int32)
  return tf.minimum(offset, max_offset)


def random_color_jitter(
    image: tf.Tensor,
    seed: tf.Tensor,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
) -> tf.Tensor:
  """Photometric jitter: brightness, then contrast, then saturation.

  Boxes are unaffected. Each strength s draws from a uniform range:
  brightness adds delta * 255 with delta in [-s, s]; contrast scales each
  channel's distance from its image mean by a factor in [1 - s, 1 + s] (as
  `tf.image.adjust_contrast`); saturation scales each pixel's distance from
  its grey value (ITU-R BT.601 luma) by a factor
  in [1 - s, 1 + s]. A strength of 0 leaves that step out. Values are clipped to
  [0, 255] after every step, as they would saturate in a real image.

  Args:
    image: `uint8` or `float32` tensor [h, w, 3] with values in [0, 255].
    seed: `int32`/`int64` tensor [2], stateless seed.
    brightness: brightness strength, >= 0.
    contrast: contrast strength, in [0, 1].
    saturation: saturation strength, in [0, 1].

  Returns:
    `float32` tensor [h, w, 3] with values in [0, 255], same shape as `image`.
  """
  image = tf.cast(image, tf.float32)
  seeds = tf.random.experimental.stateless_split(seed, num=3)

  # Skipping a step with zero strength keeps the op an exact identity then
  # (the blends below are not bit-exact at factor 1 after clipping).
  if brightness:
    delta = tf.random.stateless_uniform(
        [], seeds[0], minval=-brightness, maxval=brightness)
    image = tf.clip_by_value(image + delta * 255.0, 0.0, 255.0)
  if contrast:
    factor = tf.random.stateless_uniform(
        [], seeds[1], minval=1.0 - contrast, maxval=1.0 + contrast)
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    image = tf.clip_by_value(mean + (image - mean) * factor, 0.0, 255.0)
  if saturation:
    factor = tf.random.stateless_uniform(
        [], seeds[2], minval=1.0 - saturation, maxval=1.0 + saturation)
    grey = tf.reduce_sum(image * _LUMA_WEIGHTS, axis=-1, keepdims=True)
    image = tf.clip_by_value(grey + (image - grey) * factor, 0.0, 255.0)
  return image


def mosaic(
    canvases,
    boxes,
    labels,
    valid_sizes,
    seed: tf.Tensor,
    min_visible_fraction: float = 0.0,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """Four training images in one: quadrant k around a random centre shows image k.

  The four inputs are already at the output size (e.g. from
  `random_scale_jitter`), so each keeps its own scale and crop, and the
  mosaic does not resample: output pixel (y, x) in quadrant k is pixel
  (y, x) of canvas k. The centre (cy, cx) is a uniform integer in
  [H/4, 3H/4] x [W/4, 3W/4]; quadrants are 0 top-left, 1 top-right,
  2 bottom-left, 3 bottom-right. A box keeps its pixels too: it is clipped to
  its quadrant (and to its canvas's valid region) and kept when that leaves at
  least `min_visible_fraction` of its unclipped area, as after a crop.

  Args:
    canvases: four float tensors [H, W, C] of the same static size.
    boxes: four float tensors [N_k, 4], `[ymin, xmin, ymax, xmax]` in pixels
      of their canvas, unclipped (`transform_boxes` of the originals), so that
      visibility is measured against whole objects.
    labels: four int tensors [N_k].
    valid_sizes: four int tensors [2], the part of each canvas the image covers
      (`info['valid_size']`); the rest is padding.
    seed: `int32`/`int64` tensor [2], stateless seed of the centre.
    min_visible_fraction: minimum clipped/unclipped area ratio, in [0, 1].

  Returns:
    image: float32 [H, W, C].
    boxes: float32 [sum N_k, 4] clipped to their quadrants.
    labels: int32 [sum N_k].
    keep: bool [sum N_k].
  """
  height, width = canvases[0].shape[0], canvases[0].shape[1]
  cy, cx = tf.unstack(_mosaic_centre(height, width, seed))
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  image = tf.zeros_like(canvases[0])
  out_boxes, out_labels, out_keep = [], [], []
  for k in range(4):
    bottom, right = k // 2 == 1, k % 2 == 1
    y0, y1 = (cy, height) if bottom else (0, cy)
    x0, x1 = (cx, width) if right else (0, cx)
    inside = ((rows >= y0) & (rows < y1)) & ((cols >= x0) & (cols < x1))
    image = tf.where(inside[:, :, None], tf.cast(canvases[k], image.dtype), image)
    valid = tf.cast(valid_sizes[k], tf.int32)
    clipped, _, keep = preprocess.clip_and_filter_boxes(
        boxes[k], labels[k], tf.minimum(y1, valid[0]), tf.minimum(x1, valid[1]),
        min_visible_fraction, top=y0, left=x0)
    out_boxes.append(clipped)
    out_keep.append(keep)
    out_labels.append(tf.cast(labels[k], tf.int32))
  return (image, tf.concat(out_boxes, 0), tf.concat(out_labels, 0),
          tf.concat(out_keep, 0))


def _mosaic_centre(height, width, seed):
  """A uniform integer (cy, cx) in [H/4, 3H/4] x [W/4, 3W/4]."""
  lo = tf.constant([height // 4, width // 4], tf.int32)
  hi = tf.constant([3 * height // 4 + 1, 3 * width // 4 + 1], tf.int32)
  return tf.random.stateless_uniform([2], seed, minval=0, maxval=2**30,
                                     dtype=tf.int32) % (hi - lo) + lo
