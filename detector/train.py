"""Training loop: one `jax.jit` step over a device mesh, Orbax checkpoints, CLU logs.

Read top to bottom: config checks -> optimizer -> state -> train step -> loop.
The same code runs on one CPU, on fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), a GPU and a TPU pod:
the batch is sharded over the mesh axis 'data' and the state is replicated
(or, with config.sharding='fsdp', sharded over the same axis), so XLA inserts
the gradient all-reduce (or the parameter gathers and gradient
reduce-scatters). The step compiles once per run.
"""

import collections
import dataclasses
import functools
import json
import math
import os
import signal
import threading
from typing import Any, Callable, Dict, Tuple

from absl import logging
from clu import metric_writers
from clu import metrics as clu_metrics
from clu import parameter_overview
from clu import periodic_actions
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from detector import errors
from detector import checkpoints
from detector import evaluate
from detector import models
from detector import tasks
from detector.data import classification
from detector.data import pipeline
from detector.models import detector as detector_lib
from detector.models import layers

# ---------------------------------------------------------------------------
# Config checks: a user's mistake fails here, before anything expensive starts.
# ---------------------------------------------------------------------------


def required_stride(model_config: ml_collections.ConfigDict) -> int:
  """The largest stride in the model: image sizes must be multiples of it."""
  levels = [5, model_config[model_config.neck].max_level]
  if model_config.head == 'retinanet':
    levels.append(model_config.retinanet.max_level)
  return 2 ** max(levels)


SHARDINGS = ('data', 'fsdp')  # config.sharding: see state_shardings.


def check_config(config: ml_collections.ConfigDict, workdir: str):
  """Raises ValueError saying what to change for a config that cannot run."""
  classify = tasks.is_classification(config)
  n_dev, n_proc = jax.device_count(), jax.process_count()
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
  if config.sharding not in SHARDINGS:
    raise errors.ConfigError(f'config.sharding={config.sharding!r}: expected '
                             f'one of {SHARDINGS}')
  # A classifier pools globally: any size its backbone takes will do.
  stride = 1 if classify else required_stride(config.model)
  for key in ('image_size', 'eval_image_size'):
    size = tuple(config[key])
    if len(size) != 2 or any(s <= 0 or s % stride for s in size):
      fix = tuple(max(stride, stride * round(s / stride)) for s in size)
      raise errors.ConfigError(
          f'config.{key}={size}: both sides must be positive multiples of '
          f'{stride}, the largest stride of this model; for example '
          f'--config.{key}="{fix}"')
  tasks.data_module(config).check_augmentations(config)
  if not classify:
    lo, hi = config.input.scale_jitter
    if not 0 < lo <= hi:
      raise errors.ConfigError(f'config.input.scale_jitter={(lo, hi)}: need 0 < min <= max')
    models.head_module(config.model.head)
  if config.optimizer.name not in ('adamw', 'sgd'):
    raise errors.ConfigError(f'config.optimizer.name={config.optimizer.name!r}: expected '
                     'adamw or sgd')
  detector_lib.compute_dtype(config.model)
  if config.optimizer.freeze_at < 0:
    raise errors.ConfigError(f'config.optimizer.freeze_at={config.optimizer.freeze_at}'
                             ': expected 0 (nothing frozen) or a level >= 1')
  if config.optimizer.backbone_lr_mult < 0:
    raise errors.ConfigError('config.optimizer.backbone_lr_mult='
                             f'{config.optimizer.backbone_lr_mult}: must be >= 0')
  for key in ('norm', 'backbone_norm'):
    kind = config.model[key]
    if (kind or key == 'norm') and kind not in layers.NORM_KINDS:
      raise errors.ConfigError(f'config.model.{key}={kind!r}: expected one of '
                               f'{layers.NORM_KINDS}' +
                               (" or '' (= norm)" if key != 'norm' else ''))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.ConfigError(f'--workdir={workdir} cannot be written ({e.strerror}); '
                     'choose a directory you can write to') from None


def num_train_steps(config: ml_collections.ConfigDict, train_size: int) -> int:
  """Steps from `num_epochs` when set, else `num_train_steps`: one unit inside."""
  if config.num_epochs:
    return max(1, math.ceil(config.num_epochs * train_size / config.batch_size))
  return config.num_train_steps

