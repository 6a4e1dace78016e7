"""Renderer of the synthetic `shapes` detection scenes, in pure numpy.

A scene is a cluttered RGB image holding 0 to 10 objects of six silhouette
classes (`CLASS_NAMES`). It is the offline, deterministic default dataset of
the detector configs; `detector.data.shapes` wraps it as a TFDS builder. This
module imports no TensorFlow, so tests and tools can render scenes cheaply.

Conventions:

* Pixel-edge coordinates: pixel row `i` spans `[i, i + 1)` and has its centre
  at `i + 0.5`. A box `[ymin, xmin, ymax, xmax]` covers rows `ymin .. ymax - 1`
  and columns `xmin .. xmax - 1`.
* Coverage: the fraction of a pixel an object covers, computed analytically
  from a signed distance `d` (pixels, negative inside) at the pixel centre as
  `clip(0.5 - d, 0, 1)`. An object's mask is the pixels with coverage >= 0.5.
* Boxes are tight bounds of an object's full (amodal) mask, however much of it
  later objects hide.

Determinism: a scene is a function of the `np.random.Generator` passed in
only. The renderer uses numpy's PCG64 streams, correctly rounded IEEE
arithmetic (+, -, *, /, sqrt, floor, min/max) on arrays, and Python's `math`
module for the few transcendental functions, on scalars: no BLAS and no
vectorised sin/cos/exp, whose SIMD kernels differ between CPUs. So
`render_scene(scene_rng(split, index))` gives the same pixels on every machine
with the same numpy version (numpy does not promise stable `Generator` streams
across versions) and a C math library that rounds `sin`, `cos`, `exp` and `log`
like glibc's. Bump the builder's version in `detector.data.shapes` whenever a
change here alters any rendered scene.

Speed: the default config's 7500 scenes are rendered in a few milliseconds
each. Internally images are float32 channel-first [3, H, W]: numpy's
elementwise loops run over the last axis, and a last axis of 3 makes them
several times slower than rows of W pixels. Whole-image work goes one channel
at a time: temporaries of a whole [3, H, W] image (~250 KB) exceed glibc's mmap
threshold, and each would then cost fresh, page-faulting memory.
"""

import dataclasses
import math

import numpy as np

CLASS_NAMES = ('circle', 'triangle', 'square', 'star', 'cross', 'crescent')
CIRCLE, TRIANGLE, SQUARE, STAR, CROSS, CRESCENT = range(len(CLASS_NAMES))

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

# Crescent: the unit disc minus a disc of radius 0.8 centred at (0.45, 0),
# which leaves a moon 0.65 wide at its thickest, opening towards +x.
_CRESCENT_INNER_R = 0.8
_CRESCENT_OFFSET = 0.45
_CROSS_HALF_WIDTH = 0.34  # Of the arms, in units of the arm length.
_STAR_INNER_R = 0.45  # Fat enough that small stars keep their points.


def scene_rng(split, index):
  """The generator of example `index` of `split` ('train', 'validation', 'test')."""
  return np.random.default_rng([SPLIT_SEED[split], index])


def _regular_polygon(radii, start_deg):
  """Vertices (x, y) at evenly spaced angles with the given radii."""
  points = []
  for k, r in enumerate(radii):
    a = math.radians(start_deg) + 2.0 * math.pi * k / len(radii)
    points.append((r * math.cos(a), r * math.sin(a)))
  return np.array(points, np.float64)


def _cross_polygon(w):
  return np.array([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1),
                   (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)], np.float64)


def _crescent_points(n):
  """Dense points on the crescent's outline, tips included (for extents)."""
  o, r = _CRESCENT_OFFSET, _CRESCENT_INNER_R
  circle = _regular_polygon([1.0] * n, 0.0)
  outer = circle[(circle[:, 0] - o)**2 + circle[:, 1]**2 >= r * r]
  inner = circle * r + np.array([o, 0.0])
  inner = inner[inner[:, 0]**2 + inner[:, 1]**2 <= 1.0]
  tip_x = (1.0 - r * r + o * o) / (2.0 * o)
  tip_y = math.sqrt(1.0 - tip_x * tip_x)
  return np.concatenate([outer, inner, [[tip_x, tip_y], [tip_x, -tip_y]]])


# Canonical silhouettes as (x, y) with y pointing down, spanning [-1, 1] on
# their longer axis.
_POLYGONS = {
    TRIANGLE: _regular_polygon([1.0] * 3, -90.0),  # Apex up.
    SQUARE: np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], np.float64),
    STAR: _regular_polygon([1.0, _STAR_INNER_R] * 5, -90.0),  # A point up.
    CROSS: _cross_polygon(_CROSS_HALF_WIDTH),  # A plus sign.
}


