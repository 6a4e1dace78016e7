"""Tests of the `shapes` scene renderer, its parallel rendering and its TFDS
builders."""

import functools
import hashlib
import io
import math
import multiprocessing
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from detector.data import shapes
from detector.data.shapes import examples
from detector.data.shapes import geometry
from detector.data.shapes import parallel
from detector.data.shapes import render

NUM_STAT_SCENES = 300


@functools.lru_cache(maxsize=None)
def _scenes(split='train', count=NUM_STAT_SCENES):
  """Renders `count` scenes of `split` with their layers, once per session."""
  return tuple(render.render_scene(render.scene_rng(split, i), return_layers=True)
               for i in range(count))


def _masks(scene):
  """Each object's full ink mask, bool [N, H, W], re-rendered from its spec."""
  height, width = scene['image'].shape[:2]
  return np.array([geometry.object_coverage(spec, height, width) >= 0.5
                   for spec in scene['specs']], bool).reshape(-1, height, width)


def _longest_sides(scene):
  boxes = scene['boxes']
  return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


# Determinism.


def test_same_seed_renders_identical_scene():
  a = render.render_scene(np.random.default_rng([render.SPLIT_SEED['train'], 7]))
  b = render.render_scene(render.scene_rng('train', 7))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_different_indices_and_splits_differ():
  images = [render.render_scene(render.scene_rng(split, i))['image']
            for split, i in (('train', 0), ('train', 1), ('validation', 0),
                             ('test', 0))]
  for i in range(len(images)):
    for j in range(i):
      assert (images[i].shape != images[j].shape or
              not np.array_equal(images[i], images[j]))


def test_scene_does_not_depend_on_other_examples():
  # Example 5 alone equals example 5 rendered after examples 0-4.
  for i in range(5):
    render.render_scene(render.scene_rng('test', i))
  alone = render.render_scene(render.scene_rng('test', 5))
  np.testing.assert_array_equal(alone['image'], _scenes('test', 6)[5]['image'])


# Geometry of single objects.


def test_axis_aligned_square_covers_exact_pixels():
  # Canonical square [-1, 1]^2, scale 10, centred at (y, x) = (50, 60): the
  # silhouette is [40, 60) x [50, 70) in pixel-edge coordinates.
  spec = geometry.ShapeSpec(label=geometry.SQUARE, center_y=50.0, center_x=60.0,
                            scale=10.0, angle=0.0, stretch_y=1.0, stretch_x=1.0,
                            stroke=0.0)
  coverage = geometry.object_coverage(spec, 100, 120)
  expected = np.zeros((100, 120), np.float32)
  expected[40:60, 50:70] = 1.0
  np.testing.assert_array_equal(coverage, expected)
  np.testing.assert_array_equal(geometry.mask_box(coverage >= 0.5),
                                [40, 50, 60, 70])


def test_half_pixel_edge_gets_half_coverage():
  # Edges through pixel centres: those pixels are half covered and, at the
  # 0.5 threshold, inside the mask.
  spec = geometry.ShapeSpec(label=geometry.SQUARE, center_y=50.5, center_x=60.5,
                            scale=10.0, angle=0.0, stretch_y=1.0, stretch_x=1.0,
                            stroke=0.0)
  coverage = geometry.object_coverage(spec, 100, 120)
  assert coverage[40, 55] == pytest.approx(0.5)
  assert coverage[60, 55] == pytest.approx(0.5)
  assert coverage[45, 50] == pytest.approx(0.5)
  assert coverage[50, 60] == 1.0
  np.testing.assert_array_equal(geometry.mask_box(coverage >= 0.5),
                                [40, 50, 61, 71])


