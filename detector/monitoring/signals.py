"""What is measured on each image, the same on the reference and on traffic.

Detection signals (from the detections scoring at least the reference's
`score_threshold`, the evaluation's operating point):
  class_frequency       the class of each detection (categorical);
  score                 the score of each detection;
  detections_per_image  how many detections an image has (0..9, 10+);
  box_area              sqrt(box area / image area) of each detection: the
                        box's side as a fraction of the image's;
  brightness            the image's mean luma (0..255, BT.601 weights).
Classification signals: class_frequency (the top class), top_probability,
brightness.

Continuous signals are binned at the reference's deciles (equal-mass bins,
the usual choice for the population stability index); counts and classes
by value.
"""

from typing import Dict, List, Sequence

import numpy as np

DETECTION = ('class_frequency', 'score', 'detections_per_image', 'box_area',
             'brightness')
CLASSIFICATION = ('class_frequency', 'top_probability', 'brightness')
QUANTILE_BINS = 10
MAX_COUNT = 10  # detections_per_image: 10 or more share the last bin.
_LUMA = np.float32([0.299, 0.587, 0.114])


def names(task: str) -> Sequence[str]:
  return DETECTION if task == 'detection' else CLASSIFICATION


def brightness(image: np.ndarray) -> float:
  """Mean luma of uint8 [H, W, 3], from at most about 256x256 pixels."""
  step = max(1, max(image.shape[:2]) // 256)
  return float(image[::step, ::step].astype(np.float32).mean(axis=(0, 1))
               @ _LUMA)


def measure(prediction, image: np.ndarray, score_threshold: float
            ) -> Dict[str, List[float]]:
  """Per signal, the values one image adds (a `Detections` or a
  `Classification` of `detector.predict`, and the image it came from)."""
  values = {'brightness': [brightness(image)]}
  if hasattr(prediction, 'boxes'):
    keep = prediction.scores >= score_threshold
    boxes = prediction.boxes[keep]
    h, w = prediction.image_size
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None) / float(max(h * w, 1))
    values.update(
        class_frequency=[int(c) for c in prediction.class_ids[keep]],
        score=[float(s) for s in prediction.scores[keep]],
        detections_per_image=[int(keep.sum())],
        box_area=[float(a) for a in np.sqrt(area)])
  else:
    values.update(class_frequency=[int(prediction.class_ids[0])],
                  top_probability=[float(prediction.probabilities[0])])
  return values


def binning(name: str, values: np.ndarray, num_classes: int) -> dict:
  """How `name` is binned, fitted on the reference's values: {'kind':
  'categorical', 'size': K} or {'kind': 'edges', 'edges': [...]} (bin i
  holds edges[i-1] <= v < edges[i])."""
  if name == 'class_frequency':
    return {'kind': 'categorical', 'size': int(num_classes)}
  if name == 'detections_per_image':
    return {'kind': 'edges', 'edges': [i + 0.5 for i in range(MAX_COUNT)]}
  values = np.asarray(values, np.float64)
  if values.size == 0:
    return {'kind': 'edges', 'edges': []}
  inner = np.quantile(values, np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1])
  return {'kind': 'edges', 'edges': [float(e) for e in np.unique(inner)]}


def histogram(bins: dict, values) -> np.ndarray:
  """int64 counts of `values` in `bins` (`binning`'s)."""
  values = np.asarray(values, np.float64)
  if bins['kind'] == 'categorical':
    ids = values.astype(np.int64)
    return np.bincount(ids[(ids >= 0) & (ids < bins['size'])],
                       minlength=bins['size'])
  edges = np.asarray(bins['edges'], np.float64)
  return np.bincount(np.searchsorted(edges, values, side='right'),
                     minlength=len(edges) + 1)
