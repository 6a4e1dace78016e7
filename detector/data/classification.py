"""tf.data input pipelines for image classification: TFDS `image` + `label`.

Any TFDS classification dataset (`imagenette`, `oxford_iiit_pet`,
`tf_flowers`, `cats_vs_dogs`, ...) or a `folder:DIR` of class folders
(converted once, see `detector.data.datasets`) feeds these pipelines; the
label feature is `config.label_key` (a ClassLabel: its names are the
classes). Split names take TFDS's slicing syntax, so a dataset with only a
`train` split is divided in the config: `train_split='train[:80%]'`,
`eval_split='train[80%:90%]'`, `test_split='train[90%:]'`.

Batches are dicts of numpy arrays:

  `image`         uint8 [b, H, W, 3], H, W = `config.image_size` for
                  training, `config.eval_image_size` for evaluation;
  `label`         int32 [b];
  `index`         int64 [b] (evaluation) the example's position in the split;
  `example_mask`  bool [b] (evaluation) False for padding examples.

Training (`config.input.augmentations`, in this order):
  'random_resized_crop'  a crop of random area (`input.crop_scale`, a
                         fraction of the image) and aspect ratio
                         (`input.crop_aspect_ratio`), resized to image_size:
                         Inception's crop, torchvision's RandomResizedCrop;
                         without it the whole image is resized to image_size;
  'hflip'                horizontal flip with probability 1/2;
  'color_jitter'         brightness, contrast, saturation (`input.color_jitter`).
Evaluation resizes the image to cover eval_image_size / `input.eval_crop_fraction`
(aspect preserved) and cuts the centre eval_image_size: 0.875 is the
resize-256-crop-224 of ImageNet evaluation; 1.0 keeps the most of the image.

As in detection, the training order and every random draw are functions of
(seed, position in the stream), so resuming continues the same stream.
"""

from typing import Iterator, Optional

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from detector import errors
from detector.data import augment
from detector.data import loading
from detector.data import preprocess

AUGMENTATIONS = ('random_resized_crop', 'hflip', 'color_jitter')


def check_config(config: ml_collections.ConfigDict):
  """Raises ConfigError for input settings the pipeline cannot run."""
  loading.check_augmentations(config, AUGMENTATIONS)
  lo, hi = config.input.crop_scale
  if not 0 < lo <= hi <= 1:
    raise errors.ConfigError(f'config.input.crop_scale={(lo, hi)}: need '
                             '0 < min <= max <= 1 (fractions of the image area)')
  lo, hi = config.input.crop_aspect_ratio
  if not 0 < lo <= hi:
    raise errors.ConfigError(f'config.input.crop_aspect_ratio={(lo, hi)}: need '
                             '0 < min <= max')
  if not 0 < config.input.eval_crop_fraction <= 1:
    raise errors.ConfigError('config.input.eval_crop_fraction='
                             f'{config.input.eval_crop_fraction}: need 0 < f <= 1')


def class_names(builder, label_key: str = 'label', spec: Optional[str] = None):
  """The names of the label feature; a clear error for a detection dataset."""
  features = builder.info.features
  feature = features[label_key] if label_key in features else None
  if not isinstance(feature, tfds.features.ClassLabel):
    hint = (' It is a detection dataset (objects/bbox): train it with a '
            'detection config (configs/cnn.py, resnet50.py, efficientnet.py).'
            if 'objects' in features else '')
    raise errors.ConfigError(
        f'config.dataset={spec or builder.info.full_name!r} has no class label '
        f'feature config.label_key={label_key!r}; its features are '
        f'{sorted(features.keys())}.{hint}')
  return list(feature.names)


def category_ids(builder, names):
  """Class i is category i (a classifier's files name classes, not ids)."""
  del builder
  return list(range(len(names)))


def _decoder(label_key):
  def decode(example):
    return {'image': example['image'],
            'label': tf.cast(example[label_key], tf.int32)}
  return decode


