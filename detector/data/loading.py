"""What the detection and classification pipelines share: the dataset's TFDS
builders from the config, split sizes, each process's slice, the training
stream and the evaluation batching.

Each process reads its own slice of every split (`tfds.even_splits`), so the
same code feeds one CPU or many hosts. Training order is a pure function of
(seed, position): the decoded split is cached, shuffled with a fixed seed
every epoch, repeated, and every example's augmentation draws its randomness
from (seed, its position in the stream). Resuming at step s skips exactly
s * batch examples before any augmentation runs, so a resumed run sees the
batches the uninterrupted run would have seen.
"""

import math
from typing import Iterator, Optional, Tuple

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from detector import errors
from detector.data import datasets


def get_builder(config: ml_collections.ConfigDict, spec: Optional[str] = None):
  """The prepared TFDS builder of `spec` (default `config.dataset`): a TFDS
  name or a folder spec (`coco_json:DIR`, `voc:DIR`, `yolo:DIR`, `folder:DIR`,
  converted once; see `detector.data.datasets`)."""
  kwargs = ({'split_fractions': tuple(config.folder_split)}
            if 'folder_split' in config else {})
  builder = datasets.get_builder(spec or config.dataset, config.data_dir,
                                 **kwargs)
  prepare(builder)
  return builder


def split_images(config: ml_collections.ConfigDict, split: str,
                 count: Optional[int] = None
                 ) -> Iterator[Tuple[str, np.ndarray]]:
  """(name, uint8 [H, W, 3]) of the first `count` images of `split` (all
  when None), decoded, in the dataset's order; names are 'SPLIT/IMAGE_ID'."""
  builder = get_builder(config)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  if count is not None:
    ds = ds.take(count)
  for index, example in enumerate(tfds.as_numpy(ds)):
    yield (f'{split}/{int(example.get("image/id", index))}',
           example['image'])


def extra_train_builders(config: ml_collections.ConfigDict):
  """Builders of `config.extra_train_datasets`: more datasets whose
  `train_split` joins the training stream (VOC 07+12: `dataset='voc/2007'`,
  `extra_train_datasets=('voc/2012',)`); evaluation reads `dataset` alone."""
  return [get_builder(config, spec) for spec in config.extra_train_datasets]


def prepare(builder):
  """Generates the dataset if missing (local generation only for `shapes`)."""
  if isinstance(builder, tfds.core.read_only_builder.ReadOnlyBuilder):
    return  # A converted folder: written whole by get_builder.
  if jax.process_index() == 0:
    builder.download_and_prepare()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('dataset prepared')


def split_size(builder, split: str, spec: Optional[str] = None) -> int:
  """The number of examples of `split`; `spec` names the dataset in errors."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):  # TFDS raises either, by version and split.
    raise errors.ConfigError(
        f'split {split!r} is not in {spec or builder.info.full_name}; it has '
        f'{sorted(builder.info.splits)}') from None


def process_split(split: str) -> str:
  """This process's slice of `split`."""
  if jax.process_count() == 1:
    return split
  return tfds.even_splits(split, n=jax.process_count())[jax.process_index()]


def check_augmentations(config, known):
  """Every name in config.input.augmentations is one of `known`."""
  unknown = [a for a in config.input.augmentations if a not in known]
  if unknown:
    raise errors.ConfigError(
        f'config.input.augmentations has {unknown}; known: {list(known)}')


def training_stream(config, builder, decode, map_fn, start_step: int,
                    partners: int = 0) -> tf.data.Dataset:
  """Batches of `map_fn(index, example)` over the shuffled, repeated split.

  The decoded train split (followed by that of each
  `config.extra_train_datasets`) is cached and reshuffled every epoch with a
  fixed seed; `index` is the example's position in the stream, from which `map_fn`
  draws all its randomness, and resuming at `start_step` skips exactly
  start_step * batch examples before any of them is mapped. With `partners`
  > 0 each element is a tuple of 1 + partners examples from as many
  shuffles (seeds seed, seed+1, ...).
  """
  local_batch = config.batch_size // jax.process_count()
  split = process_split(config.train_split)
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


def process_batches(builder, split: str, batch: int, map_fn, pad,
                    with_index: bool = False) -> Iterator[dict]:
  """Yields this process's examples of `split`, mapped and batched.

  Every process yields as many batches (its largest shard's), the short or
  missing ones completed by `pad(batch or None)`, so collective computations
  over the mesh stay in step across hosts. With `with_index`, map_fn gets
  (position in this process's shard, example).
  """
  total = split_size(builder, split)
  num_batches = math.ceil(math.ceil(total / jax.process_count()) / batch)
  ds = builder.as_dataset(split=process_split(split), shuffle_files=False)
  if with_index:
    ds = ds.enumerate()
  ds = ds.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
  it = iter(tfds.as_numpy(ds.prefetch(2)))
  for _ in range(num_batches):
    yield pad(next(it, None))
