"""The JAX side of an export: the functions the converters take.

`whole` is the whole model in JAX (network, flip test, decoding, NMS), as
the JaxBackend runs it; the stablehlo export serializes it. The converters cannot take all of a detector's (jax2tf's
StableHLO with `lax.top_k` does not load into TensorFlow; TFLite rejects
`sort`; jax2onnx rejects the scatter inside `detector.ops.nms`'s loop), so
a detection export cuts it in two: the JAX part here, converted, and the
rest in the target's own ops (`tf_postprocess`, `onnx_graph`), each held
equal to `detector.models.detector.postprocess` by the tests.

The model is rebuilt from the backend's metadata (`ModelInfo.config`: the
run's resolved config, or a weights file's metadata) and applied to the
backend's variables, with depthwise convolutions as `DEPTHWISE[fmt]`
(`layers.DepthwiseConv.impl`; the parameters and results are the same):
one library op for the converters ('taps', the CPU's shifted multiply-adds,
would reach TFLite as a hundred int8 multiplies and adds that lose the int8
model its accuracy), and for the artefacts XLA compiles for CPU and CUDA the
choice made where they run (with 'conv', Lite0's SavedModel ran 5x slower
than JAX on this CPU).
"""

import dataclasses
from typing import Any, Callable, Dict

import jax
import ml_collections

from detector import errors
from detector import tasks
from detector.models import detector as detector_lib
from detector.predict import base

# The head output holding class logits, which the exports turn into
# probabilities in JAX (an int8 model quantises probabilities, in [0, 1], far
# better than logits); the other outputs pass as they are.
SCORE_OUTPUTS = {'centernet': 'heatmap', 'retinanet': 'cls_logits',
                 'efficientdet': 'cls_logits'}
DEPTHWISE = {'saved_model': 'platform', 'stablehlo': 'platform'}  # Else conv.


@dataclasses.dataclass(frozen=True)
class Detection:
  """A detection backend's model, cut for export.

  Attributes:
    head: the head's name (`config.model.head`).
    options: the head's Options (its decoding settings).
    model_config: `config.model` (score_threshold, nms_iou_threshold,
      max_detections, num_classes, flip_test).
    input_size: (H, W) of the input.
    network: `(variables, uint8 images [B, H, W, 3]) -> head outputs` after the
      flip test, with SCORE_OUTPUTS[head] as probabilities (sigmoid).
    candidates: `(variables, images) -> {'boxes' [B, N, 4] yxyx input pixels
      clipped to the input, 'scores' [B, N] (descending), 'classes' [B, N]
      int32, 'keep' [B, N] bool}`: the head's own decoding and postprocess's
      filters, before NMS.
  """
  head: str
  options: Any
  model_config: ml_collections.ConfigDict
  input_size: tuple
  network: Callable
  candidates: Callable


def _depthwise(fmt: str) -> str:
  return DEPTHWISE.get(fmt, 'conv')


def _model_config(info: base.ModelInfo, fmt: str
                  ) -> ml_collections.ConfigDict:
  """A workdir's `config.model`, depthwise convolutions as `fmt` needs."""
  mc = ml_collections.ConfigDict(info.config['model'])
  mc.depthwise_impl = _depthwise(fmt)
  return mc


def _model(info: base.ModelInfo, mc):
  """(task, model) of a workdir's backend for `mc`."""
  task = tasks.get(ml_collections.ConfigDict(info.config))
  return task, task.build_model(mc, train=False)


def detection(backend, fmt: str) -> Detection:
  """The parts of `backend` (a detection JaxBackend) for format `fmt`.

  Raises:
    errors.ConfigError: a head the exports do not decode.
  """
  info: base.ModelInfo = backend.info
  mc = _model_config(info, fmt)
  if mc.head not in SCORE_OUTPUTS:
    raise errors.ConfigError(
        f'{info.source}: --format={fmt} decodes the heads '
        f'{sorted(SCORE_OUTPUTS)} in its graph; this model has '
        f'config.model.head={mc.head!r}')
  _, model = _model(info, mc)
  size = tuple(info.input_size)
  scores_key = SCORE_OUTPUTS[mc.head]

  def network(variables, images):
    outputs = dict(detector_lib.network(model, variables, images, mc))
    outputs[scores_key] = jax.nn.sigmoid(outputs[scores_key])
    return outputs

  def candidates(variables, images):
    decoded = model.head.decode(
        detector_lib.network(model, variables, images, mc), size)
    boxes, keep = detector_lib.candidates(decoded, mc, size)
    return {'boxes': boxes, 'scores': decoded['scores'],
            'classes': decoded['classes'], 'keep': keep}

  return Detection(head=mc.head, options=model.head.options, model_config=mc,
                   input_size=size, network=network, candidates=candidates)


def whole(backend, fmt: str) -> Callable:
  """`(variables, uint8 images [B, H, W, 3]) -> outputs` of
  `detector.predict.base`: the whole model of `backend` (a workdir or a
  weights file), as its JaxBackend computes it, for format `fmt`."""
  # pylint: disable=g-import-not-at-top
  from detector.predict import jax_backend
  info: base.ModelInfo = backend.info
  if info.step is None:  # A weights file.
    return jax_backend.weights_fn(info.config, _depthwise(fmt))
  mc = _model_config(info, fmt)
  task, model = _model(info, mc)
  return jax_backend.workdir_fn(task, model, mc, tuple(info.input_size))


def variables_of(backend) -> Dict[str, Any]:
  """The backend's variables as numpy arrays (a plain nested dict)."""
  return jax.tree_util.tree_map(jax.device_get, backend.variables)
