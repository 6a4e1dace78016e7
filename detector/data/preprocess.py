"""Box-aware preprocessing ops for the tf.data input pipeline.

Every op here is pure TensorFlow (no JAX), runs eagerly and inside
`tf.data.Dataset.map` (graph mode) with dynamic input sizes, and transforms an
image together with its boxes so that the boxes keep describing the same
pixels.

Conventions used by every function in this module:

  * image: `uint8` or `float32` tensor of shape [h, w, 3] (h, w may be
    dynamic). Ops that resample return `float32` with values in the input's
    range (a `uint8` image becomes `float32` in [0, 255]; nothing is rescaled
    to [0, 1]).
  * boxes: `float32` tensor of shape [N, 4], `[ymin, xmin, ymax, xmax]` in
    pixels, using pixel-edge coordinates: pixel row i spans [i, i + 1), so a box
    covering exactly rows 2..4 is ymin=2, ymax=5, and a box covering the whole
    image is [0, 0, h, w]. TFDS stores boxes normalised to [0, 1]; convert with
    `normalized_to_pixels` first.
  * labels: `int32` tensor of shape [N].
  * seed: `int32` or `int64` tensor of shape [2]. All randomness is stateless
    (`tf.random.stateless_*`), so the same seed gives the same result eagerly,
    in graph mode, and under any tf.data parallelism or element order. Ops that
    need several random numbers derive sub-seeds with
    `tf.random.experimental.stateless_split`. Callers should give each op its
    own seed (split one per-example seed) rather than reuse one seed for two
    ops, which would correlate their draws.

Geometry: with pixel-edge coordinates an aspect-preserving resize by `scale`
followed by a shift is the exact affine map `out = in * scale + offset` for
both pixels and boxes. `resize_and_pad` implements it with
`tf.raw_ops.ScaleAndTranslate`, the kernel behind
`tf.image.resize(..., antialias=True)`, because that op takes the scale and the
translation directly: the pixels are resampled with exactly the scalar scale
that is applied to the boxes and reported in `info`, instead of a per-axis
scale rounded to integer output sizes.
"""

from typing import Dict, Optional, Tuple, Union

import tensorflow as tf

TensorLike = Union[tf.Tensor, int, float]

# ITU-R BT.601 luma weights. They sum to exactly 1 (unlike the 4-digit ones in
# tf.image.rgb_to_grayscale), so the saturation blend leaves grey pixels
# unchanged.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Rounds and clips a [0, 255] float image to uint8."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def normalized_to_pixels(boxes: tf.Tensor, height: TensorLike,
                         width: TensorLike) -> tf.Tensor:
  """Converts normalised boxes to pixel boxes.

  Args:
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` normalised to [0, 1]
      of the image size (the TFDS convention).
    height: image height in pixels (python or tensor scalar, any numeric dtype).
    width: image width in pixels (python or tensor scalar, any numeric dtype).

  Returns:
    float32 tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixel-edge coordinates
    (pixel i spans [i, i + 1), so 1.0 maps to `height` / `width`).
  """
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  return boxes * _yxyx_factors(height, width)


def pixels_to_normalized(boxes: tf.Tensor, height: TensorLike,
                         width: TensorLike) -> tf.Tensor:
  """Converts pixel boxes to normalised ones (inverse of normalized_to_pixels).

  Args:
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixel-edge
      coordinates.
    height: image height in pixels (python or tensor scalar, any numeric dtype).
    width: image width in pixels (python or tensor scalar, any numeric dtype).

  Returns:
    float32 tensor [N, 4], `[ymin, xmin, ymax, xmax]` normalised to [0, 1].
  """
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  return boxes / _yxyx_factors(height, width)


def _yxyx_factors(height: TensorLike, width: TensorLike) -> tf.Tensor:
  """Returns float32 [4] `[height, width, height, width]`."""
  height = tf.cast(height, tf.float32)
  width = tf.cast(width, tf.float32)
  return tf.stack([height, width, height, width])


def transform_boxes(boxes: tf.Tensor, info: Dict[str, tf.Tensor]) -> tf.Tensor:
  """Maps original-image boxes to output pixels with a resize `info`, unclipped.

  `resize_and_pad` and `random_scale_jitter` already return clipped boxes. This
  gives the unclipped ones, which `clip_and_filter_boxes` needs to measure what
  fraction of each box a crop kept (`min_visible_fraction`), and which maps
  any other original-image coordinates (e.g. keypoints' boxes) the same way.

  Args:
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixels of the
      original image.
    info: the dict returned by `resize_and_pad` / `random_scale_jitter`; uses
      `scale` (float32 scalar) and `offset` (float32 [2], y then x).

  Returns:
    float32 tensor [N, 4], `[ymin, xmin, ymax, xmax]` in output pixels,
    `boxes * scale + offset`, not clipped.
  """
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  offset = tf.tile(tf.cast(info['offset'], tf.float32), [2])
  return boxes * tf.cast(info['scale'], tf.float32) + offset


