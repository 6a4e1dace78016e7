"""Property tests for detector.data.preprocess.

The geometric tests draw synthetic scenes: a uniform grey background with one
object per colour channel (a red rectangle, a green disc, a blue rectangle),
each at a known pixel box. After an op, thresholding channel k recovers where
object k's pixels went, independently of the boxes the op returned, so the
boxes can be checked against the pixels. Putting each object in its own channel
means interpolation blur never mixes two objects.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from detector.data import augment
from detector.data import preprocess

BG = 20.0  # Background value, every channel.
FG = 230.0  # Object value, in the object's own channel.
THRESH = (BG + FG) / 2
# Interpolation: with a triangle kernel an output pixel is above THRESH exactly
# when its centre lies inside the object, so thresholded pixels stick out of
# the true box by < 0.5 px. Tightness allows 1 px: a disc's extreme rows are
# thin chords that can fall below threshold after downscaling.
ENCLOSE_TOL = 0.5
TIGHT_TOL = 1.0
# What make_scene draws in channel k.
SCENE_KINDS = ('rect', 'disc', 'rect')


def make_scene(h, w):
  """Draws the three-object scene.

  Returns:
    image: uint8 [h, w, 3].
    boxes: float32 [3, 4] yxyx pixel-edge boxes, tight around each object's
      drawn pixels; box k is the object in channel k.
    labels: int32 [3], the channel of each object (0, 1, 2).
  """
  image = np.full((h, w, 3), BG, np.float32)
  yy, xx = np.mgrid[0:h, 0:w]
  masks = []
  red = np.zeros((h, w), bool)
  red[int(0.1 * h):int(0.45 * h), int(0.1 * w):int(0.4 * w)] = True
  masks.append(red)
  cy, cx, r = 0.72 * h, 0.3 * w, 0.18 * min(h, w)
  masks.append((yy + 0.5 - cy)**2 + (xx + 0.5 - cx)**2 <= r * r)
  blue = np.zeros((h, w), bool)
  blue[int(0.15 * h):int(0.85 * h), int(0.6 * w):int(0.9 * w)] = True
  masks.append(blue)
  boxes = []
  for k, mask in enumerate(masks):
    image[..., k][mask] = FG
    boxes.append(_mask_box(mask))
  return (image.astype(np.uint8), np.array(boxes, np.float32),
          np.arange(3, dtype=np.int32))


def _mask_box(mask):
  """Tight yxyx pixel-edge box of a boolean [h, w] mask."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  return [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]


def assert_boxes_match_pixels(image, boxes, channels, unclipped=None,
                              enclose_tol=ENCLOSE_TOL, tight_tol=TIGHT_TOL):
  """Checks each box against the thresholded pixels of its object's channel.

  Enclosure is checked over the whole image, so an object that landed
  anywhere but inside its box fails. A box of zero area (cropped away) must
  have no object pixels. Tightness is skipped for boxes under 1 px wide, which
  may legitimately have no pixel above threshold, and for a disc whose box was
  clipped (given `unclipped`): the box of a clipped disc is the clipped box,
  not the box of the visible part of the disc, which can be smaller.
  """
  image = np.asarray(image)
  if unclipped is None:
    unclipped = boxes
  for box, full, k in zip(np.asarray(boxes), np.asarray(unclipped),
                          np.asarray(channels)):
    mask = image[..., k] > THRESH
    height, width = box[2] - box[0], box[3] - box[1]
    if height <= 0 or width <= 0:
      assert not mask.any(), f'channel {k}: pixels visible but box {box} empty'
      continue
    if not mask.any():
      assert min(height, width) < 1.0, f'channel {k}: box {box} has no pixels'
      continue
    found = np.array(_mask_box(mask), np.float32)
    lo, hi = box[:2] - enclose_tol, box[2:] + enclose_tol
    assert np.all(found[:2] >= lo) and np.all(found[2:] <= hi), (
        f'channel {k}: pixels {found} not enclosed by box {box}')
    clipped_disc = SCENE_KINDS[k] == 'disc' and not np.allclose(box, full)
    if min(height, width) >= 1.0 and not clipped_disc:
      np.testing.assert_allclose(found, box, atol=tight_tol,
                                 err_msg=f'channel {k}: box not tight')


