"""Checkpoints that cannot be read: the previous good one is used, loudly."""

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detector import checkpoints
from detector import errors


def _write(workdir, steps):
  mngr = checkpoints.manager(workdir, keep=5, every_steps=1)
  for step in steps:
    checkpoints.save(mngr, step, {'w': jnp.full((4, 3), float(step)),
                                  'step': jnp.asarray(step)}, {'step': step})
  mngr.wait_until_finished()
  mngr.close()


def _abstract():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {'w': jax.ShapeDtypeStruct((4, 3), jnp.float32, sharding=sharding),
          'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)}


def _garble(directory):
  """Overwrites every file under `directory` with bytes that mean nothing."""
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\x00garbage' * 3)


def _delete_data(directory):
  """Removes the array data files, keeping the metadata: a crash mid-write."""
  for root, _, files in os.walk(directory):
    for name in files:
      if 'metadata' not in name.lower():
        os.remove(os.path.join(root, name))


@pytest.mark.parametrize('damage', [_garble, _delete_data])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous(
    damage, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  _write(workdir, [1, 2, 3])
  ckpt = os.path.join(workdir, 'checkpoints')
  damage(os.path.join(ckpt, '3'))
  warnings = []
  monkeypatch.setattr(logging, 'warning', lambda msg, *a: warnings.append(msg % a))
  mngr = checkpoints.manager(workdir, keep=5, every_steps=1)
  state = checkpoints.restore_or_none(mngr, _abstract())
  assert int(state['step']) == 2
  np.testing.assert_array_equal(state['w'], np.full((4, 3), 2.0))
  text = '\n'.join(warnings)
  assert 'step 3' in text and 'cannot be read' in text
  assert 'step 2' in text and 'instead of the unreadable step(s) [3]' in text
  # Set aside for inspection; step 3 can be written again.
  assert sorted(os.listdir(ckpt)) == ['1', '2', '3.unreadable']
  checkpoints.save(mngr, 3, {'w': jnp.full((4, 3), 3.5), 'step': jnp.asarray(3)},
                   {'step': 3})
  mngr.wait_until_finished()
  assert int(checkpoints.restore_or_none(mngr, _abstract())['step']) == 3
  mngr.close()


def test_no_readable_checkpoint_stops_instead_of_starting_over(tmp_path):
  workdir = str(tmp_path)
  _write(workdir, [1, 2])
  for step in ('1', '2'):
    _garble(os.path.join(workdir, 'checkpoints', step))
  mngr = checkpoints.manager(workdir, keep=5, every_steps=1)
  with pytest.raises(errors.ConfigError, match=r'no checkpoint .* can be read '
                     r'\(steps \[2, 1\]'):
    checkpoints.restore_or_none(mngr, _abstract())
  mngr.close()
  # Rerunning after the error does not silently start from scratch either.
  mngr = checkpoints.manager(workdir, keep=5, every_steps=1)
  with pytest.raises(errors.ConfigError, match=r"set aside: \['1.unreadable', "
                     r"'2.unreadable'\]"):
    checkpoints.restore_or_none(mngr, _abstract())
  mngr.close()