def test_outline_is_a_band_with_the_silhouette_box():
  spec = geometry.ShapeSpec(label=geometry.CIRCLE, center_y=40.0, center_x=40.0,
                            scale=20.0, angle=0.3, stretch_y=1.1,
                            stretch_x=1 / 1.1, stroke=2.0)
  ink = geometry.object_coverage(spec, 80, 80)
  silhouette = geometry.object_coverage(spec, 80, 80, silhouette=True)
  assert ink[40, 40] == 0.0  # The inside stays unpainted.
  assert np.all(ink <= silhouette + 1e-6)
  np.testing.assert_array_equal(geometry.mask_box(ink >= 0.5),
                                geometry.mask_box(silhouette >= 0.5))
  # A 2 px band around a ~40 px ellipse: about 2 * perimeter pixels.
  assert 150 < np.count_nonzero(ink >= 0.5) < 300


def test_object_masks_match_exact_point_in_shape_test():
  # The mask (coverage >= 0.5) is the pixels whose centre lies inside the
  # silhouette, computed here by an independent even-odd / disc test.
  checked = 0
  for scene in _scenes()[:60]:
    height, width = scene['image'].shape[:2]
    centres_y = np.arange(height)[:, None] + 0.5
    centres_x = np.arange(width)[None, :] + 0.5
    for spec in scene['specs']:
      mask = geometry.object_coverage(spec, height, width,
                                      silhouette=True) >= 0.5
      np.testing.assert_array_equal(
          mask, geometry.spec_contains(spec, centres_y, centres_x),
          err_msg=str(spec))
      checked += 1
  assert checked > 200


def test_coverage_approximates_supersampled_area():
  n = 8  # 8 x 8 samples per pixel.
  offsets = (np.arange(n) + 0.5) / n
  for scene in _scenes()[:12]:
    height, width = scene['image'].shape[:2]
    ys = (np.arange(height)[:, None] + offsets).reshape(-1, 1)
    xs = (np.arange(width)[:, None] + offsets).reshape(1, -1)
    for spec in scene['specs']:
      area = geometry.spec_contains(spec, ys, xs).reshape(
          height, n, width, n).mean(axis=(1, 3))
      coverage = geometry.object_coverage(spec, height, width, silhouette=True)
      support = (area > 0) | (coverage > 0)
      error = np.abs(area - coverage)[support]
      # The distance-based coverage is exact for axis-aligned edges and off
      # by up to ~0.2 on diagonal ones, more at sharp tips.
      assert error.mean() < 0.06, spec
      assert error.max() < 0.5, spec
      box_error = (geometry.mask_box(area >= 0.5) -
                   geometry.mask_box(coverage >= 0.5))
      assert np.abs(box_error).max() <= 1, spec


# Full scenes.


def test_boxes_are_tight_amodal_bounds_inside_the_image():
  for scene in _scenes():
    height, width = scene['image'].shape[:2]
    boxes, masks = scene['boxes'], _masks(scene)
    assert boxes.dtype == np.float32 and boxes.shape == (len(masks), 4)
    assert len(scene['labels']) == len(scene['areas']) == len(boxes)
    np.testing.assert_array_equal(boxes, np.round(boxes))
    assert np.all(boxes[:, :2] >= 0)
    assert np.all(boxes[:, 2] <= height) and np.all(boxes[:, 3] <= width)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    for box, mask, spec, area in zip(boxes, masks, scene['specs'],
                                     scene['areas']):
      np.testing.assert_array_equal(box, geometry.mask_box(mask))
      silhouette = geometry.object_coverage(spec, height, width,
                                            silhouette=True)
      assert area == np.count_nonzero(silhouette >= 0.5) > 0


def test_objects_are_visible_and_not_hidden_too_much():
  contrasts = []
  for scene in _scenes():
    masks = _masks(scene)
    image = scene['image'].astype(np.float32)
    distance = np.sqrt(np.sum((image - scene['background'])**2, axis=-1))
    for k, mask in enumerate(masks):
      visible = mask & ~np.any(masks[k + 1:], axis=0)
      # Later objects hide at most ~40% of each earlier one.
      assert np.count_nonzero(visible) >= 0.6 * np.count_nonzero(mask) - 1
      # The image differs from the background where the object shows. (Noise
      # alone gives an RGB distance under 10; objects are drawn >= 60 away
      # from what they cover.)
      contrasts.append(distance[visible].mean())
  assert min(contrasts) > 25.0
  assert np.median(contrasts) > 60.0