def assert_padding(image, valid_size, pad_value):
  """Outside valid_size everything is pad_value; inside, only image values."""
  image = np.asarray(image)
  vh, vw = np.asarray(valid_size)
  assert np.all(image[vh:] == pad_value)
  assert np.all(image[:, vw:] == pad_value)
  inside = image[:vh, :vw]
  # The kernel's weights are non-negative, so resampled values stay in the
  # scene's value range; a pad pixel inside would break this.
  assert np.all(inside >= BG - 1e-3) and np.all(inside <= FG + 1e-3)


def expected_boxes(boxes, scale, offset, original_size, output_size):
  """Boxes mapped by scale/offset, clipped to the visible scaled image."""
  mapped = boxes * scale + np.tile(offset, 2)
  limit = np.minimum(np.asarray(original_size) * scale + offset, output_size)
  return np.clip(mapped, 0.0, np.tile(np.maximum(limit, 0.0), 2))


def run_graph(fn, *args):
  """Runs fn inside tf.data.Dataset.map with fully dynamic input shapes."""
  arrays = [np.asarray(a) for a in args]
  signature = tuple(
      tf.TensorSpec([None] * a.ndim, tf.as_dtype(a.dtype)) for a in arrays)
  ds = tf.data.Dataset.from_generator(lambda: iter([tuple(arrays)]),
                                      output_signature=signature)
  ds = ds.map(fn)
  return tf.nest.map_structure(np.asarray, next(iter(ds)))


def run(mode, fn, *args):
  if mode == 'eager':
    return tf.nest.map_structure(np.asarray, fn(*args))
  return run_graph(fn, *args)


MODES = ['eager', 'graph']

# (input (h, w), output (H, W), scale_multiplier, offset, expected scale,
#  expected valid_size)
RESIZE_CASES = [
    ((60, 80), (64, 64), 1.0, None, 0.8, (48, 64)),  # Downscale, wide.
    ((50, 30), (64, 96), 1.0, None, 1.28, (64, 38)),  # Upscale, tall.
    ((90, 45), (40, 40), 1.0, None, 40 / 90, (40, 20)),  # Float-exact edge.
    ((45, 70), (48, 32), 1.0, None, 32 / 70, (21, 32)),  # Split last row.
    ((60, 80), (64, 64), 1.5, (5, 20), 1.2, (64, 64)),  # Crop both axes.
    ((60, 80), (64, 64), 2.0, (0, 80), 1.6, (64, 48)),  # Crop x + pad x.
]


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize(
    'case', RESIZE_CASES, ids=lambda c: f'{c[0]}->{c[1]}x{c[2]}@{c[3]}')
def test_resize_and_pad_boxes_follow_pixels(case, mode):
  (h, w), output_size, multiplier, offset, scale, valid_size = case
  image, boxes, labels = make_scene(h, w)
  if mode == 'graph':
    image = image.astype(np.float32)  # Cover both input dtypes.
  pad_value = -1.0

  def fn(image, boxes):
    return preprocess.resize_and_pad(
        image, boxes, output_size, scale_multiplier=multiplier,
        offset=None if offset is None else tf.constant(offset),
        pad_value=pad_value)

  out_image, out_boxes, info = run(mode, fn, image, boxes)

  assert out_image.shape == (*output_size, 3)
  assert out_image.dtype == np.float32
  np.testing.assert_allclose(info['scale'], scale, rtol=1e-6)
  offset_yx = -np.asarray(offset or (0, 0), np.float32)
  np.testing.assert_array_equal(info['offset'], offset_yx)
  np.testing.assert_array_equal(info['valid_size'], valid_size)
  np.testing.assert_array_equal(info['original_size'], (h, w))
  # info maps original coordinates to output coordinates.
  np.testing.assert_allclose(
      out_boxes, expected_boxes(boxes, scale, offset_yx, (h, w), output_size),
      atol=1e-4)
  assert_padding(out_image, info['valid_size'], pad_value)
  unclipped = boxes * scale + np.tile(offset_yx, 2)
  assert_boxes_match_pixels(out_image, out_boxes, labels, unclipped)


