"""Scenes of the `shapes` dataset: posed objects on a painted background.

A scene is a cluttered RGB image holding 0 to 10 objects of six silhouette
classes (`CLASS_NAMES`), with each object's box, class and mask area. Boxes
are tight bounds of an object's full (amodal) mask, however much of it later
objects hide. Rendering needs numpy only.

Determinism: a scene is a function of the `np.random.Generator` passed in
only. The renderer uses numpy's PCG64 streams, correctly rounded IEEE
arithmetic (+, -, *, /, sqrt, floor, min/max) on arrays, and Python's `math`
module for the few transcendental functions, on scalars: no BLAS and no
vectorised sin/cos/exp, whose SIMD kernels differ between CPUs. So
`render_scene(scene_rng(split, index))` gives the same pixels on every machine
with the same numpy version (numpy does not promise stable `Generator` streams
across versions) and a C math library that rounds `sin`, `cos`, `exp` and `log`
like glibc's. Bump the builders' version in `detector.data.shapes` whenever a
change in this package alters any rendered scene.
"""

import math

import numpy as np

from detector.data.shapes import geometry
from detector.data.shapes import paint

CLASS_NAMES = geometry.CLASS_NAMES

# Example `i` of split `s` is rendered from
# `np.random.default_rng([SPLIT_SEED[s], i])`, independent of other examples.
SPLIT_SEED = {'train': 20_001, 'validation': 20_002, 'test': 20_003}

MIN_IMAGE_SIDE = 112  # Height and width are uniform integers in [112, 160].
MAX_IMAGE_SIDE = 160
MAX_OBJECTS = 10
EMPTY_FRACTION = 0.06  # Scenes drawn with no object at all.
MIN_OBJECT_SIZE = 8.0  # Longest box side, pixels, drawn log-uniformly up to
MAX_OBJECT_SIZE_FRACTION = 0.5  # this fraction of the shorter image side.
MAX_HIDDEN_FRACTION = 0.4  # Of an earlier object's mask, after all overlaps.
PLACEMENT_TRIES = 5
MIN_CONTRAST = 60.0  # RGB distance of an object's mean colour to what it covers.
COLOUR_TRIES = 8

_MAX_POLYGON_ANGLE = math.radians(20.0)  # Keeps a square a square.
_MAX_STRETCH = 1.3
_FILLED_PROB = 0.7
_MIN_STROKE, _MAX_STROKE = 1.5, 3.0


def scene_rng(split, index):
  """The generator of example `index` of `split` ('train', 'validation', 'test')."""
  return np.random.default_rng([SPLIT_SEED[split], index])


def render_scene(rng, *, return_layers=False):
  """Renders one scene.

  Args:
    rng: a `np.random.Generator`; the scene is a function of its state only.
      Dataset examples use `scene_rng(split, index)`.
    return_layers: also return the objects' `specs` (tuple of
      `geometry.ShapeSpec`, in the order of `boxes`) and the `background`
      (float32 [H, W, 3], the canvas before any object was drawn, before blur
      and noise), for tests and debugging.

  Returns:
    A dict with
      image: uint8 [H, W, 3], H and W uniform in [112, 160].
      boxes: float32 [N, 4], `[ymin, xmin, ymax, xmax]` in pixel-edge
        coordinates of this image: the tight box of each object's full
        (amodal) mask, the pixels its painted coverage is >= 0.5 on.
      labels: int64 [N] indices into `CLASS_NAMES`.
      areas: float32 [N], pixels of each object's full silhouette mask (the
        filled region, also for outlined objects), like COCO's mask area.
    with N in [0, 10] objects in drawing order, later ones on top.
  """
  draws = paint.Draws(rng)
  height = draws.integers(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE + 1)
  width = draws.integers(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE + 1)
  canvas = paint.draw_background(draws, height, width)
  background = canvas.transpose(1, 2, 0).copy() if return_layers else None

  num_objects = 0
  if draws.random() >= EMPTY_FRACTION:
    num_objects = draws.integers(1, MAX_OBJECTS + 1)
  log_min = math.log(MIN_OBJECT_SIZE)
  log_max = math.log(MAX_OBJECT_SIZE_FRACTION * min(height, width))
  layout = _Layout(height, width)
  for _ in range(num_objects):
    label = draws.integers(0, len(CLASS_NAMES))
    size = math.exp(draws.uniform(log_min, log_max))  # Log-uniform.
    _place_object(draws, canvas, layout, label, size)

  out = {
      'image': paint.finish(draws, canvas),
      'boxes': np.array(layout.boxes, np.float32).reshape(-1, 4),
      'labels': np.array([s.label for s in layout.specs], np.int64),
      'areas': np.array(layout.areas, np.float32),
  }
  if return_layers:
    out['specs'] = tuple(layout.specs)
    out['background'] = background
  return out