# ---------------------------------------------------------------------------
# Optimizer.
# ---------------------------------------------------------------------------


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int):
  """Linear warm-up to the peak, then cosine decay to peak * end factor."""
  opt = config.optimizer
  warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=opt.learning_rate * opt.end_learning_rate_factor)


def decay_mask(params):
  """True for weights that get weight decay: kernels, not norm scales or biases."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


FROZEN, BACKBONE, TRAINED = 'frozen', 'backbone', 'trained'


def needs_param_labels(config: ml_collections.ConfigDict) -> bool:
  """Whether any parameter is frozen or has its own learning rate."""
  m = config.model
  return (config.optimizer.freeze_at > 0 or config.optimizer.backbone_lr_mult != 1
          or 'frozen_batch_norm' in (m.norm, m.backbone_norm or m.norm))


def param_labels(params, batch_stats, config: ml_collections.ConfigDict,
                 levels: Dict[str, int]):
  """A tree like `params` of FROZEN, BACKBONE or TRAINED.

  FROZEN: backbone modules at or below level `optimizer.freeze_at` (see
  `detector.backbone_levels`: 1 is the stem, 2 adds the stride-4 stage...),
  and the scale and bias of every BatchNorm that is frozen_batch_norm (its
  statistics are fixed by the norm itself). BACKBONE: the rest of the backbone
  (learning rate times `optimizer.backbone_lr_mult`). TRAINED: neck and head,
  and a classifier's final dense layer (`backbone/classifier`).
  """
  m = config.model
  frozen_norm = {'backbone': (m.backbone_norm or m.norm) == 'frozen_batch_norm',
                 None: m.norm == 'frozen_batch_norm'}
  norm_modules = {path[:-1] for path in
                  flax.traverse_util.flatten_dict(batch_stats)}

  def label(path, _):
    path = tuple(_key(k) for k in path)
    in_backbone = path[0] == 'backbone'
    if frozen_norm['backbone' if in_backbone else None] and path[:-1] in norm_modules:
      return FROZEN
    if not in_backbone or path[1:2] == ('classifier',):
      return TRAINED
    level = levels.get(path[1]) if len(path) > 1 else None
    if level is not None and level <= config.optimizer.freeze_at:
      return FROZEN
    return BACKBONE
  return jax.tree_util.tree_map_with_path(label, params)


def _key(k):
  return getattr(k, 'key', getattr(k, 'name', k))


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   labels=None):
  """The optimizer and its learning-rate schedule.

  With `labels` (a tree from `param_labels`), FROZEN parameters get no update
  (and no optimizer state), BACKBONE ones the schedule times
  `optimizer.backbone_lr_mult`: an optax.multi_transform.
  """
  opt = config.optimizer
  schedule = learning_rate_schedule(config, total_steps)

  def update_rule(lr):
    if opt.name == 'adamw':
      return optax.adamw(lr, b1=opt.b1, b2=opt.b2,
                         weight_decay=opt.weight_decay, mask=decay_mask)
    return optax.chain(
        optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
        optax.sgd(lr, momentum=opt.momentum, nesterov=opt.nesterov))
  parts = []
  if opt.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if labels is None:
    parts.append(update_rule(schedule))
  else:
    mult = opt.backbone_lr_mult
    parts.append(optax.multi_transform(
        {TRAINED: update_rule(schedule),
         BACKBONE: update_rule(lambda step: schedule(step) * mult),
         FROZEN: optax.set_to_zero()}, labels))
  return optax.chain(*parts), schedule

# ---------------------------------------------------------------------------
# State.
# ---------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # A raw uint32[2] key: it checkpoints as a plain array.
  # Exponential moving average of params (and of BatchNorm statistics), used
  # for evaluation; None when config.ema_decay is 0.
  ema: Any = None

  def eval_variables(self):
    """The variables evaluation uses: the EMA when kept, else the live ones."""
    if self.ema is not None:
      return {'params': self.ema['params'], 'batch_stats': self.ema['batch_stats']}
    return {'params': self.params, 'batch_stats': self.batch_stats}


def create_state(model: nn.Module, tx, config, rng) -> TrainState:
  """A fresh state (call under jit with the state shardings as out_shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  h, w = config.image_size
  variables = model.init(init_rng, jnp.zeros((1, h, w, 3), jnp.uint8))
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  ema = None
  if config.ema_decay:
    ema = {'params': params, 'batch_stats': batch_stats}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params),
                    rng=state_rng, ema=ema)


