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
import textwrap

import jax
import numpy as np
import pytest

import efficientnet as efficientnet_config
import resnet50 as resnet50_config
import synthetic
from detector import train
from detector.models import detector as detector_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [f'c{i}' for i in range(6)]


@pytest.mark.parametrize('chunk', range(3))
def test_every_backbone_size_trains_one_step(chunk):
  # In three chunks of about equal compile time (pytest-xdist runs them on
  # different workers), each in a subprocess with XLA's backend optimisation
  # off: compiling 18 deep networks' backward passes dominates this test, and
  # what it checks does not depend on how fast the compiled code runs.
  script = f'SIZES = {SIZES!r}\n' + textwrap.dedent('''
      import sys, time
      sys.path.insert(0, 'configs')
      import detector
      import jax, jax.numpy as jnp, numpy as np, optax
      import ml_collections
      import cnn
      from detector.models import detector as detector_lib
      sizes = [SIZES[int(i)] for i in sys.argv[1:]]
      # Plain SGD: a variable moves only if its gradient is non-zero (AdamW's
      # weight decay would move it without one).
      tx = optax.sgd(1e-3)
      for name, kwargs in sizes:
        start = time.time()
        model_config = cnn.get_config('tiny').model
        with model_config.unlocked():
          model_config.backbone = name
          model_config[name] = ml_collections.ConfigDict(kwargs)
        backbone = detector_lib.build_backbone(model_config, train=True)
        # 64 px: the stride-32 maps are 2 x 2, so BatchNorm sees 8 values.
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)),
                        jnp.float32)
        # One trace gives the output shapes and the variables' shapes.
        levels, shapes = jax.eval_shape(
            lambda: backbone.init_with_output(jax.random.PRNGKey(0), x))
        rng = np.random.default_rng(1)
        # Random values, not the initialisers (whose zero BatchNorm scales
        # would cut gradients), of each kind's usual scale: He-normal kernels,
        # BatchNorm scales near 1 and small biases, so ReLUs stay alive.
        draw = {'kernel': lambda s: rng.normal(size=s) * np.sqrt(2 / np.prod(s[:-1])),
                'scale': lambda s: rng.uniform(0.5, 1.5, s),
                'bias': lambda s: rng.uniform(-0.2, 0.2, s),
                'mean': lambda s: rng.uniform(-0.5, 0.5, s),
                'var': lambda s: rng.uniform(0.5, 2.0, s)}
        variables = jax.tree_util.tree_map_with_path(
            lambda path, s: jnp.asarray(draw[path[-1].key](s.shape), jnp.float32),
            shapes)
        stats = variables['batch_stats']
        proj = {l: jnp.asarray(rng.normal(size=levels[l].shape), jnp.float32)
                for l in (2, 3, 4, 5)}

        @jax.jit
        def step(params, stats, opt_state, key):
          def loss_fn(p):
            out, new = backbone.apply({'params': p, 'batch_stats': stats}, x,
                                      mutable=['batch_stats'],
                                      rngs={'dropout': key})
            # Linear in the features with fixed random weights: a loss like
            # mean(C ** 2) would be nearly constant, each level ending in a
            # training-mode BatchNorm over the very values it averages.
            return sum(jnp.mean(out[l] * proj[l]) for l in (2, 3, 4, 5)), new
          (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
          updates, opt_state = tx.update(grads, opt_state, params)
          return optax.apply_updates(params, updates), new['batch_stats'], loss
        params = variables['params']
        new_params, new_stats, loss = step(params, stats, tx.init(params),
                                           jax.random.PRNGKey(2))
        assert np.isfinite(float(loss)), (name, kwargs)
        def null(path):
          # The one exception, a true zero gradient: an MBConv block ends with
          # BatchNorm and a residual add, no activation, so the bias of that
          # norm shifts each channel by a constant. Where the stage does not
          # end a level the loss reads (stages 1, 4 and 6), the shift reaches
          # the loss only through the next block's 1x1 conv and
          # training-mode BatchNorm, which subtracts it again.
          return (path.startswith(("['stage1_", "['stage4_", "['stage6_"))
                  and path.endswith("['project']['norm']['bias']"))
        for tree_a, tree_b in ((params, new_params), (stats, new_stats)):
          flat_a = jax.tree_util.tree_leaves_with_path(tree_a)
          flat_b = jax.tree.leaves(tree_b)
          same = [jax.tree_util.keystr(p) for (p, a), b in zip(flat_a, flat_b)
                  if np.array_equal(np.asarray(a), np.asarray(b))]
          assert all(null(p) for p in same), (name, kwargs, same[:5])
        n = sum(v.size for v in jax.tree.leaves(params))
        print(f'OK {name} {kwargs} {n} params {time.time() - start:.1f} s',
              flush=True)
  ''')
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
                      ' --xla_llvm_disable_expensive_passes=true').strip()
  # The library's depthwise conv: a few ops instead of k*k taps, so about half
  # the compile time (test_layers.py checks the two are equal).
  env['DETECTOR_DEPTHWISE_IMPL'] = 'conv'
  chunks = [[] for _ in range(3)]
  for i in sorted(range(len(SIZES)), key=lambda i: -_cost(SIZES[i])):
    min(chunks, key=lambda c: sum(_cost(SIZES[j]) for j in c)).append(i)
  mine = chunks[chunk]
  proc = subprocess.run([sys.executable, '-c', script, *map(str, mine)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        check=False)
  print(proc.stdout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count('OK ') == len(mine)
  assert sorted(sum(chunks, [])) == list(range(len(SIZES)))


# No stochastic depth (test_efficientnet.py tests it): a residual branch
# dropped for the whole batch would rightly get no gradient.
SIZES = ([('resnet', dict(depth=d)) for d in (18, 34, 50, 101, 152)]
         + [('efficientnet', dict(variant=f'b{i}', drop_connect_rate=0.0))
            for i in range(8)]
         + [('efficientnet', dict(variant=f'lite{i}', padding='same',
                                  drop_connect_rate=0.0)) for i in range(5)])


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
def test_trainer_step_on_config_smoke_variants(module, arg, tiny_data_dir,
                                              monkeypatch):
  # The library's depthwise conv compiles in half the time of the CPU's
  # shifted multiply-adds (test_layers.py shows the two equal).
  monkeypatch.setenv('DETECTOR_DEPTHWISE_IMPL', 'conv')
  config = module.get_config(arg)
  with config.unlocked():
    config.data_dir = tiny_data_dir
  batch = synthetic.detection_batch(config, 0,
                                    corner_max=config.image_size[0] - 24)
  s = train.build_setup(config, CLASSES, 10)
  state = s.init_fn(jax.random.PRNGKey(0))
  sharding = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec('data'))
  step = train.make_train_step(s)
  losses = []
  for _ in range(3):
    state, metrics = step(state, train.device_batch(batch, sharding))
    losses.append(float(metrics['loss']))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
