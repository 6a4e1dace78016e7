"""Every backbone size trains, and every config variant builds.

Numerical equality with the original networks is tested in test_port*.py and
test_efficientnet.py; here: (1) one optimisation step of each ResNet (18-152)
and EfficientNet (B0-B7, Lite0-4) backbone as the detector builds it, at a
small resolution, keeps the loss finite and, with plain SGD, moves every
parameter (so every one gets a gradient, bar one null direction explained in
the test) and every BatchNorm statistic; (2) every
`configs/efficientnet.py` size and `configs/resnet50.py` depth gives a
detector whose shapes trace; (3) the real trainer's step runs on the
ResNet50 and EfficientNet configs' smoke variants.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import backbone_sizes_worker
from detector import train
from detector.configs import efficientnet as efficientnet_config
from detector.configs import resnet50 as resnet50_config
from detector.models import detector as detector_lib
import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'backbone_sizes_worker.py')
CLASSES = [f'c{i}' for i in range(6)]


@pytest.mark.parametrize('chunk', range(3))
def test_every_backbone_size_trains_one_step(chunk):
  """Each size of tests/backbone_sizes_worker.py trains one step."""
  # In three chunks of about equal compile time (pytest-xdist runs them on
  # different workers), each in a subprocess with XLA's backend optimisation
  # off: compiling 18 deep networks' backward passes dominates this test, and
  # what it checks does not depend on how fast the compiled code runs.
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
                      ' --xla_llvm_disable_expensive_passes=true').strip()
  chunks = [[] for _ in range(3)]
  for i in sorted(range(len(SIZES)), key=lambda i: -_cost(SIZES[i])):
    min(chunks, key=lambda c: sum(_cost(SIZES[j]) for j in c)).append(i)
  mine = chunks[chunk]
  proc = subprocess.run([sys.executable, WORKER, *map(str, mine)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        check=False)
  print(proc.stdout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count('OK ') == len(mine)
  assert sorted(sum(chunks, [])) == list(range(len(SIZES)))


SIZES = backbone_sizes_worker.SIZES


def _cost(size):
  """Compile and run time of a size, seconds on 2 cores (measured once)."""
  name, kwargs = size
  if name == 'resnet':
    return {18: 6, 34: 12, 50: 21, 101: 20, 152: 46}[kwargs['depth']]
  return {'b0': 19, 'b1': 30, 'b2': 30, 'b3': 28, 'b4': 39, 'b5': 48,
          'b6': 52, 'b7': 69, 'lite0': 15, 'lite1': 13, 'lite2': 15,
          'lite3': 23, 'lite4': 28}[kwargs['variant']]


@pytest.mark.parametrize('arg', [f'b{i}' for i in range(8)]
                         + [f'lite{i}' for i in range(5)])
def test_every_efficientnet_config_builds(arg):
  config = efficientnet_config.get_config(arg)
  with config.unlocked():
    config.model.num_classes = 6
  model = detector_lib.build(config.model.copy_and_resolve_references(), train=True)
  h, w = config.image_size
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             np.zeros((1, h, w, 3), np.uint8))
  assert config.model.efficientnet.variant == arg
  bifpn = variables['params']['neck']
  assert sum(k.startswith('layer') for k in bifpn) == config.model.bifpn.repeats


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_every_resnet_depth_builds_from_the_config(depth):
  config = resnet50_config.get_config()
  with config.unlocked():
    config.model.resnet.depth = depth
    config.model.num_classes = 6
  model = detector_lib.build(config.model.copy_and_resolve_references(), train=True)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             np.zeros((1, 256, 256, 3), np.uint8))
  blocks = [k for k in variables['params']['backbone'] if k.startswith('stage')]
  assert len(blocks) == {18: 8, 34: 16, 50: 16, 101: 33, 152: 50}[depth]


@pytest.mark.parametrize('module,arg', [(resnet50_config, 'tiny'),
                                        (efficientnet_config, 'lite0:tiny')])
def test_trainer_step_on_config_smoke_variants(module, arg, tiny_data_dir):
  config = module.get_config(arg)
  config.data_dir = tiny_data_dir
  # The library's depthwise conv compiles in half the time of the CPU's
  # shifted multiply-adds (test_layers.py shows the two equal).
  config.model.depthwise_impl = 'conv'
  batch = synthetic.detection_batch(config, 0,
                                    corner_max=config.image_size[0] - 24)
  s = train.build_setup(config, CLASSES, 10)
  state = s.init_fn(jax.random.PRNGKey(0))
  sharding = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec('data'))
  step = train.make_train_step(s)
  losses = []
  for _ in range(3):
    state, metrics = step(state, train.device_batch(batch, sharding,
                                                    s.task.batch_keys))
    losses.append(float(metrics['loss']))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
