"""Predictions on anything: `detector.load(PATH).predict(images)`.

PATH is a training workdir (its latest checkpoint, the EMA weights when the
run kept them, or `step=`), a weights file from `python -m detector.port`,
or an artefact from `python -m detector.export` (SavedModel directory,
`.tflite`, `.onnx`, `.stablehlo`). Every one is a `base.Backend` with the
same outputs, so the predictor treats them alike:

  images (paths, PIL images, numpy arrays; any size, any mode)
    -> uint8 RGB, upright (`images`)
    -> the model's input size, as the model was evaluated (`base.ModelInfo.
       preprocessing`: fit-and-pad for detectors, a centre crop for
       classifiers)
    -> batches padded to the backend's batch sizes (one compiled program
       per size, not per image size)
    -> per image a `Detections` (boxes `[x0, y0, x1, y1]` in that image's
       own pixels, scores, class ids and names) or a `Classification`
       (top-k classes with probabilities).
"""

import dataclasses
import os
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from detector import errors
from detector.predict import base
from detector.predict import images as images_lib
from detector.predict import preprocessing


@dataclasses.dataclass
class Detections:
  """A detector's result on one image.

  Attributes:
    source: the path, or a description of the input.
    image_size: (height, width) of the image as read (upright).
    boxes: float32 [N, 4] `[x0, y0, x1, y1]` in pixels of that image.
    scores: float32 [N], descending.
    class_ids: int [N] class indices; class_names: their names.
    category_ids: int [N], the dataset's own ids (COCO files use these).
  """
  source: str
  image_size: tuple
  boxes: np.ndarray
  scores: np.ndarray
  class_ids: np.ndarray
  class_names: List[str]
  category_ids: np.ndarray

  def to_json(self) -> dict:
    return {'source': self.source, 'height': int(self.image_size[0]),
            'width': int(self.image_size[1]), 'detections': [
                {'class_id': int(c), 'class_name': n, 'category_id': int(k),
                 'score': round(float(s), 5),
                 'box_xyxy': [round(float(v), 2) for v in b]}
                for b, s, c, n, k in zip(self.boxes, self.scores,
                                         self.class_ids, self.class_names,
                                         self.category_ids)]}


@dataclasses.dataclass
class Classification:
  """A classifier's result on one image: the top-k classes."""
  source: str
  image_size: tuple
  class_ids: np.ndarray     # [k] int, most probable first.
  class_names: List[str]
  probabilities: np.ndarray  # [k] float32.

  def to_json(self) -> dict:
    return {'source': self.source, 'height': int(self.image_size[0]),
            'width': int(self.image_size[1]), 'top_k': [
                {'class_id': int(c), 'class_name': n,
                 'probability': round(float(p), 6)}
                for c, n, p in zip(self.class_ids, self.class_names,
                                   self.probabilities)]}


Prediction = Union[Detections, Classification]


