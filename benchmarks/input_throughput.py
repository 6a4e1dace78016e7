"""Benchmark: input pipeline images/s next to the train step's, per config.

    .venv/bin/python benchmarks/input_throughput.py [--configs=cnn,resnet50] [--steps=20]

For each config on its default dataset (`shapes`, generated locally on first
use) it prints, in one process on the same machine:
  * pipeline: images/s of `detection.train_dataset` alone (after its cache is
    warm), with the config's augmentations and with all four
    (mosaic, hflip, scale_jitter, color_jitter);
  * step: images/s of the jitted train step on one prepared batch (no input);
  * step + pipeline: images/s of training fed by the live pipeline, which
    shares the CPU with the step.
The pipeline does not limit training when `step + pipeline` is about `step`.
A benchmark, not a test: it prints figures and asserts nothing.
"""

import os
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from detector import runtime  # pylint: disable=wrong-import-position

flags.DEFINE_list('configs', ['cnn', 'resnet50'], 'Configs of detector/configs/.')
flags.DEFINE_integer('steps', 20, 'Timed batches / steps per measurement.')
flags.DEFINE_integer('warmup', 5, 'Untimed batches / steps first.')
flags.DEFINE_string('data_dir', None, 'TFDS data dir.')
FLAGS = flags.FLAGS

ALL = ('mosaic', 'hflip', 'scale_jitter', 'color_jitter')


def _pipeline_rate(config, builder):
  # pylint: disable=g-import-not-at-top
  from detector.data import detection
  from detector.data import loading
  ds = detection.train_dataset(config, builder)
  # Warm the decode cache: one pass over the split, then timed batches.
  split = loading.split_size(builder, config.train_split)
  it = iter(ds.as_numpy_iterator())
  for _ in range(max(FLAGS.warmup, -(-split // config.batch_size))):
    next(it)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    next(it)
  return FLAGS.steps * config.batch_size / (time.perf_counter() - start)


def _step_rates(config, builder):
  import jax  # pylint: disable=g-import-not-at-top
  from detector import train  # pylint: disable=g-import-not-at-top
  from detector.data import detection  # pylint: disable=g-import-not-at-top
  names = detection.class_names(builder)
  s = train.build_setup(config, names, 10_000, builder=builder)
  state = s.init_fn(jax.random.PRNGKey(0))
  sharding = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec('data'))
  step = train.make_train_step(s)
  it = iter(detection.train_dataset(config, builder).as_numpy_iterator())
  keys = s.task.batch_keys
  fixed = train.device_batch(next(it), sharding, keys)
  for _ in range(FLAGS.warmup):
    state, metrics = step(state, fixed)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, fixed)
  jax.block_until_ready(metrics)
  alone = FLAGS.steps * config.batch_size / (time.perf_counter() - start)
  for _ in range(FLAGS.warmup):
    state, metrics = step(state, train.device_batch(next(it), sharding, keys))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, train.device_batch(next(it), sharding, keys))
  jax.block_until_ready(metrics)
  fed = FLAGS.steps * config.batch_size / (time.perf_counter() - start)
  return alone, fed


def main(argv):
  del argv
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from detector.data import loading  # pylint: disable=g-import-not-at-top
  rows = []
  for name in FLAGS.configs:
    config = importlib.import_module(f'detector.configs.{name}').get_config()
    if FLAGS.data_dir:
      config.data_dir = FLAGS.data_dir
    builder = loading.get_builder(config)
    own = _pipeline_rate(config, builder)
    every = config.copy_and_resolve_references()
    every.input.augmentations = ALL
    every.input.mosaic_prob = 1.0
    mosaic = _pipeline_rate(every, builder)
    alone, fed = _step_rates(config, builder)
    rows.append((name, config.batch_size, tuple(config.image_size), own, mosaic,
                 alone, fed))
  print(f'\n{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; images/s')
  print(f'{"config":10} {"batch":>5} {"size":>10} {"pipeline":>9} '
        f'{"all 4 aug":>9} {"step":>8} {"step+pipe":>9}')
  for name, b, size, own, mosaic, alone, fed in rows:
    print(f'{name:10} {b:5d} {str(size):>10} {own:9.1f} {mosaic:9.1f} '
          f'{alone:8.1f} {fed:9.1f}')


if __name__ == '__main__':
  runtime.configure_xla_cpu()  # Before JAX starts, as main.py does.
  app.run(main)
