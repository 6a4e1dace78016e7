"""Multi-level anchor boxes for RetinaNet-style dense detectors.

Anchors depend only on the (static) input size and the anchor configuration,
so they are computed once in NumPy and enter the jitted model as constants.

Layout: anchors are ordered by level, then feature-map row y, then column x,
then anchor index a = scale_index * len(aspect_ratios) + ratio_index
(scale-major, ratio-minor). This is exactly the order obtained by reshaping a
head output [B, H_l, W_l, num_anchors * C] to [B, H_l * W_l * num_anchors, C]
and concatenating the levels along axis 1, so per-anchor predictions and the
anchors line up without any transposes.

`style='torchvision'` reproduces torchvision's `AnchorGenerator` as its
RetinaNets use it, so that their ported heads predict against the anchors
they were trained with: centres at (y * s, x * s) (no half-stride offset),
sizes truncated to integers (32, 40, 50 at stride 8), corners rounded to
integers, ratio-major order (a = ratio_index * num_scales + scale_index).
"""

from typing import Sequence

import numpy as np


def anchors_per_location(num_scales: int,
                         aspect_ratios: Sequence[float]) -> int:
  """Number of anchors at each feature-map position (num_scales * ratios)."""
  return int(num_scales) * len(aspect_ratios)


def level_sizes(image_size: tuple[int, int], min_level: int,
                max_level: int, uneven: bool = False) -> list[tuple[int, int]]:
  """Feature-map sizes of levels min_level..max_level.

  Args:
    image_size: `(height, width)` of the padded model input in pixels.
    min_level: first pyramid level; level l has stride 2**l.
    max_level: last pyramid level (inclusive), >= min_level.
    uneven: allow sizes not divisible by 2**max_level: each level is then
      ceil(half) of the one below, as stride-2 'same' convs and BiFPN's
      pooling make them (EfficientDet-Lite0 at 320 px: P7 is 3 x 3).

  Returns:
    A list with one `(H // 2**l, W // 2**l)` tuple of ints per level, in level
    order.

  Raises:
    ValueError: if the levels are out of order or negative, or if the height
      or width is not divisible by 2**max_level (then some level would not tile
      the image exactly and the strides of the backbone and of the anchors
      would disagree). The message names the first level whose stride does
      not divide the image size.
  """
  height, width = (int(s) for s in image_size)
  if min_level < 0 or max_level < min_level:
    raise ValueError(
        f'Need 0 <= min_level <= max_level, got {min_level} and {max_level}.')
  if height <= 0 or width <= 0:
    raise ValueError(f'Image size must be positive, got {image_size}.')
  if uneven:
    sizes = [(height, width)]
    for _ in range(max_level):
      sizes.append(tuple(-(-s // 2) for s in sizes[-1]))
    return sizes[min_level:]
  for level in range(min_level, max_level + 1):
    stride = 2**level
    if height % stride or width % stride:
      # Name the first failing level: it is the one whose feature map would be
      # fractional (floor division would silently drop border pixels).
      raise ValueError(
          f'Image size {image_size} is not divisible by the stride {stride} '
          f'of level {level}; pad the input to a multiple of 2**max_level = '
          f'{2**max_level}.')
  return [(height // 2**level, width // 2**level)
          for level in range(min_level, max_level + 1)]


def generate_anchors(image_size: tuple[int, int],
                     min_level: int,
                     max_level: int,
                     num_scales: int = 3,
                     aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                     anchor_scale: float = 4.0,
                     style: str = 'retinanet',
                     uneven: bool = False) -> np.ndarray:
  """Anchor boxes for all levels, in head-output order.

  For level l (stride s = 2**l), scale index i and aspect ratio r
  (r = height / width):

    size = anchor_scale * s * 2**(i / num_scales)
    h = size * sqrt(r),  w = size / sqrt(r)         (so h * w = size**2)
    centre = ((y + 0.5) * s, (x + 0.5) * s)  for y < H // s, x < W // s

  Anchors near the border extend beyond the image; they are not clipped, as in
  RetinaNet.

  Args:
    image_size: `(height, width)` of the padded model input in pixels; both
      must be divisible by 2**max_level.
    min_level: first pyramid level (e.g. 3 for RetinaNet).
    max_level: last pyramid level, inclusive (e.g. 7).
    num_scales: number of octave scales per level, >= 1.
    aspect_ratios: positive height / width ratios r (h = size * sqrt(r),
      w = size / sqrt(r)), or (height, width) pairs of multipliers of the
      size: EfficientDet's ((1, 1), (0.7, 1.4), (1.4, 0.7)) are not quite
      area-preserving, and its checkpoints were trained on them.
    anchor_scale: base anchor size in units of the level's stride.
    style: 'retinanet' (above) or 'torchvision' (module docstring).
    uneven: allow sizes that 2**max_level does not divide (see
      `level_sizes`); a level's stride is then image size / its size per
      axis, as EfficientDet's anchors have it (retinanet style only).

  Returns:
    float32 NumPy array [A_total, 4], `[ymin, xmin, ymax, xmax]` in pixels,
    A_total = sum_l (H // 2**l) * (W // 2**l) * num_scales * len(aspect_ratios).
    See the module docstring for the order.

  Raises:
    ValueError: for a bad image size (see `level_sizes`), num_scales < 1, or
      empty or non-positive aspect ratios.
  """
  if num_scales < 1:
    raise ValueError(f'num_scales must be >= 1, got {num_scales}.')
  if style not in STYLES:
    raise ValueError(f'anchor style {style!r}: expected one of {STYLES}.')
  sides = ratio_sides(aspect_ratios)
  sizes = level_sizes(image_size, min_level, max_level,
                      uneven=uneven and style == 'retinanet')
  if style == 'torchvision':
    per_level = [
        _torchvision_anchors(2.0**level, size, num_scales, sides, anchor_scale)
        for level, size in zip(range(min_level, max_level + 1), sizes)]
  else:  # Strides image / level size: 2**level unless uneven.
    per_level = [
        _level_anchors((image_size[0] / size[0], image_size[1] / size[1]),
                       size, num_scales, sides, anchor_scale)
        for size in sizes]
  return np.concatenate(per_level, axis=0).astype(np.float32)


STYLES = ('retinanet', 'torchvision')


def ratio_sides(aspect_ratios) -> np.ndarray:
  """[R, 2] (height, width) multipliers of the anchor size for
  `aspect_ratios` (ratios h / w, or (h, w) pairs; see `generate_anchors`)."""
  sides = []
  for r in aspect_ratios:
    if np.ndim(r) == 0 and float(r) > 0:
      sides.append((np.sqrt(float(r)), 1 / np.sqrt(float(r))))
    elif np.shape(r) == (2,) and min(r) > 0:
      sides.append(tuple(float(v) for v in r))
    else:
      sides = []
      break
  if not sides:
    raise ValueError(
        f'aspect_ratios must be a non-empty list of positive height / width '
        f'ratios or (height, width) pairs, got {aspect_ratios}.')
  return np.asarray(sides, np.float64)


def _level_anchors(strides, feature_size, num_scales, sides, anchor_scale):
  """float64 [H_l * W_l * A, 4] anchors of one level (`generate_anchors`);
  `strides` (y, x)."""
  feat_h, feat_w = feature_size
  stride_y, stride_x = strides
  # [num_scales] base sizes, then [num_scales, num_ratios] -> [A] in
  # scale-major / ratio-minor order. float64 so that the float32 result is
  # the correctly rounded value of the formula.
  octaves = anchor_scale * 2.0**(np.arange(num_scales) / num_scales)
  heights = (stride_y * octaves[:, None] * sides[None, :, 0]).reshape(-1)
  widths = (stride_x * octaves[:, None] * sides[None, :, 1]).reshape(-1)
  # [H_l, W_l, 1] centres against [A] sizes -> [H_l, W_l, A].
  cy = ((np.arange(feat_h) + 0.5) * stride_y)[:, None, None]
  cx = ((np.arange(feat_w) + 0.5) * stride_x)[None, :, None]
  boxes = np.stack(
      np.broadcast_arrays(cy - 0.5 * heights, cx - 0.5 * widths,
                          cy + 0.5 * heights, cx + 0.5 * widths),
      axis=-1)
  return boxes.reshape(-1, 4)


def _torchvision_anchors(stride, feature_size, num_scales, sides, anchor_scale):
  """One level as torchvision's AnchorGenerator makes it (module docstring),
  in float32 as it computes them."""
  feat_h, feat_w = feature_size
  base = anchor_scale * stride
  scales = np.asarray([int(base * 2.0**(i / num_scales))
                       for i in range(num_scales)], np.float32)
  # torchvision: h_ratio = sqrt(r), w_ratio = 1 / h_ratio; ratio-major.
  h = (sides[:, 0].astype(np.float32)[:, None] * scales[None, :]).reshape(-1)
  w = (sides[:, 1].astype(np.float32)[:, None] * scales[None, :]).reshape(-1)
  cell = np.round(np.stack([-h, -w, h, w], axis=-1) / np.float32(2))
  ys = (np.arange(feat_h, dtype=np.float32) * np.float32(stride))
  xs = (np.arange(feat_w, dtype=np.float32) * np.float32(stride))
  shifts = np.stack(np.broadcast_arrays(ys[:, None, None], xs[None, :, None],
                                        ys[:, None, None], xs[None, :, None]),
                    axis=-1)
  return (shifts + cell[None, None]).reshape(-1, 4)