def state_shardings(abstract_state, mesh: Mesh, kind: str = 'data',
                    min_size: int = 2 ** 14):
  """The sharding of each array of the state on `mesh` (axis 'data').

  'data': every array whole on every device. 'fsdp': each array of at least
  `min_size` elements is split over the devices along its largest dimension
  that they divide evenly (the last of equals, usually output channels);
  smaller ones and those with no such dimension stay whole. Under jit, XLA
  gathers a layer's parameters where the step needs them and reduce-scatters
  their gradients, so the update itself runs on each device's shard.
  """
  replicated = NamedSharding(mesh, P())
  n = mesh.shape['data']

  def one(leaf):
    if kind == 'data' or n == 1 or leaf.size < min_size:
      return replicated
    dims = [i for i, d in enumerate(leaf.shape) if d % n == 0]
    if not dims:
      return replicated
    axis = max(dims, key=lambda i: (leaf.shape[i], i))
    return NamedSharding(mesh, P(*[('data' if i == axis else None)
                                   for i in range(leaf.ndim)]))
  return jax.tree_util.tree_map(one, abstract_state)


def state_bytes_per_device(abstract_state) -> int:
  """Bytes of the state one device holds under the shardings it carries."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(abstract_state):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard)) * leaf.dtype.itemsize
  return total


def update_ema(ema, params, batch_stats, step, decay):
  """EMA with the usual warm-up: the decay is min(decay, (1 + t) / (10 + t)),
  so early averages are not dominated by the random initialisation."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  mix = lambda e, p: d * e + (1.0 - d) * p
  return {'params': jax.tree_util.tree_map(mix, ema['params'], params),
          'batch_stats': jax.tree_util.tree_map(mix, ema['batch_stats'],
                                                batch_stats)}

# ---------------------------------------------------------------------------
# Train step.
# ---------------------------------------------------------------------------

def train_step(state: TrainState, batch: Dict[str, jax.Array], *, model, tx,
               head, model_config, schedule, ema_decay=0.0, labels=None,
               accum_steps=1, micro_sharding=None) -> Tuple[TrainState, Dict]:
  """One optimisation step on a global batch; returns the state and metrics.

  `labels` (see `param_labels`) marks frozen parameters: they enter the
  forward pass through stop_gradient, so XLA does not compute their
  gradients at all (the backward pass stops at the first trained layer).
  With `accum_steps` > 1 the batch runs as that many micro-batches (see
  `_accumulated_gradients`).
  """
  rng, dropout_rng = jax.random.split(state.rng)

  def loss_fn(params, micro, rng):
    if labels is not None:
      params = jax.tree_util.tree_map(
          lambda p, l: jax.lax.stop_gradient(p) if l == FROZEN else p,
          params, labels)
    outputs, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, micro['image'],
        mutable=['batch_stats'], rngs={'dropout': rng})
    loss, parts = head.loss(outputs, micro, model_config)
    return loss, (parts, updates['batch_stats'])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, (parts, batch_stats)), grads = grad_fn(state.params, batch,
                                                  dropout_rng)
    parts = {k: v for k, v in parts.items() if k != 'normalizer'}
  else:
    loss, parts, batch_stats, grads = _accumulated_gradients(
        grad_fn, state, batch, dropout_rng, accum_steps, micro_sharding)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(parts, loss=loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(params),
                 learning_rate=schedule(state.step))
  ema = state.ema
  if ema is not None:
    ema = update_ema(ema, params, batch_stats, state.step, ema_decay)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state,
                            rng=rng, ema=ema)
  return new_state, metrics