def resize_and_pad(
    image: tf.Tensor,
    boxes: tf.Tensor,
    output_size: Tuple[int, int],
    scale_multiplier: TensorLike = 1.0,
    offset: Optional[tf.Tensor] = None,
    pad_value: TensorLike = 0,
) -> Tuple[tf.Tensor, tf.Tensor, Dict[str, tf.Tensor]]:
  """Aspect-preserving resize into a fixed-size canvas, with boxes.

  The image is scaled by `scale = min(H / h, W / w) * scale_multiplier`, so
  with `scale_multiplier=1` it just fits in `output_size`. Output pixel
  (y, x) shows scaled-image pixel (y + offset[0], x + offset[1]): the default
  offset (0, 0) puts the image at the top-left; a positive offset crops a
  scaled image that is larger than the output (what `random_scale_jitter`
  does). Output pixels not covered by the image are set to `pad_value`.

  Resampling uses the triangle (bilinear) kernel of
  `tf.image.resize(..., antialias=True)`, which low-pass filters when
  downscaling and is plain bilinear interpolation when upscaling. When
  h * scale is not an integer the image edge falls inside an output pixel;
  like the resize kernel, that pixel counts as image iff its centre lies inside
  the scaled image, so `valid_size` is about round(h * scale - offset).

  Args:
    image: `uint8` or `float32` tensor [h, w, C] (C = 3 for RGB); h, w may be
      dynamic.
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixels of
      `image`.
    output_size: python `(H, W)`; the output image has this static size.
    scale_multiplier: python or float32 scalar tensor multiplying the fitting
      scale (> 1 makes the scaled image overflow the output; see `offset`).
    offset: optional int tensor [2], `(y, x)` >= 0: position in the scaled
      image of the output's top-left pixel, i.e. the crop offset in scaled
      pixels. Defaults to (0, 0).
    pad_value: value written to output pixels the image does not cover.

  Returns:
    image: `float32` tensor [H, W, C], static shape.
    boxes: `float32` tensor [N, 4], `[ymin, xmin, ymax, xmax]` in output
      pixels: `boxes * scale + info['offset']`, clipped to the part of the
      output covered by the image (so boxes cropped away collapse to zero
      area; use `clip_and_filter_boxes` to flag them).
    info: dict with
      `scale`: `float32` scalar, output pixels per original pixel;
      `offset`: `float32` [2], `(y, x)` position of the original image's origin
        in output pixels (`-offset`, so negative when cropped);
      `valid_size`: `int32` [2], `(height, width)` of the top-left region of
        the output whose pixel centres lie inside the scaled image (these hold
        resampled image values); everything outside is `pad_value`;
      `original_size`: `int32` [2], `(h, w)` of the input image (to map
        predictions back: `original = (output - offset) / scale`).
  """
  out_h, out_w = int(output_size[0]), int(output_size[1])
  image = tf.convert_to_tensor(image)
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  shape = tf.shape(image)
  original_size = shape[:2]
  size_f = tf.cast(original_size, tf.float32)

  scale = tf.minimum(out_h / size_f[0], out_w / size_f[1])
  scale *= tf.cast(scale_multiplier, tf.float32)

  if offset is None:
    offset = tf.zeros([2], tf.int32)
  offset = tf.cast(offset, tf.int32)
  # A negative offset would put padding above/left of the image, which
  # `valid_size` (a top-left region) cannot describe; fail loudly instead of
  # returning inconsistent info.
  with tf.control_dependencies([
      tf.debugging.assert_non_negative(
          offset, message='resize_and_pad: offset must be >= 0')
  ]):
    offset_f = tf.cast(offset, tf.float32)

  valid_size = tf.stack([
      _count_sampled_pixels(original_size[0], scale, offset_f[0], out_h),
      _count_sampled_pixels(original_size[1], scale, offset_f[1], out_w),
  ])

  # ScaleAndTranslate maps output pixel centre c to input (c - t) / scale, i.e.
  # out = in * scale + t: translation t = -offset gives the crop/placement.
  resized = tf.raw_ops.ScaleAndTranslate(
      images=image[tf.newaxis],
      size=tf.constant([out_h, out_w], tf.int32),
      scale=tf.stack([scale, scale]),
      translation=-offset_f,
      kernel_type='triangle',
      antialias=True)[0]
  # The kernel leaves pixels whose centre falls outside the image at 0; set
  # them to pad_value.
  rows = tf.range(out_h)[:, tf.newaxis] < valid_size[0]
  cols = tf.range(out_w)[tf.newaxis, :] < valid_size[1]
  inside = tf.logical_and(rows, cols)[:, :, tf.newaxis]
  pad = tf.cast(pad_value, tf.float32)
  resized = tf.where(inside, resized, pad)
  resized.set_shape([out_h, out_w, image.shape[-1]])

  info = {
      'scale': scale,
      'offset': -offset_f,
      'valid_size': valid_size,
      'original_size': original_size,
  }
  # Clip to the scaled image's extent inside the output (not only to the
  # output window), so an annotation that overhangs the original image cannot
  # reach into the padding either. This is the exact geometry: it can differ
  # from `valid_size` by < 0.5 px where the image edge splits a pixel.
  limit = tf.minimum(size_f * scale - offset_f,
                     tf.constant([out_h, out_w], tf.float32))
  limit = tf.maximum(limit, 0.0)
  new_boxes = transform_boxes(boxes, info)
  new_boxes = tf.clip_by_value(new_boxes, 0.0, tf.tile(limit, [2]))
  return resized, new_boxes, info


