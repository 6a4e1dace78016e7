"""Painting of `shapes` scenes: random draws, textures, background, finish.

A canvas is float32 RGB, channel-first [3, H, W], values in [0, 255] but
unclipped until `finish` quantises it to uint8 [H, W, 3]. Channel-first makes
numpy's inner loops run along image rows rather than over 3 channels, and
whole-image work goes one channel at a time to keep temporaries small.
"""

import dataclasses
import math

import numpy as np

from detector.data.shapes import geometry


class Draws:
  """Scalar random draws from a generator, fetched in blocks.

  A scene needs about a hundred scalars; drawing them 64 at a time spares a
  `Generator` call per scalar. Arrays are drawn from the generator directly.
  Both come from the one PCG64 stream, so a scene remains a function of the
  generator's state.
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
class Texture:
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


def sample_texture(draws, kinds):
  """Samples a texture of one of `kinds`, uniformly; draws scalars only."""
  return Texture(kind=kinds[draws.integers(0, len(kinds))],
                 colour=draws.colour(), colour2=draws.colour(),
                 angle=draws.uniform(0.0, 2.0 * math.pi),
                 period=draws.uniform(3.0, 7.0),
                 cell=draws.integers(1, 4),
                 amplitude=draws.uniform(15.0, 40.0))


def fill(rng, texture, h, w):
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
    # draws: cheaper than normal ones, and alike to the eye.
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
    t = geometry.clip01((tri - np.float32(0.25)) * np.float32(period) +
                        np.float32(0.5))
  colours = t[None] * (texture.colour2 - c0)
  colours += c0
  return colours


def composite(canvas, window, alpha, colour):
  """Blends `colour` over `canvas[:, window]` with opacity `alpha` [h, w]."""
  y0, y1, x0, x1 = window
  region = canvas[:, y0:y1, x0:x1]
  region += alpha * (colour - region)


def draw_background(draws, height, width):
  """Gradient and blotches, then straight lines and distractor blobs.

  Per-pixel noise is added to the whole image at the end (`finish`): the
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
    alpha = geometry.clip01(np.float32(half + 0.5) - dist)
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
  alpha = geometry.clip01(
      (field - np.float32(0.3)) * np.float32(1.0 / softness))
  alpha *= np.float32(draws.uniform(0.6, 1.0))
  texture = sample_texture(draws, ('solid', 'gradient', 'noise'))
  colour = fill(draws.rng, texture, size, size)
  # Blobs may hang over the image border: crop the window to the canvas.
  wy0, wx0 = max(y0, 0), max(x0, 0)
  wy1, wx1 = min(y0 + size, height), min(x0 + size, width)
  if wy1 <= wy0 or wx1 <= wx0:
    return
  rows, cols = slice(wy0 - y0, wy1 - y0), slice(wx0 - x0, wx1 - x0)
  if colour.shape[1] > 1:
    colour = colour[:, rows, cols]
  composite(canvas, (wy0, wy1, wx0, wx1), alpha[rows, cols], colour)


def finish(draws, canvas):
  """Camera-like finish: a mild blur, then sensor noise; quantises to uint8.

  Args:
    draws: the scene's `Draws`.
    canvas: float32 [3, H, W], consumed (modified in place).

  Returns:
    uint8 [H, W, 3] image.
  """
  # Separable [a, 1 - 2a, a] blur with a random a in [0, 0.25] (0.25 is the
  # binomial [1, 2, 1] / 4 kernel); border rows and columns stay sharp. Then
  # uniform noise of standard deviation 1-5 (cheaper than normal noise, and
  # alike at this level). Its offset includes + 0.5, so that the truncating
  # cast to uint8 rounds to nearest.
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
