"""Depthwise conv as shifted multiply-adds equals the library's grouped conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detector.models import layers


@pytest.mark.parametrize('size,k,strides,padding', [
    (16, 3, 1, 'SAME'), (17, 3, 2, 'SAME'), (16, 5, 2, 'SAME'),
    (15, 5, 2, ((2, 2), (2, 2))), (16, 3, 2, ((1, 1), (1, 1))),
    (9, 3, 2, ((0, 1), (0, 1)))])
def test_taps_equal_grouped_conv_with_gradients(size, k, strides, padding):
  rng = np.random.default_rng(size + k)
  x = jnp.asarray(rng.normal(size=(2, size, size + 1, 6)), jnp.float32)
  outputs = {}
  for impl in ('conv', 'taps'):
    module = layers.DepthwiseConv(6, k, strides, padding, use_bias=True, impl=impl)
    variables = module.init(jax.random.PRNGKey(0), x)
    variables = jax.tree.map(
        lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32), variables)
    rng = np.random.default_rng(size + k)  # Same values for both.
    rng.normal(size=x.shape)
    loss = lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))
    outputs[impl] = (module.apply(variables, x),
                     jax.grad(loss, argnums=(0, 1))(variables, x))
  (y_conv, g_conv), (y_taps, g_taps) = outputs['conv'], outputs['taps']
  assert y_conv.shape == y_taps.shape
  np.testing.assert_allclose(y_taps, y_conv, rtol=0, atol=1e-5 * np.abs(y_conv).max())
  for a, b in zip(jax.tree.leaves(g_taps), jax.tree.leaves(g_conv)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_platform_impl_chooses_where_the_program_runs():
  """'platform' (exports for several platforms): the taps on this CPU, the
  grouped conv kept for the other platforms, and only the taps in a program
  compiled for the CPU alone."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 12, 12, 6)), jnp.float32)
  outputs, variables = {}, None
  for impl in ('conv', 'taps', 'platform'):
    module = layers.DepthwiseConv(6, 3, 2, impl=impl)
    variables = variables or module.init(jax.random.PRNGKey(0), x)
    outputs[impl] = np.asarray(jax.jit(module.apply)(variables, x))
  assert not np.array_equal(outputs['conv'], outputs['taps'])  # Tellable.
  np.testing.assert_array_equal(outputs['platform'], outputs['taps'])
  fn = jax.jit(lambda v, x: module.apply(v, x))
  both = jax.export.export(fn, platforms=('cpu', 'cuda'))(variables, x)
  assert 'feature_group_count = 6' in both.mlir_module()
  cpu = jax.export.export(fn, platforms=('cpu',))(variables, x)
  assert 'feature_group_count = 6' not in cpu.mlir_module()
