"""BiFPN neck: shapes, weighted fusion, parameter count, scaling table and a
train step of a whole BiFPN detector.

The parameter count is checked against two independent numbers: a count from
first principles (written out below) and the count of effdet's BiFPN for the
same configuration, measured once with the effdet package (which is not a
dependency). The BiFPN's outputs were also compared with effdet's once, with
the same random weights copied in (see the module docstring of
`detector.models.necks.bifpn` and the note at `EFFDET_D0_BIFPN_PARAMS`).
"""

import functools

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from detector import errors
from detector.configs import cnn
from detector.models import detector as detector_lib
from detector.models.backbones import cnn as cnn_backbone
from detector.models.necks import bifpn

# effdet 0.4.1, `efficientdet_d0` (redundant_bias=False, fast attention):
#   BiFpn(get_efficientdet_config('efficientdet_d0'),
#         [dict(num_chs=c, reduction=r) for c, r in ((40, 8), (112, 16), (320, 32))])
# has 194361 parameters (`sum(p.numel() for p in fpn.parameters())`; BatchNorm
# running statistics are buffers, not parameters). Measured 2026 with effdet
# installed into a scratch directory. With every weight of that module copied
# into `BiFPN(pool_padding='symmetric', norm=BatchNorm(epsilon=1e-3))` the five
# outputs agreed to 5e-6 (and with 'SAME' to `tf_efficientdet_d0`, whose
# redundant biases were set to zero).
EFFDET_D0_BIFPN_PARAMS = 194361
B0_CHANNELS = {3: 40, 4: 112, 5: 320}   # EfficientNet-B0 C3..C5.


def _features(channels, size, batch=1, seed=0):
  """{level: [batch, ceil(size / 2**level)^2, channels[level]]} random."""
  rng = np.random.default_rng(seed)
  feats = {}
  for level, c in channels.items():
    s = -(-size // 2**level)
    feats[level] = jnp.asarray(rng.normal(size=(batch, s, s, c)), jnp.float32)
  return feats


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _cheap_init(model, *args, seed=0):
  """Variables of `model.init(key, *args)`'s structure, filled with numpy.

  Compiling flax's initialisers for a whole detector takes longer than the
  training step itself on a 2-core CPU, and these tests do not check them
  (`test_zero_fusion_weight_cuts_that_input` runs a real `init`): kernels are
  N(0, 1/fan_in), norm scales, variances and fusion weights 1, the rest 0.
  """
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == 'kernel':
      std = 1 / np.sqrt(np.prod(s.shape[:-1]))
      return jnp.asarray(rng.normal(size=s.shape) * std, s.dtype)
    if name in ('scale', 'var', 'weights'):
      return jnp.ones(s.shape, s.dtype)
    return jnp.zeros(s.shape, s.dtype)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _bn(**kwargs):
  return functools.partial(nn.BatchNorm, use_running_average=True, **kwargs)


# (1) Output levels, shapes and width.

@pytest.mark.parametrize('min_level,max_level,size', [
    (3, 7, 128),   # EfficientDet's levels: P6, P7 made by pooling.
    (2, 5, 64),    # The cnn config's levels: no extra levels.
    (3, 7, 72),    # Odd sizes on the way: 9 -> 5 -> 3 -> 2 -> 1.
])
def test_output_levels_shapes_and_width(min_level, max_level, size):
  feats = _features({2: 8, 3: 16, 4: 24, 5: 32}, size, batch=2)
  model = bifpn.BiFPN(min_level=min_level, max_level=max_level, width=16,
                      repeats=2, norm=_bn())
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), feats)
  out = jax.eval_shape(model.apply, variables, feats)
  assert sorted(out) == list(range(min_level, max_level + 1))
  side = size / 2**2
  for level in range(2, max_level + 1):
    if level >= min_level:
      assert out[level].shape == (2, int(np.ceil(side)), int(np.ceil(side)), 16)
      assert out[level].dtype == jnp.float32
    side = np.ceil(side) / 2


