"""The input pipeline: fixed shapes, deterministic order, exact resume."""

import zlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from detector import errors
from detector import train
from detector.data import detection
from detector.data import loading


def _batches(config, builder, start, n):
  ds = detection.train_dataset(config, builder, start_step=start)
  return [b for _, b in zip(range(n), tfds.as_numpy(ds))]


def test_resume_position_and_determinism(tiny_config):
  builder = loading.get_builder(tiny_config)
  first = _batches(tiny_config, builder, 0, 16)  # 16 * 8 = two epochs of 64.
  again = _batches(tiny_config, builder, 0, 16)
  resumed = _batches(tiny_config, builder, 9, 3)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(first[9:12], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Epochs are reshuffled, and every example appears once per epoch.
  ids = np.concatenate([b['image_id'] for b in first])
  assert sorted(ids[:64]) == sorted(ids[64:128]) == sorted(set(ids[:64]))
  assert list(ids[:32]) != list(ids[64:96])


def test_batch_shapes_and_boxes_inside_valid_region(tiny_config):
  builder = loading.get_builder(tiny_config)
  h, w = tiny_config.image_size
  k = tiny_config.input.max_boxes
  for batch in _batches(tiny_config, builder, 0, 8):
    assert batch['image'].shape == (8, h, w, 3) and batch['image'].dtype == np.uint8
    assert batch['boxes'].shape == (8, k, 4) and batch['box_mask'].shape == (8, k)
    boxes = batch['boxes'][batch['box_mask']]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= h and boxes[:, 3].max() <= w
    assert (batch['boxes'][~batch['box_mask']] == 0).all()


def test_eval_batches_cover_the_split_once(tiny_config):
  builder = loading.get_builder(tiny_config)
  batches = list(detection.eval_batches(tiny_config, builder, 'validation',
                                       batch_size=6))
  assert len(batches) == 3  # 16 examples in batches of 6, the last padded.
  ids = np.concatenate([b['image_id'][b['example_mask']] for b in batches])
  assert len(ids) == 16 and len(set(ids)) == 16
  gt = detection.groundtruth_coco(builder, 'validation',
                                 detection.class_names(builder))
  assert {im['id'] for im in gt['images']} == set(ids)
  # Eval keeps every box of every image (nothing is cut or augmented away).
  per_image = {}
  for ann in gt['annotations']:
    per_image[ann['image_id']] = per_image.get(ann['image_id'], 0) + 1
  for b in batches:
    for i in np.flatnonzero(b['example_mask']):
      assert b['box_mask'][i].sum() == per_image.get(b['image_id'][i], 0)


def test_training_crops_are_cut_at_the_evaluation_scale(tiny_config):
  """With eval_image_size > image_size, training batches are image_size crops
  of images scaled to fit eval_image_size (times the jitter); evaluation
  batches hold whole images at eval_image_size."""
  config = tiny_config.copy_and_resolve_references()
  config.eval_image_size = (128, 128)
  builder = loading.get_builder(config)
  lo, hi = config.input.scale_jitter
  for batch in _batches(config, builder, 0, 4):
    assert batch['image'].shape[1:3] == tuple(config.image_size)
    fit = np.min(128 / batch['orig_size'], axis=1)
    assert np.all(batch['scale'] >= fit * lo - 1e-5)
    assert np.all(batch['scale'] <= fit * hi + 1e-5)
  batch = next(detection.eval_batches(config, builder, 'validation'))
  assert batch['image'].shape[1:3] == (128, 128)
  np.testing.assert_allclose(batch['scale'][batch['example_mask']],
                             np.min(128 / batch['orig_size'], axis=1)[
                                 batch['example_mask']], rtol=1e-6)


def _consistent_mock_examples(builder, split, **kwargs):
  """Random examples of the builder's declared features, as TFDS's mock data
  makes them but with one object count per example (the default mock draws
  every sequence field's length independently, which no real example has)."""
  del split, kwargs
  info = builder.info.features.get_tensor_info()
  num_classes = builder.info.features['objects']['label'].num_classes
  # Each dataset its own examples (voc/2007 and voc/2012 differ).
  rng = np.random.default_rng(zlib.crc32(builder.info.full_name.encode()))

  def value(key, tensor_info, n):
    shape = [n if d is None else d for d in tensor_info.shape]
    dtype = tensor_info.dtype.as_numpy_dtype
    if key == 'bbox':
      a, b = rng.uniform(0, 1, (2, n, 2))
      return np.concatenate([np.minimum(a, b), np.maximum(a, b)], -1).astype(dtype)
    if key == 'label':
      return rng.integers(0, num_classes, shape).astype(dtype)
    if tensor_info.dtype == tf.string:
      return np.array([f'{rng.integers(1 << 30):012d}.jpg'.encode()] if shape else
                      f'{rng.integers(1 << 30):012d}.jpg'.encode(), object)
    return rng.integers(0, 2 if dtype == bool else 100, shape).astype(dtype)

  def generate():
    for i in range(6):
      n = int(rng.integers(0, 5))
      h, w = rng.integers(40, 90, 2)
      ex = {'image': rng.integers(0, 256, (h, w, 3)).astype(np.uint8)}
      for key, ti in info.items():
        if key == 'image':
          continue
        ex[key] = ({k: value(k, t, n) for k, t in ti.items()}
                   if isinstance(ti, dict) else value(key, ti, n))
      if 'image/id' in ex:
        ex['image/id'] = np.int64(1000 + i)
      yield ex

  signature = tf.nest.map_structure(
      lambda ti: tf.TensorSpec(ti.shape, ti.dtype), info)
  return tf.data.Dataset.from_generator(generate, output_signature=signature)


@pytest.mark.parametrize('name,num_classes', [('coco/2017', 80), ('voc/2007', 20)])
def test_tfds_detection_datasets_feed_the_pipeline(name, num_classes, tiny_config,
                                                    tmp_path):
  """The real builders' features (random values of the declared features,
  offline, through tfds.testing.mock_data): class names from the metadata,
  batches of the fixed shapes, COCO ground truth with unique image ids (VOC
  has none: they are hashed from the file names), ignored boxes (coco
  is_crowd, voc is_difficult), and COCO's own category ids for coco."""
  from detector.data import datasets  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.dataset = name
  config.data_dir = str(tmp_path)
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_dataset_fn=_consistent_mock_examples):
    builder = loading.get_builder(config)
    names = detection.class_names(builder)
    assert len(names) == num_classes
    ids = detection.category_ids(builder, names)
    if name.startswith('coco'):
      assert ids == datasets.COCO_CATEGORY_IDS
      assert len(ids) == 80 and ids[-1] == 90 and 12 not in ids
    else:
      assert ids == list(range(1, 21)) and names[0] == 'aeroplane'
    batch = next(detection.train_dataset(config, builder).as_numpy_iterator())
    b, (h, w) = config.batch_size, config.image_size
    assert batch['image'].shape == (b, h, w, 3) and batch['image'].dtype == np.uint8
    assert batch['boxes'].shape == (b, config.input.max_boxes, 4)
    assert (batch['labels'][batch['box_mask']] < num_classes).all()
    gt = detection.groundtruth_coco(builder, 'train', names, ids)
    image_ids = [im['id'] for im in gt['images']]
    assert len(image_ids) == 6 == len(set(image_ids))
    assert {a['category_id'] for a in gt['annotations']} <= set(ids)
    assert {a['image_id'] for a in gt['annotations']} <= set(image_ids)
    assert {a['iscrowd'] for a in gt['annotations']} <= {0, 1}


