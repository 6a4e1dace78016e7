"""`stablehlo`: the serving function as a serialized `jax.export` artefact.

The file holds the whole function (network, decoding, NMS) as StableHLO with
the weights inside and a symbolic batch size; `jax.export.deserialize` loads
it back into any JAX of a compatible serialization version, on any platform
it was exported for (CPU and CUDA; depthwise convolutions as each runs them
best, `network.DEPTHWISE`). The metadata (`ModelInfo`) is written
beside it as `<file>.json`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from detector import errors
from detector.export import common
from detector.predict import base

SUFFIX = '.stablehlo'
PLATFORMS = ('cpu', 'cuda')


def export(backend, output: str, **unused) -> str:
  """Writes `output` (and its metadata beside it); returns the path."""
  del unused
  h, w = backend.info.input_size
  batch, = jax.export.symbolic_shape('b')
  from detector.export import network  # pylint: disable=g-import-not-at-top
  fn = jax.jit(functools.partial(network.whole(backend, 'stablehlo'),
                                 backend.variables))
  exported = jax.export.export(fn, platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8))
  with open(output, 'wb') as f:
    f.write(exported.serialize())
  common.write_sidecar(output, backend.info, 'stablehlo')
  return output


class Backend(base.Backend):
  """A deserialized artefact; any batch size."""

  def __init__(self, path: str):
    with open(path, 'rb') as f:
      data = f.read()
    try:
      self._exported = jax.export.deserialize(bytearray(data))
    except Exception as e:  # pylint: disable=broad-except
      raise errors.ConfigError(f'{path}: not a jax.export artefact '
                               f'({type(e).__name__}: {str(e)[:200]})') from None
    self.info = common.read_sidecar(path, 'stablehlo')
    self._call = jax.jit(self._exported.call)

  def run(self, images):
    out = self._call(jnp.asarray(images, jnp.uint8))
    return {k: np.asarray(v) for k, v in out.items()}


def load(path: str) -> Backend:
  return Backend(path)
