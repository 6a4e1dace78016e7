"""The detection input pipeline: TFDS detection datasets -> fixed-shape batches.

Every dataset is read through TFDS (see `detector.data.datasets`) with the
features of `coco/2017` (`image`, `image/id`, `objects/{bbox, label,
is_crowd}`), as `shapes` and converted folders have them; datasets without
`image/id` (voc) get a hash of `image/filename`, and VOC's `is_difficult`
boxes are ignored regions like COCO's crowd boxes. Batches are dicts of numpy
arrays:

  `image`      uint8 [b, H, W, 3]: for training a random crop of size
               `config.image_size` of the image resized (aspect preserved)
               to fit `config.eval_image_size` times the scale jitter; for
               evaluation the whole image resized to fit and padded at the
               bottom/right to `config.eval_image_size`.
  `boxes`      float32 [b, max_boxes, 4] `[ymin, xmin, ymax, xmax]` in pixels of
               the padded input; padding rows are zeros.
  `labels`     int32 [b, max_boxes] class indices in [0, num_classes).
  `box_mask`   bool [b, max_boxes], False for padding.
  `num_dropped` int32 [b] boxes cut by `config.input.max_boxes`.
  `image_id`   int64 [b]; `scale` float32 [b] (input pixels per original pixel);
  `orig_size`  int32 [b, 2] (height, width of the original image);
  `example_mask` bool [b], False for the padding examples of the last eval batch.

Shuffling, slicing per process and resuming: `detector.data.loading`.
"""

from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from detector import errors
from detector.data import augment
from detector.data import datasets
from detector.data import loading
from detector.data import preprocess

# Box-aware training augmentations, `config.input.augmentations`.
AUGMENTATIONS = ('hflip', 'scale_jitter', 'color_jitter', 'mosaic')


def check_config(config: ml_collections.ConfigDict):
  """Raises ConfigError for input settings the pipeline cannot run."""
  loading.check_augmentations(config, AUGMENTATIONS)
  lo, hi = config.input.scale_jitter
  if not 0 < lo <= hi:
    raise errors.ConfigError(f'config.input.scale_jitter={(lo, hi)}: need '
                             '0 < min <= max')


def image_id(example):
  """The example's image id: `image/id` where the dataset has one (coco,
  shapes, converted folders), else a stable 62-bit hash of `image/filename`
  (voc), the same in training, evaluation and the written COCO files."""
  if 'image/id' in example:
    return tf.cast(example['image/id'], tf.int64)
  return tf.strings.to_hash_bucket_fast(example['image/filename'], 2**62)


def ignored(objects):
  """Boxes that are regions to ignore, not objects to detect: COCO's
  `is_crowd`, VOC's `is_difficult` (VOC's evaluation ignores them too)."""
  for key in ('is_crowd', 'is_difficult'):
    if key in objects:
      return tf.cast(objects[key], tf.bool)
  return tf.zeros(tf.shape(objects['label']), tf.bool)


def _decode(example):
  """TFDS example -> uint8 image, pixel boxes, labels and metadata."""
  image = example['image']
  shape = tf.shape(image)
  objects = example['objects']
  boxes = preprocess.normalized_to_pixels(objects['bbox'], shape[0], shape[1])
  # Crowd regions are not objects to detect; evaluation reads them from the
  # ground truth directly and ignores detections on them, as COCO does.
  keep = tf.logical_not(ignored(objects))
  return {
      'image': image,
      'boxes': tf.boolean_mask(boxes, keep),
      'labels': tf.boolean_mask(tf.cast(objects['label'], tf.int32), keep),
      'image_id': image_id(example),
      'orig_size': shape[:2],
  }


def _finish(image, labels, info, example, max_boxes, min_visible):
  """Filters boxes cut away by a crop, pads to max_boxes, packs the dict.

  Visibility is measured on the unclipped boxes (`example['boxes']` mapped by
  `info`), not on the op's clipped ones."""
  size = tf.shape(image)[:2]
  unclipped = preprocess.transform_boxes(example['boxes'], info)
  clipped, labels, keep = preprocess.clip_and_filter_boxes(
      unclipped, labels, tf.minimum(size[0], info['valid_size'][0]),
      tf.minimum(size[1], info['valid_size'][1]),
      min_visible_fraction=min_visible)
  return _pack(image, clipped, labels, keep, example, info['scale'], max_boxes)


