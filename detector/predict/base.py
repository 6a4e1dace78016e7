"""What every model format hands the predictor: its description and a runner.

A `Backend` runs a batch of already preprocessed uint8 images at the
model's input size and returns the outputs every format shares:

  detection:       `detection_boxes`   float32 [B, D, 4], normalised
                                       [ymin, xmin, ymax, xmax] of the input;
                   `detection_scores`  float32 [B, D], descending per image;
                   `detection_classes` float32 [B, D], class index + 1 (the
                                       TF Object Detection API's label ids);
                   `num_detections`    float32 [B], valid rows per image
                   (rows past it are padding);
  classification:  `probabilities`     float32 [B, K].

The SavedModel, TFLite, ONNX and StableHLO exports compute exactly these in
their graphs, and the JAX backends return them too, so `Predictor` treats
every format alike. `ModelInfo` is the metadata each artefact carries.
"""

import dataclasses
import json
from typing import Any, Dict, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

TASKS = ('detection', 'classification')
DETECTION_OUTPUTS = ('detection_boxes', 'detection_scores',
                     'detection_classes', 'num_detections')
CLASSIFICATION_OUTPUTS = ('probabilities',)
# How the host turns an image into the model's input (`Predictor`):
#   'fit_and_pad': resized (aspect kept) to fit input_size, padded at the
#     bottom and right, as detection evaluation does;
#   'center_crop': resized to cover input_size / crop_fraction, centre cut,
#     as classification evaluation does;
#   'resize_and_crop': the shorter side resized to `resize` pixels with
#     `interpolation`, centre cut (an ImageNet weights file's recipe).
PREPROCESSING_KINDS = ('fit_and_pad', 'center_crop', 'resize_and_crop')


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """A model as the predictor needs it, the same for every format.

  Attributes:
    task: 'detection' or 'classification'.
    class_names: K names, in the model's class order.
    category_ids: the dataset's own id of each class (COCO files use these).
    input_size: (H, W) of the model's input.
    preprocessing: {'kind': one of PREPROCESSING_KINDS, ...its settings}.
    max_detections: D, rows of the detection outputs (0 for classifiers).
    step: the checkpoint step the weights come from (None: a weights file).
    source: where the weights came from (a workdir or a weights file).
    format: 'jax' or the export format of the artefact.
    config: the training config (or the weights file's metadata), as JSON.
  """
  task: str
  class_names: Tuple[str, ...]
  category_ids: Tuple[int, ...]
  input_size: Tuple[int, int]
  preprocessing: Dict[str, Any]
  max_detections: int = 0
  step: Optional[int] = None
  source: str = ''
  format: str = 'jax'
  config: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str, **overrides) -> 'ModelInfo':
    values = dict(json.loads(text), **overrides)
    for key in ('class_names', 'category_ids', 'input_size'):
      values[key] = tuple(values[key])
    return cls(**values)


class Backend:
  """Runs preprocessed batches; subclasses set `info` and `batch_sizes`."""
  info: ModelInfo
  # The batch sizes `run` accepts; None: any. The predictor pads each batch
  # up to the smallest that fits (one compiled program per size).
  batch_sizes: Optional[Sequence[int]] = None

  def run(self, images: np.ndarray) -> Dict[str, np.ndarray]:
    """uint8 [B, H, W, 3] at `info.input_size` -> the outputs above."""
    raise NotImplementedError


def detection_outputs(boxes, scores, classes, valid, input_size
                      ) -> Dict[str, Any]:
  """`detector.models.detector.postprocess`'s outputs in the shared
  convention; jit-compatible (exported graphs compute it too).

  Args:
    boxes: [B, D, 4] yxyx in input pixels; scores [B, D]; classes [B, D]
      int class indices; valid [B, D] bool, a prefix of each row.
    input_size: (H, W) of the input.
  """
  h, w = input_size
  scale = jnp.asarray([h, w, h, w], jnp.float32)
  return {'detection_boxes': (boxes / scale).astype(jnp.float32),
          'detection_scores': scores.astype(jnp.float32),
          'detection_classes': (classes + 1).astype(jnp.float32),
          'num_detections': valid.sum(axis=-1).astype(jnp.float32)}
