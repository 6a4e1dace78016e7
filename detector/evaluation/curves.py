"""Per-class precision-recall curves under COCO's matching, and AP over
ranges of any box property (COCO's area ranges, or aspect ratio).

Inputs are the plain COCO objects of `detector.evaluation.coco`: a COCO
annotation dict and a list of {"image_id", "category_id", "bbox": [x, y, w,
h] in pixels, "score"} result dicts.

A class's curve has one point per scored detection of that class, in COCO's
order: descending score, ties by ascending image id, then input order (the
order `COCOeval.accumulate` reaches by sorting each image's detections and
then all of them with a stable sort). The matching is COCO's at one IoU with
area "all" and at most `max_dets` detections per image and class; detections
matched to a crowd region count neither way. Sampled at COCO's 101 recall
thresholds after taking the precision envelope, the curve gives the class's
AP at that IoU as the COCO evaluator does (the test suite checks it).
"""

from typing import Dict, Sequence

import numpy as np

from detector.evaluation import coco
from detector.evaluation import prf

RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs.
# TIDE's aspect-ratio bins (width / height), used for AP by aspect ratio.
ASPECT_RANGES = {'tall': (0.0, 0.75), 'square': (0.75, 1.33),
                 'wide': (1.33, np.inf)}


def interpolate(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
  """COCO's 101-point precision of a curve.

  Args:
    precision, recall: [N] along the curve (recall non-decreasing).

  Returns:
    [101] the precision envelope (max precision at any higher recall) at
    recalls 0, 0.01, ..., 1; 0 beyond the curve's last recall.
  """
  precision = np.asarray(precision, np.float64)
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  at = np.searchsorted(np.asarray(recall, np.float64), RECALL_THRESHOLDS,
                       side='left')
  out = np.zeros(len(RECALL_THRESHOLDS))
  inside = at < len(envelope)
  out[inside] = envelope[at[inside]]
  return out


def precision_recall_curves(groundtruth: dict, detections: Sequence[dict],
                            iou_threshold: float = 0.5,
                            max_dets: int = 100) -> Dict[str, dict]:
  """The precision-recall curve of each class at one IoU.

  Args:
    groundtruth: COCO annotation dict.
    detections: COCO result dicts, boxes [x, y, w, h].
    iou_threshold: a match needs IoU >= this.
    max_dets: COCO's cap on detections per image and class.

  Returns:
    {category name: {'scores', 'precision', 'recall': [N] float64 along the
    curve, 'num_gt': non-crowd ground truths, 'interpolated': [101] (see
    `interpolate`), 'ap': its mean, or -1.0 without ground truth (COCO's
    convention)}}, categories by ascending id.

  Raises:
    ValueError: see `coco.check`.
  """
  category, outcome, num_gt, names = prf.match(
      groundtruth, detections, iou_threshold, max_dets=max_dets)
  image_rank = {image['id']: r for r, image in enumerate(
      sorted(groundtruth.get('images', []), key=lambda im: im['id']))}
  scores = np.array([d['score'] for d in detections], np.float64)
  images = np.array([image_rank[d['image_id']] for d in detections], np.int64)
  order = np.lexsort((np.arange(len(detections)), images, -scores))
  curves = {}
  for k, name in enumerate(names):
    mine = order[(category[order] == k)
                 & np.isin(outcome[order], (prf.TP, prf.FP))]
    tp = np.cumsum(outcome[mine] == prf.TP)
    fp = np.cumsum(outcome[mine] == prf.FP)
    # COCO's precision adds machine epsilon to the denominator.
    precision = tp / (tp + fp + np.spacing(1))
    recall = tp / max(int(num_gt[k]), 1)
    interpolated = interpolate(precision, recall)
    curves[name] = {
        'scores': scores[mine], 'precision': precision, 'recall': recall,
        'num_gt': int(num_gt[k]), 'interpolated': interpolated,
        'ap': float(np.mean(interpolated)) if num_gt[k] else -1.0}
  return curves


def operating_point(curve: dict, score_threshold: float) -> dict:
  """The point of `curve` reached by keeping scores >= score_threshold:
  {'precision', 'recall'} (both 0 when no detection is kept)."""
  kept = int(np.sum(curve['scores'] >= score_threshold))
  if not kept:
    return {'precision': 0.0, 'recall': 0.0}
  return {'precision': float(curve['precision'][kept - 1]),
          'recall': float(curve['recall'][kept - 1])}


def ap_by_range(groundtruth: dict, detections: Sequence[dict],
                ranges: Dict[str, tuple], measure: str) -> Dict[str, dict]:
  """AP@[.5:.95] and AP50 over ranges of a box property, with COCO's rules
  for area ranges: ground truth outside the range is ignored, and so are
  unmatched detections outside it.

  Args:
    groundtruth, detections: COCO objects.
    ranges: {label: (low, high)} of the property, both ends inclusive (as
      COCO's area ranges are).
    measure: 'area' (the annotation's "area", else w * h; detections w * h)
      or 'aspect' (box width / height).

  Returns:
    {label: {'AP', 'AP50', 'num_gt'}}, AP -1.0 where the range holds no
    ground truth.

  Raises:
    ValueError: see `coco.check`; an unknown measure.
  """
  if measure not in ('area', 'aspect'):
    raise ValueError(f'measure {measure!r}: expected "area" or "aspect"')

  def value(record, is_gt):
    x, y, w, h = record['bbox']
    if measure == 'area':
      return record['area'] if is_gt and 'area' in record else w * h
    return w / h if h > 0 else np.inf

  annotations = [dict(a, area=value(a, True))
                 for a in groundtruth.get('annotations', [])]
  # COCO keys its area ranges on the "area" field of both sides, so the
  # property goes there; built directly, as loadRes would overwrite it.
  results = [dict(d, area=value(d, False)) for d in detections]
  evaluation, _ = coco.evaluator(dict(groundtruth, annotations=annotations),
                                 results, own_area=True)
  evaluation.params.areaRng = [[float(low), float(high)]
                               for low, high in ranges.values()]
  evaluation.params.areaRngLbl = list(ranges)
  with coco.quiet():
    evaluation.evaluate()
    evaluation.accumulate()
  t50 = int(np.flatnonzero(evaluation.params.iouThrs == .5)[0])
  out = {}
  for r, (label, (low, high)) in enumerate(ranges.items()):
    precision = evaluation.eval['precision'][:, :, :, r, -1]  # [T, R, K]
    # Classes without ground truth in range hold -1 and are left out.
    valid = precision[0, 0, :] > -1
    ap = float(np.mean(precision[:, :, valid])) if valid.any() else -1.0
    ap50 = float(np.mean(precision[t50][:, valid])) if valid.any() else -1.0
    num = sum(1 for a in annotations if not a.get('iscrowd', 0)
              and low <= a['area'] <= high)
    out[label] = {'AP': ap, 'AP50': ap50, 'num_gt': num}
  return out
