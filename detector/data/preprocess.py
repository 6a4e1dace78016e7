"""Box-aware geometry ops for the tf.data input pipeline (random ops: `augment`).

Every op here and in `detector.data.augment` is pure TensorFlow (no JAX),
runs eagerly and inside `tf.data.Dataset.map` (graph mode) with dynamic input
sizes, and transforms an image together with its boxes so that the boxes
keep describing the same pixels.

Conventions used by every function in both modules:

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
`tf.image.resize(..., antialias=True)` (the triangle kernel: it low-pass
filters when downscaling and is bilinear interpolation when upscaling),
because that op takes the scale and the translation directly: the pixels are
resampled with exactly the scalar scale that is applied to the boxes and
reported in `info`, instead of a per-axis scale rounded to integer output
sizes. When h * scale is not an integer the image edge falls inside an output
pixel; like the resize kernel, that pixel counts as image iff its centre lies
inside the scaled image, so `valid_size` is about round(h * scale - offset).
"""

from typing import Dict, Optional, Tuple, Union

import tensorflow as tf

TensorLike = Union[tf.Tensor, int, float]


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

  The image is scaled by `scale = min(H / h, W / w) * scale_multiplier` (with
  a multiplier of 1 it just fits in `output_size`), resampled as the module
  docstring says. Output pixel (y, x) shows scaled-image pixel
  (y + offset[0], x + offset[1]): the default (0, 0) puts the image at the
  top-left; a positive offset crops a scaled image larger than the output
  (`augment.random_scale_jitter`). Output pixels whose centre falls outside
  the scaled image are set to `pad_value`.

  Args:
    image: `uint8` or `float32` [h, w, C]; h, w may be dynamic.
    boxes: float [N, 4] `[ymin, xmin, ymax, xmax]` in pixels of `image`.
    output_size: python `(H, W)`, the output's static size.
    scale_multiplier: python or float32 scalar multiplying the fitting scale.
    offset: optional int [2] `(y, x)` >= 0, the crop offset in scaled pixels.
    pad_value: value of the output pixels the image does not cover.

  Returns:
    image: `float32` [H, W, C], static shape.
    boxes: `float32` [N, 4] yxyx output pixels, `boxes * scale +
      info['offset']` clipped to the scaled image (a box cropped away has
      zero area; `clip_and_filter_boxes` flags it).
    info: `scale` (float32 scalar, output pixels per original pixel),
      `offset` (float32 [2], the original image's origin in output pixels:
      -offset), `valid_size` (int32 [2], the top-left region of the output
      holding image pixels) and `original_size` (int32 [2], (h, w)); to map
      predictions back, original = (output - offset) / scale.
  """
  out_h, out_w = int(output_size[0]), int(output_size[1])
  image = tf.convert_to_tensor(image)
  original_size = tf.shape(image)[:2]
  size_f = tf.cast(original_size, tf.float32)
  scale = tf.minimum(out_h / size_f[0], out_w / size_f[1])
  scale *= tf.cast(scale_multiplier, tf.float32)
  offset_f = _checked_offset(offset)
  valid_size = tf.stack([
      _count_sampled_pixels(original_size[0], scale, offset_f[0], out_h),
      _count_sampled_pixels(original_size[1], scale, offset_f[1], out_w),
  ])
  resized = _resample(image, scale, offset_f, (out_h, out_w), valid_size,
                      pad_value)
  info = {'scale': scale, 'offset': -offset_f, 'valid_size': valid_size,
          'original_size': original_size}
  # Clip to the scaled image's extent inside the output (not only to the
  # output window), so an annotation that overhangs the original image cannot
  # reach into the padding either. This is the exact geometry: it can differ
  # from `valid_size` by < 0.5 px where the image edge splits a pixel.
  limit = tf.maximum(tf.minimum(size_f * scale - offset_f,
                                tf.constant([out_h, out_w], tf.float32)), 0.0)
  new_boxes = transform_boxes(tf.convert_to_tensor(boxes, tf.float32), info)
  return resized, tf.clip_by_value(new_boxes, 0.0, tf.tile(limit, [2])), info


def _checked_offset(offset: Optional[tf.Tensor]) -> tf.Tensor:
  """The crop offset as float32 [2], asserted >= 0."""
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
    return tf.cast(offset, tf.float32)


def _resample(image, scale, offset_f, output_size, valid_size, pad_value):
  """The scaled, shifted image on the output canvas, padding outside
  `valid_size`."""
  out_h, out_w = output_size
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
  resized = tf.where(inside, resized, tf.cast(pad_value, tf.float32))
  resized.set_shape([out_h, out_w, image.shape[-1]])
  return resized


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