def _star_pieces(star, cut):
  """Convex pieces whose union is the star: its inner pentagon and 5 arms.

  Each arm is the wedge between the arm's two edges, run inwards past the
  pentagon edge it stands on down to `cut` (canonical units from the centre,
  along the arm's axis). The overlap keeps the union's distance free of seams
  along the pentagon edges, which are not part of the star's boundary.
  """
  tips, inner = star[0::2], star[1::2]
  pieces = [inner]
  for k, tip in enumerate(tips):
    axis = tip / math.sqrt(tip[0]**2 + tip[1]**2)
    ends = []
    for corner in (inner[k - 1], inner[k]):
      s = (1.0 - cut) / (1.0 - (corner[0] * axis[0] + corner[1] * axis[1]))
      ends.append(tip + s * (corner - tip))
    pieces.append(np.array([tip, ends[1], ends[0]]))
  return pieces


def _half_planes(pieces):
  """Outward unit normals and offsets of convex pieces' edges.

  Returns:
    `(normals, offsets, piece_ends)`: float64 [k, 2] normals (x, y) and [k]
    offsets such that `normal . u - offset` is the signed distance of a
    canonical point `u` to the edge's line (> 0 outside), and the end index
    of each piece's rows.
  """
  normals, offsets, ends = [], [], []
  for v in pieces:
    nxt = np.roll(v, -1, axis=0)
    area2 = float(np.sum(v[:, 0] * nxt[:, 1] - nxt[:, 0] * v[:, 1]))
    for (ax, ay), (bx, by) in zip(v, nxt):
      # (dy, -dx) points out of a polygon of positive signed area.
      nx, ny = (by - ay), -(bx - ax)
      if area2 < 0:
        nx, ny = -nx, -ny
      length = math.sqrt(nx * nx + ny * ny)
      normals.append((nx / length, ny / length))
      offsets.append((nx * ax + ny * ay) / length)
    ends.append(len(normals))
  return np.array(normals), np.array(offsets), ends


# Polygons as unions of convex pieces, for rendering: the distance to a convex
# piece is cheap (a max of half-plane distances), and the distance to a union
# is the min over pieces.
_CONVEX_PIECES = {
    TRIANGLE: [_POLYGONS[TRIANGLE]],
    SQUARE: [_POLYGONS[SQUARE]],
    STAR: _star_pieces(_POLYGONS[STAR], cut=0.1),
    CROSS: [_POLYGONS[CROSS][[10, 3, 4, 9]],  # Horizontal bar.
            _POLYGONS[CROSS][[0, 1, 6, 7]]],  # Vertical bar.
}
_HALF_PLANES = {k: _half_planes(v) for k, v in _CONVEX_PIECES.items()}

# Points on each outline, to measure a posed object's extents.
_OUTLINE_POINTS = dict(_POLYGONS)
# 256 points put the extents within 1e-4 of the scale of the true ones.
_OUTLINE_POINTS[CIRCLE] = _regular_polygon([1.0] * 256, 0.0)
_OUTLINE_POINTS[CRESCENT] = _crescent_points(256)


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
  """Geometry of one object; with the image size it fixes the object's mask.

  A canonical point `u = (ux, uy)` of the class silhouette (y down, spanning
  [-1, 1] on its longer axis) lands at the pixel-edge position
  `(x, y) = center + scale * R(angle) @ (stretch_x * ux, stretch_y * uy)`.

  Attributes:
    label: class index into `CLASS_NAMES`.
    center_y: y of the canonical origin, pixels.
    center_x: x of the canonical origin, pixels.
    scale: pixels per canonical unit.
    angle: rotation, radians, clockwise on screen (y points down).
    stretch_y: aspect factor on the canonical y axis; `stretch_y * stretch_x`
      is 1 and the ratio at most 1.3.
    stretch_x: aspect factor on the canonical x axis.
    stroke: 0 for a filled object; else the width, pixels, of the outline.
      The outline runs along the inside of the silhouette, so an outlined
      object has the same box as a filled one of the same geometry.
  """
  label: int
  center_y: float
  center_x: float
  scale: float
  angle: float
  stretch_y: float
  stretch_x: float
  stroke: float

  def extents(self):
    """Continuous bounds of the silhouette, `(ymin, xmin, ymax, xmax)`, pixels."""
    ymin, xmin, ymax, xmax = _relative_extents(self.label, self.angle,
                                               self.stretch_y, self.stretch_x)
    return (self.center_y + self.scale * ymin, self.center_x + self.scale * xmin,
            self.center_y + self.scale * ymax, self.center_x + self.scale * xmax)


