"""Building blocks shared by backbones, necks and heads.

Normalisation is passed around as a factory (`norm`), so that trainable or
frozen BatchNorm is a config choice rather than a code change.
"""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from detector import errors

Dtype = Any
ModuleDef = Callable[..., nn.Module]
NORM_KINDS = ('batch_norm', 'frozen_batch_norm')
DEPTHWISE_IMPLS = ('auto', 'conv', 'taps', 'platform')


def make_norm(kind: str, train: bool, dtype: Dtype = jnp.float32,
              momentum: float = 0.9, epsilon: float = 1e-5) -> ModuleDef:
  """Returns a BatchNorm factory for `kind`.

  Args:
    kind: 'batch_norm' (statistics updated in training) or
      'frozen_batch_norm' (running statistics used and never updated; the
      affine parameters still get gradients unless the optimizer masks
      them). There is no cross-replica kind: the trainer runs the model
      under `jax.jit` on the global batch, so 'batch_norm' statistics already
      span every device.
    train: whether the model runs in training mode.
    dtype: compute dtype; parameters stay float32.
    momentum, epsilon: BatchNorm's.
  """
  if kind not in NORM_KINDS:
    raise errors.ConfigError(f'norm {kind!r}: expected one of {NORM_KINDS}')
  use_running_average = (not train) or kind == 'frozen_batch_norm'
  return functools.partial(
      nn.BatchNorm, use_running_average=use_running_average, momentum=momentum,
      epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32)


def depthwise_taps(x, kernel, strides: int, padding):
  """Depthwise conv as k*k shifted multiply-adds: [B, H, W, C] * [k, k, 1, C].

  The same function as `lax.conv_general_dilated(..., feature_group_count=C)`
  up to float rounding, written as elementwise ops that XLA fuses: on a CPU
  this trains several times faster than XLA's grouped convolution
  (BENCHMARKS.md); on GPUs and TPUs the library convolution is the fast one.
  """
  k = kernel.shape[0]
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(x.shape[1:3], (k, k), (strides, strides), padding)
  else:
    pads = padding
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  out_h = (x.shape[1] - k) // strides + 1
  out_w = (x.shape[2] - k) // strides + 1
  out = None
  for i in range(k):
    for j in range(k):
      tap = lax.slice(x, (0, i, j, 0),
                      (x.shape[0], i + (out_h - 1) * strides + 1,
                       j + (out_w - 1) * strides + 1, x.shape[3]),
                      (1, strides, strides, 1))
      term = tap * kernel[i, j, 0].astype(x.dtype)
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """A depthwise conv with nn.Conv's parameters (`kernel` [k, k, 1, C], `bias`).

  `impl`: 'conv' (the library's grouped convolution), 'taps'
  (`depthwise_taps`), 'auto' (taps on the CPU backend, conv elsewhere,
  chosen when traced) or 'platform' (the same choice made where the program
  runs, `lax.platform_dependent`: for artefacts exported for several
  platforms). Parameters and results do not depend on the choice; 'conv'
  compiles faster (fewer ops), 'taps' runs faster on a CPU.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: Any = 'SAME'
  use_bias: bool = False
  impl: str = 'auto'
  kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(
      1.0, 'fan_in', 'normal')
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.shape[-1] != self.features:
      raise ValueError(f'DepthwiseConv: {x.shape[-1]} input channels, '
                       f'{self.features} features')
    if self.impl not in DEPTHWISE_IMPLS:
      raise errors.ConfigError(f'depthwise impl {self.impl!r}: expected one '
                               f'of {DEPTHWISE_IMPLS}')
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, 1, self.features),
                        jnp.float32)
    impl = self.impl
    if impl == 'auto':
      impl = 'taps' if jax.default_backend() == 'cpu' else 'conv'
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    taps = lambda x, k: depthwise_taps(x, k, self.strides, self.padding)
    if impl == 'taps':
      y = taps(x, kernel)
    elif impl == 'platform':
      y = lax.platform_dependent(x, kernel, cpu=taps, default=self._conv)
    else:
      y = self._conv(x, kernel)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y

  def _conv(self, x, kernel):
    padding = self.padding if isinstance(self.padding, str) else tuple(
        tuple(p) for p in self.padding)
    return lax.conv_general_dilated(
        x, kernel, (self.strides, self.strides), padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=self.features)


class ConvNormAct(nn.Module):
  """Conv -> norm -> activation. Input and output NHWC."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  # 'SAME' or explicit ((top, bottom), (left, right)); ported PyTorch models
  # need symmetric padding, which 'SAME' is not for strided convs.
  padding: Any = 'SAME'
  norm: Optional[ModuleDef] = None  # None: no norm, the conv gets a bias.
  act: Optional[Callable[[jnp.ndarray], jnp.ndarray]] = nn.relu
  feature_group_count: int = 1
  dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(
      2.0, 'fan_out', 'normal')
  depthwise_impl: str = 'auto'  # DepthwiseConv.impl when the conv is depthwise.
  # None: a bias only without norm. True keeps one before the norm too, as
  # the TensorFlow EfficientDets have (their checkpoints hold it).
  use_bias: Optional[bool] = None

  @nn.compact
  def __call__(self, x):
    use_bias = self.norm is None if self.use_bias is None else self.use_bias
    if (self.feature_group_count > 1
        and self.feature_group_count == x.shape[-1] == self.features):
      x = DepthwiseConv(self.features, self.kernel_size, self.strides,
                        self.padding, use_bias=use_bias,
                        impl=self.depthwise_impl, kernel_init=self.kernel_init,
                        dtype=self.dtype, name='conv')(x)
    else:
      x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                  strides=(self.strides, self.strides), padding=self.padding,
                  use_bias=use_bias,
                  feature_group_count=self.feature_group_count,
                  kernel_init=self.kernel_init, dtype=self.dtype,
                  param_dtype=jnp.float32, name='conv')(x)
    if self.norm is not None:
      x = self.norm(name='norm')(x)
    if self.act is not None:
      x = self.act(x)
    return x
