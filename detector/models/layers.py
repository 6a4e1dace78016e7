"""Building blocks shared by backbones, necks and heads.

Normalisation is passed around as a factory (`norm`), so that trainable,
frozen or cross-replica BatchNorm is a config choice rather than a code change.
"""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from detector import errors

Dtype = Any
ModuleDef = Callable[..., nn.Module]
NORM_KINDS = ('batch_norm', 'frozen_batch_norm', 'sync_batch_norm')


def make_norm(kind: str, train: bool, dtype: Dtype = jnp.float32,
              momentum: float = 0.9, epsilon: float = 1e-5,
              axis_name: Optional[str] = None) -> ModuleDef:
  """Returns a BatchNorm factory for `kind`.

  Args:
    kind: 'batch_norm' (statistics updated in training), 'frozen_batch_norm'
      (running statistics used and never updated; the affine parameters still
      get gradients unless the optimizer masks them), or 'sync_batch_norm'
      (statistics averaged over `axis_name`, for per-device batches under
      shard_map or pmap; under `jax.jit` with a sharded batch, plain
      'batch_norm' already sees the whole global batch).
    train: whether the model runs in training mode.
    dtype: compute dtype; parameters stay float32.
  """
  if kind not in NORM_KINDS:
    raise errors.ConfigError(f'config.model.norm={kind!r}: expected batch_norm, '
                     'frozen_batch_norm or sync_batch_norm')
  use_running_average = (not train) or kind == 'frozen_batch_norm'
  return functools.partial(
      nn.BatchNorm, use_running_average=use_running_average, momentum=momentum,
      epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
      axis_name=axis_name if kind == 'sync_batch_norm' else None)


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

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                strides=(self.strides, self.strides), padding=self.padding,
                use_bias=self.norm is None,
                feature_group_count=self.feature_group_count,
                kernel_init=self.kernel_init, dtype=self.dtype,
                param_dtype=jnp.float32, name='conv')(x)
    if self.norm is not None:
      x = self.norm(name='norm')(x)
    if self.act is not None:
      x = self.act(x)
    return x