def test_scene_statistics():
  scenes = _scenes()
  counts = np.array([len(s['labels']) for s in scenes])
  assert counts.min() == 0 and counts.max() == render.MAX_OBJECTS
  assert set(np.unique(counts)) == set(range(render.MAX_OBJECTS + 1))
  assert 0.02 <= np.mean(counts == 0) <= 0.12

  labels = np.concatenate([s['labels'] for s in scenes])
  assert labels.dtype == np.int64
  per_class = np.bincount(labels, minlength=len(render.CLASS_NAMES))
  assert len(per_class) == len(render.CLASS_NAMES)
  assert per_class.min() > 0.1 * len(labels)  # All classes, near balanced.

  sizes = np.array([s['image'].shape for s in scenes])
  assert np.all(sizes[:, 2] == 3)
  assert render.MIN_IMAGE_SIDE <= sizes[:, :2].min() < render.MIN_IMAGE_SIDE + 3
  assert render.MAX_IMAGE_SIDE - 3 < sizes[:, :2].max() <= render.MAX_IMAGE_SIDE

  sides = np.concatenate([_longest_sides(s) for s in scenes])
  relative = np.concatenate(
      [_longest_sides(s) / min(s['image'].shape[:2]) for s in scenes])
  assert sides.min() >= render.MIN_OBJECT_SIZE and sides.min() <= 10
  assert relative.max() >= 0.4
  assert relative.max() <= render.MAX_OBJECT_SIZE_FRACTION + 0.02
  assert np.mean(sides < 16) > 0.25  # Small objects are common.

  specs = [spec for s in scenes for spec in s['specs']]
  outlined = np.mean([spec.stroke > 0 for spec in specs])
  assert 0.2 < outlined < 0.4
  assert all(1.5 <= spec.stroke <= 3.0 for spec in specs if spec.stroke)
  for spec in specs:
    assert spec.stretch_y * spec.stretch_x == pytest.approx(1.0)
    assert max(spec.stretch_y, spec.stretch_x)**2 <= 1.3 + 1e-9
    if spec.label not in (geometry.CIRCLE, geometry.CRESCENT):
      assert abs(spec.angle) <= math.radians(20.0) + 1e-9


# TFDS builder.


def test_builder_is_registered_with_both_configs(tmp_path):
  builder = tfds.builder('shapes', data_dir=str(tmp_path))
  assert isinstance(builder, shapes.Shapes)
  assert builder.builder_config.name == 'default'
  assert builder.builder_config.split_sizes == {
      'train': 6000, 'validation': 500, 'test': 1000}
  assert str(builder.version) == '1.0.0'
  tiny = tfds.builder('shapes/tiny', data_dir=str(tmp_path))
  assert tiny.builder_config.split_sizes == {
      'train': 64, 'validation': 16, 'test': 32}


@pytest.fixture(scope='module')
def tiny_dirs(tmp_path_factory):
  """Data dirs of two independent builds of `shapes/tiny`."""
  dirs = []
  for name in ('first', 'second'):
    data_dir = str(tmp_path_factory.mktemp(name))
    tfds.builder('shapes/tiny', data_dir=data_dir).download_and_prepare()
    dirs.append(data_dir)
  return dirs


