"""`onnx`: an ONNX model (opset OPSET) for onnxruntime.

Input `images`, uint8 [B, H, W, 3] at the model's input size, B fixed at
export (`batch_size`, default 1: jax2onnx 0.17 cannot lower `%` on a symbolic
batch, which the heads' decoding uses); outputs those of
`detector.predict.base`. The metadata (`ModelInfo` JSON) is
`metadata_props['detector']`.

A classifier goes through jax2onnx whole (`network.whole`). A detector does
not (jax2onnx lowers `lax.while_loop` but not the scatter inside
`detector.ops.nms`'s loop), so the graph is the JAX candidates
(`network.Detection.candidates`: the network, flip test, the head's own
decoding, threshold and clipping) through jax2onnx, followed by ONNX's own
per-class `NonMaxSuppression` and the top-D selection (`_nms_nodes`), which
the tests hold equal to `detector.ops.nms`:
  * the NMS gets each candidate's rank (candidates arrive sorted by score,
    ties lower index first) as its score: onnxruntime breaks ties
    arbitrarily, the greedy NMS visits in exactly that order;
  * onnxruntime suppresses at IoU > t, as `detector.ops.nms` does.
"""

import contextlib
import functools
import logging

import numpy as np

from detector import errors
from detector.export import common
from detector.export import network as network_lib
from detector.export import onnx_graph
from detector.predict import base

SUFFIX = '.onnx'
# jax2onnx 0.17 writes ReduceMean's axes as an input (opset 18) at any opset.
OPSET = 18
METADATA_KEY = 'detector'
_CANDIDATES = ('candidate_boxes', 'candidate_scores', 'candidate_classes',
               'nms_scores')


def export(backend, output: str, batch_size: int = 1, **unused) -> str:
  """Writes the .onnx file `output` for batches of `batch_size`; returns
  its path.

  Raises:
    errors.ConfigError: a model jax2onnx cannot convert (naming why).
  """
  del unused
  import onnx  # pylint: disable=g-import-not-at-top
  info = backend.info
  if info.task == 'detection':
    parts = network_lib.detection(backend, 'onnx')
    model = _convert(functools.partial(_candidates, parts), backend,
                     batch_size, _CANDIDATES)
    _append_nms(model, parts, _num_candidates(parts, backend), batch_size)
  else:
    model = _convert(network_lib.whole(backend, 'onnx'), backend, batch_size,
                     base.CLASSIFICATION_OUTPUTS)
  entry = model.metadata_props.add()
  entry.key = METADATA_KEY
  entry.value = common.with_format(info, 'onnx').to_json()
  onnx.checker.check_model(model)
  onnx.save(model, output)
  return output


def _candidates(parts, variables, images):
  """The JAX half: `parts.candidates` and their `nms_scores`."""
  out = parts.candidates(variables, images)
  return (out['boxes'], out['scores'], out['classes'],
          nms_scores(out['classes'], out['keep'],
                     parts.model_config.num_classes))


def nms_scores(classes, keep, num_classes: int):
  """The scores `onnx_graph.nms_nodes` gives the NMS: [B, C, N], each
  candidate's rank N - i (candidates sorted by score) in its own class where
  it may be kept, else -1.

  Args:
    classes: [B, N] int class indices; keep: [B, N] bool.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = classes.shape[1]
  rank = (n - jnp.arange(n)).astype(jnp.float32)
  of_class = classes[:, None, :] == jnp.arange(num_classes)[None, :, None]
  return jnp.where(of_class & keep[:, None, :], rank, -1.)


def _convert(fn, backend, batch_size, output_names):
  """`fn(variables, images)` as an ONNX ModelProto."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  h, w = backend.info.input_size
  spec = jax.ShapeDtypeStruct((batch_size, h, w, 3), jnp.uint8)
  variables = network_lib.variables_of(backend)
  try:
    with _quiet_plugin_discovery():
      import jax2onnx  # pylint: disable=g-import-not-at-top
      model = jax2onnx.to_onnx(
          lambda images: tuple(_as_tuple(fn(variables, images))), [spec],
          model_name='detector', opset=OPSET, input_names=['images'],
          output_names=list(output_names))
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(
        f'{backend.info.source}: --format=onnx cannot take this model: '
        f'jax2onnx: {type(e).__name__}: {str(e).splitlines()[0][:300]}'
    ) from None
  # jax2onnx 0.17 records some NHWC tensors with NCHW shapes in value_info,
  # which onnxruntime then rejects; the shapes are inferred again without it.
  del model.graph.value_info[:]
  onnx_graph.two_d_max_pools(model)
  onnx_graph.dedupe_initializers(model)
  return model


@contextlib.contextmanager
def _quiet_plugin_discovery():
  """Drops jax2onnx's log of the optional plugins it skips (equinox,
  dm_pix: not installed, not used), a traceback each."""
  logger = logging.getLogger('jax2onnx.plugins.plugin_system')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _as_tuple(out):
  if isinstance(out, dict):
    return tuple(out[k] for k in base.CLASSIFICATION_OUTPUTS)
  return out


def _num_candidates(parts, backend) -> int:
  """N, the candidates per image that the head's decoding returns."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  h, w = parts.input_size
  shapes = jax.eval_shape(parts.candidates, network_lib.variables_of(backend),
                          jax.ShapeDtypeStruct((1, h, w, 3), jnp.uint8))
  return int(shapes['scores'].shape[1])


def _append_nms(model, parts, n, batch_size):
  """Appends `onnx_graph.nms_nodes` to `model`'s graph; their outputs
  become the graph's."""
  nodes, initializers, outputs = onnx_graph.nms_nodes(
      n, batch_size, parts.model_config, parts.input_size)
  graph = model.graph
  graph.node.extend(nodes)
  graph.initializer.extend(initializers)
  del graph.output[:]
  graph.output.extend(outputs)


class Backend(base.Backend):
  """An onnxruntime session (CPU) at the batch size of the export."""

  def __init__(self, path: str):
    import onnxruntime  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top
    try:
      model = onnx.load(path, load_external_data=False)
    except Exception as e:  # pylint: disable=broad-except
      raise errors.ConfigError(f'{path}: not an ONNX model ({type(e).__name__}'
                               f': {str(e)[:200]})') from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
      raise errors.ConfigError(f'{path}: no metadata_props[{METADATA_KEY!r}]; '
                               'not written by detector.export')
    self.info = base.ModelInfo.from_json(props[METADATA_KEY], source=path,
                                         format='onnx')
    self._session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    self._keys = (base.DETECTION_OUTPUTS if self.info.task == 'detection'
                  else base.CLASSIFICATION_OUTPUTS)
    self.batch_sizes = (int(self._session.get_inputs()[0].shape[0]),)

  def run(self, images):
    out = self._session.run(list(self._keys),
                            {'images': np.asarray(images, np.uint8)})
    return dict(zip(self._keys, out))


def load(path: str) -> Backend:
  return Backend(path)
