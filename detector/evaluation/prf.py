"""Precision, recall and F1 of COCO-format detections at a score threshold.

Inputs are the same plain COCO objects as `detector.evaluation.coco`: a COCO
annotation dict (boxes [x, y, w, h] in pixels, "iscrowd" 0/1) and a list of
{"image_id", "category_id", "bbox": [x, y, w, h], "score"} result dicts.

Matching is COCO's greedy matching at a single IoU threshold, with no cap on
detections per image: within each (image, category), detections in
descending score order (ties keep input order) each take the still-unmatched
non-crowd ground truth with the highest IoU >= iou_threshold (ties in IoU go to
the later annotation, as in pycocotools). A detection with no such match but
with a crowd region at IoU >= iou_threshold (crowd IoU = intersection /
detection area) is ignored: neither TP nor FP. Everything else is FP; every
unmatched non-crowd ground truth is FN, crowd regions never are.

Because the matching is greedy in score order, the detections above a lower
threshold never change the matches of those above a higher one, so a single
matching yields the counts at every threshold (`precision_recall_f1_sweep`).
"""

from typing import Optional, Sequence

import numpy as np

from detector.evaluation import coco

_FP, _TP, _IGNORED = 0, 1, 2


def _outcomes(gt: coco.GroundTruth, dt: coco.Detections,
              iou_threshold: float) -> np.ndarray:
  """[D] int8 outcome per detection (input order): _TP, _FP or _IGNORED."""
  order, _, matched, matched_ignored = coco.match_detections(
      gt, dt, gt.crowd[:, None], np.array([iou_threshold], np.float64))
  outcome = np.full(len(dt.scores), _FP, np.int8)
  outcome[order] = np.where(matched[:, 0, 0],
                            np.where(matched_ignored[:, 0, 0], _IGNORED, _TP),
                            _FP)
  return outcome


def _ratios(tp, fp, fn):
  """Precision, recall, F1 of count arrays (any shape), 0 where undefined."""
  tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
  precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
  recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
  total = precision + recall
  f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp),
                 where=total > 0)
  return precision, recall, f1


def _report(tp, fp, fn) -> dict:
  """Scalar counts -> {'precision', 'recall', 'f1', 'tp', 'fp', 'fn'}."""
  precision, recall, f1 = _ratios(tp, fp, fn)
  return {'precision': float(precision), 'recall': float(recall),
          'f1': float(f1), 'tp': int(tp), 'fp': int(fp), 'fn': int(fn)}


def precision_recall_f1(groundtruth: dict, detections: Sequence[dict],
                        score_threshold: float,
                        iou_threshold: float = 0.5) -> dict:
  """Precision/recall/F1 of the detections with score >= score_threshold.

  Args:
    groundtruth: COCO annotation dict.
    detections: list of COCO result dicts, boxes [x, y, w, h].
    score_threshold: keep detections with score >= this.
    iou_threshold: a match needs IoU >= this.

  Returns:
    {'precision', 'recall', 'f1', 'tp', 'fp', 'fn', 'score_threshold',
    'iou_threshold', 'per_class': {category name: {'precision', 'recall',
    'f1', 'tp', 'fp', 'fn'}}}. Precision is 0 without detections, recall 0
    without ground truth, F1 0 when both are 0.

  Raises:
    ValueError: on unknown image/category ids or negative box sizes.
  """
  gt = coco.load_groundtruth(groundtruth)
  dt = coco.load_detections(detections, gt)
  keep = dt.scores >= score_threshold
  dt = coco.Detections(image=dt.image[keep], category=dt.category[keep],
                       boxes=dt.boxes[keep], scores=dt.scores[keep])
  outcome = _outcomes(gt, dt, iou_threshold)
  num_k = len(gt.category_ids)
  tp = np.bincount(dt.category[outcome == _TP], minlength=num_k)
  fp = np.bincount(dt.category[outcome == _FP], minlength=num_k)
  fn = np.bincount(gt.category[~gt.crowd], minlength=num_k) - tp
  result = _report(tp.sum(), fp.sum(), fn.sum())
  result['score_threshold'] = float(score_threshold)
  result['iou_threshold'] = float(iou_threshold)
  result['per_class'] = {name: _report(tp[k], fp[k], fn[k])
                         for k, name in enumerate(gt.category_names)}
  return result


