"""Orbax checkpoints of the train state, and the resume order.

Layout: `workdir/checkpoints/<step>/{state, meta}`; `state` is the whole
`TrainState` (params, batch_stats, opt_state, step, rng), `meta` a JSON dict
with the step and the config it was written with. The position in the data is
the step: the input pipeline is a pure function of (seed, step).

Resume order (`restore_or_none` + the trainer): the latest checkpoint in the
workdir, else a fresh initialisation (`config.init_from` joins this order
with the ported backbones).
"""

import os
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

from detector import errors


class IncompatibleCheckpointError(errors.ConfigError):
  """A checkpoint whose parameters do not fit the configured model."""


def manager(workdir: str, keep: int, every_steps: int) -> ocp.CheckpointManager:
  """An asynchronous CheckpointManager keeping the latest `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=every_steps,
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      enable_async_checkpointing=True,
      create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict,
         force: bool = False) -> bool:
  """Starts an asynchronous save; returns whether one was started."""
  return mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                   force=force)


def _key_name(key):
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_paths(tree):
  """{'params/backbone/stem/conv/kernel': leaf} for a state or its metadata."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(_key_name(k) for k in path): leaf for path, leaf in flat}


def check_compatible(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Raises IncompatibleCheckpointError naming the first mismatching path."""
  stored = mngr.item_metadata(step)['state']
  stored = _leaf_paths(stored)
  wanted = _leaf_paths(abstract_state)
  for path, leaf in wanted.items():
    if path not in stored:
      raise IncompatibleCheckpointError(
          f'checkpoint step {step} in {mngr.directory} has no {path} '
          f'(shape {tuple(leaf.shape)}) that the configured model needs; it '
          'was written by a different config. Use a new --workdir or the '
          'config the checkpoint was written with.')
    shape = tuple(getattr(stored[path], 'shape', ()) or ())
    if shape != tuple(leaf.shape):
      raise IncompatibleCheckpointError(
          f'checkpoint step {step} in {mngr.directory}: {path} has shape '
          f'{shape}, the configured model needs {tuple(leaf.shape)}. Use a new '
          '--workdir or the config the checkpoint was written with.')
  extra = sorted(set(stored) - set(wanted))
  if extra:
    raise IncompatibleCheckpointError(
        f'checkpoint step {step} in {mngr.directory} has {extra[0]} which the '
        'configured model does not have; it was written by a different config.')


def restore_or_none(mngr: ocp.CheckpointManager, abstract_state) -> Optional[Any]:
  """Restores the latest checkpoint into `abstract_state`'s shardings, or None."""
  step = mngr.latest_step()
  if step is None:
    return None
  check_compatible(mngr, step, abstract_state)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  logging.info('Resumed from checkpoint step %d in %s', step, mngr.directory)
  return restored['state']
