"""`tflite`, `tflite_fp16`, `tflite_int8`: a LiteRT (TFLite) flatbuffer.

The graph is `tf_serving.ServingModule` at a static batch of 1, converted by
`tf.lite.TFLiteConverter`: uint8 images [1, H, W, 3] in, the outputs of
`detector.predict.base` out (signature `serving_default`). Quantisation:
  float32  none;
  float16  weights stored as float16 (dequantised when loaded);
  int8     integer post-training quantisation: uint8 input, int8 weights
           and activations, calibrated on `calibration_images` preprocessed
           images (`common.calibration_images`). Left in float32: a
           detector's head from its output convs on (`FLOAT_FROM`; a few
           thousand multiply-adds): in int8 the box distances were off by
           pixels, and the scores, in steps of 1/256, tied neighbouring
           cells into double peaks and lost their order (the default
           model's AP fell from 0.471 to 0.404; with these in float32,
           0.465); and ops with no int8 kernel (the NMS). The outputs are
           float32, boxes and scores separate tensors.
The metadata (`ModelInfo` JSON) is the flatbuffer's metadata entry
'detector' (the schema's `Model.metadata`, which the interpreter ignores).
"""

import functools
import os
import re
import warnings

import numpy as np

from detector import errors
from detector.export import common
from detector.predict import base

SUFFIX = '.tflite'
SIGNATURE = 'serving_default'
METADATA_NAME = 'detector'
# The heads' output convs (`centernet`: heatmap_out, box_out; `retinanet`:
# cls_out, box_out; `efficientdet`: class_predict, box_predict), named in the
# converted ops' locations.
FLOAT_FROM = ('/box_out/', '/heatmap_out/', '/cls_out/', '/class_predict/',
              '/box_predict/')
FORMATS = {'float32': 'tflite', 'float16': 'tflite_fp16', 'int8': 'tflite_int8'}


def export(backend, output: str, quantization: str = 'float32',
           calibration_images: int = 200, calibration_dir: str = '',
           **unused) -> str:
  """Writes the .tflite file `output`; returns its path.

  Raises:
    errors.ConfigError: an unknown quantization, no calibration images
      (int8), or a graph the converter rejects (naming the ops).
  """
  del unused
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from detector.export import tf_serving
  if quantization not in FORMATS:
    raise errors.ConfigError(f'quantization={quantization!r}: expected one of '
                             f'{sorted(FORMATS)}')
  fmt = FORMATS[quantization]
  module = tf_serving.ServingModule(backend, fmt, batch_size=1,
                                    runtime='tflite')
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [module.serve.get_concrete_function()], module)
  if quantization == 'float16':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  if quantization == 'int8':
    images = common.calibration_images(backend.info, calibration_images,
                                       calibration_dir)
    data = _convert(functools.partial(_int8, converter, images),
                    backend.info.source, fmt)
  else:
    data = _convert(converter.convert, backend.info.source, fmt)
  data = with_metadata(data, common.with_format(backend.info, fmt).to_json())
  with open(output, 'wb') as f:
    f.write(data)
  return output