def _sweep_counts(scores, outcome, num_gt, thresholds):
  """TP/FP/FN at each threshold from one matching.

  Args:
    scores: [N] detection scores; outcome: [N] their outcomes.
    num_gt: number of non-crowd ground truths.
    thresholds: [S] score thresholds.

  Returns:
    tp, fp, fn: [S] int64 counts over detections with score >= threshold.
  """
  order = np.argsort(scores, kind='stable')
  is_tp = np.r_[0, np.cumsum(outcome[order][::-1] == _TP)]
  is_fp = np.r_[0, np.cumsum(outcome[order][::-1] == _FP)]
  # Detections with score >= s are the last (N - searchsorted) in ascending
  # order, i.e. the first that many of the reversed cumulative counts.
  above = len(scores) - np.searchsorted(scores[order], thresholds, 'left')
  tp, fp = is_tp[above], is_fp[above]
  return tp, fp, num_gt - tp


def precision_recall_f1_sweep(groundtruth: dict, detections: Sequence[dict],
                              iou_threshold: float = 0.5,
                              score_thresholds: Optional[Sequence[float]] = None
                              ) -> dict:
  """Precision/recall/F1 at many score thresholds from a single matching.

  Equal, threshold by threshold, to `precision_recall_f1`.

  Args:
    groundtruth: COCO annotation dict.
    detections: list of COCO result dicts, boxes [x, y, w, h].
    iou_threshold: a match needs IoU >= this.
    score_thresholds: [S] thresholds; defaults to the distinct detection
      scores, descending (every distinct operating point).

  Returns:
    {'score_thresholds', 'precision', 'recall', 'f1', 'tp', 'fp', 'fn'}: [S]
    arrays; 'best': the {'score_threshold', 'precision', 'recall', 'f1'} of the
    highest F1 (the highest threshold among equal F1s; None if S == 0);
    'iou_threshold'; 'per_class': {category name: {'precision', 'recall',
    'f1', 'tp', 'fp', 'fn'} [S] arrays}.

  Raises:
    ValueError: on unknown image/category ids or negative box sizes.
  """
  gt = coco.load_groundtruth(groundtruth)
  dt = coco.load_detections(detections, gt)
  if score_thresholds is None:
    thresholds = np.unique(dt.scores)[::-1]
  else:
    thresholds = np.asarray(score_thresholds, np.float64).reshape(-1)
  outcome = _outcomes(gt, dt, iou_threshold)
  real = ~gt.crowd
  tp, fp, fn = _sweep_counts(dt.scores, outcome, int(real.sum()), thresholds)
  precision, recall, f1 = _ratios(tp, fp, fn)
  result = {'score_thresholds': thresholds, 'precision': precision,
            'recall': recall, 'f1': f1, 'tp': tp, 'fp': fp, 'fn': fn,
            'iou_threshold': float(iou_threshold), 'best': None}
  if len(thresholds):
    i = int(np.argmax(f1))
    result['best'] = {'score_threshold': float(thresholds[i]),
                      'precision': float(precision[i]),
                      'recall': float(recall[i]), 'f1': float(f1[i])}
  per_class = {}
  for k, name in enumerate(gt.category_names):
    mine = dt.category == k
    counts = _sweep_counts(dt.scores[mine], outcome[mine],
                           int((real & (gt.category == k)).sum()), thresholds)
    ratios = _ratios(*counts)
    per_class[name] = dict(zip(('precision', 'recall', 'f1'), ratios))
    per_class[name].update(zip(('tp', 'fp', 'fn'), counts))
  result['per_class'] = per_class
  return result