def test_resize_matches_tf_image_resize():
  # With an integer scaled size the op must be exactly the standard resize
  # (bilinear, antialias=True), placed top-left.
  image, boxes, _ = make_scene(60, 80)
  out, _, _ = preprocess.resize_and_pad(image, boxes, (64, 64))
  reference = tf.image.resize(image, (48, 64), antialias=True)
  np.testing.assert_allclose(out[:48], reference, atol=1e-3)


def test_resize_and_pad_rejects_negative_offset():
  image, boxes, _ = make_scene(20, 20)
  with pytest.raises(tf.errors.InvalidArgumentError):
    preprocess.resize_and_pad(image, boxes, (16, 16),
                              offset=tf.constant([0, -1]))


def test_crop_marks_cut_boxes_and_clips_partial_ones():
  # Scaled by 1.6 to 96x128 and shown from x=80: the red rectangle and the
  # green disc lie entirely left of the crop, the blue one straddles it.
  image, boxes, labels = make_scene(60, 80)
  out_image, out_boxes, info = preprocess.resize_and_pad(
      image, boxes, (64, 64), scale_multiplier=2.0, offset=tf.constant([0, 80]))
  vh, vw = info['valid_size'].numpy()
  clipped, out_labels, keep = preprocess.clip_and_filter_boxes(
      out_boxes, labels, vh, vw)
  np.testing.assert_array_equal(keep, [False, False, True])
  np.testing.assert_array_equal(out_labels, labels)
  # The unclipped boxes also give the visible fraction: the blue box keeps
  # (35.2 - 0) / (35.2 + 3.2) of its width and (64 - 14.4) / (81.6 - 14.4) of
  # its height, 0.677 of its area.
  unclipped = preprocess.transform_boxes(boxes, info)
  np.testing.assert_allclose(unclipped[2], [14.4, -3.2, 81.6, 35.2], atol=1e-4)
  np.testing.assert_allclose(clipped[2], [14.4, 0.0, 64.0, 35.2], atol=1e-4)
  assert_boxes_match_pixels(out_image, clipped, labels, unclipped)
  for fraction, expected in [(0.67, True), (0.69, False)]:
    _, _, keep = preprocess.clip_and_filter_boxes(
        unclipped, labels, vh, vw, min_visible_fraction=fraction)
    np.testing.assert_array_equal(keep, [False, False, expected])


def test_clip_and_filter_boxes_cases():
  boxes = np.array([
      [2, 2, 8, 8],  # Inside.
      [-4, 2, 4, 8],  # Half above the window.
      [12, 2, 20, 8],  # Entirely below.
      [2, 10, 8, 14],  # Touches the right edge only: zero clipped area.
      [5, 5, 5, 9],  # Degenerate (zero height).
      [8, 2, 2, 8],  # Inverted.
  ], np.float32)
  labels = np.arange(6, dtype=np.int64)
  clipped, out_labels, keep = preprocess.clip_and_filter_boxes(
      boxes, labels, 10, 10)
  np.testing.assert_array_equal(keep, [True, True, False, False, False, False])
  np.testing.assert_array_equal(clipped[1], [0, 2, 4, 8])
  np.testing.assert_array_equal(clipped[2], [10, 2, 10, 8])
  assert out_labels.dtype == tf.int32
  # Box 1 keeps exactly half its area.
  _, _, keep = preprocess.clip_and_filter_boxes(boxes, labels, 10, 10, 0.5)
  assert keep[1]
  _, _, keep = preprocess.clip_and_filter_boxes(boxes, labels, 10, 10, 0.51)
  assert not keep[1] and keep[0]


@pytest.mark.parametrize('mode', MODES)
def test_flip_moves_boxes_with_pixels(mode):
  image, boxes, labels = make_scene(37, 53)  # Odd width: no symmetric slack.
  fn = lambda i, b, s: augment.random_horizontal_flip(i, b, s, 1.0)
  out_image, out_boxes = run(mode, fn, image, boxes, np.array([1, 2]))
  np.testing.assert_array_equal(out_image, image[:, ::-1])
  # No interpolation: boxes must be exact.
  assert_boxes_match_pixels(out_image, out_boxes, labels, enclose_tol=0.0,
                            tight_tol=0.0)