def _relative_extents(label, angle, stretch_y, stretch_x):
  """Extents `(ymin, xmin, ymax, xmax)` of a posed silhouette at scale 1."""
  c, s = math.cos(angle), math.sin(angle)
  points = _OUTLINE_POINTS[label]
  x = points[:, 0] * stretch_x
  y = points[:, 1] * stretch_y
  px = c * x - s * y
  py = s * x + c * y
  return float(py.min()), float(px.min()), float(py.max()), float(px.max())


def _clip01(a):
  return np.clip(a, 0.0, 1.0, out=a)


def _polygon_sdf(spec, ys, xs):
  """Signed distance (pixels, < 0 inside) of a posed polygon.

  Each convex piece's distance is the max of its edges' half-plane distances:
  exact inside and beside the edges, an underestimate only outside a corner,
  where it turns the anti-aliasing fringe of a sharp tip into a miter (at most
  1.3 px long, at the star's 45 degree tips). The sign, and so the mask and the
  box, is exact.

  Half-planes map through the affine pose in closed form: `n . u <= o` in the
  canonical frame is `m . (p - center) <= o * scale` in pixels, with
  `m = R S^-1 n`; dividing by `|m|` makes it a distance again.

  Args:
    spec: a `ShapeSpec` of a polygon class.
    ys: float32 [h] pixel-centre rows.
    xs: float32 [w] pixel-centre columns.

  Returns:
    float32 [h, w] signed distance.
  """
  normals, offsets, ends = _HALF_PLANES[spec.label]
  c, s = math.cos(spec.angle), math.sin(spec.angle)
  sx = normals[:, 0] / spec.stretch_x
  sy = normals[:, 1] / spec.stretch_y
  mx = c * sx - s * sy
  my = s * sx + c * sy
  norm = np.sqrt(mx * mx + my * my)
  mx, my = mx / norm, my / norm
  off = mx * spec.center_x + my * spec.center_y + offsets * spec.scale / norm
  row_terms = (ys[None, :] * my[:, None].astype(np.float32) -
               off[:, None].astype(np.float32))  # [k, h]
  col_terms = xs[None, :] * mx[:, None].astype(np.float32)  # [k, w]
  union = None
  start = 0
  for end in ends:
    piece = None
    for i in range(start, end):
      # [h, 1] + [1, w]: one full-window operation per edge.
      h = row_terms[i][:, None] + col_terms[i][None, :]
      piece = h if piece is None else np.maximum(piece, h, out=piece)
    union = piece if union is None else np.minimum(union, piece, out=union)
    start = end
  return union


def _round_sdf(spec, ys, xs):
  """Signed distance (pixels, < 0 inside) of a posed circle or crescent.

  The distance `d_u` is exact in the canonical frame; it is carried to pixels
  to first order, `d_u / |grad_p d_u|`. That is exact on the boundary, where
  coverage is decided, and with a stretch of at most 1.3 it errs by a few
  hundredths of a pixel across the anti-aliasing band.

  Args:
    spec: a `ShapeSpec` of a circle or crescent.
    ys: float32 [h] pixel-centre rows.
    xs: float32 [w] pixel-centre columns.

  Returns:
    float32 [h, w] signed distance.
  """
  c, s = np.float32(math.cos(spec.angle)), np.float32(math.sin(spec.angle))
  dy = (ys - np.float32(spec.center_y))[:, None]
  dx = (xs - np.float32(spec.center_x))[None, :]
  inv_sx = np.float32(1.0 / (spec.scale * spec.stretch_x))
  inv_sy = np.float32(1.0 / (spec.scale * spec.stretch_y))
  ux = c * dx + s * dy  # Inverse rotation, then inverse stretch and scale.
  ux *= inv_sx
  uy = c * dy - s * dx
  uy *= inv_sy
  r = np.maximum(np.sqrt(ux * ux + uy * uy), np.float32(1e-6))
  d = r - np.float32(1.0)
  gx, gy = ux / r, uy / r
  if spec.label == CRESCENT:
    ox = ux - np.float32(_CRESCENT_OFFSET)
    r_in = np.maximum(np.sqrt(ox * ox + uy * uy), np.float32(1e-6))
    d_in = np.float32(_CRESCENT_INNER_R) - r_in
    use_in = d_in > d
    d = np.where(use_in, d_in, d)
    gx = np.where(use_in, -ox / r_in, gx)
    gy = np.where(use_in, -uy / r_in, gy)
  # |grad_p d_u| = |S^-1 g| / scale: the rotation drops out of the norm.
  gx *= inv_sx
  gy *= inv_sy
  return d / np.sqrt(gx * gx + gy * gy)


