"""Multi-device cases of tests/test_train.py (run as a script, not a test).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python tests/devices_worker.py one_vs_eight|fsdp|accumulation TMPDIR

Each case prints OK when its computations agree to float32 rounding
(tests/rounding.py).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from detector import errors
from detector import train
from detector.configs import classify
from detector.configs import cnn
from detector.train import state as state_lib
import rounding
import synthetic

CLASSES = [f'c{i}' for i in range(6)]


class Steps:
  """Two train steps of `config` on `devices` devices, compiled once: called
  with a batch, every number they produce (losses, last metrics, state) as a
  list of arrays.

  The optimizer is SGD: its update is linear in the gradient, so the state
  carries the gradients' rounding and no more. AdamW's g / sqrt(v) would turn
  a gradient element that rounding alone makes (|g| near its epsilon) into a
  step of the full learning rate, in either computation.
  """

  def __init__(self, config, devices):
    config.optimizer.name = 'sgd'
    self.setup = train.build_setup(config, CLASSES, 10,
                                   devices=jax.devices()[:devices])
    self.step = train.make_train_step(self.setup)
    self.data = NamedSharding(self.setup.mesh, P('data'))
    self.state = None

  def __call__(self, batch):
    state = self.setup.init_fn(jax.random.PRNGKey(0))
    losses = []
    for _ in range(2):
      state, metrics = self.step(
          state, train.device_batch(batch, self.data, list(batch)))
      losses.append(metrics['loss'])
    assert self.step._cache_size() == 1  # pylint: disable=protected-access
    self.state = state
    return rounding.flat([losses, dict(metrics), state])


def compare(reference, other, batch, what):
  """`other(batch)` against `reference(batch)` to float32 rounding of sums
  over the batch's pixels (tests/rounding.py)."""
  b, h, w = batch['image'].shape[:3]
  rounding.assert_close(reference(batch), other(batch), b * h * w, what)


def one_vs_eight():
  """One step on 8 devices equals the step on 1 device: BatchNorm's
  statistics span the global batch under jit, gradients are all-reduced."""
  assert jax.device_count() == 8, jax.devices()
  config = cnn.get_config('tiny')
  compare(Steps(config, 1), Steps(config, 8),
          synthetic.detection_batch(config, 0), '8 devices vs 1')
  config.batch_size = 12
  try:
    train.check_config(config, os.path.join(sys.argv[2], 'wd'))
  except errors.ConfigError as e:
    assert 'batch_size=12' in str(e) and '8' in str(e), e
  else:
    raise AssertionError('batch 12 on 8 devices was accepted')


def fsdp():
  """FSDP on 8 devices computes the data-parallel steps, with 1/8 of each
  sharded array per device."""
  config = cnn.get_config('tiny')
  config.fsdp_min_size = 1024
  data_parallel = Steps(config, 8)
  config.sharding = 'fsdp'
  sharded = Steps(config, 8)
  compare(data_parallel, sharded, synthetic.detection_batch(config, 1),
          'fsdp vs data parallel')
  leaves = jax.tree.leaves(sharded.state.params)
  split = [x for x in leaves if x.sharding.spec != P()]
  assert len(split) == len([x for x in leaves if x.size >= 1024]) > 0
  for x in split:
    assert x.addressable_shards[0].data.size * 8 == x.size
  assert (state_lib.state_bytes_per_device(sharded.setup.abstract_state)
          < state_lib.state_bytes_per_device(data_parallel.setup.abstract_state))


def _whole_and_accumulated(config):
  config.model.norm = 'frozen_batch_norm'
  whole = Steps(config, 1)
  config.grad_accum_steps = 4
  return whole, Steps(config, 2)


def accumulation():
  """4 accumulated micro-batches on 2 devices give the step of the whole
  batch on 1, for a detector (its loss divided by the batch's box count; one
  micro-batch has no box, so the count weighting matters) and a classifier
  (a mean over examples). BatchNorm is frozen: it would otherwise normalise
  each micro-batch on its own."""
  config = cnn.get_config('tiny')
  batch = synthetic.detection_batch(config, 2)
  batch['box_mask'][[0, 4]] = False  # Micro-batch 0 (examples 0, 4): no box.
  compare(*_whole_and_accumulated(config), batch, 'detection, 4 micro-batches')
  config = classify.get_config('cnn:tiny')
  rng = np.random.default_rng(3)
  b, (h, w) = config.batch_size, config.image_size
  batch = {'image': rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8),
           'label': rng.integers(0, 6, (b,)).astype(np.int32)}
  compare(*_whole_and_accumulated(config), batch,
          'classification, 4 micro-batches')


if __name__ == '__main__':
  {'one_vs_eight': one_vs_eight, 'fsdp': fsdp,
   'accumulation': accumulation}[sys.argv[1]]()
  print('OK')
