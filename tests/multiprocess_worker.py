"""One process of tests/test_multiprocess.py (run as a script, not a test).

    python tests/multiprocess_worker.py NUM_PROCESSES PROCESS_ID COORDINATOR WORKDIR OUT [RESTORE_FROM]

Trains configs/cnn.py:tiny's model for 3 steps on a fixed global batch per
step (each process feeds its rows, as the input pipeline would), writes a
checkpoint collectively and, on process 0, the losses and the final
parameters to OUT (.npz). With RESTORE_FROM it then also restores that
workdir's checkpoint (written by another run) and stores its parameters.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detector import distributed  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv):
  num, pid, address, workdir, out = argv[1:6]
  restore_from = argv[6] if len(argv) > 6 else None
  if int(num) > 1:
    distributed.initialize(address, int(num), int(pid))
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  import synthetic  # tests/, this script's directory.
  from detector.configs import cnn
  from detector import checkpoints
  from detector import train
  config = cnn.get_config('tiny')
  s = train.build_setup(config, [f'c{i}' for i in range(6)], 10)
  step_fn = train.make_train_step(s)
  sharding = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec('data'))
  state = s.init_fn(jax.random.PRNGKey(0))
  b = config.batch_size
  rows = slice(jax.process_index() * b // jax.process_count(),
               (jax.process_index() + 1) * b // jax.process_count())
  losses = []
  for step in range(3):
    batch = synthetic.detection_batch(config, step)
    local = {key: value[rows] for key, value in batch.items()}
    state, metrics = step_fn(state, train.device_batch(local, sharding,
                                                       s.task.batch_keys))
    losses.append(float(np.asarray(metrics['loss'].addressable_data(0))))
  mngr = checkpoints.manager(workdir, 3, 1)
  checkpoints.save(mngr, 3, state, {'step': 3}, force=True)
  mngr.wait_until_finished()
  mngr.close()
  local_value = lambda x: np.asarray(x.addressable_data(0))
  result = {'losses': np.asarray(losses),
            'device_count': np.asarray(jax.device_count())}
  for i, leaf in enumerate(jax.tree.leaves(state.params)):
    result[f'param_{i}'] = local_value(leaf)
  if restore_from:
    other = checkpoints.manager(restore_from, 3, 1)
    restored = checkpoints.restore_or_none(other, s.abstract_state)
    other.close()
    result['restored_step'] = local_value(restored.step)
    for i, leaf in enumerate(jax.tree.leaves(restored.params)):
      result[f'restored_{i}'] = local_value(leaf)
  if jax.process_index() == 0:
    np.savez(out, **result)
  print('DONE', jax.process_index(), losses, flush=True)


if __name__ == '__main__':
  main(sys.argv)