def _window_of(extents, height, width):
  """Integer pixel window `(y0, y1, x0, x1)` holding all nonzero coverage.

  Args:
    extents: the silhouette's continuous `(ymin, xmin, ymax, xmax)`.
    height: image height.
    width: image width.
  """
  ymin, xmin, ymax, xmax = extents
  # Coverage reaches 0.5 px past the silhouette, up to 1.3 px at the mitered
  # star tips (see `_polygon_sdf`): two pixels of margin hold it.
  return (max(0, math.floor(ymin) - 2), min(height, math.ceil(ymax) + 2),
          max(0, math.floor(xmin) - 2), min(width, math.ceil(xmax) + 2))


def _window_coverage(spec, window):
  """Ink and silhouette coverage of an object inside a pixel window.

  Args:
    spec: the object's `ShapeSpec`.
    window: `(y0, y1, x0, x1)` pixel ranges.

  Returns:
    `(ink, silhouette)`, float32 [y1 - y0, x1 - x0] coverages in [0, 1]. For
    filled objects they are the same array; for outlined ones `ink` is the
    stroke band, the part actually painted.
  """
  y0, y1, x0, x1 = window
  ys = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5)
  xs = np.arange(x0, x1, dtype=np.float32) + np.float32(0.5)
  if spec.label in _HALF_PLANES:
    d = _polygon_sdf(spec, ys, xs)
  else:
    d = _round_sdf(spec, ys, xs)
  silhouette = _clip01(np.float32(0.5) - d)
  if not spec.stroke:
    return silhouette, silhouette
  # The band -stroke <= d <= 0: the silhouette minus the silhouette eroded by
  # the stroke width, whose coverage clip(0.5 - (d + stroke), 0, 1) is
  # -clip(d + stroke - 0.5, -1, 0).
  d += np.float32(spec.stroke - 0.5)
  ink = silhouette + np.clip(d, -1.0, 0.0, out=d)
  return _clip01(ink), silhouette


def object_coverage(spec, height, width, *, silhouette=False):
  """Renders one object's coverage alone, on the full image frame.

  Args:
    spec: the object's `ShapeSpec`.
    height: image height, pixels.
    width: image width, pixels.
    silhouette: if True, the coverage of the filled silhouette even for an
      outlined object; else the painted (ink) coverage.

  Returns:
    float32 [height, width] coverage in [0, 1]. Its >= 0.5 pixels are the
    object's mask, and `mask_box` of the ink mask is the object's box.
  """
  out = np.zeros((height, width), np.float32)
  window = _window_of(spec.extents(), height, width)
  y0, y1, x0, x1 = window
  if y1 > y0 and x1 > x0:
    out[y0:y1, x0:x1] = _window_coverage(spec, window)[1 if silhouette else 0]
  return out


def spec_contains(spec, y, x):
  """Exact point-in-silhouette test, independent of the distance rendering.

  Args:
    spec: a `ShapeSpec`.
    y: float array of y positions (pixel-edge coordinates).
    x: float array of x positions, broadcastable with `y`.

  Returns:
    bool array: whether each point lies inside the filled silhouette.
  """
  y = np.asarray(y, np.float64)
  x = np.asarray(x, np.float64)
  c, s = math.cos(spec.angle), math.sin(spec.angle)
  dy, dx = y - spec.center_y, x - spec.center_x
  ux = (c * dx + s * dy) / (spec.scale * spec.stretch_x)
  uy = (c * dy - s * dx) / (spec.scale * spec.stretch_y)
  if spec.label == CIRCLE:
    return ux * ux + uy * uy <= 1.0
  if spec.label == CRESCENT:
    inner = (ux - _CRESCENT_OFFSET)**2 + uy * uy < _CRESCENT_INNER_R**2
    return (ux * ux + uy * uy <= 1.0) & ~inner
  # Even-odd rule on the true outline (not the convex pieces used to render).
  v = _POLYGONS[spec.label]
  inside = np.zeros(np.broadcast(ux, uy).shape, bool)
  for (ax, ay), (bx, by) in zip(v, np.roll(v, -1, axis=0)):
    if ay != by:
      straddles = (ay <= uy) != (by <= uy)
      inside ^= straddles & (ax + (uy - ay) * (bx - ax) / (by - ay) < ux)
  return inside