class _Layout:
  """The objects placed so far in a scene, and which of them shows where.

  Attributes:
    owner: int16 [H, W], the index of the topmost object whose mask covers
      each pixel (-1: none).
    full_area: per object, pixels of its full (ink) mask.
    visible_area: per object, pixels of its mask that no later object hides.
    specs: per object, its `geometry.ShapeSpec`.
    boxes: per object, float32 [4] `[ymin, xmin, ymax, xmax]`, pixel edges.
    areas: per object, pixels of its silhouette mask.
  """

  def __init__(self, height, width):
    self.owner = np.full((height, width), -1, np.int16)
    self.full_area, self.visible_area = [], []
    self.specs, self.boxes, self.areas = [], [], []

  def hidden_by(self, window, mask):
    """Pixels of each placed object that a new object's mask would hide.

    Args:
      window: the new object's pixel window `(y0, y1, x0, x1)`.
      mask: bool [y1 - y0, x1 - x0], the new object's ink mask.

    Returns:
      int [number of placed objects] counts, or None if any placed object
      would keep less than `1 - MAX_HIDDEN_FRACTION` of its mask visible.
    """
    y0, y1, x0, x1 = window
    under = self.owner[y0:y1, x0:x1][mask]
    under = under[under >= 0]
    hidden = np.bincount(under, minlength=len(self.specs))
    if np.any(np.asarray(self.visible_area) - hidden <
              (1.0 - MAX_HIDDEN_FRACTION) * np.asarray(self.full_area)):
      return None
    return hidden

  def add(self, spec, window, mask, box, hidden, silhouette):
    """Records a drawn object.

    Args:
      spec: its `geometry.ShapeSpec`.
      window: its pixel window `(y0, y1, x0, x1)`.
      mask: bool [y1 - y0, x1 - x0], its ink mask in the window.
      box: float32 [4], `mask_box(mask)`, relative to the window.
      hidden: what `hidden_by` returned for it.
      silhouette: float32 [y1 - y0, x1 - x0], its silhouette coverage.
    """
    y0, y1, x0, x1 = window
    for j in np.flatnonzero(hidden):
      self.visible_area[j] -= int(hidden[j])
    self.owner[y0:y1, x0:x1][mask] = len(self.specs)
    area = int(np.count_nonzero(mask))
    self.full_area.append(area)
    self.visible_area.append(area)
    self.specs.append(spec)
    self.boxes.append(box + np.array([y0, x0, y0, x0], np.float32))
    self.areas.append(np.count_nonzero(silhouette >= 0.5))