def _accumulated_gradients(grad_fn, state, batch, rng, k, micro_sharding):
  """Loss, metrics, BatchNorm statistics and gradients of the batch, computed
  over `k` micro-batches in a scan (one micro-batch's activations at a time).

  Micro-batch j holds examples j, j + k, j + 2k, ...: each device's examples
  stay on it and every micro-batch is spread over all devices. A loss that
  is a sum over examples divided by a count taken from the data (a head's
  `normalizer` part: boxes or positive anchors, clamped to >= 1) is rebuilt
  exactly: each micro-batch's loss and gradient are weighted by its count
  and the sums divided by the whole batch's; a loss without one (a mean over
  examples) has equal weights. Parts named `*loss` are weighted like the
  loss, other parts averaged. BatchNorm statistics are updated once, from
  the average of the micro-batches' statistics.
  """
  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, micro_sharding)
  micro_batches = {key: split(value) for key, value in batch.items()}

  def body(carry, xs):
    micro, j = xs
    (loss, (parts, stats)), grads = grad_fn(
        state.params, micro, jax.random.fold_in(rng, j))
    parts = dict(parts)
    count = parts.pop('normalizer', None)
    weight = 1.0 if count is None else jnp.maximum(count, 1.0)
    acc_grads, acc_loss, acc_parts, acc_stats, acc_count = carry
    add = lambda a, b, w=1.0: jax.tree_util.tree_map(
        lambda x, y: x + w * y, a, b)
    weighted = {n: (weight if n.endswith('loss') else 1.0) * v
                for n, v in parts.items()}
    return (add(acc_grads, grads, weight), acc_loss + weight * loss,
            add(acc_parts, weighted),
            add(acc_stats, jax.tree_util.tree_map(jnp.subtract, stats,
                                                  state.batch_stats)),
            acc_count + (0.0 if count is None else count)), None

  zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
  first = jax.tree_util.tree_map(lambda x: x[0], micro_batches)
  (_, (parts_shape, _)), _ = jax.eval_shape(grad_fn, state.params, first, rng)
  has_count = 'normalizer' in parts_shape
  parts_zeros = {n: jnp.zeros(v.shape, v.dtype) for n, v in parts_shape.items()
                 if n != 'normalizer'}
  init = (zeros(state.params), jnp.zeros((), jnp.float32), parts_zeros,
          zeros(state.batch_stats), jnp.zeros((), jnp.float32))
  (grads, loss, parts, stats, count), _ = jax.lax.scan(
      body, init, (micro_batches, jnp.arange(k)))
  denominator = jnp.maximum(count, 1.0) if has_count else float(k)
  scale = lambda tree, d: jax.tree_util.tree_map(lambda x: x / d, tree)
  parts = {n: v / (denominator if n.endswith('loss') else k)
           for n, v in parts.items()}
  # The mean of the micro-batches' statistics, as the mean of their changes
  # (exactly no change where BatchNorm is frozen).
  stats = jax.tree_util.tree_map(lambda old, change: old + change / k,
                                 state.batch_stats, stats)
  return loss / denominator, parts, stats, scale(grads, denominator)


def metrics_collection(names):
  """A CLU Collection averaging each named scalar over the steps it sees."""
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in names})

# ---------------------------------------------------------------------------
# Everything a run needs, built once; shared by train and evaluate modes.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run builds once from the config: never traced, never checkpointed."""
  mesh: Mesh
  builder: Any                 # The TFDS builder; None in tests without data.
  class_names: Any
  model_config: ml_collections.ConfigDict  # config.model, resolved, num_classes set.
  eval_model_config: ml_collections.ConfigDict  # The same at config.eval_image_size.
  task: str                    # 'detection' or 'classification'.
  train_model: nn.Module       # BatchNorm in training mode.
  eval_model: nn.Module        # Same parameters, running statistics.
  tx: Any
  schedule: Callable
  total_steps: int
  ema_decay: float
  abstract_state: Any          # ShapeDtypeStructs carrying the state shardings.
  state_sharding: Any
  init_fn: Callable            # Jitted rng -> TrainState, already sharded.
  labels: Any = None           # param_labels tree, None when nothing is frozen.
  grad_accum_steps: int = 1    # Micro-batches per step.
  # The dataset's own id of each label, for COCO files (None: label + 1).
  category_ids: Any = None