def test_from_the_cnn_backbone_and_level_2_is_ignored():
  backbone = cnn_backbone.CNN(stem_width=8, widths=(8, 16, 16, 24),
                              depths=(1, 1, 1, 1), norm=_bn())
  images = jnp.asarray(np.random.default_rng(1).normal(size=(1, 128, 128, 3)),
                       jnp.float32)
  feats = jax.jit(backbone.apply)(_cheap_init(backbone, images), images)
  assert sorted(feats) == [2, 3, 4, 5]
  model = bifpn.BiFPN(width=16, repeats=1, norm=_bn())
  variables = _cheap_init(model, feats)
  apply = jax.jit(model.apply)
  out = apply(variables, feats)
  assert {l: o.shape for l, o in out.items()} == {
      3: (1, 16, 16, 16), 4: (1, 8, 8, 16), 5: (1, 4, 4, 16),
      6: (1, 2, 2, 16), 7: (1, 1, 1, 16)}
  assert all(np.isfinite(np.asarray(o)).all() for o in out.values())
  changed = {**feats, 2: feats[2] + 100.0}
  for level, o in apply(variables, changed).items():
    np.testing.assert_array_equal(o, out[level])
  # The level-4 input has width 16 already: no 1x1 resampling conv for it.
  names = {'/'.join(k) for k in traverse_util.flatten_dict(variables['params'])}
  assert not any('top_down4/resample' in n for n in names)
  assert any('top_down5/resample0' in n for n in names)  # 24 channels.


def test_mismatched_sizes_and_missing_levels_raise_config_errors():
  model = bifpn.BiFPN(min_level=3, max_level=5, width=8, repeats=1)
  # Floor rather than ceil halving (as a VALID-padded backbone would give).
  floor = {3: jnp.zeros((1, 9, 9, 8)), 4: jnp.zeros((1, 4, 4, 8)),
           5: jnp.zeros((1, 2, 2, 8))}
  with pytest.raises(errors.ConfigError, match=r'level 4 is \(4, 4\), expected '
                     r'\(5, 5\)'):
    model.init(jax.random.PRNGKey(0), floor)
  with pytest.raises(errors.ConfigError, match=r'missing \[4\]'):
    model.init(jax.random.PRNGKey(0), {3: jnp.zeros((1, 8, 8, 8)),
                                       5: jnp.zeros((1, 2, 2, 8))})
  with pytest.raises(errors.ConfigError, match=r'missing \[6\]'):
    bifpn.BiFPN(min_level=6, max_level=7).init(
        jax.random.PRNGKey(0), _features({3: 8, 4: 8, 5: 8}, 64))
  with pytest.raises(errors.ConfigError, match='fusion'):
    bifpn.BiFPN(fusion='mean').init(jax.random.PRNGKey(0),
                                    _features({3: 8, 4: 8, 5: 8}, 64))


def test_pool_padding_same_and_symmetric():
  """'same' pads the bottom/right only (TensorFlow), 'symmetric' one pixel
  all round (PyTorch); on a 4x4 ramp the window maxima show which."""
  x = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1)
  same = bifpn.max_pool_down(x, 'same')[0, ..., 0]
  np.testing.assert_array_equal(same, [[10, 11], [14, 15]])  # Rows 0-2, 2-3.
  sym = bifpn.max_pool_down(x, 'symmetric')[0, ..., 0]
  np.testing.assert_array_equal(sym, [[5, 7], [13, 15]])     # Rows 0-1, 1-3.
  # Negative inputs: the padding (-inf) must not win the max, as zeros would.
  neg = lambda padding: bifpn.max_pool_down(-x - 1, padding)[0, ..., 0]
  np.testing.assert_array_equal(neg('same'), [[-1, -3], [-9, -11]])
  np.testing.assert_array_equal(neg('symmetric'), [[-1, -2], [-5, -6]])
  odd = jnp.zeros((1, 5, 3, 2))
  for padding in ('same', 'SAME', 'symmetric'):
    assert bifpn.max_pool_down(odd, padding).shape == (1, 3, 2, 2)
  with pytest.raises(errors.ConfigError, match='pool_padding'):
    bifpn.BiFPN(pool_padding='valid').init(jax.random.PRNGKey(0),
                                           _features({3: 8, 4: 8, 5: 8}, 64))


# (2) Weighted fusion.