def _count_sampled_pixels(length: tf.Tensor, scale: tf.Tensor,
                          offset: tf.Tensor, out_length: int) -> tf.Tensor:
  """Counts output pixels along one axis that ScaleAndTranslate samples.

  ScaleAndTranslate fills an output pixel only if its centre maps inside the
  input, and leaves it 0 otherwise. Rather than re-deriving that float32
  boundary test (which a tie such as an edge at k + 0.5 could resolve
  differently), run the op itself on a 1-D column of ones: it computes each
  axis's sample positions with the same code as the real resize, so the count
  matches the pixels it filled exactly.

  Args:
    length: int32 scalar, input length along the axis.
    scale: float32 scalar.
    offset: float32 scalar, crop offset (>= 0) in scaled pixels.
    out_length: python int, output length along the axis.

  Returns:
    int32 scalar in [0, out_length]; those pixels form a prefix because
    offset >= 0.
  """
  probe = tf.raw_ops.ScaleAndTranslate(
      images=tf.ones(tf.stack([1, length, 1, 1]), tf.float32),
      size=tf.constant([out_length, 1], tf.int32),
      scale=tf.stack([scale, 1.0]),
      translation=tf.stack([-offset, 0.0]),
      kernel_type='triangle',
      antialias=True)
  # Sampled pixels hold 1 (normalised weights); the others hold exactly 0.
  return tf.reduce_sum(tf.cast(probe > 0.5, tf.int32))


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
  will have at test time while each training image costs less. Along each axis where the scaled image
  is larger than the output, the crop offset is drawn uniformly among the
  integer offsets 0..(scaled - output); elsewhere it is 0 and the image sits at
  the top-left with padding after it.

  Args:
    image: `uint8` or `float32` tensor [h, w, C]; h, w may be dynamic.
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixels of
      `image`.
    output_size: python `(H, W)`, the static output size.
    min_scale: smallest scale multiplier (> 0).
    max_scale: largest scale multiplier (>= min_scale).
    seed: `int32`/`int64` tensor [2], stateless seed.
    pad_value: value of output pixels the image does not cover.
    fit_size: python `(FH, FW)` the multiplier is relative to, or None for
      `output_size`.

  Returns:
    image, boxes, info exactly as `resize_and_pad` (image `float32`
    [H, W, C]; boxes `float32` [N, 4] yxyx output pixels, clipped to the
    visible image; info with `scale`, `offset`, `valid_size`, `original_size`).
    Boxes cropped away have zero area; flag them with `clip_and_filter_boxes`.
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
  # floor(u * (max_offset + 1)) with u in [0, 1) is uniform over
  # 0..max_offset; the minimum guards against float rounding when u ~ 1.
  u = tf.random.stateless_uniform([2], offset_seed)
  offset = tf.cast(tf.floor(u * tf.cast(max_offset + 1, tf.float32)), tf.int32)
  offset = tf.minimum(offset, max_offset)
  return resize_and_pad(image, boxes, (out_h, out_w),
                        scale_multiplier=multiplier, offset=offset,
                        pad_value=pad_value)