def test_flip_twice_is_identity_and_probability_zero_is_noop():
  image, boxes, _ = make_scene(37, 53)
  seed = tf.constant([3, 4], tf.int64)
  once = augment.random_horizontal_flip(image, boxes, seed, 1.0)
  twice = augment.random_horizontal_flip(*once, seed, 1.0)
  np.testing.assert_array_equal(twice[0], image)
  np.testing.assert_array_equal(twice[1], boxes)
  never = augment.random_horizontal_flip(image, boxes, seed, 0.0)
  np.testing.assert_array_equal(never[0], image)
  np.testing.assert_array_equal(never[1], boxes)


def test_flip_is_seeded():
  image, boxes, labels = make_scene(24, 31)
  flipped = []
  for s in range(16):
    seed = tf.constant([s, 7])
    out_image, out_boxes = augment.random_horizontal_flip(image, boxes, seed)
    again = augment.random_horizontal_flip(image, boxes, seed)
    np.testing.assert_array_equal(again[0], out_image)
    np.testing.assert_array_equal(again[1], out_boxes)
    assert_boxes_match_pixels(out_image, out_boxes, labels, enclose_tol=0.0,
                              tight_tol=0.0)
    flipped.append(not np.array_equal(out_image, image))
  assert any(flipped) and not all(flipped)


JITTER_SEEDS = [np.array([s, 11], np.int32) for s in range(10)]


def _jitter(image, boxes, seed, fit_size=None):
  return augment.random_scale_jitter(image, boxes, (64, 64), 0.5, 2.0, seed,
                                        pad_value=-1.0, fit_size=fit_size)


# base: the scale that fits the 60x80 image into fit_size (None: the 64x64 output).
@pytest.mark.parametrize('fit_size,base', [(None, 64 / 80), ((96, 96), 96 / 80)])
def test_scale_jitter_boxes_follow_pixels(fit_size, base):
  image, boxes, labels = make_scene(60, 80)
  _jitter_fit = lambda image, boxes, seed: _jitter(image, boxes, seed, fit_size)
  eager, multipliers, cropped, padded = [], [], False, False
  for seed in JITTER_SEEDS:
    out_image, out_boxes, info = tf.nest.map_structure(
        np.asarray, _jitter_fit(image, boxes, seed))
    eager.append((out_image, out_boxes, info))
    scale, offset = info['scale'], info['offset']
    multipliers.append(scale / base)
    assert 0.5 - 1e-6 <= scale / base <= 2.0 + 1e-6
    # Crop offsets are whole scaled pixels, never past the scaled image.
    assert np.all(offset <= 0) and np.all(offset == np.round(offset))
    scaled_size = np.floor(np.array([60, 80]) * scale + 0.5)
    assert np.all(-offset <= np.maximum(scaled_size - 64, 0))
    cropped |= bool(np.any(offset < 0))
    padded |= bool(np.any(info['valid_size'] < 64))
    np.testing.assert_allclose(
        out_boxes, expected_boxes(boxes, scale, offset, (60, 80), (64, 64)),
        atol=1e-4)
    assert_padding(out_image, info['valid_size'], -1.0)
    assert_boxes_match_pixels(out_image, out_boxes, labels,
                              preprocess.transform_boxes(boxes, info))
    # Boxes cut out of the crop have zero area and keep=False.
    _, _, keep = preprocess.clip_and_filter_boxes(
        out_boxes, labels, *info['valid_size'])
    for k in range(3):
      if (out_image[..., k] > THRESH).any():
        assert keep[k]
  # The seeds exercise both branches, and different seeds give different
  # draws.
  assert cropped and padded
  assert len(set(np.round(multipliers, 6))) == len(JITTER_SEEDS)

  # Same seed, same result, in graph mode inside tf.data too.
  signature = (tf.TensorSpec([None, None, 3], tf.uint8),
               tf.TensorSpec([None, 4], tf.float32),
               tf.TensorSpec([2], tf.int32))
  ds = tf.data.Dataset.from_generator(
      lambda: ((image, boxes, s) for s in JITTER_SEEDS),
      output_signature=signature).map(_jitter_fit)
  for (e_image, e_boxes, e_info), (g_image, g_boxes, g_info) in zip(eager, ds):
    np.testing.assert_array_equal(g_image, e_image)
    np.testing.assert_array_equal(g_boxes, e_boxes)
    np.testing.assert_array_equal(g_info['offset'], e_info['offset'])


