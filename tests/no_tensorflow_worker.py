"""The model, the train set-up and the jitted step with TensorFlow and TFDS
made unimportable, as on a GPU machine without them (run as a script by
tests/test_train.py, not a test). Prints `OK <task> <loss>` per task."""

import os
import sys

for _name in ('tensorflow', 'tensorflow_datasets'):
  sys.modules[_name] = None  # Any import of them raises ImportError.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from detector import train
from detector.configs import classify
from detector.configs import cnn


def main():
  rng = np.random.default_rng(0)
  for config in (cnn.get_config('tiny'), classify.get_config('tiny')):
    s = train.build_setup(config, [f'c{i}' for i in range(6)], 10)
    b, (h, w), k = config.batch_size, config.image_size, 4
    batch = {'image': rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8),
             'label': rng.integers(0, 6, (b,)).astype(np.int32),
             'boxes': np.tile(np.float32([4, 4, 20, 24]), (b, k, 1)),
             'labels': np.zeros((b, k), np.int32),
             'box_mask': np.ones((b, k), bool)}
    state = s.init_fn(jax.random.PRNGKey(0))
    state, metrics = train.make_train_step(s)(state, train.device_batch(
        batch, NamedSharding(s.mesh, P('data')), s.task.batch_keys))
    assert np.isfinite(float(metrics['loss']))
    print('OK', s.task.name, float(metrics['loss']), flush=True)
  loaded = [m for m, v in sys.modules.items()
            if m.startswith('tensorflow') and v is not None]
  assert not loaded, loaded


if __name__ == '__main__':
  main()
