"""Mosaic and the configurable augmentation list keep boxes on their objects,
eagerly and inside tf.data, and keep the stream a function of (seed, step).

Objects are filled rectangles whose colour is their class, on grey noise; a
box is on its object when the inside of the box has the class's colour.
"""

import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from detector import errors
from detector.configs import cnn
from detector.data import augment
from detector.data import datasets
from detector.data import detection

COLOURS = np.array([(230, 20, 20), (20, 20, 230), (20, 200, 20)], np.float32)


def _interior_colour(image, box, margin=2):
  y0, x0, y1, x1 = box
  patch = image[int(np.ceil(y0)) + margin:int(np.floor(y1)) - margin,
                int(np.ceil(x0)) + margin:int(np.floor(x1)) - margin]
  return patch.reshape(-1, 3).mean(0) if patch.size else None


def _canvas(rng, size=64):
  image = rng.uniform(100, 140, (size, size, 3)).astype(np.float32)
  boxes, labels = [], []
  for _ in range(3):
    h, w = rng.integers(12, 30, 2)
    y, x = rng.integers(-8, size - 4, 2)  # Some start or end off the canvas.
    label = int(rng.integers(0, 3))
    image[max(y, 0):y + h, max(x, 0):x + w] = COLOURS[label]
    boxes.append((y, x, y + h, x + w))
    labels.append(label)
  return image, np.array(boxes, np.float32), np.array(labels, np.int32)


def _separate_canvas(rng, size=64):
  """Up to three rectangles that do not overlap."""
  while True:
    image, boxes, labels = _canvas(rng, size)
    ok = True
    for i in range(3):
      for j in range(i + 1, 3):
        a, b = boxes[i], boxes[j]
        if not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]):
          ok = False
    if ok:
      return image, boxes, labels


def _mosaic_inputs(seed):
  rng = np.random.default_rng(seed)
  parts = [_separate_canvas(rng) for _ in range(4)]
  # Canvas k is brighter by k / 4, so every output pixel tells its canvas.
  parts = [(image + k / 4, boxes, labels) for k, (image, boxes, labels) in enumerate(parts)]
  valid = [np.array([64, 64], np.int32)] * 3 + [np.array([64, 40], np.int32)]
  return parts, valid


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_mosaic_keeps_boxes_on_their_objects_eagerly_and_in_tf_data(seed):
  parts, valid = _mosaic_inputs(seed)
  canvases = [tf.constant(p[0]) for p in parts]
  # The last canvas is padding right of x=40: its pixels there are not image.
  canvases[3] = tf.constant(np.where(np.arange(64)[None, :, None] < 40, parts[3][0], 0))
  boxes = [tf.constant(p[1]) for p in parts]
  labels = [tf.constant(p[2]) for p in parts]
  tf_seed = tf.constant([seed, 7], tf.int64)
  eager = augment.mosaic(canvases, boxes, labels, valid, tf_seed, 0.3)
  ds = tf.data.Dataset.from_tensors(0).map(
      lambda _: augment.mosaic(canvases, boxes, labels, valid, tf_seed, 0.3))
  graph = next(iter(ds))
  for a, b in zip(eager, graph):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  image, out_boxes, out_labels, keep = (t.numpy() for t in eager)
  # Brute force: where is the centre? Quadrant 0 is canvas 0's pixels.
  q = [np.all(image == parts[k][0], axis=-1) for k in range(3)]
  cy = int(q[0][:, 0].sum())
  cx = int(q[0][0].sum())
  assert 16 <= cy <= 48 and 16 <= cx <= 48
  windows = [(0, 0, cy, cx), (0, cx, cy, 64), (cy, 0, 64, cx), (cy, cx, 64, 40)]
  n = 0
  for k, (y0, x0, y1, x1) in enumerate(windows):
    for box, label in zip(parts[k][1], parts[k][2]):
      cb = np.array([max(box[0], y0), max(box[1], x0), min(box[2], y1), min(box[3], x1)])
      area = max(cb[2] - cb[0], 0) * max(cb[3] - cb[1], 0)
      whole = (box[2] - box[0]) * (box[3] - box[1])
      want_keep = area > 0 and area >= 0.3 * whole
      assert keep[n] == want_keep, (k, box)
      if want_keep:
        np.testing.assert_allclose(out_boxes[n], cb)
        assert out_labels[n] == label
        colour = _interior_colour(image, out_boxes[n], margin=0)
        if colour is not None:
          np.testing.assert_allclose(colour, COLOURS[label] + k / 4)
      n += 1
  assert n == len(keep) and keep.any()