def random_resized_crop(image, size, seed, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)):
  """Crops a random window of `scale` x the image area with an aspect ratio
  (width / height) in `ratio`, falling back to the whole image after 10
  tries, and resizes it to `size` (float32 [h, w, 3]). TF draws the ratio
  uniformly in the range, torchvision log-uniformly: nearly the same for
  (3/4, 4/3)."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
      seed=seed, min_object_covered=0.0, aspect_ratio_range=ratio,
      area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  return tf.image.resize(crop, size, method='bilinear', antialias=True)


def center_crop(image, size, fraction=0.875):
  """Resizes (aspect kept) to cover size / fraction and cuts the centre `size`."""
  h, w = size
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.maximum(h / fraction / shape[0], w / fraction / shape[1])
  new = tf.maximum(tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32), [h, w])
  image = tf.image.resize(image, new, method='bilinear', antialias=True)
  top, left = (new[0] - h) // 2, (new[1] - w) // 2
  return image[top:top + h, left:left + w]


def _train_map(config):
  size = tuple(config.image_size)
  augment_names = tuple(config.input.augmentations)
  seed = config.seed

  def fn(index, example):
    example_seed = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0], tf.int64), index)
    seeds = tf.random.experimental.stateless_split(example_seed, 3)
    image = example['image']
    if 'random_resized_crop' in augment_names:
      image = random_resized_crop(image, size, seeds[0],
                                  tuple(config.input.crop_scale),
                                  tuple(config.input.crop_aspect_ratio))
    else:
      image = tf.image.resize(image, size, method='bilinear', antialias=True)
    if 'hflip' in augment_names:
      image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    if 'color_jitter' in augment_names:
      c = config.input.color_jitter
      image = augment.random_color_jitter(
          image, seeds[2], brightness=c.brightness, contrast=c.contrast,
          saturation=c.saturation)
    image = tf.ensure_shape(preprocess.to_uint8(image), size + (3,))
    return {'image': image, 'label': example['label']}
  return fn


def train_dataset(config: ml_collections.ConfigDict, builder,
                  start_step: int = 0) -> tf.data.Dataset:
  """The endless training stream of this process, from `start_step` on."""
  check_config(config)
  return loading.training_stream(config, builder, _decoder(config.label_key),
                                 _train_map(config), start_step)


def _shard_offset(builder, split):
  """Where this process's slice of `split` starts, in examples."""
  if jax.process_count() == 1:
    return 0
  shards = tfds.even_splits(split, n=jax.process_count())
  return sum(builder.info.splits[s].num_examples
             for s in shards[:jax.process_index()])


def eval_batches(config: ml_collections.ConfigDict, builder, split: str,
                 batch_size: Optional[int] = None) -> Iterator[dict]:
  """This process's centre-cropped batches of `split`; every process yields
  as many (the last padded with example_mask=False), as in detection."""
  batch = (batch_size or config.eval_batch_size) // jax.process_count()
  size = tuple(config.eval_image_size)
  decode = _decoder(config.label_key)
  offset = _shard_offset(builder, split)

  def fn(index, example):
    example = decode(example)
    image = center_crop(example['image'], size, config.input.eval_crop_fraction)
    return {'image': tf.ensure_shape(preprocess.to_uint8(image), size + (3,)),
            'label': example['label'], 'index': index + offset,
            'example_mask': tf.constant(True)}

  return loading.process_batches(builder, split, batch, fn,
                                 lambda b: pad_batch(b, batch, size),
                                 with_index=True)


def pad_batch(batch, batch_size, image_size):
  """Pads a (possibly missing or short) batch to `batch_size` examples."""
  h, w = image_size
  n = 0 if batch is None else len(batch['label'])
  pad = {'image': np.zeros((batch_size - n, h, w, 3), np.uint8),
         'label': np.zeros((batch_size - n,), np.int32),
         'index': np.full((batch_size - n,), -1, np.int64),
         'example_mask': np.zeros((batch_size - n,), bool)}
  if batch is None:
    return pad
  return {k: np.concatenate([batch[k], pad[k]]) for k in pad}


def filenames(builder, split: str):
  """The split's file names in order (TFDS's `image/filename` or
  `file_name` feature), or None when the dataset has none."""
  features = builder.info.features
  key = next((k for k in ('image/filename', 'file_name') if k in features), None)
  if key is None:
    return None
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.map(lambda ex: ex[key])
  return [f.decode('utf-8', 'replace') for f in tfds.as_numpy(ds)]