def mask_box(mask):
  """Tight box `[ymin, xmin, ymax, xmax]` (pixel edges) of a 2-D bool mask."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  if rows.size == 0:
    raise ValueError('an empty mask has no box')
  return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


class _Draws:
  """Scalar random draws from a generator, fetched in blocks.

  A scene needs about a hundred scalars, and a `Generator` method call costs
  microseconds; drawing them 64 at a time makes them nearly free. Arrays are
  drawn from the generator directly. Both come from the one PCG64 stream, so
  a scene remains a function of the generator's state.
  """

  def __init__(self, rng, block=64):
    self.rng = rng
    self._block = block
    self._buffer = []

  def random(self):
    """A float uniform in [0, 1)."""
    if not self._buffer:
      self._buffer = self.rng.random(self._block).tolist()
      self._buffer.reverse()
    return self._buffer.pop()

  def uniform(self, low, high):
    return low + (high - low) * self.random()

  def integers(self, low, high):
    """An int uniform in [low, high)."""
    return low + int((high - low) * self.random())

  def colour(self):
    """An RGB colour, float32 [3, 1, 1] to broadcast over [3, h, w] images."""
    return np.array([self.random(), self.random(), self.random()],
                    np.float32).reshape(3, 1, 1) * np.float32(255.0)


def _smooth_noise(rng, h, w, cells):
  """Uniform noise on a (cells + 1)^2 grid, smoothly upsampled to [h, w]."""
  grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
  fy = (np.arange(h, dtype=np.float32) + np.float32(0.5)) * np.float32(cells / h)
  fx = (np.arange(w, dtype=np.float32) + np.float32(0.5)) * np.float32(cells / w)
  iy = np.minimum(fy.astype(np.int64), cells - 1)
  ix = np.minimum(fx.astype(np.int64), cells - 1)
  # Smoothstep weights: plain bilinear ones leave straight creases along the
  # grid lines, which would give thresholded blobs polygon-like facets.
  ty, tx = fy - iy, fx - ix
  ty = ty * ty * (np.float32(3.0) - np.float32(2.0) * ty)
  tx = tx * tx * (np.float32(3.0) - np.float32(2.0) * tx)
  # Separable: along x on the few grid rows, then along y by whole rows.
  rows = grid[:, ix] + (grid[:, ix + 1] - grid[:, ix]) * tx
  top = rows[iy]
  return top + (rows[iy + 1] - top) * ty[:, None]


@dataclasses.dataclass(frozen=True, eq=False)
class _Texture:
  """Parameters of a fill: 'solid', 'gradient', 'stripes' or 'noise'."""
  kind: str
  colour: np.ndarray  # float32 [3, 1, 1]: the colour, or the first one.
  colour2: np.ndarray  # The second colour of a gradient or stripes.
  angle: float  # Direction of a gradient or of the stripes' normal.
  period: float  # Stripes, pixels.
  cell: int  # Noise cell size, pixels.
  amplitude: float  # Noise standard deviation.

  def mean(self):
    """Mean RGB colour, float32 [3]."""
    if self.kind in ('gradient', 'stripes'):
      return (self.colour[:, 0, 0] + self.colour2[:, 0, 0]) * np.float32(0.5)
    return self.colour[:, 0, 0]


def _sample_texture(draws, kinds):
  """Samples a texture of one of `kinds`, uniformly; draws scalars only."""
  return _Texture(kind=kinds[draws.integers(0, len(kinds))],
                  colour=draws.colour(), colour2=draws.colour(),
                  angle=draws.uniform(0.0, 2.0 * math.pi),
                  period=draws.uniform(3.0, 7.0),
                  cell=draws.integers(1, 4),
                  amplitude=draws.uniform(15.0, 40.0))


def _paint(rng, texture, h, w):
  """Colours of `texture` over an h x w window.

  Returns:
    float32 colours broadcastable to [3, h, w], unclipped (the final image
    is clipped).
  """
  c0 = texture.colour
  if texture.kind == 'solid':
    return c0
  if texture.kind == 'noise':
    # Mottle in cells of 1-3 px, mostly shared by the channels so that it
    # reads as light and dark speckle rather than colour confetti. Uniform
    # draws: they cost a quarter of normal ones.
    cell = texture.cell
    ch, cw = -(-h // cell), -(-w // cell)
    noise = rng.random((3, ch, cw), dtype=np.float32)
    noise *= np.float32(0.4)
    noise += rng.random((ch, cw), dtype=np.float32)
    # The sum has mean 0.7 and standard deviation sqrt(1.16 / 12).
    noise -= np.float32(0.7)
    noise *= np.float32(texture.amplitude / math.sqrt(1.16 / 12.0))
    if cell > 1:
      noise = np.repeat(np.repeat(noise, cell, axis=1), cell, axis=2)
    noise = noise[:, :h, :w]
    noise += c0
    return noise
  ca, sa = math.cos(texture.angle), math.sin(texture.angle)
  if texture.kind == 'gradient':
    # t runs from 0 to 1 across the window along the gradient direction.
    lo = min(0.0, w * ca) + min(0.0, h * sa)
    inv = 1.0 / max(abs(w * ca) + abs(h * sa), 1.0)
    t = ((np.arange(h, dtype=np.float32) * np.float32(sa * inv) -
          np.float32(lo * inv))[:, None] +
         (np.arange(w, dtype=np.float32) * np.float32(ca * inv))[None, :])
  else:  # Stripes: an anti-aliased square wave with a period of 3-7 px.
    period = texture.period
    phase = ((np.arange(h, dtype=np.float32) * np.float32(sa / period))[:, None]
             + (np.arange(w, dtype=np.float32) * np.float32(ca / period))[None, :])
    tri = np.abs(phase - np.floor(phase) - np.float32(0.5))  # In [0, 0.5].
    t = _clip01((tri - np.float32(0.25)) * np.float32(period) + np.float32(0.5))
  fill = t[None] * (texture.colour2 - c0)
  fill += c0
  return fill


def _composite(canvas, window, alpha, colour):
  """Blends `colour` over `canvas[:, window]` with opacity `alpha` [h, w]."""
  y0, y1, x0, x1 = window
  region = canvas[:, y0:y1, x0:x1]
  region += alpha * (colour - region)


def _draw_background(draws, height, width):
  """Gradient and blotches, then straight lines and distractor blobs.

  Per-pixel noise is added to the whole image at the end (`_finish`): the
  background and the objects share one noise level, so noise does not tell
  them apart.

  Returns:
    float32 [3, height, width] canvas.
  """
  ys = np.arange(height, dtype=np.float32) + np.float32(0.5)
  xs = np.arange(width, dtype=np.float32) + np.float32(0.5)
  c0, c1 = draws.colour(), draws.colour()
  angle = draws.uniform(0.0, 2.0 * math.pi)
  ca, sa = math.cos(angle), math.sin(angle)
  lo = min(0.0, width * ca) + min(0.0, height * sa)
  inv = 1.0 / (abs(width * ca) + abs(height * sa))
  t = (ys * np.float32(sa * inv) - np.float32(lo * inv))[:, None] + (
      xs * np.float32(ca * inv))[None, :]
  # Low-frequency brightness blotches, so that the background is not a plane
  # that a detector could subtract.
  blotch = _smooth_noise(draws.rng, height, width, draws.integers(2, 6))
  amp = np.float32(draws.uniform(0.0, 60.0))
  blotch *= amp
  blotch -= np.float32(0.5) * amp
  canvas = np.empty((3, height, width), np.float32)
  for c in range(3):
    np.multiply(t, c1[c] - c0[c], out=canvas[c])
    canvas[c] += blotch
    canvas[c] += c0[c]

  for _ in range(draws.integers(0, 5)):
    # A full-length straight line through a random point, 1-3 px thick.
    py, px = draws.uniform(0, height), draws.uniform(0, width)
    angle = draws.uniform(0.0, math.pi)
    half = draws.uniform(0.5, 1.5)
    opacity = draws.uniform(0.4, 1.0)
    colour = draws.colour()
    nx, ny = -math.sin(angle), math.cos(angle)
    dist = np.abs((ys * np.float32(ny) - np.float32(px * nx + py * ny))[:, None]
                  + (xs * np.float32(nx))[None, :])
    alpha = _clip01(np.float32(half + 0.5) - dist)
    alpha *= np.float32(opacity)
    for c in range(3):
      blend = colour[c] - canvas[c]
      blend *= alpha
      canvas[c] += blend

  for _ in range(draws.integers(1, 5)):
    _draw_blob(draws, canvas)
  return canvas


def _draw_blob(draws, canvas):
  """Draws a distractor: an irregular, soft-edged blob of smooth noise.

  Noise on a 5x5 to 8x8 grid, lowered towards the edges by a radial bump, is
  thresholded with a soft ramp. The lumps of the noise make the outline
  irregular, so that a blob does not pass for a circle, a polygon or a
  crescent.
  """
  height, width = canvas.shape[1:]
  size = draws.integers(10, 46)
  y0 = draws.integers(-size // 3, height - size // 2)
  x0 = draws.integers(-size // 3, width - size // 2)
  field = _smooth_noise(draws.rng, size, size, draws.integers(4, 8))
  r = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * np.float32(
      2.0 / size) - np.float32(1.0)
  r2 = r * r
  # The bump is weak inside, so the noise shapes the outline, and strong
  # enough at the window border (noise - 0.75 < 0.3) that no blob is cut
  # straight by its window.
  field -= np.float32(0.75) * (r2[:, None] + r2[None, :])
  softness = draws.uniform(0.04, 0.2)
  alpha = _clip01((field - np.float32(0.3)) * np.float32(1.0 / softness))
  alpha *= np.float32(draws.uniform(0.6, 1.0))
  texture = _sample_texture(draws, ('solid', 'gradient', 'noise'))
  colour = _paint(draws.rng, texture, size, size)
  # Blobs may hang over the image border: crop the window to the canvas.
  wy0, wx0 = max(y0, 0), max(x0, 0)
  wy1, wx1 = min(y0 + size, height), min(x0 + size, width)
  if wy1 <= wy0 or wx1 <= wx0:
    return
  rows, cols = slice(wy0 - y0, wy1 - y0), slice(wx0 - x0, wx1 - x0)
  if colour.shape[1] > 1:
    colour = colour[:, rows, cols]
  _composite(canvas, (wy0, wy1, wx0, wx1), alpha[rows, cols], colour)


def _sample_pose(draws, label, size):
  """Samples all but the position of an object of longest box side ~`size`.

  Returns:
    `(angle, stretch_y, stretch_x, stroke, scale, rel)` with `rel` the
    silhouette's extents `(ymin, xmin, ymax, xmax)` relative to its centre,
    pixels. The position is drawn separately so that a rejected placement
    can be retried.
  """
  if label in _POLYGONS:
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
  ymin, xmin, ymax, xmax = _relative_extents(label, angle, stretch_y, stretch_x)
  scale = size / max(ymax - ymin, xmax - xmin)
  rel = (scale * ymin, scale * xmin, scale * ymax, scale * xmax)
  return angle, stretch_y, stretch_x, stroke, scale, rel


def _contrasting_texture(draws, canvas, window, ink, stroke):
  """Samples an object texture whose mean colour differs from what it covers.

  Returns:
    A `_Texture`, or None if all `COLOUR_TRIES` samples came within
    `MIN_CONTRAST` (RGB distance) of the mean canvas colour under the ink.
  """
  y0, y1, x0, x1 = window
  weights = ink * np.float32(1.0 / ink.sum())
  under = (canvas[:, y0:y1, x0:x1] * weights).sum(axis=(1, 2))
  # A 1.5-3 px outline shows no gradient or stripes: keep it solid or mottled.
  kinds = ('solid', 'noise') if stroke else ('solid', 'gradient', 'stripes',
                                             'noise')
  for _ in range(COLOUR_TRIES):
    texture = _sample_texture(draws, kinds)
    diff = texture.mean() - under
    if math.sqrt(float(np.sum(diff * diff))) >= MIN_CONTRAST:
      return texture
  return None


def _finish(draws, canvas):
  """Camera-like finish: a mild blur, then sensor noise; quantises to uint8.

  Args:
    draws: the scene's `_Draws`.
    canvas: float32 [3, H, W], consumed (modified in place).

  Returns:
    uint8 [H, W, 3] image.
  """
  # Separable [a, 1 - 2a, a] blur with a random a in [0, 0.25] (0.25 is the
  # binomial [1, 2, 1] / 4 kernel); border rows and columns stay sharp. Then
  # uniform noise of standard deviation 1-5: uniform draws cost a quarter of
  # normal ones and look the same at this level. Its offset includes + 0.5,
  # so that the truncating cast to uint8 rounds to nearest.
  a = np.float32(draws.uniform(0.0, 0.25))
  spread = draws.uniform(1.0, 5.0) * math.sqrt(12.0)
  offset = np.float32(0.5 - 0.5 * spread)
  spread = np.float32(spread)
  height, width = canvas.shape[1:]
  image = np.empty((height, width, 3), np.uint8)
  for c in range(3):
    channel = canvas[c]
    for inner, before, after in (
        (channel[1:-1], channel[:-2], channel[2:]),
        (channel[:, 1:-1], channel[:, :-2], channel[:, 2:])):
      # `before` and `after` overlap `inner`: sum them before it changes.
      step = before + after
      step *= a
      inner *= np.float32(1.0) - np.float32(2.0) * a
      inner += step
    noise = draws.rng.random((height, width), dtype=np.float32)
    noise *= spread
    noise += offset
    channel += noise
    np.clip(channel, 0.0, 255.0, out=channel)
    image[:, :, c] = channel  # Truncates.
  return image


def render_scene(rng, *, return_layers=False):
  """Renders one scene.

  Args:
    rng: a `np.random.Generator`; the scene is a function of its state only.
      Dataset examples use `scene_rng(split, index)`.
    return_layers: also return the objects' `specs` (tuple of `ShapeSpec`, in
      the order of `boxes`) and the `background` (float32 [H, W, 3], the canvas
      before any object was drawn, before blur and noise), for tests and
      debugging.

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
  draws = _Draws(rng)
  height = draws.integers(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE + 1)
  width = draws.integers(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE + 1)
  canvas = _draw_background(draws, height, width)
  background = canvas.transpose(1, 2, 0).copy() if return_layers else None

  num_objects = 0
  if draws.random() >= EMPTY_FRACTION:
    num_objects = draws.integers(1, MAX_OBJECTS + 1)
  log_min = math.log(MIN_OBJECT_SIZE)
  log_max = math.log(MAX_OBJECT_SIZE_FRACTION * min(height, width))

  # Index of the topmost object whose mask covers each pixel (-1: none), and
  # per object the size of its full mask and of its still visible part.
  owner = np.full((height, width), -1, np.int16)
  full_area, visible_area = [], []
  specs, boxes, areas = [], [], []
  for _ in range(num_objects):
    label = draws.integers(0, len(CLASS_NAMES))
    size = math.exp(draws.uniform(log_min, log_max))  # Log-uniform.
    angle, stretch_y, stretch_x, stroke, scale, rel = _sample_pose(
        draws, label, size)
    for _ in range(PLACEMENT_TRIES):
      # The whole silhouette, with half a pixel to spare, lies in the image.
      cy = draws.uniform(0.5 - rel[0], height - 0.5 - rel[2])
      cx = draws.uniform(0.5 - rel[1], width - 0.5 - rel[3])
      spec = ShapeSpec(label, cy, cx, scale, angle, stretch_y, stretch_x, stroke)
      window = _window_of((cy + rel[0], cx + rel[1], cy + rel[2], cx + rel[3]),
                          height, width)
      ink, silhouette = _window_coverage(spec, window)
      mask = ink >= 0.5
      if not mask.any():
        continue  # Cannot happen for >= 8 px objects; never emit an empty box.
      y0, y1, x0, x1 = window
      box = mask_box(mask)
      side = float(max(box[2] - box[0], box[3] - box[1]))
      if side < MIN_OBJECT_SIZE:
        # Pixel centres miss sharp tips: the mask of a small star can be 2 px
        # shorter than its outline. Grow the object to the minimum size and
        # place it again.
        grow = (MIN_OBJECT_SIZE + 0.5) / side
        scale *= grow
        rel = tuple(r * grow for r in rel)
        continue
      owner_win = owner[y0:y1, x0:x1]
      under = owner_win[mask]
      under = under[under >= 0]
      hidden = np.bincount(under, minlength=len(specs))
      if np.any(np.asarray(visible_area) - hidden <
                (1.0 - MAX_HIDDEN_FRACTION) * np.asarray(full_area)):
        continue  # Would hide too much of an earlier object.
      texture = _contrasting_texture(draws, canvas, window, ink, stroke)
      if texture is None:
        continue  # Nothing stands out here; try another place.
      _composite(canvas, window, ink, _paint(rng, texture, y1 - y0, x1 - x0))
      for j in np.flatnonzero(hidden):
        visible_area[j] -= int(hidden[j])
      owner_win[mask] = len(specs)
      area = int(np.count_nonzero(mask))
      full_area.append(area)
      visible_area.append(area)
      specs.append(spec)
      boxes.append(box + np.array([y0, x0, y0, x0], np.float32))
      areas.append(np.count_nonzero(silhouette >= 0.5))
      break
    # After PLACEMENT_TRIES rejections the object is not placed at all.

  out = {
      'image': _finish(draws, canvas),
      'boxes': np.array(boxes, np.float32).reshape(-1, 4),
      'labels': np.array([s.label for s in specs], np.int64),
      'areas': np.array(areas, np.float32),
  }
  if return_layers:
    out['specs'] = tuple(specs)
    out['background'] = background
  return out