def _place_object(draws, canvas, layout, label, size):
  """Draws an object of class `label`, longest box side ~`size` px, if it fits.

  Up to `PLACEMENT_TRIES` positions are drawn; one is rejected if the object
  would hide too much of an earlier one or find no contrasting texture there.
  After that many rejections the object is not placed at all.
  """
  height, width = layout.owner.shape
  angle, stretch_y, stretch_x, stroke, scale, rel = _sample_pose(
      draws, label, size)
  for _ in range(PLACEMENT_TRIES):
    # The whole silhouette, with half a pixel to spare, lies in the image.
    cy = draws.uniform(0.5 - rel[0], height - 0.5 - rel[2])
    cx = draws.uniform(0.5 - rel[1], width - 0.5 - rel[3])
    spec = geometry.ShapeSpec(label, cy, cx, scale, angle, stretch_y,
                              stretch_x, stroke)
    window = geometry.window_of(
        (cy + rel[0], cx + rel[1], cy + rel[2], cx + rel[3]), height, width)
    ink, silhouette = geometry.window_coverage(spec, window)
    mask = ink >= 0.5
    if not mask.any():
      continue  # Cannot happen for >= 8 px objects; never emit an empty box.
    box = geometry.mask_box(mask)
    side = float(max(box[2] - box[0], box[3] - box[1]))
    if side < MIN_OBJECT_SIZE:
      # Pixel centres miss sharp tips: the mask of a small star can be 2 px
      # shorter than its outline. Grow the object to the minimum size and
      # place it again.
      grow = (MIN_OBJECT_SIZE + 0.5) / side
      scale *= grow
      rel = tuple(r * grow for r in rel)
      continue
    hidden = layout.hidden_by(window, mask)
    if hidden is None:
      continue  # Would hide too much of an earlier object.
    texture = _contrasting_texture(draws, canvas, window, ink, stroke)
    if texture is None:
      continue  # Nothing stands out here; try another place.
    y0, y1, x0, x1 = window
    paint.composite(canvas, window, ink,
                    paint.fill(draws.rng, texture, y1 - y0, x1 - x0))
    layout.add(spec, window, mask, box, hidden, silhouette)
    return


def _sample_pose(draws, label, size):
  """Samples all but the position of an object of longest box side ~`size`.

  Returns:
    `(angle, stretch_y, stretch_x, stroke, scale, rel)` with `rel` the
    silhouette's extents `(ymin, xmin, ymax, xmax)` relative to its centre,
    pixels. The position is drawn separately so that a rejected placement
    can be retried.
  """
  if label in geometry.POLYGONS:
    angle = draws.uniform(-_MAX_POLYGON_ANGLE, _MAX_POLYGON_ANGLE)
  else:  # A crescent may open any way; a circle only turns when stretched.
    angle = draws.uniform(-math.pi, math.pi)
  aspect = math.sqrt(draws.uniform(1.0, _MAX_STRETCH))
  if draws.random() < 0.5:
    stretch_y, stretch_x = aspect, 1.0 / aspect
  else:
    stretch_y, stretch_x = 1.0 / aspect, aspect
  stroke = 0.0
  if draws.random() >= _FILLED_PROB:
    stroke = draws.uniform(_MIN_STROKE, _MAX_STROKE)
  ymin, xmin, ymax, xmax = geometry.relative_extents(label, angle, stretch_y,
                                                     stretch_x)
  scale = size / max(ymax - ymin, xmax - xmin)
  rel = (scale * ymin, scale * xmin, scale * ymax, scale * xmax)
  return angle, stretch_y, stretch_x, stroke, scale, rel


def _contrasting_texture(draws, canvas, window, ink, stroke):
  """Samples an object texture whose mean colour differs from what it covers.

  Returns:
    A `paint.Texture`, or None if all `COLOUR_TRIES` samples came within
    `MIN_CONTRAST` (RGB distance) of the mean canvas colour under the ink.
  """
  y0, y1, x0, x1 = window
  weights = ink * np.float32(1.0 / ink.sum())
  under = (canvas[:, y0:y1, x0:x1] * weights).sum(axis=(1, 2))
  # A 1.5-3 px outline shows no gradient or stripes: keep it solid or mottled.
  kinds = ('solid', 'noise') if stroke else ('solid', 'gradient', 'stripes',
                                             'noise')
  for _ in range(COLOUR_TRIES):
    texture = paint.sample_texture(draws, kinds)
    diff = texture.mean() - under
    if math.sqrt(float(np.sum(diff * diff))) >= MIN_CONTRAST:
      return texture
  return None
