"""Geometry of the `shapes` objects: silhouettes, poses, coverage and masks.

Six silhouette classes (`CLASS_NAMES`) are posed by a `ShapeSpec` and rendered
as anti-aliased coverage from signed distance fields, in numpy only.

Conventions:

* Pixel-edge coordinates: pixel row `i` spans `[i, i + 1)` and has its centre
  at `i + 0.5`. A box `[ymin, xmin, ymax, xmax]` covers rows `ymin .. ymax - 1`
  and columns `xmin .. xmax - 1`.
* Coverage: the fraction of a pixel an object covers, computed analytically
  from a signed distance `d` (pixels, negative inside) at the pixel centre as
  `clip(0.5 - d, 0, 1)`. An object's mask is the pixels with coverage >= 0.5.
* Canonical silhouettes are (x, y) with y pointing down, spanning [-1, 1] on
  their longer axis.
"""

import dataclasses
import math

import numpy as np

CLASS_NAMES = ('circle', 'triangle', 'square', 'star', 'cross', 'crescent')
CIRCLE, TRIANGLE, SQUARE, STAR, CROSS, CRESCENT = range(len(CLASS_NAMES))

# Crescent: the unit disc minus a disc of radius 0.8 centred at (0.45, 0),
# which leaves a moon 0.65 wide at its thickest, opening towards +x.
_CRESCENT_INNER_R = 0.8
_CRESCENT_OFFSET = 0.45
_CROSS_HALF_WIDTH = 0.34  # Of the arms, in units of the arm length.
_STAR_INNER_R = 0.45  # Fat enough that small stars keep their points.


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


# Vertices of the polygon silhouettes, canonical (x, y).
POLYGONS = {
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
    TRIANGLE: [POLYGONS[TRIANGLE]],
    SQUARE: [POLYGONS[SQUARE]],
    STAR: _star_pieces(POLYGONS[STAR], cut=0.1),
    CROSS: [POLYGONS[CROSS][[10, 3, 4, 9]],  # Horizontal bar.
            POLYGONS[CROSS][[0, 1, 6, 7]]],  # Vertical bar.
}
_HALF_PLANES = {k: _half_planes(v) for k, v in _CONVEX_PIECES.items()}

# Points on each outline, to measure a posed object's extents.
_OUTLINE_POINTS = dict(POLYGONS)
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
    ymin, xmin, ymax, xmax = relative_extents(self.label, self.angle,
                                              self.stretch_y, self.stretch_x)
    return (self.center_y + self.scale * ymin, self.center_x + self.scale * xmin,
            self.center_y + self.scale * ymax, self.center_x + self.scale * xmax)


def relative_extents(label, angle, stretch_y, stretch_x):
  """Extents `(ymin, xmin, ymax, xmax)` of a posed silhouette at scale 1."""
  c, s = math.cos(angle), math.sin(angle)
  points = _OUTLINE_POINTS[label]
  x = points[:, 0] * stretch_x
  y = points[:, 1] * stretch_y
  px = c * x - s * y
  py = s * x + c * y
  return float(py.min()), float(px.min()), float(py.max()), float(px.max())


def clip01(a):
  """Clips float array `a` to [0, 1] in place; returns it."""
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


def window_of(extents, height, width):
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


def window_coverage(spec, window):
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
  silhouette = clip01(np.float32(0.5) - d)
  if not spec.stroke:
    return silhouette, silhouette
  # The band -stroke <= d <= 0: the silhouette minus the silhouette eroded by
  # the stroke width, whose coverage clip(0.5 - (d + stroke), 0, 1) is
  # -clip(d + stroke - 0.5, -1, 0).
  d += np.float32(spec.stroke - 0.5)
  ink = silhouette + np.clip(d, -1.0, 0.0, out=d)
  return clip01(ink), silhouette


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
  window = window_of(spec.extents(), height, width)
  y0, y1, x0, x1 = window
  if y1 > y0 and x1 > x0:
    out[y0:y1, x0:x1] = window_coverage(spec, window)[1 if silhouette else 0]
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
  v = POLYGONS[spec.label]
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
