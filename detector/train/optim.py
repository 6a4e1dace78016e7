"""The optimizer: learning-rate schedule, weight decay, frozen and backbone
parameters (`config.optimizer`)."""

import collections
from typing import Dict

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from detector import errors

SCHEDULES = ('cosine', 'step')


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int):
  """The learning rate of each update, a function of optax's update count.

  Both schedules warm up linearly from peak * `warmup_init_factor` to the
  peak (`learning_rate`) over `warmup_steps` updates. Then
    'cosine': cosine decay to peak * `end_learning_rate_factor` at
      `total_steps`;
    'step': the peak times `decay_factor` ** (number of `decay_steps` <= c)
      at update count c (0 for the first update), i.e. decayed once each
      listed step has run: Detectron2's WarmupMultiStepLR, whose iteration
      60000 (0-based) is the first at 0.1x for STEPS (60000, 80000).
      Warm-up and decay multiply, as there.

  Raises:
    errors.ConfigError: an unknown schedule, or decay steps that are not
      increasing step numbers in [1, total_steps).
  """
  opt = config.optimizer
  warmup = min(opt.warmup_steps, max(total_steps - 1, 0))
  peak = opt.learning_rate
  init_factor = opt.get('warmup_init_factor', 0.0)
  if not 0.0 <= init_factor <= 1.0:
    raise errors.ConfigError(
        f'config.optimizer.warmup_init_factor={init_factor}: must be in '
        '[0, 1] (the warm-up starts at learning_rate times this)')
  schedule = opt.get('schedule', 'cosine')
  if schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=peak * init_factor, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=peak * opt.end_learning_rate_factor)
  if schedule != 'step':
    raise errors.ConfigError(f'config.optimizer.schedule={schedule!r}: '
                             f'expected one of {SCHEDULES}')
  boundaries = check_decay_steps(opt.get('decay_steps', ()), total_steps)
  factor = opt.get('decay_factor', 0.1)
  if not factor > 0:
    raise errors.ConfigError(f'config.optimizer.decay_factor={factor}: must '
                             'be > 0')

  def step_schedule(count):
    count = jnp.asarray(count)
    decays = sum(((count >= b).astype(jnp.int32) for b in boundaries),
                 jnp.zeros(count.shape, jnp.int32))
    lr = peak * jnp.power(jnp.float32(factor), decays.astype(jnp.float32))
    if warmup > 0:
      done = jnp.minimum(count.astype(jnp.float32) / warmup, 1.0)
      lr = lr * (init_factor + (1.0 - init_factor) * done)
    return lr
  return step_schedule


def check_decay_steps(decay_steps, total_steps: int):
  """`config.optimizer.decay_steps` as a tuple of ints, checked: strictly
  increasing, each in [1, total_steps) (a decay at or after the last step
  would never apply, which is always a mistake: a recipe's steps left over
  after shortening the run)."""
  steps = tuple(decay_steps)
  where = f'config.optimizer.decay_steps={steps}'
  if any(int(s) != s for s in steps):
    raise errors.ConfigError(f'{where}: expected whole step numbers')
  steps = tuple(int(s) for s in steps)
  if any(b <= a for a, b in zip(steps, steps[1:])):
    raise errors.ConfigError(f'{where}: must be strictly increasing')
  if steps and (steps[0] < 1 or steps[-1] >= total_steps):
    raise errors.ConfigError(
        f'{where}: each must be in [1, {total_steps}), below the run\'s '
        f'{total_steps} steps (config.num_train_steps or num_epochs); scale '
        'them with the run')
  return steps


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


def label_counts(labels, params) -> Dict[str, int]:
  """{label: number of parameters} of a `param_labels` tree."""
  counts = collections.Counter()
  for l, p in zip(jax.tree_util.tree_leaves(labels),
                  jax.tree_util.tree_leaves(params)):
    counts[l] += int(np.prod(p.shape))
  return counts


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