def test_tiny_build_contents(tiny_dirs):
  builder = tfds.builder('shapes/tiny', data_dir=tiny_dirs[0])
  info = builder.info
  assert info.features['objects']['label'].names == list(render.CLASS_NAMES)
  assert {k: v.num_examples for k, v in info.splits.items()} == {
      'train': 64, 'validation': 16, 'test': 32}

  image_ids, object_ids = [], []
  for split, size in (('train', 64), ('validation', 16), ('test', 32)):
    examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert len(examples) == size
    for ex in examples:
      image, objects = ex['image'], ex['objects']
      height, width, channels = image.shape
      assert image.dtype == np.uint8 and channels == 3
      assert render.MIN_IMAGE_SIDE <= min(height, width)
      assert max(height, width) <= render.MAX_IMAGE_SIDE
      assert ex['image/filename'].decode() == f"{ex['image/id']:012d}.png"
      n = len(objects['label'])
      assert objects['bbox'].shape == (n, 4)
      assert objects['bbox'].dtype == np.float32
      assert objects['id'].shape == objects['area'].shape == (n,)
      assert objects['is_crowd'].dtype == bool and not objects['is_crowd'].any()
      bbox = objects['bbox']
      assert np.all((bbox >= 0) & (bbox <= 1))
      assert np.all(bbox[:, 2] > bbox[:, 0]) and np.all(bbox[:, 3] > bbox[:, 1])
      assert np.all(objects['label'] < len(render.CLASS_NAMES))
      assert np.all(objects['area'] > 0)
      image_ids.append(ex['image/id'])
      object_ids.extend(objects['id'])
      # The stored example is the rendered scene of its split and index.
      index = {shapes.image_id(split, i): i for i in range(size)}[ex['image/id']]
      if index < 3:
        scene = render.render_scene(render.scene_rng(split, index))
        np.testing.assert_array_equal(image, scene['image'])
        scale = np.array([height, width, height, width], np.float32)
        np.testing.assert_allclose(bbox * scale, scene['boxes'], atol=1e-4)
        np.testing.assert_array_equal(objects['label'], scene['labels'])
        np.testing.assert_array_equal(objects['area'],
                                      np.rint(scene['areas']))
  assert len(set(image_ids)) == len(image_ids) == 112
  assert len(set(object_ids)) == len(object_ids)


def test_builds_are_byte_identical(tiny_dirs):
  files = []
  for data_dir in tiny_dirs:
    builder = tfds.builder('shapes/tiny', data_dir=data_dir)
    paths = sorted(builder.data_path.glob('*.tfrecord*'))
    assert len(paths) == 3
    files.append({p.name: p.read_bytes() for p in paths})
  assert files[0] == files[1]

  records = []
  for data_dir in tiny_dirs:
    builder = tfds.builder('shapes/tiny', data_dir=data_dir)
    dataset = builder.as_dataset(
        split='train', decoders={'image': tfds.decode.SkipDecoding()})
    first = next(iter(tfds.as_numpy(dataset)))
    records.append(first)
  first, second = records
  assert isinstance(first['image'], bytes) and first['image'][:4] == b'\x89PNG'
  assert first['image'] == second['image']
  assert first['image/id'] == second['image/id']
  np.testing.assert_array_equal(first['objects']['bbox'],
                                second['objects']['bbox'])




def test_encode_png_round_trips():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  image = _scenes()[0]['image']
  png = shapes.encode_png(image)
  np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), image)


def test_object_examples_are_the_encoded_crops():
  count = 0
  for index in range(10):
    scene_id = shapes.image_id('test', index)
    pairs = examples.object_examples('test', index)
    crops = examples.object_crops('test', index)
    assert len(pairs) == len(crops)
    for (key, example), (crop, label, k) in zip(pairs, crops):
      assert key == example['image/filename'] == f'{scene_id:012d}_{k}.png'
      assert example['label'] == label
      decoded = np.asarray(Image.open(io.BytesIO(example['image'])))
      np.testing.assert_array_equal(decoded, crop)
      height, width = crop.shape[:2]
      assert min(height, width) >= shapes.MIN_OBJECT_SIDE
      count += 1
  assert count > 10


def test_importing_the_package_leaves_tensorflow_out():
  # Rendering workers import the package: TensorFlow would slow their start.
  code = ('import sys; from detector.data import shapes; '
          "print([m for m in ('tensorflow', 'jax') if m in sys.modules])")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=True, cwd=root,
                          env=dict(os.environ, PYTHONPATH=root))
  assert result.stdout.strip() == '[]'


# Unchanged data.