def test_equal_weights_on_identical_inputs_give_that_input():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 4, 8)),
                  jnp.float32)
  for method in ('fast', 'softmax'):
    fuse = bifpn.WeightedFusion(method)
    for value in (1.0, 0.3, 5.0):
      params = {'params': {'weights': jnp.full((3,), value)}}
      np.testing.assert_allclose(fuse.apply(params, [x, x, x]), x, rtol=2e-4)
  # Fast fusion is slightly below the input, by the paper's epsilon.
  y = bifpn.WeightedFusion('fast').apply(
      {'params': {'weights': jnp.ones(2)}}, [x, x])
  np.testing.assert_allclose(y, x * 2 / (2 + 1e-4), rtol=1e-6)
  # The initial weights are ones, float32.
  init = bifpn.WeightedFusion('fast').init(jax.random.PRNGKey(0), [x, x])
  assert init['params']['weights'].dtype == jnp.float32
  np.testing.assert_array_equal(init['params']['weights'], [1.0, 1.0])


def test_fast_fusion_weights_are_non_negative_and_normalised():
  raw = jnp.asarray([-2.0, 0.5, 1.5], jnp.float32)
  w = np.asarray(bifpn.fusion_weights(raw, 'fast'))
  np.testing.assert_allclose(w, [0.0, 0.5 / 2.0001, 1.5 / 2.0001], rtol=1e-6)
  assert (w >= 0).all() and w.sum() < 1.0
  s = np.asarray(bifpn.fusion_weights(raw, 'softmax'))
  assert (s > 0).all() and s.sum() == pytest.approx(1.0, abs=1e-6)
  # 'sum' has no weights at all.
  x = jnp.ones((1, 2, 2, 4))
  assert not bifpn.WeightedFusion('sum').init(jax.random.PRNGKey(0), [x, x])


def _set_fuse_weights(variables, node, values):
  flat = traverse_util.flatten_dict(variables)
  key = ('params', 'layer0', node, 'fuse', 'weights')
  assert key in flat, sorted(flat)
  flat[key] = jnp.asarray(values, jnp.float32)
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize('edge,source_level', [(0, 3), (1, 5)])
def test_zero_fusion_weight_cuts_that_input(edge, source_level):
  """Level 3's output of a one-layer BiFPN is top_down3(P3, up(td4)). A zero
  (or negative, after relu) weight on one edge makes the output independent of
  the backbone level feeding only that edge; a positive one does not."""
  feats = _features({3: 8, 4: 12, 5: 16}, 64, seed=3)
  model = bifpn.BiFPN(min_level=3, max_level=5, width=8, repeats=1)
  variables = model.init(jax.random.PRNGKey(0), feats)

  @jax.jit
  def grad(v, x):
    f = lambda x: jnp.sum(model.apply(v, {**feats, source_level: x})[3])
    return jax.grad(f)(x)

  def grad_wrt_source(weights):
    v = _set_fuse_weights(variables, 'top_down3', weights)
    return np.asarray(grad(v, feats[source_level]))

  for cut in (0.0, -1.0):
    weights = [1.0, 1.0]
    weights[edge] = cut
    np.testing.assert_array_equal(grad_wrt_source(weights), 0.0)
  assert np.abs(grad_wrt_source([1.0, 1.0])).max() > 1e-3


# (3) Parameter count of EfficientDet-D0's BiFPN on EfficientNet-B0 features.

def _d0_first_principles(width=64, repeats=3, levels=(3, 4, 5, 6, 7),
                         in_channels=B0_CHANNELS, norm=True):
  """Counts by hand; `norm`: BatchNorm (scale, bias) or a conv bias."""
  lo, hi = levels[0], levels[-1]
  top = max(in_channels)
  after = 2 * width if norm else width   # BN scale + bias, or a bias.
  conv1x1 = lambda c: c * width + after
  total = conv1x1(in_channels[top])       # P6 from C5 (P7: pooling only).
  # First layer: one 1x1 conv per edge from a backbone level: the top-down
  # node reads C_l for l < hi, the bottom-up node for lo < l < hi.
  for level, c in in_channels.items():
    total += conv1x1(c) * ((level < hi) + (lo < level < hi))
  nodes = 2 * (len(levels) - 1)           # 4 top-down, 4 bottom-up.
  separable = 9 * width + width * width + after
  fusion = 2 * (len(levels) - 1) + 3 * (len(levels) - 2) + 2
  return total + repeats * (nodes * separable + fusion)


