"""Training: one `jax.jit` step over a device mesh, Orbax checkpoints, CLU logs.

Read in this order: `build` (config checks, dataset, model, optimizer and
state built once) -> `optim` -> `state` -> `step` (the jitted train step) ->
`loop` (resume, steps, logs, checkpoints, preemption) -> `evaluate` (the
model over each split, scored and written). The same code runs on one CPU,
on fake CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`),
a GPU and a TPU pod: the batch is sharded over the mesh axis 'data' and the
state is replicated (or, with config.sharding='fsdp', sharded over the same
axis), so XLA inserts the gradient all-reduce (or the parameter gathers and
gradient reduce-scatters). The step compiles once per run.

`train_and_evaluate` and `evaluate_checkpoint` (the loop, which reads data
through TensorFlow) are imported on first use, so that `build`, `step` and
the model import without TensorFlow.
"""

import importlib

from detector.train.build import build_setup
from detector.train.build import check_config
from detector.train.build import check_workdir_classes
from detector.train.build import Setup
from detector.train.build import setup
from detector.train.state import TrainState
from detector.train.step import device_batch
from detector.train.step import make_train_step

_LOOP = ('train_and_evaluate', 'evaluate_checkpoint')


def __getattr__(name):
  if name in _LOOP:
    return getattr(importlib.import_module('detector.train.loop'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
