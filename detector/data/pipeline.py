"""tf.data input pipelines from TFDS detection datasets to fixed-shape batches.

Every dataset is read through TFDS (see `detector.data.datasets`) with the
features of `coco/2017` (`image`, `image/id`, `objects/{bbox, label,
is_crowd}`), as `shapes` and converted folders have them; datasets without
`image/id` (voc) get a hash of `image/filename`, and VOC's `is_difficult`
boxes are ignored regions like COCO's crowd boxes. Batches are dicts of numpy
arrays:

  `image`      uint8 [b, H, W, 3]: for training a random crop of size
               `config.input.image_size` of the image resized (aspect
               preserved) to fit `config.input.eval_image_size` times the scale
               jitter; for evaluation the whole image resized to fit and padded
               at the bottom/right to `config.input.eval_image_size`.
  `boxes`      float32 [b, max_boxes, 4] `[ymin, xmin, ymax, xmax]` in pixels of
               the padded input; padding rows are zeros.
  `labels`     int32 [b, max_boxes] class indices in [0, num_classes).
  `box_mask`   bool [b, max_boxes], False for padding.
  `image_id`   int64 [b]; `scale` float32 [b] (input pixels per original pixel);
  `orig_size`  int32 [b, 2] (height, width of the original image);
  `example_mask` bool [b], False for the padding examples of the last eval batch.

Each process reads its own slice of every split (`tfds.even_splits`), so the
same code feeds one CPU or many hosts. Training order is a pure function of
(seed, position): the decoded split is cached, shuffled with a fixed seed
every epoch, repeated, and every example's augmentation draws its randomness
from (seed, its position in the stream). Resuming at step s skips exactly
s * batch examples before any augmentation runs, so a resumed run sees the
batches the uninterrupted run would have seen.
"""

import math
from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from detector import errors
from detector.data import datasets
from detector.data import folders
from detector.data import preprocess


def get_builder(config: ml_collections.ConfigDict, spec: Optional[str] = None):
  """The TFDS builder of `spec` (default `config.dataset`): a TFDS name or a
  folder spec (`coco_json:DIR`, `voc:DIR`, `yolo:DIR`, `folder:DIR`,
  converted once; see `detector.data.datasets`)."""
  return datasets.get_builder(
      spec or config.dataset, config.data_dir,
      split_fractions=config.get('folder_split', folders.DEFAULT_SPLIT_FRACTIONS))


def extra_train_builders(config: ml_collections.ConfigDict):
  """Builders of `config.extra_train_datasets`: more datasets whose
  `train_split` joins the training stream (VOC 07+12: `dataset='voc/2007'`,
  `extra_train_datasets=('voc/2012',)`); evaluation reads `dataset` alone."""
  return [get_builder(config, spec)
          for spec in config.get('extra_train_datasets', ())]


def prepare(builder):
  """Generates the dataset if missing (local generation only for `shapes`)."""
  if isinstance(builder, tfds.core.read_only_builder.ReadOnlyBuilder):
    return  # A converted folder: written whole by get_builder.
  if jax.process_index() == 0:
    builder.download_and_prepare()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('dataset prepared')


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


def category_ids(builder, num_classes):
  """The dataset's own category id of each label (COCO files carry these)."""
  return datasets.category_ids(builder, num_classes)