def _int8(converter, images) -> bytes:
  """Calibrates on `images` (uint8 [N, H, W, 3]) and quantises all but
  `_float_nodes` (TFLite's selective quantisation)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([x[None]] for x in images)
  converter.target_spec.supported_ops = [
      tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
  with warnings.catch_warnings():  # The debugger's own tf.lite.Interpreter.
    warnings.filterwarnings('ignore', message='.*tf.lite.Interpreter is depr')
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: iter([[images[0][None]]]))
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=_float_nodes(debugger.calibrated_model))
    return debugger.get_nondebug_quantized_model()


def _float_nodes(data: bytes, markers=FLOAT_FROM):
  """The output names of the ops that stay float32: those writing a tensor
  named with one of `markers` and every op they feed."""
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=g-import-not-at-top
  graph = schema.Model.GetRootAs(bytearray(data), 0).Subgraphs(0)
  name = lambda t: graph.Tensors(t).Name().decode()
  tainted, nodes = set(), []
  for i in range(graph.OperatorsLength()):  # In topological order.
    op = graph.Operators(i)
    outputs = [op.Outputs(j) for j in range(op.OutputsLength())]
    if (any(op.Inputs(j) in tainted for j in range(op.InputsLength()))
        or any(m in name(t) for t in outputs for m in markers)):
      tainted.update(outputs)
      nodes.extend(name(t) for t in outputs)
  return nodes


def _convert(convert, source, fmt) -> bytes:
  """`convert()`, its errors as one-line ConfigErrors naming the ops the
  converter rejects."""
  from tensorflow.lite.python import convert_phase  # pylint: disable=g-import-not-at-top
  try:
    return convert()
  except convert_phase.ConverterError as e:
    raise errors.ConfigError(f'{source}: --format={fmt} cannot take this '
                             f'model: {converter_reason(str(e))}') from None


def converter_reason(text: str) -> str:
  """One line from a TFLite ConverterError's text: the ops it names and its
  first error."""
  ops = sorted(set(re.findall(r"'([\w.]+)' op", text)))
  lines = [l.split('error: ', 1)[1] for l in text.splitlines()
           if 'error: ' in l] or text.strip().splitlines() or ['(no message)']
  named = f'the TFLite converter rejects {", ".join(ops)}: ' if ops else ''
  return f'{named}{lines[0].strip()[:300]}'


def with_metadata(data: bytes, text: str) -> bytes:
  """The flatbuffer `data` with `text` as its metadata entry METADATA_NAME."""
  # pylint: disable=g-import-not-at-top
  import flatbuffers
  from ai_edge_litert import schema_py_generated as schema
  model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
  buffer = schema.BufferT()
  buffer.data = np.frombuffer(text.encode('utf-8'), np.uint8)
  model.buffers = (model.buffers or []) + [buffer]
  entry = schema.MetadataT()
  entry.name = METADATA_NAME
  entry.buffer = len(model.buffers) - 1
  model.metadata = [m for m in (model.metadata or [])
                    if m.name != METADATA_NAME.encode()] + [entry]
  builder = flatbuffers.Builder(len(data) + len(text) + 1024)
  builder.Finish(model.Pack(builder), file_identifier=b'TFL3')
  return bytes(builder.Output())


def read_metadata(path: str) -> str:
  """The text of `path`'s metadata entry METADATA_NAME.

  Raises:
    errors.ConfigError: not a TFLite file, or no such entry.
  """
  from ai_edge_litert import schema_py_generated as schema  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  try:
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
      entry = model.Metadata(i)
      if entry.Name() == METADATA_NAME.encode():
        return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(f'{path}: not a TFLite flatbuffer '
                             f'({type(e).__name__}: {e})') from None
  raise errors.ConfigError(f'{path}: no {METADATA_NAME!r} metadata entry; '
                           'not written by detector.export')


class Backend(base.Backend):
  """The LiteRT interpreter on one file; batches of 1."""
  batch_sizes = (1,)

  def __init__(self, path: str, num_threads=None):
    """`num_threads`: default, every core this process may use (LiteRT's
    own default is implementation-defined; JAX, TF and onnxruntime use
    them all)."""
    from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
    info = base.ModelInfo.from_json(read_metadata(path), source=path)
    self.info = info
    self._interpreter = interpreter.Interpreter(
        model_path=path,
        num_threads=num_threads or len(os.sched_getaffinity(0)))
    self._run = self._interpreter.get_signature_runner(SIGNATURE)
    self._keys = (base.DETECTION_OUTPUTS if info.task == 'detection'
                  else base.CLASSIFICATION_OUTPUTS)

  def run(self, images):
    out = self._run(images=np.asarray(images, np.uint8))
    return {k: np.asarray(out[k]) for k in self._keys}


def load(path: str) -> Backend:
  if not os.path.isfile(path):
    raise errors.ConfigError(f'{path}: no such file')
  return Backend(path)