def test_scale_jitter_same_seed_same_output_different_seed_differs():
  image, boxes, _ = make_scene(40, 50)
  a = _jitter(image, boxes, tf.constant([5, 6]))
  b = _jitter(image, boxes, tf.constant([5, 6]))
  c = _jitter(image, boxes, tf.constant([6, 5]))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert a[2]['scale'] != c[2]['scale']
  assert not np.array_equal(a[0], c[0])


def test_parallel_map_order_does_not_change_results():
  # Per-element seeds derived from the element, not from a global RNG: a
  # parallel, non-deterministic map produces the same element contents.
  image, boxes, _ = make_scene(50, 70)

  def fn(index):
    seed = tf.stack([index, tf.constant(99, tf.int64)])
    out_image, out_boxes, _ = _jitter(image, boxes, seed)
    return index, out_image, out_boxes

  indices = tf.data.Dataset.range(8)
  sequential = {int(i): (im, b) for i, im, b in indices.map(fn)}
  parallel = indices.map(fn, num_parallel_calls=2, deterministic=False)
  for i, out_image, out_boxes in parallel:
    np.testing.assert_array_equal(out_image, sequential[int(i)][0])
    np.testing.assert_array_equal(out_boxes, sequential[int(i)][1])


def test_pad_to_max_boxes_compacts_and_counts_dropped():
  boxes = np.arange(24, dtype=np.float32).reshape(6, 4)
  labels = np.array([10, 11, 12, 13, 14, 15], np.int64)
  keep = np.array([True, False, True, True, False, True])

  out = preprocess.pad_to_max_boxes(boxes, labels, keep, 3)
  np.testing.assert_array_equal(out['boxes'], boxes[[0, 2, 3]])
  np.testing.assert_array_equal(out['labels'], [10, 12, 13])
  np.testing.assert_array_equal(out['mask'], [True, True, True])
  assert out['num_dropped'] == 1 and out['num_dropped'].dtype == tf.int32
  assert out['labels'].dtype == tf.int32

  out = preprocess.pad_to_max_boxes(boxes, labels, keep, 6)
  np.testing.assert_array_equal(out['boxes'][:4], boxes[[0, 2, 3, 5]])
  np.testing.assert_array_equal(out['boxes'][4:], 0.0)
  np.testing.assert_array_equal(out['labels'], [10, 12, 13, 15, 0, 0])
  np.testing.assert_array_equal(out['mask'], [True] * 4 + [False] * 2)
  assert out['num_dropped'] == 0

  out = preprocess.pad_to_max_boxes(np.zeros((0, 4), np.float32),
                                    np.zeros((0,), np.int32),
                                    np.zeros((0,), bool), 2)
  np.testing.assert_array_equal(out['boxes'], np.zeros((2, 4)))
  np.testing.assert_array_equal(out['mask'], [False, False])
  assert out['num_dropped'] == 0