def _painted_coco_folder(root, num_images=12):
  """A COCO folder of rectangles coloured by class (3 classes, ids 1-3)."""
  rng = np.random.default_rng(0)
  for split, count in (('train', num_images), ('valid', 2)):
    directory = os.path.join(root, split)
    os.makedirs(directory)
    images, anns = [], []
    for i in range(count):
      h, w = rng.integers(80, 130, 2)
      image, boxes, labels = _separate_canvas(rng, 64)
      big = rng.uniform(100, 140, (h, w, 3)).astype(np.uint8)
      big[:64, :64] = image.astype(np.uint8)
      Image.fromarray(big).save(os.path.join(directory, f'{i}.png'))
      images.append({'id': i + 1, 'file_name': f'{i}.png', 'width': int(w), 'height': int(h)})
      for (y0, x0, y1, x1), label in zip(boxes, labels):
        # As painted: the 64 x 64 corner holds the rectangles.
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, 64), min(x1, 64)
        anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': int(label) + 1,
                     'bbox': [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                     'iscrowd': 0})
    with open(os.path.join(directory, '_annotations.coco.json'), 'w') as f:
      json.dump({'categories': [{'id': k + 1, 'name': n} for k, n in
                                enumerate(['red', 'blue', 'green'])],
                 'images': images, 'annotations': anns}, f)
  return root


@pytest.fixture(scope='module')
def painted(tmp_path_factory):
  root = _painted_coco_folder(str(tmp_path_factory.mktemp('painted')))
  data_dir = str(tmp_path_factory.mktemp('data'))
  return f'coco_json:{root}', data_dir, datasets.get_builder(
      f'coco_json:{root}', data_dir, verbose=False)


def _config(painted, augmentations, **input_overrides):
  config = cnn.get_config('tiny')
  config.dataset, config.data_dir, _ = painted
  config.image_size = (64, 64)
  config.eval_image_size = (96, 96)
  config.batch_size = 8
  config.input.augmentations = augmentations
  config.input.scale_jitter = (0.6, 1.4)
  for key, value in input_overrides.items():
    config.input[key] = value
  return config


@pytest.mark.parametrize('augmentations', [
    ('mosaic', 'hflip', 'scale_jitter'), ('hflip', 'scale_jitter'), ('mosaic',)])
def test_pipeline_boxes_stay_on_their_objects(painted, augmentations):
  config = _config(painted, augmentations, mosaic_prob=1.0)
  ds = detection.train_dataset(config, painted[2]).as_numpy_iterator()
  checked = 0
  for _ in range(4):
    batch = next(ds)
    for image, boxes, labels, mask in zip(batch['image'], batch['boxes'],
                                          batch['labels'], batch['box_mask']):
      assert (boxes[mask] >= 0).all() and (boxes[mask] <= 64).all()
      for box, label in zip(boxes[mask], labels[mask]):
        colour = _interior_colour(image.astype(np.float32), box)
        if colour is None:  # Too thin to have an interior after resampling.
          continue
        assert np.abs(colour - COLOURS[label]).max() < 40, (box, label, colour)
        checked += 1
  assert checked > 20


def test_color_jitter_in_the_list_and_resume_is_exact(painted):
  config = _config(painted, ('mosaic', 'hflip', 'scale_jitter', 'color_jitter'))
  first = list(detection.train_dataset(config, painted[2]).take(3).as_numpy_iterator())
  again = list(detection.train_dataset(config, painted[2], start_step=2)
               .take(1).as_numpy_iterator())
  for key in first[2]:
    np.testing.assert_array_equal(first[2][key], again[0][key], err_msg=key)
  plain = _config(painted, ('mosaic', 'hflip', 'scale_jitter'))
  no_colour = next(detection.train_dataset(plain, painted[2]).as_numpy_iterator())
  # The same geometry (boxes) with other colours.
  np.testing.assert_array_equal(no_colour['boxes'], first[0]['boxes'])
  assert not np.array_equal(no_colour['image'], first[0]['image'])
  config.input.augmentations = ('hflip', 'rotate')
  with pytest.raises(errors.ConfigError, match=r"\['rotate'\]; known"):
    detection.check_config(config)