class Predictor:
  """A backend with the host's side of prediction around it."""

  def __init__(self, backend: base.Backend, batch_size: int = 8):
    self.backend = backend
    self.info = backend.info
    self.batch_size = max(1, batch_size)
    self._prepare = preprocessing.for_model(self.info)

  def predict(self, inputs: Union[Any, Sequence[Any]],
              score_threshold: float = 0.0, max_detections: Optional[int] = None,
              top_k: int = 5) -> List[Prediction]:
    """Predictions for one input or a list of them (paths, PIL images, numpy
    arrays), in order. Raises images.ImageError naming an unreadable input
    (`predict_images` takes already loaded ones)."""
    if not isinstance(inputs, (list, tuple)):
      inputs = [inputs]
    return self.predict_images([images_lib.load(x) for x in inputs],
                               score_threshold, max_detections, top_k)

  def predict_images(self, named: Sequence, score_threshold: float = 0.0,
                     max_detections: Optional[int] = None,
                     top_k: int = 5) -> List[Prediction]:
    """Predictions for (name, uint8 [H, W, 3]) pairs, in order."""
    results = []
    for start in range(0, len(named), self.batch_size):
      chunk = named[start:start + self.batch_size]
      prepared = [self.prepare(image) for _, image in chunk]
      outputs = self.run_prepared(prepared)
      results.extend(
          self.result(name, image.shape[:2], prep, out, score_threshold,
                      max_detections, top_k)
          for (name, image), prep, out in zip(chunk, prepared, outputs))
    return results

  # The three stages of `predict_images`, apart for callers that schedule
  # them themselves (the server batches requests between them).
  def prepare(self, image: np.ndarray) -> preprocessing.Prepared:
    """uint8 [H, W, 3] -> the model's input and the way back to pixels."""
    return self._prepare(image)

  def run_prepared(self, prepared: Sequence[preprocessing.Prepared]
                   ) -> List[dict]:
    """The backend on prepared images, in one call where its batch sizes
    allow; per image its outputs (`base`'s convention, batch axis gone)."""
    outputs = self._run(np.stack([p.image for p in prepared]))
    return [{k: v[i] for k, v in outputs.items()}
            for i in range(len(prepared))]

  def result(self, name: str, image_size, prep: preprocessing.Prepared,
             output: dict, score_threshold: float = 0.0,
             max_detections: Optional[int] = None,
             top_k: int = 5) -> Prediction:
    """One image's outputs as a `Detections` or `Classification`."""
    if self.info.task == 'detection':
      return self._detections(name, image_size, prep, output,
                              score_threshold, max_detections)
    return self._classification(name, image_size, output, top_k)

  def _run(self, batch: np.ndarray):
    """The backend on `batch`, padded to a batch size it takes."""
    sizes = self.backend.batch_sizes
    n = len(batch)
    if sizes is None or n in sizes:
      return self.backend.run(batch)
    fits = [s for s in sorted(sizes) if s >= n]
    if not fits:  # Larger than every size: in pieces of the largest.
      step = max(sizes)
      parts = [self._run(batch[i:i + step]) for i in range(0, n, step)]
      return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    padded = np.concatenate(
        [batch, np.zeros((fits[0] - n,) + batch.shape[1:], batch.dtype)])
    return {k: v[:n] for k, v in self.backend.run(padded).items()}

  def _detections(self, name, size, prep, out, score_threshold,
                  max_detections) -> Detections:
    n = int(round(float(out['num_detections'])))
    scores = out['detection_scores'][:n]
    keep = scores >= score_threshold
    if max_detections is not None:
      keep &= np.arange(n) < max_detections
    h, w = self.info.input_size
    boxes = out['detection_boxes'][:n] * np.float32([h, w, h, w])
    boxes = prep.to_image(boxes)  # yxyx input pixels -> xyxy image pixels.
    # Boxes wholly in the padding collapse when clipped to the image.
    keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = boxes[keep]
    ids = out['detection_classes'][:n][keep].round().astype(np.int64) - 1
    ok = (ids >= 0) & (ids < len(self.info.class_names))
    if not ok.all():
      raise errors.ConfigError(f'{self.info.source}: the model returned class '
                               f'ids {sorted(set(ids[~ok] + 1))} beyond its '
                               f'{len(self.info.class_names)} classes')
    return Detections(
        source=name, image_size=tuple(size), boxes=boxes,
        scores=scores[keep].astype(np.float32), class_ids=ids,
        class_names=[self.info.class_names[i] for i in ids],
        category_ids=np.asarray([self.info.category_ids[i] for i in ids],
                                np.int64))

  def _classification(self, name, size, out, top_k) -> Classification:
    probabilities = out['probabilities'].astype(np.float32)
    order = np.argsort(-probabilities, kind='stable')[:top_k]
    return Classification(
        source=name, image_size=tuple(size), class_ids=order,
        class_names=[self.info.class_names[i] for i in order],
        probabilities=probabilities[order])


def load(path: str, step: Optional[int] = None, batch_size: int = 8
         ) -> Predictor:
  """A predictor for PATH (see the module docstring).

  Raises:
    errors.ConfigError: nothing usable at PATH (the message says why).
  """
  from detector.predict import formats  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise errors.ConfigError(f'{path}: no such file or directory')
  return Predictor(formats.open_backend(path, step), batch_size=batch_size)