def split_size(builder, split: str, spec: Optional[str] = None) -> int:
  """The number of examples of `split`; `spec` names the dataset in errors."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):  # TFDS raises either, by version and split.
    raise errors.ConfigError(
        f'split {split!r} is not in {spec or builder.info.full_name}; it has '
        f'{sorted(builder.info.splits)}') from None


def _process_split(split: str) -> str:
  if jax.process_count() == 1:
    return split
  return tfds.even_splits(split, n=jax.process_count())[jax.process_index()]


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


def _finish(image, boxes, labels, info, example, max_boxes, min_visible):
  """Filters boxes cut away by a crop, pads to max_boxes, packs the dict."""
  size = tf.shape(image)[:2]
  unclipped = preprocess.transform_boxes(example['boxes'], info)
  del boxes  # The op's clipped boxes; visibility is measured on `unclipped`.
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


AUGMENTATIONS = ('hflip', 'scale_jitter', 'color_jitter', 'mosaic')


def check_augmentations(config, known=AUGMENTATIONS):
  """Every name in config.input.augmentations is one of `known` (default:
  the detection ops; classification passes its own)."""
  unknown = [a for a in config.input.augmentations if a not in known]
  if unknown:
    raise errors.ConfigError(
        f'config.input.augmentations has {unknown}; known: {list(known)}')


def _train_map(config, seed):
  """(index, example[, 3 partners]) -> one training example.

  Every random draw comes from (seed, index): per example, a flip seed and a
  jitter seed split from it (as before other augmentations existed, so the
  default stream is unchanged), and fold-ins for the rest.
  """
  size = tuple(config.input.image_size)
  fit_size = tuple(config.input.eval_image_size)
  augment = tuple(config.input.augmentations)
  lo, hi = config.input.scale_jitter if 'scale_jitter' in augment else (1.0, 1.0)
  min_visible = config.input.min_visible_fraction

  def place(example, flip_seed, jitter_seed):
    """Flip and scale / crop one example onto the output canvas."""
    image, boxes = example['image'], example['boxes']
    if 'hflip' in augment:
      image, boxes = preprocess.random_horizontal_flip(image, boxes, flip_seed)
    if (lo, hi) != (1.0, 1.0) or fit_size != size:
      image, clipped, info = preprocess.random_scale_jitter(
          image, boxes, size, lo, hi, jitter_seed, fit_size=fit_size)
    else:
      image, clipped, info = preprocess.resize_and_pad(image, boxes, size)
    return image, clipped, dict(example, boxes=boxes), info

  def color(image, example_seed):
    if 'color_jitter' not in augment:
      return image
    c = config.input.color_jitter
    return preprocess.random_color_jitter(
        image, tf.random.experimental.stateless_fold_in(example_seed, 3),
        brightness=c.brightness, contrast=c.contrast, saturation=c.saturation)

  def single(example, example_seed):
    flip_seed, jitter_seed = tf.unstack(
        tf.random.experimental.stateless_split(example_seed, 2))
    image, clipped, example, info = place(example, flip_seed, jitter_seed)
    return _finish(color(image, example_seed), clipped, example['labels'], info,
                   example, config.input.max_boxes, min_visible)

  def combined(examples, example_seed):
    canvases, boxes, labels, valid, scales = [], [], [], [], []
    for k, example in enumerate(examples):
      seeds = tf.random.experimental.stateless_split(
          tf.random.experimental.stateless_fold_in(example_seed, 10 + k), 2)
      image, _, example, info = place(example, seeds[0], seeds[1])
      canvases.append(image)
      boxes.append(preprocess.transform_boxes(example['boxes'], info))
      labels.append(example['labels'])
      valid.append(info['valid_size'])
      scales.append(info['scale'])
    image, boxes, labels, keep = preprocess.mosaic(
        canvases, boxes, labels, valid,
        tf.random.experimental.stateless_fold_in(example_seed, 4), min_visible)
    return _pack(color(image, example_seed), boxes, labels, keep, examples[0],
                 scales[0], config.input.max_boxes)

  def fn(index, examples):
    example_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0], tf.int64), index)
    if 'mosaic' not in augment:
      return single(examples, example_seed)
    use = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(example_seed, 5)
    ) < config.input.mosaic_prob
    return tf.cond(use, lambda: combined(examples, example_seed),
                   lambda: single(examples[0], example_seed))
  return fn


def train_dataset(config: ml_collections.ConfigDict, builder,
                  start_step: int = 0) -> tf.data.Dataset:
  """The endless training stream of this process, from `start_step` on.

  With 'mosaic' among `config.input.augmentations` each element also draws
  three partner images from three more shuffles of the same cached split
  (seeds seed+1..seed+3; each holds its own shuffle buffer), so example i of
  the stream stays a function of (seed, i) and resuming stays exact.
  """
  check_augmentations(config)
  partners = 3 if 'mosaic' in config.input.augmentations else 0
  return training_stream(config, builder, _decode, _train_map(config, config.seed),
                         start_step, partners)


def training_stream(config, builder, decode, map_fn, start_step: int,
                    partners: int = 0) -> tf.data.Dataset:
  """Batches of `map_fn(index, example)` over the shuffled, repeated split.

  The decoded train split (followed by that of each
  `config.extra_train_datasets`) is cached and reshuffled every epoch with a
  fixed seed; `index` is the example's position in the stream, from which `map_fn`
  draws all its randomness, and resuming at `start_step` skips exactly
  start_step * batch examples before any of them is mapped. With `partners`
  > 0 each element is a tuple of 1 + partners examples from as many
  shuffles (seeds seed, seed+1, ...). Shared by detection and classification.
  """
  local_batch = config.batch_size // jax.process_count()
  split = _process_split(config.train_split)
  ds = None
  for b in [builder] + extra_train_builders(config):
    part = b.as_dataset(split=split, shuffle_files=False,
                        read_config=tfds.ReadConfig(shuffle_seed=config.seed))
    part = part.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = part if ds is None else ds.concatenate(part)
  if config.input.cache:
    ds = ds.cache()

  def shuffled(seed):
    return ds.shuffle(config.input.shuffle_buffer, seed=seed,
                      reshuffle_each_iteration=True).repeat()

  if partners:
    stream = tf.data.Dataset.zip(tuple(shuffled(config.seed + k)
                                       for k in range(1 + partners)))
  else:
    stream = shuffled(config.seed)
  stream = stream.enumerate().skip(start_step * local_batch)
  stream = stream.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True)
  stream = stream.batch(local_batch, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(1, config.input.num_threads)
  stream = stream.with_options(options)
  return stream.prefetch(config.input.prefetch)


def eval_batches(config: ml_collections.ConfigDict, builder, split: str,
                 batch_size: Optional[int] = None) -> Iterator[dict]:
  """Yields this process's batches of `split`, resized, never augmented.

  Every process yields the same number of batches (the largest shard's), the
  last ones padded with `example_mask=False` examples, so collective
  computations over the mesh stay in step across hosts.
  """
  batch = (batch_size or config.eval_batch_size) // jax.process_count()
  size = tuple(config.input.eval_image_size)
  max_boxes = config.input.max_boxes

  def fn(example):
    example = _decode(example)
    image, boxes, info = preprocess.resize_and_pad(example['image'],
                                                   example['boxes'], size)
    return _finish(image, boxes, example['labels'], info, example, max_boxes,
                   0.0)

  return process_batches(builder, split, batch, fn,
                         lambda b: pad_batch(b, batch, size, max_boxes))


def process_batches(builder, split: str, batch: int, map_fn, pad,
                    with_index: bool = False) -> Iterator[dict]:
  """Yields this process's examples of `split`, mapped and batched.

  Every process yields as many batches (its largest shard's), the short or
  missing ones completed by `pad(batch or None)`. With `with_index`, map_fn
  gets (position in this process's shard, example). Shared by detection
  and classification evaluation.
  """
  total = split_size(builder, split)
  num_batches = math.ceil(math.ceil(total / jax.process_count()) / batch)
  ds = builder.as_dataset(split=_process_split(split), shuffle_files=False)
  if with_index:
    ds = ds.enumerate()
  ds = ds.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
  it = iter(tfds.as_numpy(ds.prefetch(2)))
  for _ in range(num_batches):
    yield pad(next(it, None))


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
