"""The train state, how it lies on the device mesh, and its moving average."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

SHARDINGS = ('data', 'fsdp')  # config.sharding: see state_shardings.


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # A raw uint32[2] key: it checkpoints as a plain array.
  # Exponential moving average of params (and of BatchNorm statistics), used
  # for evaluation; None when config.ema_decay is 0.
  ema: Any = None

  def eval_variables(self):
    """The variables evaluation uses: the EMA when kept, else the live ones."""
    if self.ema is not None:
      return {'params': self.ema['params'], 'batch_stats': self.ema['batch_stats']}
    return {'params': self.params, 'batch_stats': self.batch_stats}


def create_state(model: nn.Module, tx, config, rng) -> TrainState:
  """A fresh state (call under jit with the state shardings as out_shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  h, w = config.image_size
  variables = model.init(init_rng, jnp.zeros((1, h, w, 3), jnp.uint8))
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  ema = None
  if config.ema_decay:
    ema = {'params': params, 'batch_stats': batch_stats}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=batch_stats, opt_state=tx.init(params),
                    rng=state_rng, ema=ema)


def state_shardings(abstract_state, mesh: Mesh, kind: str = 'data',
                    min_size: int = 2 ** 14):
  """The sharding of each array of the state on `mesh` (axis 'data').

  'data': every array whole on every device. 'fsdp': each array of at least
  `min_size` elements is split over the devices along its largest dimension
  that they divide evenly (the last of equals, usually output channels);
  smaller ones and those with no such dimension stay whole. Under jit, XLA
  gathers a layer's parameters where the step needs them and reduce-scatters
  their gradients, so the update itself runs on each device's shard.
  """
  replicated = NamedSharding(mesh, P())
  n = mesh.shape['data']

  def one(leaf):
    if kind == 'data' or n == 1 or leaf.size < min_size:
      return replicated
    dims = [i for i, d in enumerate(leaf.shape) if d % n == 0]
    if not dims:
      return replicated
    axis = max(dims, key=lambda i: (leaf.shape[i], i))
    return NamedSharding(mesh, P(*[('data' if i == axis else None)
                                   for i in range(leaf.ndim)]))
  return jax.tree_util.tree_map(one, abstract_state)


def state_bytes_per_device(abstract_state) -> int:
  """Bytes of the state one device holds under the shardings it carries."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(abstract_state):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard)) * leaf.dtype.itemsize
  return total


def update_ema(ema, params, batch_stats, step, decay):
  """EMA with the usual warm-up: the decay is min(decay, (1 + t) / (10 + t)),
  so early averages are not dominated by the random initialisation."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  mix = lambda e, p: d * e + (1.0 - d) * p
  return {'params': jax.tree_util.tree_map(mix, ema['params'], params),
          'batch_stats': jax.tree_util.tree_map(mix, ema['batch_stats'],
                                                batch_stats)}