# sha256 (16 hex digits) of what `_digest` reads from the first 6 examples of
# each split, recorded from the code before it moved into this package (commit
# 69cb6b2, which had its own PNG encoder). A change here changes the dataset:
# bump the builders' version.
_RECORDED_DIGESTS = {'train': '67c727c058177d21',
                     'validation': '05934c51e2c12e5e',
                     'test': 'f88843d19c13b4b6'}


def _digest(split, count=6):
  """Digest of decoded pixels, ids, names, objects and crops of examples."""
  h = hashlib.sha256()

  def update(value):
    value = np.asarray(value)
    h.update(str((value.dtype.str, value.shape)).encode())
    h.update(value.tobytes())

  for index in range(count):
    example = shapes.make_example(split, index)
    update(np.asarray(Image.open(io.BytesIO(example['image'])).convert('RGB')))
    update(example['image/id'])
    h.update(example['image/filename'].encode())
    for key in sorted(example['objects']):
      h.update(key.encode())
      update(example['objects'][key])
    for crop, label, k in shapes.object_crops(split, index):
      update(crop)
      update(label)
      update(k)
  return h.hexdigest()[:16]


def test_examples_equal_those_recorded_before_the_move():
  assert {split: _digest(split) for split in _RECORDED_DIGESTS} == (
      _RECORDED_DIGESTS)


# Rendering in worker processes. The `examples_of` functions below are
# module-level so that workers can import them.


def _whose(split, index):
  """An `examples_of` whose example is the id of the process that made it."""
  return [((split, index), os.getpid())]


def _fail_at_13(split, index):
  if index == 13:
    raise ValueError(f'no example {index}')
  return [((split, index), None)]


def _die(split, index):
  del split, index
  if multiprocessing.parent_process() is None:
    raise AssertionError('meant to run in a worker process')
  os._exit(3)  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def pool():
  """A pool of two workers, both started."""
  with parallel.RenderPool(2) as render_pool:
    render_pool.wait()
    yield render_pool


def test_started_pool_renders_in_workers_in_index_order(pool):
  size = parallel.PARALLEL_MIN_EXAMPLES + 50
  pairs = list(parallel.generate(_whose, 'train', size, pool))
  assert [key for key, _ in pairs] == [('train', i) for i in range(size)]
  assert os.getpid() not in {pid for _, pid in pairs}


def test_small_splits_and_no_pool_render_in_process(pool):
  for render_pool, size in ((pool, parallel.PARALLEL_MIN_EXAMPLES - 1),
                            (None, parallel.PARALLEL_MIN_EXAMPLES + 50)):
    pairs = list(parallel.generate(_whose, 'test', size, render_pool))
    assert [key for key, _ in pairs] == [('test', i) for i in range(size)]
    assert {pid for _, pid in pairs} == {os.getpid()}


def test_parallel_examples_equal_serial_ones_for_any_worker_count(pool):
  serial = [pair for i in range(20)
            for pair in examples.scene_examples('validation', i)]
  with parallel.RenderPool(3) as three:
    three.wait()
    for render_pool in (pool, three):
      pairs = list(render_pool.generate(examples.scene_examples, 'validation',
                                        20))
      assert [k for k, _ in pairs] == [k for k, _ in serial] == [
          shapes.image_id('validation', i) for i in range(20)]
      for (_, a), (_, b) in zip(serial, pairs):
        assert a['image'] == b['image']
        assert a['image/filename'] == b['image/filename']
        for key in a['objects']:
          np.testing.assert_array_equal(a['objects'][key], b['objects'][key])


def test_worker_exception_names_the_split_and_examples(pool):
  with pytest.raises(RuntimeError, match=r'rendering validation examples 8-15 '
                     r"failed in a worker process: ValueError\('no example 13'"):
    list(pool.generate(_fail_at_13, 'validation', 40))


def test_worker_death_is_a_clear_error():
  with parallel.RenderPool(2) as render_pool:
    render_pool.wait()
    with pytest.raises(RuntimeError, match=r'a worker process died .* before '
                       'train examples 0-7 were rendered'):
      list(render_pool.generate(_die, 'train', 16))