def setup(config: ml_collections.ConfigDict, workdir: str) -> Setup:
  """Checks the config, prepares the dataset and builds model and optimizer."""
  check_config(config, workdir)
  builder = pipeline.get_builder(config)
  pipeline.prepare(builder)
  names = _class_names(config, builder, config.dataset)
  extras = list(zip(config.get('extra_train_datasets', ()),
                    pipeline.extra_train_builders(config)))
  for spec, extra in extras:
    pipeline.prepare(extra)
    extra_names = _class_names(config, extra, spec)
    if extra_names != names:
      raise errors.ConfigError(
          f'config.extra_train_datasets has {spec!r} with classes '
          f'{extra_names}, but config.dataset={config.dataset!r} has {names}: '
          'datasets trained together need the same classes in the same order')
  for split in (config.train_split, config.eval_split,
                config.test_split):
    if split:  # An empty eval or test split name skips that evaluation.
      pipeline.split_size(builder, split, config.dataset)
  train_size = pipeline.split_size(builder, config.train_split)
  train_size += sum(pipeline.split_size(extra, config.train_split, spec)
                    for spec, extra in extras)
  total = num_train_steps(config, train_size)
  ids = (list(range(len(names))) if tasks.is_classification(config)
         else pipeline.category_ids(builder, len(names)))
  check_workdir_classes(workdir, config.dataset, names, ids)
  s = build_setup(config, names, total, builder=builder)
  return dataclasses.replace(s, category_ids=ids)


def _class_names(config, builder, spec):
  """The task's class names of a dataset (a ConfigError for the other task's)."""
  if tasks.is_classification(config):
    return classification.class_names(builder, config.label_key, spec)
  return pipeline.class_names(builder, spec)


CLASSES_FILE = 'classes.json'


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


def build_setup(config: ml_collections.ConfigDict, class_names, total_steps: int,
                builder=None, devices=None) -> Setup:
  """Model, optimizer, shardings and abstract state on a mesh of `devices`."""
  mesh = Mesh(np.array(devices or jax.devices()), ('data',))
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
  model_config.lock()
  # Evaluation runs on larger whole images: sizes that decoding depends on
  # (anchors, the flip merge) come from this copy.
  eval_model_config = model_config.copy_and_resolve_references()
  with eval_model_config.unlocked():
    eval_model_config.image_size = tuple(config.eval_image_size)
  eval_model_config.lock()
  model_lib = tasks.model_module(tasks.task(config))
  train_model = model_lib.build(model_config, train=True)
  eval_model = model_lib.build(model_config, train=False)
  labels = None
  if needs_param_labels(config):
    h, w = config.image_size
    abstract = jax.eval_shape(train_model.init, jax.random.PRNGKey(0),
                              jnp.zeros((1, h, w, 3), jnp.uint8))
    labels = param_labels(abstract['params'], abstract.get('batch_stats', {}),
                          config, detector_lib.backbone_levels(model_config))
    counts = collections.Counter()
    for l, p in zip(jax.tree_util.tree_leaves(labels),
                    jax.tree_util.tree_leaves(abstract['params'])):
      counts[l] += int(np.prod(p.shape))
    logging.info('Parameters frozen: %d, backbone (lr x %g): %d, neck and '
                 'head: %d.', counts[FROZEN], config.optimizer.backbone_lr_mult,
                 counts[BACKBONE], counts[TRAINED])
  tx, schedule = make_optimizer(config, total_steps, labels)
  create = functools.partial(create_state, train_model, tx, config)
  abstract_state = jax.eval_shape(create, jax.random.PRNGKey(0))
  state_sharding = state_shardings(abstract_state, mesh, config.sharding,
                                   config.fsdp_min_size)
  init_fn = jax.jit(create, out_shardings=state_sharding)
  abstract_state = jax.tree_util.tree_map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      abstract_state, state_sharding)
  logging.info('Train state: %.1f MiB per device (sharding %r over %d '
               'devices).', state_bytes_per_device(abstract_state) / 2**20,
               config.sharding, mesh.size)
  return Setup(mesh=mesh, builder=builder, class_names=list(class_names),
               task=tasks.task(config), model_config=model_config,
               eval_model_config=eval_model_config,
               train_model=train_model,
               eval_model=eval_model, tx=tx, schedule=schedule,
               total_steps=total_steps, ema_decay=config.ema_decay,
               abstract_state=abstract_state,
               state_sharding=state_sharding, init_fn=init_fn, labels=labels,
               grad_accum_steps=config.grad_accum_steps)


