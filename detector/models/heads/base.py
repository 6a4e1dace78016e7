"""What every head module holds besides its options (see heads/__init__.py)."""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from detector.models import layers


class Head(nn.Module):
  """The fields every head takes; a head adds `options: Options` and its
  `__call__`, `loss`, `decode` and `merge_flipped`."""
  num_classes: int
  norm: Optional[layers.ModuleDef] = None  # Used when options.use_norm.
  dtype: Any = jnp.float32

  def conv_norm(self) -> Optional[layers.ModuleDef]:
    """The norm of the head's convs: `norm` when options.use_norm, else None."""
    return self.norm if self.options.use_norm else None