def _pack(image, boxes, labels, keep, example, scale, max_boxes):
  """Pads the kept boxes to max_boxes and packs the example's dict."""
  padded = preprocess.pad_to_max_boxes(boxes, labels, keep, max_boxes)
  return {
      'image': preprocess.to_uint8(image),
      'boxes': padded['boxes'],
      'labels': padded['labels'],
      'box_mask': padded['mask'],
      'num_dropped': padded['num_dropped'],
      'image_id': example['image_id'],
      'scale': scale,
      'orig_size': example['orig_size'],
      'example_mask': tf.constant(True),
  }


def _train_map(config, seed):
  """(index, example[, 3 partners]) -> one training example.

  Every random draw comes from (seed, index): per example, a flip seed and a
  jitter seed split from it (as before other augmentations existed, so the
  default stream is unchanged), and fold-ins for the rest.
  """
  place = _placer(config)
  augment_names = tuple(config.input.augmentations)
  max_boxes = config.input.max_boxes
  min_visible = config.input.min_visible_fraction

  def color(image, example_seed):
    if 'color_jitter' not in augment_names:
      return image
    c = config.input.color_jitter
    return augment.random_color_jitter(
        image, tf.random.experimental.stateless_fold_in(example_seed, 3),
        brightness=c.brightness, contrast=c.contrast, saturation=c.saturation)

  def single(example, example_seed):
    flip_seed, jitter_seed = tf.unstack(
        tf.random.experimental.stateless_split(example_seed, 2))
    image, example, info = place(example, flip_seed, jitter_seed)
    return _finish(color(image, example_seed), example['labels'], info,
                   example, max_boxes, min_visible)

  def combined(examples, example_seed):
    image, boxes, labels, keep, scale = _mosaic(place, examples, example_seed,
                                                min_visible)
    return _pack(color(image, example_seed), boxes, labels, keep, examples[0],
                 scale, max_boxes)

  def fn(index, examples):
    example_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0], tf.int64), index)
    if 'mosaic' not in augment_names:
      return single(examples, example_seed)
    use = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(example_seed, 5)
    ) < config.input.mosaic_prob
    return tf.cond(use, lambda: combined(examples, example_seed),
                   lambda: single(examples[0], example_seed))
  return fn


def _placer(config):
  """(example, flip seed, jitter seed) -> (image on the output canvas, the
  example with its flipped boxes, the resize info)."""
  size = tuple(config.image_size)
  fit_size = tuple(config.eval_image_size)
  augment_names = tuple(config.input.augmentations)
  lo, hi = (config.input.scale_jitter if 'scale_jitter' in augment_names
            else (1.0, 1.0))

  def place(example, flip_seed, jitter_seed):
    image, boxes = example['image'], example['boxes']
    if 'hflip' in augment_names:
      image, boxes = augment.random_horizontal_flip(image, boxes, flip_seed)
    if (lo, hi) != (1.0, 1.0) or fit_size != size:
      image, _, info = augment.random_scale_jitter(
          image, boxes, size, lo, hi, jitter_seed, fit_size=fit_size)
    else:
      image, _, info = preprocess.resize_and_pad(image, boxes, size)
    return image, dict(example, boxes=boxes), info
  return place


def _mosaic(place, examples, example_seed, min_visible):
  """Four placed examples in the quadrants of one canvas (`augment.mosaic`);
  returns (image, boxes, labels, keep, the first example's scale)."""
  canvases, boxes, labels, valid, scales = [], [], [], [], []
  for k, example in enumerate(examples):
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(example_seed, 10 + k), 2)
    image, example, info = place(example, seeds[0], seeds[1])
    canvases.append(image)
    boxes.append(preprocess.transform_boxes(example['boxes'], info))
    labels.append(example['labels'])
    valid.append(info['valid_size'])
    scales.append(info['scale'])
  image, boxes, labels, keep = augment.mosaic(
      canvases, boxes, labels, valid,
      tf.random.experimental.stateless_fold_in(example_seed, 4), min_visible)
  return image, boxes, labels, keep, scales[0]


def train_dataset(config: ml_collections.ConfigDict, builder,
                  start_step: int = 0) -> tf.data.Dataset:
  """The endless training stream of this process, from `start_step` on.

  With 'mosaic' among `config.input.augmentations` each element also draws
  three partner images from three more shuffles of the same cached split
  (seeds seed+1..seed+3; each holds its own shuffle buffer), so example i of
  the stream stays a function of (seed, i) and resuming stays exact.
  """
  check_config(config)
  partners = 3 if 'mosaic' in config.input.augmentations else 0
  return loading.training_stream(config, builder, _decode,
                                 _train_map(config, config.seed), start_step,
                                 partners)


