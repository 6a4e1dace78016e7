"""One optimisation step of backbone sizes (run as a script by
tests/test_backbones.py, not a test).

    python tests/backbone_sizes_worker.py INDEX...

INDEX: positions in SIZES. Each size is built as the detector builds it, at
64 px, with random values of each kind's usual scale; one SGD step must keep
the loss finite and move every parameter (bar one null direction, see
`_null`) and every BatchNorm statistic. Prints `OK <size> ...` per size.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from detector.configs import cnn
from detector.models import detector as detector_lib

# No stochastic depth (test_efficientnet.py tests it): a residual branch
# dropped for the whole batch would rightly get no gradient.
SIZES = ([('resnet', dict(depth=d)) for d in (18, 34, 50, 101, 152)]
         + [('efficientnet', dict(variant=f'b{i}', drop_connect_rate=0.0))
            for i in range(8)]
         + [('efficientnet', dict(variant=f'lite{i}', padding='same',
                                  drop_connect_rate=0.0)) for i in range(5)])
# Plain SGD: a variable moves only if its gradient is non-zero (AdamW's
# weight decay would move it without one).
TX = optax.sgd(1e-3)


def _variables(shapes, rng):
  """Random values, not the initialisers (whose zero BatchNorm scales would
  cut gradients), of each kind's usual scale: He-normal kernels, BatchNorm
  scales near 1 and small biases, so ReLUs stay alive."""
  draw = {'kernel': lambda s: rng.normal(size=s) * np.sqrt(2 / np.prod(s[:-1])),
          'scale': lambda s: rng.uniform(0.5, 1.5, s),
          'bias': lambda s: rng.uniform(-0.2, 0.2, s),
          'mean': lambda s: rng.uniform(-0.5, 0.5, s),
          'var': lambda s: rng.uniform(0.5, 2.0, s)}
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(draw[path[-1].key](s.shape), jnp.float32),
      shapes)


def _null(path):
  """The one exception, a true zero gradient: an MBConv block ends with
  BatchNorm and a residual add, no activation, so the bias of that norm
  shifts each channel by a constant. Where the stage does not end a level
  the loss reads (stages 1, 4 and 6), the shift reaches the loss only through
  the next block's 1x1 conv and training-mode BatchNorm, which subtracts it
  again."""
  return (path.startswith(("['stage1_", "['stage4_", "['stage6_"))
          and path.endswith("['project']['norm']['bias']"))


def one_step(name, kwargs):
  model_config = cnn.get_config('tiny').model
  with model_config.unlocked():
    model_config.backbone = name
    model_config[name] = ml_collections.ConfigDict(kwargs)
  # The library's depthwise conv: a few ops instead of k*k taps, so about
  # half the compile time (test_layers.py checks the two are equal).
  model_config.depthwise_impl = 'conv'
  backbone = detector_lib.build_backbone(model_config, train=True)
  # 64 px: the stride-32 maps are 2 x 2, so BatchNorm sees 8 values.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)),
                  jnp.float32)
  # One trace gives the output shapes and the variables' shapes.
  levels, shapes = jax.eval_shape(
      lambda: backbone.init_with_output(jax.random.PRNGKey(0), x))
  rng = np.random.default_rng(1)
  variables = _variables(shapes, rng)
  proj = {l: jnp.asarray(rng.normal(size=levels[l].shape), jnp.float32)
          for l in (2, 3, 4, 5)}

  @jax.jit
  def step(params, stats, opt_state, key):
    def loss_fn(p):
      out, new = backbone.apply({'params': p, 'batch_stats': stats}, x,
                                mutable=['batch_stats'], rngs={'dropout': key})
      # Linear in the features with fixed random weights: a loss like
      # mean(C ** 2) would be nearly constant, each level ending in a
      # training-mode BatchNorm over the very values it averages.
      return sum(jnp.mean(out[l] * proj[l]) for l in (2, 3, 4, 5)), new
    (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = TX.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new['batch_stats'], loss
  params, stats = variables['params'], variables['batch_stats']
  new_params, new_stats, loss = step(params, stats, TX.init(params),
                                     jax.random.PRNGKey(2))
  assert np.isfinite(float(loss)), (name, kwargs)
  for tree_a, tree_b in ((params, new_params), (stats, new_stats)):
    flat_a = jax.tree_util.tree_leaves_with_path(tree_a)
    flat_b = jax.tree.leaves(tree_b)
    same = [jax.tree_util.keystr(p) for (p, a), b in zip(flat_a, flat_b)
            if np.array_equal(np.asarray(a), np.asarray(b))]
    assert all(_null(p) for p in same), (name, kwargs, same[:5])
  return sum(v.size for v in jax.tree.leaves(params))


if __name__ == '__main__':
  for index in sys.argv[1:]:
    start = time.time()
    name, kwargs = SIZES[int(index)]
    n = one_step(name, kwargs)
    print(f'OK {name} {kwargs} {n} params {time.time() - start:.1f} s',
          flush=True)