def make_train_step(s: Setup):
  """The jitted train step: batch sharded over 'data', state as
  `s.state_sharding` (replicated, or sharded for FSDP) and donated."""
  # The object whose loss(outputs, batch, model_config) the step minimises.
  head = (tasks.model_module(s.task) if s.task == 'classification'
          else models.head_module(s.model_config.head))
  return jax.jit(
      functools.partial(train_step, model=s.train_model, tx=s.tx, head=head,
                        model_config=s.model_config, schedule=s.schedule,
                        ema_decay=s.ema_decay, labels=s.labels,
                        accum_steps=s.grad_accum_steps,
                        micro_sharding=NamedSharding(s.mesh, P(None, 'data'))),
      in_shardings=(s.state_sharding, NamedSharding(s.mesh, P('data'))),
      out_shardings=(s.state_sharding, NamedSharding(s.mesh, P())),
      donate_argnums=0)


def device_batch(batch: Dict[str, np.ndarray], sharding,
                 keys=tasks.DETECTION_KEYS):
  """This process's numpy batch -> global jax.Arrays sharded over the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, batch[k])
          for k in keys}


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint and stopping.',
                    signum)
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

class _Profiler:
  """A JAX profiler trace of `config.profile_steps` (first to last) into
  workdir/profile/; stopped on leaving the loop in any case."""

  def __init__(self, steps, workdir):
    steps = sorted(int(s) for s in steps)
    if steps and steps[0] < 1:
      raise errors.ConfigError(f'config.profile_steps={tuple(steps)}: steps '
                               'count from 1')
    self.first, self.last = (steps[0], steps[-1]) if steps else (None, None)
    self.directory = os.path.join(workdir, 'profile')
    self.running = False

  def __enter__(self):
    return self

  def before(self, step):
    if step == self.first:
      jax.profiler.start_trace(self.directory)
      self.running = True

  def after(self, step, state):
    if self.running and step == self.last:
      self._stop(state)

  def _stop(self, state=None):
    if state is not None:
      jax.block_until_ready(state)  # The trace holds the steps' device work.
    jax.profiler.stop_trace()
    self.running = False
    logging.info('Profiler trace of steps %d..%d written to %s (TensorBoard: '
                 'Profile tab).', self.first, self.last, self.directory)

  def __exit__(self, *exc):
    if self.running:
      self._stop()

# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains (resuming from workdir/checkpoints if present), then evaluates.

  Returns:
    The metrics dict of the test split (also in workdir/eval/metrics_test.json),
    or None when training stopped early on SIGTERM.
  """
  s = setup(config, workdir)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(_flat_hparams(config))
  mngr = checkpoints.manager(workdir, config.keep_checkpoints,
                             config.checkpoint_every_steps)

  # Resume order: checkpoint in the workdir -> config.init_from -> scratch.
  state = checkpoints.restore_or_none(mngr, s.abstract_state)
  if state is None:
    state = s.init_fn(jax.random.PRNGKey(config.seed))
    if config.init_from:
      logging.info('No checkpoint in %s: backbone from %s, the rest '
                   'initialised (seed %d).', mngr.directory, config.init_from,
                   config.seed)
      state = checkpoints.load_backbone(state, config.init_from)
    else:
      logging.info('No checkpoint in %s: initialising from scratch (seed %d).',
                   mngr.directory, config.seed)
  start = int(state.step)
  # Statistics need every value in this process: not so for FSDP shards on
  # other hosts.
  parameter_overview.log_parameter_overview(
      state.params, include_stats=all(
          x.is_fully_addressable or x.is_fully_replicated
          for x in jax.tree_util.tree_leaves(state.params)))
  if start >= s.total_steps:
    logging.info('Checkpoint step %d is already the final step %d.', start,
                 s.total_steps)

  batch_sharding = NamedSharding(s.mesh, P('data'))
  step_fn = make_train_step(s)
  data = tasks.data_module(config)
  keys = tasks.train_keys(config)
  train_iter = iter(data.train_dataset(config, s.builder, start_step=start)
                    .as_numpy_iterator()) if start < s.total_steps else iter(())
  report = periodic_actions.ReportProgress(num_train_steps=s.total_steps,
                                           writer=writer,
                                           every_steps=config.log_every_steps)
  collection = None
  train_metrics = None
  pending = None  # (step, loss) of the previous step, checked one step late.
  num_dropped = 0
  preempted = False
  predict_fn = None  # Compiled on the first periodic evaluation.
  profiler = _Profiler(config.get('profile_steps', ()), workdir)
  logging.info('Training steps %d..%d, global batch %d on %d devices.',
               start, s.total_steps, config.batch_size, jax.device_count())
  with _Preemption() as preemption, profiler:
    for step in range(start + 1, s.total_steps + 1):
      profiler.before(step)
      batch = next(train_iter)
      if 'num_dropped' in batch:
        num_dropped += int(batch['num_dropped'].sum())
      state, metrics = step_fn(state, device_batch(batch, batch_sharding, keys))
      if collection is None:
        collection = metrics_collection(sorted(metrics))
        # One compiled call per step instead of a dozen eager ops: at ~0.2 s
        # a step on a CPU, eager metric bookkeeping cost ~10% of training.
        first_metrics = jax.jit(lambda m: collection.single_from_model_output(**m))
        merge_metrics = jax.jit(
            lambda acc, m: acc.merge(collection.single_from_model_output(**m)))
      train_metrics = (first_metrics(metrics) if train_metrics is None
                       else merge_metrics(train_metrics, metrics))
      profiler.after(step, state)
      if pending is not None:
        _check_finite(*pending)
      pending = (step, metrics['loss'])
      report(step)
      if step % config.log_every_steps == 0 or step == s.total_steps:
        _check_finite(*pending)
        values = {f'train/{k}': v for k, v in train_metrics.compute().items()}
        if s.task == 'detection':
          # Ground-truth boxes cut by input.max_boxes since the last write
          # (per interval, so a resumed run logs what the uninterrupted did).
          values['train/boxes_over_max_boxes'] = num_dropped
          num_dropped = 0
        writer.write_scalars(step, values)
        train_metrics = None
      # CLU writes metrics from a thread: flushed before each checkpoint,
      # every step up to it is on disk once it is, so that after a SIGKILL
      # (the rerun logs from the checkpoint on) no step's metrics are lost.
      if preemption.requested:
        _check_finite(*pending)
        writer.flush()
        checkpoints.save(mngr, step, state, _meta(step, config), force=True)
        preempted = True
        break
      if step % config.checkpoint_every_steps == 0 or step == s.total_steps:
        _check_finite(*pending)
        writer.flush()
        checkpoints.save(mngr, step, state, _meta(step, config),
                         force=step == s.total_steps)
      if (config.eval_every_steps and step % config.eval_every_steps == 0
          and step < s.total_steps and config.eval_split):
        if predict_fn is None:
          predict_fn = evaluate.make_predict_fn(s)
        evaluate.evaluate_during_training(config, s, state, workdir, writer,
                                          predict_fn)
  checkpoints.wait(mngr)  # A failed write stops the run here: CheckpointError.
  if step_fn._cache_size() > 1:  # pylint: disable=protected-access
    logging.warning('The train step was compiled %d times; a shape or dtype '
                    'changed between steps.', step_fn._cache_size())  # pylint: disable=protected-access
  if preempted:
    logging.info('Stopped at step %d on request; rerun the same command to '
                 'continue.', int(state.step))
    mngr.close()
    writer.flush()
    return None
  mngr.close()
  metrics = evaluate.evaluate_all(config, s, state, workdir, writer)
  writer.flush()
  return metrics


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """`--mode=evaluate`: scores the latest checkpoint in workdir."""
  s = setup(config, workdir)
  mngr = checkpoints.manager(workdir, config.keep_checkpoints,
                             config.checkpoint_every_steps)
  state = checkpoints.restore_or_none(mngr, s.abstract_state)
  if state is None:
    raise errors.ConfigError(f'--mode=evaluate: no checkpoint in {mngr.directory}; '
                     'train first with --mode=train')
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  metrics = evaluate.evaluate_all(config, s, state, workdir, writer)
  writer.flush()
  mngr.close()
  return metrics


def _check_finite(step, loss):
  value = float(loss)
  if not math.isfinite(value):
    raise errors.TrainingDivergedError(
        f'The training loss is {value} at step {step}. Common causes: a '
        'learning rate too high for this batch size (lower '
        'config.optimizer.learning_rate or raise warmup_steps), or degenerate '
        'boxes in the data. The last checkpoint is from before this step.')


def _meta(step, config):
  return {'step': int(step), 'config': config.to_json_best_effort()}


def _flat_hparams(config, prefix=''):
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat_hparams(value, f'{prefix}{key}.'))
    elif isinstance(value, (int, float, str, bool)):
      out[f'{prefix}{key}'] = value
    else:
      out[f'{prefix}{key}'] = str(value)
  return out
