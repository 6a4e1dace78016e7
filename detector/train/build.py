"""Everything a run builds once from the config, before the first step.

`check_config` fails on a user's mistake before anything expensive starts;
`setup` then prepares the dataset, checks the workdir's classes and builds
the model, optimizer and sharded abstract state into a `Setup`, which the
loop and the evaluation share.
"""

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np

from detector import checkpoints
from detector import errors
from detector import tasks
from detector.models import detector as detector_lib
from detector.train import optim
from detector.train import state as state_lib

CLASSES_FILE = 'classes.json'


def check_config(config: ml_collections.ConfigDict, workdir: str,
                 num_devices: Optional[int] = None) -> tasks.Task:
  """Returns the config's task; raises ConfigError saying what to change
  for a config that cannot run (on `num_devices`, default all)."""
  task = tasks.get(config)
  stride = task.check_config()
  _check_batch(config, num_devices or jax.device_count())
  for key in ('image_size', 'eval_image_size'):
    size = tuple(config[key])
    if len(size) != 2 or any(s <= 0 or s % stride for s in size):
      fix = tuple(max(stride, stride * round(s / stride)) for s in size)
      raise errors.ConfigError(
          f'config.{key}={size}: both sides must be positive multiples of '
          f'{stride}, the largest stride of this model; for example '
          f'--config.{key}="{fix}"')
  _check_optimizer(config.optimizer)
  detector_lib.compute_dtype(config.model)
  steps = [int(s) for s in config.profile_steps]
  if steps and min(steps) < 1:
    raise errors.ConfigError(f'config.profile_steps={tuple(steps)}: steps '
                             'count from 1')
  _check_writable(workdir)
  return task


def _check_batch(config, n_dev):
  n_proc = jax.process_count()
  for key in ('batch_size', 'eval_batch_size'):
    value = config[key]
    if value <= 0 or value % n_dev or value % n_proc:
      raise errors.ConfigError(
          f'config.{key}={value} must be a positive multiple of the number of '
          f'devices ({n_dev}) and processes ({n_proc}); for example '
          f'--config.{key}={max(n_dev, n_dev * round(max(value, 1) / n_dev))}')
  accum = config.grad_accum_steps
  if accum < 1 or config.batch_size % (accum * n_dev):
    raise errors.ConfigError(
        f'config.grad_accum_steps={accum} with config.batch_size='
        f'{config.batch_size} on {n_dev} devices: each of the {accum} '
        'micro-batches is split over every device, so batch_size must be a '
        f'multiple of grad_accum_steps x devices = {max(accum, 1) * n_dev}')
  if config.sharding not in state_lib.SHARDINGS:
    raise errors.ConfigError(f'config.sharding={config.sharding!r}: expected '
                             f'one of {state_lib.SHARDINGS}')


def _check_optimizer(opt):
  if opt.name not in ('adamw', 'sgd'):
    raise errors.ConfigError(f'config.optimizer.name={opt.name!r}: expected '
                             'adamw or sgd')
  if opt.freeze_at < 0:
    raise errors.ConfigError(f'config.optimizer.freeze_at={opt.freeze_at}: '
                             'expected 0 (nothing frozen) or a level >= 1')
  if opt.backbone_lr_mult < 0:
    raise errors.ConfigError('config.optimizer.backbone_lr_mult='
                             f'{opt.backbone_lr_mult}: must be >= 0')


def _check_writable(workdir):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.ConfigError(f'--workdir={workdir} cannot be written '
                             f'({e.strerror}); choose a directory you can '
                             'write to') from None