def eval_batches(config: ml_collections.ConfigDict, builder, split: str,
                 batch_size: Optional[int] = None) -> Iterator[dict]:
  """Yields this process's batches of `split`, resized, never augmented.

  Every process yields the same number of batches (the largest shard's), the
  last ones padded with `example_mask=False` examples, so collective
  computations over the mesh stay in step across hosts.
  """
  batch = (batch_size or config.eval_batch_size) // jax.process_count()
  size = tuple(config.eval_image_size)
  max_boxes = config.input.max_boxes

  def fn(example):
    example = _decode(example)
    image, _, info = preprocess.resize_and_pad(example['image'],
                                               example['boxes'], size)
    return _finish(image, example['labels'], info, example, max_boxes, 0.0)

  return loading.process_batches(builder, split, batch, fn,
                                 lambda b: pad_batch(b, batch, size, max_boxes))


def pad_batch(batch, batch_size, image_size, max_boxes):
  """Pads a (possibly missing or short) batch to `batch_size` examples."""
  if batch is None:
    batch = empty_batch(0, image_size, max_boxes)
  n = len(batch['image_id'])
  if n == batch_size:
    return batch
  pad = empty_batch(batch_size - n, image_size, max_boxes)
  return {k: np.concatenate([batch[k], pad[k]]) for k in batch}


def empty_batch(n, image_size, max_boxes):
  h, w = image_size
  return {
      'image': np.zeros((n, h, w, 3), np.uint8),
      'boxes': np.zeros((n, max_boxes, 4), np.float32),
      'labels': np.zeros((n, max_boxes), np.int32),
      'box_mask': np.zeros((n, max_boxes), bool),
      'num_dropped': np.zeros((n,), np.int32),
      'image_id': np.full((n,), -1, np.int64),
      'scale': np.ones((n,), np.float32),
      'orig_size': np.zeros((n, 2), np.int32),
      'example_mask': np.zeros((n,), bool),
  }


def groundtruth_coco(builder, split: str, names, category_ids=None) -> dict:
  """The whole split's ground truth as a COCO annotation dict.

  Boxes are `[x, y, w, h]` in pixels of the original images; category ids
  are `category_ids[label]` (default label + 1), names from the dataset's
  metadata. Read on the host from TFDS directly, so nothing the training
  pipeline pads or cuts is lost.
  """
  ids = list(category_ids or range(1, len(names) + 1))
  ds = builder.as_dataset(split=split, shuffle_files=False)
  # Only the image size is needed: decode in parallel inside tf.data and hand
  # the host a shape, not the pixels.
  def fields(ex):
    objects = ex['objects']
    out = {'size': tf.shape(ex['image'])[:2], 'image_id': image_id(ex),
           'bbox': objects['bbox'], 'label': objects['label'],
           'ignore': ignored(objects)}
    if 'area' in objects:
      out['area'] = tf.cast(objects['area'], tf.float64)
    return out
  ds = ds.map(fields, num_parallel_calls=tf.data.AUTOTUNE).prefetch(64)
  images, annotations = [], []
  for ex in tfds.as_numpy(ds):
    h, w = ex['size']
    image_id_ = int(ex['image_id'])
    images.append({'id': image_id_, 'height': int(h), 'width': int(w)})
    for i, (box, label) in enumerate(zip(ex['bbox'], ex['label'])):
      ymin, xmin, ymax, xmax = (float(v) for v in box * [h, w, h, w])
      area = ex['area'][i] if 'area' in ex else (ymax - ymin) * (xmax - xmin)
      annotations.append({
          'id': len(annotations) + 1, 'image_id': image_id_,
          'category_id': ids[int(label)],
          'bbox': [xmin, ymin, xmax - xmin, ymax - ymin],
          'area': float(area),
          'iscrowd': int(ex['ignore'][i]),
      })
  return {'images': images, 'annotations': annotations,
          'categories': [{'id': ids[i], 'name': n} for i, n in enumerate(names)]}


def class_names(builder, spec: Optional[str] = None):
  """The detection classes: names of `objects/label`."""
  features = builder.info.features
  if 'objects' not in features or 'label' not in features['objects']:
    hint = (' It is an image-classification dataset: train it with '
            'configs/classify.py.' if 'label' in features else '')
    raise errors.ConfigError(
        f'config.dataset={spec or builder.info.full_name!r} has no boxes '
        f'(objects/bbox, objects/label); its features are '
        f'{sorted(features.keys())}.{hint}')
  return list(features['objects']['label'].names)


def category_ids(builder, names):
  """The dataset's own category id of each label (COCO files carry these)."""
  return datasets.category_ids(builder, len(names))
