"""The jitted train step: loss, gradients (optionally over micro-batches),
the optimizer update and the weights' moving average.

Imports no TensorFlow: the step runs wherever JAX does.
"""

import functools
from typing import Dict, Tuple

from clu import metrics as clu_metrics
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import optax

from detector.train import optim
from detector.train import state as state_lib


def train_step(state: state_lib.TrainState, batch: Dict[str, jax.Array], *,
               model, tx, loss_fn, schedule, ema_decay=0.0, labels=None,
               accum_steps=1, micro_sharding=None
               ) -> Tuple[state_lib.TrainState, Dict]:
  """One optimisation step on a global batch; returns the state and metrics.

  `loss_fn(outputs, batch) -> (loss, parts)` is the task's loss of the
  model's outputs. `labels` (see `optim.param_labels`) marks frozen
  parameters: they enter the forward pass through stop_gradient, so XLA does
  not compute their gradients at all (the backward pass stops at the first
  trained layer). With `accum_steps` > 1 the batch runs as that many
  micro-batches (see `_accumulated_gradients`).
  """
  rng, dropout_rng = jax.random.split(state.rng)

  def objective(params, micro, rng):
    if labels is not None:
      params = jax.tree_util.tree_map(
          lambda p, l: jax.lax.stop_gradient(p) if l == optim.FROZEN else p,
          params, labels)
    outputs, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, micro['image'],
        mutable=['batch_stats'], rngs={'dropout': rng})
    loss, parts = loss_fn(outputs, micro)
    return loss, (parts, updates['batch_stats'])

  grad_fn = jax.value_and_grad(objective, has_aux=True)
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
    ema = state_lib.update_ema(ema, params, batch_stats, state.step, ema_decay)
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
  add = lambda a, b, w=1.0: jax.tree_util.tree_map(lambda x, y: x + w * y, a, b)

  def body(carry, xs):
    micro, j = xs
    (loss, (parts, stats)), grads = grad_fn(
        state.params, micro, jax.random.fold_in(rng, j))
    parts = dict(parts)
    count = parts.pop('normalizer', None)
    weight = 1.0 if count is None else jnp.maximum(count, 1.0)
    acc_grads, acc_loss, acc_parts, acc_stats, acc_count = carry
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


def make_train_step(s):
  """The jitted train step of a `Setup`: batch sharded over 'data', state as
  `s.state_sharding` (replicated, or sharded for FSDP) and donated."""
  return jax.jit(
      functools.partial(train_step, model=s.train_model, tx=s.tx,
                        loss_fn=s.task.loss_fn(s.train_model, s.model_config),
                        schedule=s.schedule, ema_decay=s.ema_decay,
                        labels=s.labels, accum_steps=s.grad_accum_steps,
                        micro_sharding=NamedSharding(s.mesh, P(None, 'data'))),
      in_shardings=(s.state_sharding, NamedSharding(s.mesh, P('data'))),
      out_shardings=(s.state_sharding, NamedSharding(s.mesh, P())),
      donate_argnums=0)


def device_batch(batch: Dict[str, np.ndarray], sharding, keys):
  """This process's numpy batch -> global jax.Arrays sharded over the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, batch[k])
          for k in keys}


def metrics_collection(names):
  """A CLU Collection averaging each named scalar over the steps it sees."""
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in names})