def num_train_steps(config: ml_collections.ConfigDict, train_size: int) -> int:
  """Steps from `num_epochs` when set, else `num_train_steps`: one unit inside."""
  if config.num_epochs:
    return max(1, math.ceil(config.num_epochs * train_size / config.batch_size))
  return config.num_train_steps


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run builds once from the config: never traced, never checkpointed."""
  mesh: Mesh
  task: tasks.Task
  builder: Any                 # The TFDS builder; None in tests without data.
  class_names: Any
  model_config: ml_collections.ConfigDict  # config.model, resolved, num_classes set.
  train_model: nn.Module       # BatchNorm in training mode.
  eval_model: nn.Module        # Same parameters, running statistics.
  tx: Any
  schedule: Callable
  total_steps: int
  ema_decay: float
  abstract_state: Any          # ShapeDtypeStructs carrying the state shardings.
  state_sharding: Any
  init_fn: Callable            # Jitted rng -> TrainState, already sharded.
  labels: Any = None           # optim.param_labels tree, None when nothing is frozen.
  grad_accum_steps: int = 1    # Micro-batches per step.
  # The dataset's own id of each label, for COCO files (None: label + 1).
  category_ids: Any = None


def setup(config: ml_collections.ConfigDict, workdir: str,
          devices=None) -> Setup:
  """Checks the config, prepares the dataset and builds model and optimizer
  on a mesh of `devices` (default: all of them)."""
  # The dataset side needs TensorFlow; the rest of this module does not.
  from detector.data import loading  # pylint: disable=g-import-not-at-top
  task = check_config(config, workdir, len(devices) if devices else None)
  builder = loading.get_builder(config)
  names = task.class_names(builder, config.dataset)
  extras = list(zip(config.extra_train_datasets,
                    loading.extra_train_builders(config)))
  for spec, extra in extras:
    extra_names = task.class_names(extra, spec)
    if extra_names != names:
      raise errors.ConfigError(
          f'config.extra_train_datasets has {spec!r} with classes '
          f'{extra_names}, but config.dataset={config.dataset!r} has {names}: '
          'datasets trained together need the same classes in the same order')
  for split in (config.train_split, config.eval_split, config.test_split):
    if split:  # An empty eval or test split name skips that evaluation.
      loading.split_size(builder, split, config.dataset)
  train_size = loading.split_size(builder, config.train_split)
  train_size += sum(loading.split_size(extra, config.train_split, spec)
                    for spec, extra in extras)
  ids = task.category_ids(builder, names)
  check_workdir_classes(workdir, config.dataset, names, ids)
  s = build_setup(config, names, num_train_steps(config, train_size),
                  builder=builder, devices=devices)
  return dataclasses.replace(s, category_ids=ids)


def check_workdir_classes(workdir, dataset, names, category_ids):
  """The classes of the workdir's checkpoints must be the dataset's.

  workdir/classes.json records the dataset and class names a run trained on;
  while workdir/checkpoints holds a checkpoint, another dataset's classes (a
  different count, order or name) stop the run naming both, instead of
  restoring a head whose outputs mean other classes (or failing on a shape).
  """
  path = os.path.join(workdir, CLASSES_FILE)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  has_checkpoint = os.path.isdir(ckpt_dir) and any(
      name.isdigit() for name in os.listdir(ckpt_dir))
  if has_checkpoint and os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    if saved['class_names'] != list(names):
      raise errors.ConfigError(
          f'{workdir} holds checkpoints trained on {saved["dataset"]} with '
          f'{len(saved["class_names"])} classes {saved["class_names"]}, but '
          f'config.dataset={dataset!r} has {len(names)} classes {list(names)}; '
          'use another --workdir (or config.init_from for the backbone)')
  elif jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
      json.dump({'dataset': dataset, 'class_names': list(names),
                 'category_ids': list(category_ids)}, f, indent=1)


def resolve_model_config(config: ml_collections.ConfigDict, class_names):
  """`config.model` with what `init_from` decides and the dataset's class
  count filled in, locked."""
  model_config = config.model.copy_and_resolve_references()
  with model_config.unlocked():
    checkpoints.resolve_init_from(config, model_config)
    if model_config.num_classes == -1:
      model_config.num_classes = len(class_names)
    elif model_config.num_classes != len(class_names):
      raise errors.ConfigError(
          f'config.model.num_classes={model_config.num_classes} but dataset '
          f'{config.dataset} has {len(class_names)} classes '
          f'{list(class_names)}; set it to -1 to take the dataset\'s')
  return model_config.lock()


def build_setup(config: ml_collections.ConfigDict, class_names, total_steps: int,
                builder=None, devices=None) -> Setup:
  """Model, optimizer, shardings and abstract state on a mesh of `devices`."""
  task = tasks.get(config)
  mesh = Mesh(np.array(devices or jax.devices()), ('data',))
  model_config = resolve_model_config(config, class_names)
  train_model = task.build_model(model_config, train=True)
  labels = None
  if optim.needs_param_labels(config):
    labels = _param_labels(config, model_config, train_model)
  tx, schedule = optim.make_optimizer(config, total_steps, labels)
  create = functools.partial(state_lib.create_state, train_model, tx, config)
  abstract_state = jax.eval_shape(create, jax.random.PRNGKey(0))
  state_sharding = state_lib.state_shardings(
      abstract_state, mesh, config.sharding, config.fsdp_min_size)
  init_fn = jax.jit(create, out_shardings=state_sharding)
  abstract_state = jax.tree_util.tree_map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      abstract_state, state_sharding)
  logging.info('Train state: %.1f MiB per device (sharding %r over %d '
               'devices).', state_lib.state_bytes_per_device(abstract_state)
               / 2**20, config.sharding, mesh.size)
  return Setup(mesh=mesh, task=task, builder=builder,
               class_names=list(class_names), model_config=model_config,
               train_model=train_model,
               eval_model=task.build_model(model_config, train=False), tx=tx,
               schedule=schedule, total_steps=total_steps,
               ema_decay=config.ema_decay, abstract_state=abstract_state,
               state_sharding=state_sharding, init_fn=init_fn, labels=labels,
               grad_accum_steps=config.grad_accum_steps)


def _param_labels(config, model_config, model):
  """optim.param_labels of the model's parameters, with their counts logged."""
  h, w = config.image_size
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, h, w, 3), jnp.uint8))
  labels = optim.param_labels(abstract['params'],
                              abstract.get('batch_stats', {}), config,
                              detector_lib.backbone_levels(model_config))
  counts = optim.label_counts(labels, abstract['params'])
  logging.info('Parameters frozen: %d, backbone (lr x %g): %d, neck and '
               'head: %d.', counts[optim.FROZEN],
               config.optimizer.backbone_lr_mult, counts[optim.BACKBONE],
               counts[optim.TRAINED])
  return labels
