"""ResNet backbones: parameter counts equal torchvision's, levels and strides,
and PyTorch-style symmetric padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detector.models import layers
from detector.models.backbones import resnet

# sum(p.numel() for p in torchvision.models.resnetN().parameters()), torchvision 0.2x.
NORM = layers.make_norm('batch_norm', train=False)
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032,
                      101: 44_549_160, 152: 60_192_808}


@pytest.mark.parametrize('depth', sorted(TORCHVISION_PARAMS))
def test_parameter_count_equals_torchvision(depth):
  model = resnet.ResNet(depth=depth, num_classes=1000, norm=NORM)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 64, 64, 3)))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes['params']))
  assert count == TORCHVISION_PARAMS[depth]


def test_levels_strides_and_logits():
  model = resnet.ResNet(depth=18, num_classes=10, norm=NORM)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 96, 64, 3)),
                  jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x)
  for level, channels in zip((2, 3, 4, 5), (64, 128, 256, 512)):
    assert out[level].shape == (2, 96 // 2 ** level, 64 // 2 ** level, channels)
  assert out['logits'].shape == (2, 10)
  features_only = resnet.ResNet(depth=18, norm=NORM)
  assert 'logits' not in features_only.apply(
      features_only.init(jax.random.PRNGKey(0), x), x)


def test_strided_conv_pads_symmetrically_like_pytorch():
  """A 3x3 stride-2 conv on an even input reads one pixel of padding on every
  side (PyTorch padding=1); XLA's 'SAME' would read none at the top/left."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 8, 1)), jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(2).normal(size=(3, 3, 1, 1)),
                       jnp.float32)
  conv = layers.ConvNormAct(1, strides=2, padding=((1, 1), (1, 1)), act=None)
  y = conv.apply({'params': {'conv': {'kernel': kernel,
                                      'bias': jnp.zeros(1)}}}, x)
  # Brute force: output (i, j) reads input rows 2i-1..2i+1, zero outside.
  padded = np.pad(np.asarray(x)[0, :, :, 0], 1)
  expected = np.array([[np.sum(padded[2 * i:2 * i + 3, 2 * j:2 * j + 3] *
                               np.asarray(kernel)[:, :, 0, 0])
                        for j in range(4)] for i in range(4)])
  np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], expected, rtol=1e-5,
                             atol=1e-5)


def test_unknown_depth_names_the_key():
  with pytest.raises(ValueError, match='resnet.depth=42'):
    resnet.ResNet(depth=42, norm=NORM).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
