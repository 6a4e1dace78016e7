"""Export a trained model: `python -m detector.export --model=PATH --format=F
--output=OUT`.

PATH is a training workdir or a weights file from `python -m detector.port`.
Every artefact is image in, detections (or probabilities) out, with the
decoding and NMS inside, and carries its `ModelInfo` (class names, input
size, preprocessing, config, step); `detector.load` opens every one:

  saved_model   a TF SavedModel; signature `serving_default`: uint8 images
                [B, H, W, 3] -> detection_boxes, detection_scores,
                detection_classes, num_detections (the TF Object Detection
                API's outputs), or probabilities; metadata in
                assets/detector.json.
  tflite        float32, static batch 1, for the LiteRT interpreter;
  tflite_fp16   float16 weights;
  tflite_int8   full-integer (uint8 in, int8 inside), calibrated on
                `calibration_images` images; metadata inside the file.
  onnx          opset 17 or later, for onnxruntime; metadata in
                metadata_props['detector'].
  stablehlo     a serialized `jax.export` artefact; metadata beside it.

Beside each artefact, `ARTEFACT.monitoring.json` holds the reference that
`python -m detector.serve` watches its traffic against: the artefact's own
outputs on the validation split (`detector.monitoring.reference`).

Each format is one module here with `export(backend, output, **options)`
and `load(path) -> Backend`.
"""

import importlib

from detector import errors

FORMATS = {
    'saved_model': ('detector.export.saved_model', {}),
    'tflite': ('detector.export.tflite', {'quantization': 'float32'}),
    'tflite_fp16': ('detector.export.tflite', {'quantization': 'float16'}),
    'tflite_int8': ('detector.export.tflite', {'quantization': 'int8'}),
    'onnx': ('detector.export.onnx', {}),
    'stablehlo': ('detector.export.stablehlo', {}),
}


def export(model: str, fmt: str, output: str, step=None,
           monitoring_images: int = 1000, **options) -> str:
  """Exports the model at `model` (workdir or weights file) as `fmt` to
  `output`; returns the artefact's path. Then writes its monitoring
  reference (`detector.monitoring`) from `monitoring_images` images of the
  validation split (of `calibration_dir` for a weights file; 0 skips).

  Raises:
    errors.ConfigError: an unknown format, a model that is not a workdir or
      a weights file, or a model the format cannot take (naming why).
  """
  # pylint: disable=g-import-not-at-top
  from detector.predict import formats
  from detector.predict import jax_backend
  if fmt not in FORMATS:
    raise errors.ConfigError(f'--format={fmt!r}: expected one of '
                             f'{sorted(FORMATS)}')
  backend = formats.open_backend(model, step)
  if not isinstance(backend, jax_backend.JaxBackend):
    raise errors.ConfigError(f'{model}: already an exported artefact; export '
                             'from the training workdir or weights file')
  module, fixed = FORMATS[fmt]
  path = importlib.import_module(module).export(
      backend, output, **dict(options, **fixed))
  _write_monitoring_reference(path, backend.info, monitoring_images,
                              options.get('calibration_dir', ''))
  return path


def _write_monitoring_reference(path, info, count, images_dir):
  """The artefact's own outputs on the validation split, beside it, for the
  server's drift and canary checks (`detector.monitoring`)."""
  # pylint: disable=g-import-not-at-top
  from absl import logging
  from detector.monitoring import reference
  if not count:
    return
  if info.step is None and not images_dir:
    logging.info('No monitoring reference for %s: a weights file has no '
                 'validation split (python -m detector.monitoring --model=%s '
                 '--images=DIR writes one).', path, path)
    return
  # A workdir's validation split even when other images calibrated it.
  reference.write_for_model(
      path, images_dir=images_dir if info.step is None else '',
      max_images=count)