def test_pipeline_output_shapes_are_static_in_tf_data():
  max_boxes = 4
  sizes = [(30, 50, 0), (71, 20, 2), (64, 64, 7), (100, 130, 3)]

  def generate():
    for h, w, n in sizes:
      rng = np.random.default_rng(h)
      image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
      lo = rng.uniform(0, 0.5, (n, 2)) * [h, w]
      hi = lo + rng.uniform(1, 0.5 * min(h, w), (n, 2))
      boxes = np.concatenate([lo, hi], axis=1).astype(np.float32)
      yield image, boxes, np.arange(n, dtype=np.int32), np.int64(h)

  signature = (tf.TensorSpec([None, None, 3], tf.uint8),
               tf.TensorSpec([None, 4], tf.float32),
               tf.TensorSpec([None], tf.int32),
               tf.TensorSpec([], tf.int64))

  def pipeline(image, boxes, labels, example_id):
    seeds = tf.random.experimental.stateless_split(
        tf.stack([example_id, tf.constant(0, tf.int64)]), num=3)
    image, boxes = augment.random_horizontal_flip(image, boxes, seeds[0])
    image, boxes, info = augment.random_scale_jitter(
        image, boxes, (64, 48), 0.5, 1.5, seeds[1])
    image = augment.random_color_jitter(image, seeds[2])
    boxes, labels, keep = preprocess.clip_and_filter_boxes(
        boxes, labels, info['valid_size'][0], info['valid_size'][1])
    out = preprocess.pad_to_max_boxes(boxes, labels, keep, max_boxes)
    out.update(image=image, valid_size=info['valid_size'],
               scale=info['scale'],
               num_kept=tf.reduce_sum(tf.cast(keep, tf.int32)))
    return out

  ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
  ds = ds.map(pipeline, num_parallel_calls=2)
  spec = ds.element_spec
  assert spec['image'].shape == (64, 48, 3)
  assert spec['boxes'].shape == (max_boxes, 4)
  assert spec['labels'].shape == (max_boxes,)
  assert spec['mask'].shape == (max_boxes,)
  assert spec['num_dropped'].shape == ()
  assert spec['valid_size'].shape == (2,)
  assert spec['scale'].shape == ()

  # Batching requires identical shapes; values stay consistent.
  batches = list(ds.batch(2))
  assert len(batches) == 2
  for batch in batches:
    assert batch['image'].shape == (2, 64, 48, 3)
    assert np.all(batch['image'] >= 0) and np.all(batch['image'] <= 255)
    for boxes, mask, valid in zip(batch['boxes'].numpy(), batch['mask'].numpy(),
                                  batch['valid_size'].numpy()):
      real = boxes[mask]
      assert np.all(real[:, 2:] > real[:, :2])
      assert np.all(real[:, 2:] <= valid + 1e-4)
      np.testing.assert_array_equal(boxes[~mask], 0.0)
    # Every kept box is either in a slot or counted as dropped.
    np.testing.assert_array_equal(
        batch['mask'].numpy().sum(axis=1) + batch['num_dropped'].numpy(),
        batch['num_kept'])


def test_color_jitter_is_seeded_and_bounded():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
  seed = tf.constant([1, 2])
  a = augment.random_color_jitter(image, seed, 0.5, 0.5, 0.5)
  b = augment.random_color_jitter(image, seed, 0.5, 0.5, 0.5)
  c = augment.random_color_jitter(image, tf.constant([2, 1]), 0.5, 0.5, 0.5)
  assert a.dtype == tf.float32 and a.shape == image.shape
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert np.all(a >= 0.0) and np.all(a <= 255.0)
  assert np.all(c >= 0.0) and np.all(c <= 255.0)
  identity = augment.random_color_jitter(image, seed, 0.0, 0.0, 0.0)
  np.testing.assert_array_equal(identity, image.astype(np.float32))

  # Brightness alone shifts every unclipped pixel by the same amount.
  mid = np.full((4, 4, 3), 128, np.uint8)
  mid[0, 0] = (100, 150, 120)
  shifted = augment.random_color_jitter(mid, seed, 0.2, 0.0, 0.0).numpy()
  delta = shifted - mid
  assert abs(delta[0, 0, 0]) > 0
  np.testing.assert_allclose(delta, delta[0, 0, 0], atol=1e-4)


def test_color_jitter_saturation_keeps_grey_pixels():
  # Saturation blends each pixel with its own grey value, so it cannot change
  # a pixel that is already grey, whatever the factor.
  grey = np.full((4, 4, 3), 77, np.uint8)
  out = augment.random_color_jitter(grey, tf.constant([0, 0]), 0.0, 0.0, 0.9)
  np.testing.assert_allclose(out, 77.0, atol=1e-3)


def test_normalized_pixel_round_trip():
  normalized = np.array([[0.5, 0.25, 1.0, 1.0], [0.0, 0.0, 0.1, 0.3]],
                        np.float32)
  pixels = preprocess.normalized_to_pixels(normalized, 40, tf.constant(80))
  np.testing.assert_allclose(pixels, [[20, 20, 40, 80], [0, 0, 4, 24]],
                             rtol=1e-6)
  back = preprocess.pixels_to_normalized(pixels, tf.constant(40), 80)
  np.testing.assert_allclose(back, normalized, rtol=1e-6)
  assert math.isclose(float(back[0, 2]), 1.0)
