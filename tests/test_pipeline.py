"""The input pipeline: fixed shapes, deterministic order, exact resume."""

import numpy as np
import tensorflow_datasets as tfds

from detector.data import pipeline


def _batches(config, builder, start, n):
  ds = pipeline.train_dataset(config, builder, start_step=start)
  return [b for _, b in zip(range(n), tfds.as_numpy(ds))]


def test_resume_position_and_determinism(tiny_config):
  builder = pipeline.get_builder(tiny_config)
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
  builder = pipeline.get_builder(tiny_config)
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
  builder = pipeline.get_builder(tiny_config)
  batches = list(pipeline.eval_batches(tiny_config, builder, 'validation',
                                       batch_size=6))
  assert len(batches) == 3  # 16 examples in batches of 6, the last padded.
  ids = np.concatenate([b['image_id'][b['example_mask']] for b in batches])
  assert len(ids) == 16 and len(set(ids)) == 16
  gt = pipeline.groundtruth_coco(builder, 'validation',
                                 pipeline.class_names(builder))
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
  config.input.eval_image_size = (128, 128)
  builder = pipeline.get_builder(config)
  lo, hi = config.input.scale_jitter
  for batch in _batches(config, builder, 0, 4):
    assert batch['image'].shape[1:3] == tuple(config.image_size)
    fit = np.min(128 / batch['orig_size'], axis=1)
    assert np.all(batch['scale'] >= fit * lo - 1e-5)
    assert np.all(batch['scale'] <= fit * hi + 1e-5)
  batch = next(pipeline.eval_batches(config, builder, 'validation'))
  assert batch['image'].shape[1:3] == (128, 128)
  np.testing.assert_allclose(batch['scale'][batch['example_mask']],
                             np.min(128 / batch['orig_size'], axis=1)[
                                 batch['example_mask']], rtol=1e-6)