def test_extra_train_datasets_join_the_training_stream(tiny_config, tmp_path):
  """VOC 07+12: voc/2012's train split follows voc/2007's in the training
  stream (one epoch holds both datasets' images, each once), evaluation
  reads voc/2007 alone, and a dataset with other classes is refused."""
  config = tiny_config
  config.dataset = 'voc/2007'
  config.data_dir = str(tmp_path)
  config.input.augmentations = ()
  config.input.shuffle_buffer = 64
  config.batch_size = 12
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_dataset_fn=_consistent_mock_examples):
    builder = loading.get_builder(config)
    epochs = [b['image_id'] for b in
              detection.train_dataset(config, builder).take(2).as_numpy_iterator()]
    # Alone: 6 images, so a batch of 12 holds each twice.
    assert len(set(epochs[0])) == 6
    config.extra_train_datasets = ('voc/2012',)
    epochs = [b['image_id'] for b in
              detection.train_dataset(config, builder).take(2).as_numpy_iterator()]
    assert len(set(epochs[0])) == 12 and set(epochs[0]) == set(epochs[1])
    ids_2007 = {ex['image_id'] for ex in tfds.as_numpy(
        builder.as_dataset(split='train').map(detection._decode))}  # pylint: disable=protected-access
    assert ids_2007 < set(epochs[0])
    config.extra_train_datasets = ('coco/2017',)
    with pytest.raises(errors.ConfigError, match=(
        r"extra_train_datasets has 'coco/2017' with classes \[.*"
        r"config.dataset='voc/2007' has \['aeroplane'")):
      train.setup(config, str(tmp_path / 'wd'))