def clip_and_filter_boxes(
    boxes: tf.Tensor,
    labels: tf.Tensor,
    height: TensorLike,
    width: TensorLike,
    min_visible_fraction: float = 0.0,
    top: TensorLike = 0,
    left: TensorLike = 0,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Clips boxes to [top, height] x [left, width] and flags the ones to discard.

  Nothing is dropped here: the caller gets a keep mask and decides (normally
  `pad_to_max_boxes`). A box is kept when its clipped area is > 0 and at least
  `min_visible_fraction` of its unclipped area. Degenerate input boxes (zero
  or negative area) are never kept.

  To measure visibility after a crop, pass unclipped boxes, e.g.
  `transform_boxes(original_boxes, info)` with `height, width =
  info['valid_size']`; boxes already clipped by `resize_and_pad` only allow the
  zero-area test.

  Args:
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixels.
    labels: int tensor [N].
    height: clip window's bottom edge in pixels (python or tensor scalar):
      its height when `top` is 0.
    width: clip window's right edge in pixels (python or tensor scalar).
    min_visible_fraction: minimum clipped/unclipped area ratio, in [0, 1].
    top: clip window's top edge (default 0; `mosaic` clips to quadrants).
    left: clip window's left edge (default 0).

  Returns:
    boxes: `float32` [N, 4], `[ymin, xmin, ymax, xmax]` clipped to the window.
    labels: `int32` [N], unchanged.
    keep: `bool` [N].
  """
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  labels = tf.cast(labels, tf.int32)
  clipped = tf.clip_by_value(boxes, _yxyx_factors(top, left),
                             _yxyx_factors(height, width))

  def area(b):
    return (tf.maximum(b[:, 2] - b[:, 0], 0.0) *
            tf.maximum(b[:, 3] - b[:, 1], 0.0))

  clipped_area = area(clipped)
  keep = tf.logical_and(clipped_area > 0.0,
                        clipped_area >= min_visible_fraction * area(boxes))
  return clipped, labels, keep


def pad_to_max_boxes(boxes: tf.Tensor, labels: tf.Tensor, keep: tf.Tensor,
                     max_boxes: int) -> Dict[str, tf.Tensor]:
  """Compacts kept boxes to the front and pads to a static `max_boxes`.

  Kept boxes keep their relative order. If more than `max_boxes` are kept, the
  first `max_boxes` survive and the rest are counted in `num_dropped`, so the
  pipeline can log it: nothing disappears silently.

  Args:
    boxes: float tensor [N, 4], `[ymin, xmin, ymax, xmax]` in pixels (any
      coordinate convention works; values are copied unchanged).
    labels: int tensor [N].
    keep: bool tensor [N].
    max_boxes: python int, the static number of box slots.

  Returns:
    dict with
      `boxes`: `float32` [max_boxes, 4], yxyx, zeros in padded slots;
      `labels`: `int32` [max_boxes], zeros in padded slots;
      `mask`: `bool` [max_boxes], True for real boxes (a prefix);
      `num_dropped`: `int32` scalar, kept boxes that did not fit.
  """
  boxes = tf.convert_to_tensor(boxes, tf.float32)
  labels = tf.cast(labels, tf.int32)
  keep = tf.cast(keep, tf.bool)
  # tf.where returns indices in increasing order, which preserves box order.
  indices = tf.where(keep)[:, 0]
  num_kept = tf.shape(indices, out_type=tf.int32)[0]
  indices = indices[:max_boxes]
  num_real = tf.minimum(num_kept, max_boxes)
  num_pad = max_boxes - num_real

  out_boxes = tf.pad(tf.gather(boxes, indices), [[0, num_pad], [0, 0]])
  out_labels = tf.pad(tf.gather(labels, indices), [[0, num_pad]])
  out_boxes.set_shape([max_boxes, 4])
  out_labels.set_shape([max_boxes])
  return {
      'boxes': out_boxes,
      'labels': out_labels,
      'mask': tf.range(max_boxes) < num_real,
      'num_dropped': num_kept - num_real,
  }


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
  lo = tf.constant([height // 4, width // 4], tf.int32)
  hi = tf.constant([3 * height // 4 + 1, 3 * width // 4 + 1], tf.int32)
  centre = tf.random.stateless_uniform([2], seed, minval=0, maxval=2**30,
                                       dtype=tf.int32) % (hi - lo) + lo
  cy, cx = centre[0], centre[1]
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  image = tf.zeros_like(canvases[0])
  out_boxes, out_labels, out_keep = [], [], []
  for k in range(4):
    top, left = k // 2 == 1, k % 2 == 1
    y0, y1 = (cy, height) if top else (0, cy)
    x0, x1 = (cx, width) if left else (0, cx)
    inside = ((rows >= y0) & (rows < y1)) & ((cols >= x0) & (cols < x1))
    image = tf.where(inside[:, :, None], tf.cast(canvases[k], image.dtype), image)
    valid = tf.cast(valid_sizes[k], tf.int32)
    clipped, _, keep = clip_and_filter_boxes(
        boxes[k], labels[k], tf.minimum(y1, valid[0]), tf.minimum(x1, valid[1]),
        min_visible_fraction, top=y0, left=x0)
    out_boxes.append(clipped)
    out_keep.append(keep)
    out_labels.append(tf.cast(labels[k], tf.int32))
  return (image, tf.concat(out_boxes, 0), tf.concat(out_labels, 0),
          tf.concat(out_keep, 0))