@pytest.mark.parametrize('use_norm', [True, False])
def test_d0_parameter_count(use_norm):
  feats = {l: jax.ShapeDtypeStruct((1, 512 // 2**l, 512 // 2**l, c), jnp.float32)
           for l, c in B0_CHANNELS.items()}
  model = bifpn.BiFPN(width=64, repeats=3, norm=_bn() if use_norm else None)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), feats)
  count = _count(shapes['params'])
  assert count == _d0_first_principles(norm=use_norm)
  if use_norm:
    assert count == EFFDET_D0_BIFPN_PARAMS == 194361
    # 6 input 1x1 convs (P6; C3 once, C4 and C5 twice) + 8 nodes x 3 layers,
    # each followed by a BatchNorm.
    assert _count(shapes['batch_stats']) == (6 + 24) * 2 * 64
  else:
    assert 'batch_stats' not in shapes
    assert count == 194361 - 30 * 2 * 64 + 30 * 64


# (4) EfficientDet compound scaling.

def test_efficientdet_scaling_table():
  d0 = bifpn.efficientdet_scaling(0)
  assert (d0.width, d0.repeats, d0.image_size, d0.head_depth) == (64, 3, 512, 3)
  d7 = bifpn.efficientdet_scaling(7)
  assert (d7.width, d7.repeats, d7.image_size, d7.head_depth) == (384, 8, 1536, 5)
  rows = [bifpn.efficientdet_scaling(phi) for phi in range(8)]
  assert [r.width for r in rows] == [64, 88, 112, 160, 224, 288, 384, 384]
  assert [r.repeats for r in rows] == [3, 4, 5, 6, 7, 7, 8, 8]
  assert [r.image_size for r in rows] == [512, 640, 768, 896, 1024, 1280, 1280,
                                          1536]
  assert [r.head_depth for r in rows] == [3 + phi // 3 for phi in range(8)]
  for phi, r in enumerate(rows):
    assert r.image_size % 2**7 == 0          # Divisible by 2**max_level.
    if phi < 7:  # D7 keeps D6's width.
      assert abs(r.width - 64 * 1.35**phi) / (64 * 1.35**phi) < 0.06
  with pytest.raises(errors.ConfigError):
    bifpn.efficientdet_scaling(8)


# (5) A train step of the whole detector with neck='bifpn'.

def test_detector_train_step_with_bifpn():
  model_config = cnn.get_config('tiny').model.copy_and_resolve_references()
  with model_config.unlocked():
    model_config.num_classes = 3
    model_config.neck = 'bifpn'
    model_config.bifpn = ml_collections.ConfigDict(dict(
        min_level=3, max_level=7, width=24, repeats=2, use_norm=True,
        fusion='fast'))
    model_config.head = 'retinanet'
    model_config.retinanet.min_level = 3
    model_config.retinanet.max_level = 7
    model_config.retinanet.num_convs = 1
  model = detector_lib.build(model_config, train=True)
  rng = np.random.default_rng(4)
  # Anchors need sizes divisible by 2**max_level = 128.
  images = jnp.asarray(rng.integers(0, 255, (2, 128, 128, 3)), jnp.uint8)
  boxes = np.zeros((2, 4, 4), np.float32)
  boxes[0, :2] = [[10, 12, 60, 70], [70, 20, 120, 50]]
  boxes[1, :1] = [[30, 30, 90, 110]]
  batch = {'image': images, 'boxes': jnp.asarray(boxes),
           'labels': jnp.asarray([[0, 2, 0, 0], [1, 0, 0, 0]], jnp.int32),
           'box_mask': jnp.asarray([[True, True, False, False],
                                    [True, False, False, False]])}
  variables = _cheap_init(model, images)
  assert 'layer1' in variables['params']['neck']

  # Everything enters as an argument: closed-over arrays would be constants,
  # which XLA folds at compile time (slowly, for the anchor matching).
  def loss_fn(params, batch_stats, images, batch):
    outputs, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, images,
        mutable=['batch_stats'])
    return model.head.loss(outputs, batch)[0], updates

  (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables['params'], variables['batch_stats'], images, batch)
  assert np.isfinite(float(loss))
  assert 'neck' in updates['batch_stats']
  flat = traverse_util.flatten_dict(grads['neck'])
  fuse = {k: v for k, v in flat.items() if k[-2:] == ('fuse', 'weights')}
  assert len(fuse) == 2 * 8    # Two layers of 8 nodes.
  for key, g in fuse.items():
    assert np.isfinite(np.asarray(g)).all(), key
  assert sum(float(jnp.abs(g).sum()) for g in fuse.values()) > 0
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
