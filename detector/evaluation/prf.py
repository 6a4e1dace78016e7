"""Precision, recall and F1 of COCO-format detections at a score threshold.

Inputs are the same plain COCO objects as `detector.evaluation.coco`: a COCO
annotation dict (boxes [x, y, w, h] in pixels, "iscrowd" 0/1) and a list of
{"image_id", "category_id", "bbox": [x, y, w, h], "score"} result dicts.

The matching is COCO's per-image greedy matching (faster-coco-eval's port of
pycocotools' `COCOeval.evaluate`) at the single IoU threshold, with one area
range covering every box and no cap on detections per image: within each
(image, category), detections in descending score order (ties keep input
order) each take the still-unmatched non-crowd ground truth with the highest
IoU >= iou_threshold (ties in IoU go to the later annotation). A detection
with no such match but with a crowd region at IoU >= iou_threshold (crowd IoU
= intersection / detection area) is ignored: neither TP nor FP. Everything
else is FP; every unmatched non-crowd ground truth is FN, crowd regions never
are. Each detection's match is read from the evaluator's record of matches;
this module adds the counts at a score threshold and the sweep over
thresholds.

Because the matching is greedy in score order, the detections above a lower
threshold never change the matches of those above a higher one, so a single
matching yields the counts at every threshold (`precision_recall_f1_sweep`).
"""

from typing import Optional, Sequence

import numpy as np

from detector.evaluation import coco

FP, TP, IGNORED, UNSCORED = 0, 1, 2, 3


def _rank_in_image(detections: Sequence[dict]) -> np.ndarray:
  """[D] each detection's rank by descending score among the detections of
  its image and category (ties in input order), as COCO truncates them."""
  groups = {}
  for i, d in enumerate(detections):
    groups.setdefault((d['image_id'], d['category_id']), []).append(i)
  rank = np.zeros(len(detections), np.int64)
  for members in groups.values():
    scores = np.array([detections[i]['score'] for i in members], np.float64)
    rank[np.array(members)[np.argsort(-scores, kind='stable')]] = np.arange(
        len(members))
  return rank


def match(groundtruth: dict, detections: Sequence[dict], iou_threshold: float,
           max_dets: Optional[int] = None, with_gt: bool = False):
  """COCO's matching of every detection at one IoU threshold.

  Args:
    max_dets: COCO's cap on detections per image and category (the others
      are UNSCORED); None for no cap.
    with_gt: also return each detection's matched annotation.

  Returns:
    category: [D] int64 index of each detection's category in `names`.
    outcome: [D] int8 TP, FP, IGNORED or UNSCORED per detection (input
      order).
    num_gt: [K] int64 non-crowd ground truths per category.
    names: K category names, ascending id.
    (with_gt) matched: [D] int64 index into groundtruth['annotations'] of
      each detection's match, -1 for none.
  """
  evaluation, names = coco.evaluator(groundtruth, detections, extra_calc=True)
  params = evaluation.params
  params.iouThrs = np.array([iou_threshold], np.float64)
  # Unbounded areas: matching with only crowds ignored.
  params.areaRng, params.areaRngLbl = [[0.0, np.inf]], ['all']
  params.maxDets = [max(len(detections), 1) if max_dets is None else max_dets]
  with coco.quiet():
    evaluation.evaluate()
    evaluation.accumulate()
  cat_ids = sorted(names)
  index = {cat: k for k, cat in enumerate(cat_ids)}
  category = np.array([index[d['category_id']] for d in detections], np.int64)
  outcome = np.full(len(detections), FP, np.int8)
  matched = np.full(len(detections), -1, np.int64)
  annotations = groundtruth.get('annotations', [])
  crowd = np.array([bool(a.get('iscrowd', 0)) for a in annotations], bool)
  # "<detection id>_<annotation id>": both numbered from 1 in list order.
  for key in evaluation.eval['matched']:
    dt_id, gt_id = (int(i) - 1 for i in key.split('_'))
    outcome[dt_id] = IGNORED if crowd[gt_id] else TP
    matched[dt_id] = gt_id
  if max_dets is not None and len(detections):
    outcome[_rank_in_image(detections) >= max_dets] = UNSCORED
  gt_category = np.array([index[a['category_id']] for a in annotations],
                         np.int64)
  num_gt = np.bincount(gt_category[~crowd], minlength=len(cat_ids))
  result = (category, outcome, num_gt, [names[cat] for cat in cat_ids])
  return result + (matched,) if with_gt else result


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
    iou_threshold: a match needs IoU >= this (pycocotools caps it at
      1 - 1e-10).

  Returns:
    {'precision', 'recall', 'f1', 'tp', 'fp', 'fn', 'score_threshold',
    'iou_threshold', 'per_class': {category name: {'precision', 'recall',
    'f1', 'tp', 'fp', 'fn'}}}. Precision is 0 without detections, recall 0
    without ground truth, F1 0 when both are 0.

  Raises:
    ValueError: see `coco.check`.
  """
  coco.check(groundtruth, detections)  # errors name the caller's indices
  kept = [d for d in detections if d['score'] >= score_threshold]
  category, outcome, num_gt, names = match(groundtruth, kept, iou_threshold)
  tp = np.bincount(category[outcome == TP], minlength=len(names))
  fp = np.bincount(category[outcome == FP], minlength=len(names))
  fn = num_gt - tp
  result = _report(tp.sum(), fp.sum(), fn.sum())
  result['score_threshold'] = float(score_threshold)
  result['iou_threshold'] = float(iou_threshold)
  result['per_class'] = {name: _report(tp[k], fp[k], fn[k])
                         for k, name in enumerate(names)}
  return result


def _best(thresholds, precision, recall, f1) -> Optional[dict]:
  """The sweep's point of highest F1 (thresholds descend, so the first
  maximum is the highest threshold among equal F1s); None without points."""
  if not len(thresholds):
    return None
  i = int(np.argmax(f1))
  return {'score_threshold': float(thresholds[i]),
          'precision': float(precision[i]), 'recall': float(recall[i]),
          'f1': float(f1[i])}


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
  is_tp = np.r_[0, np.cumsum(outcome[order][::-1] == TP)]
  is_fp = np.r_[0, np.cumsum(outcome[order][::-1] == FP)]
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
    iou_threshold: a match needs IoU >= this (pycocotools caps it at
      1 - 1e-10).
    score_thresholds: [S] thresholds; defaults to the distinct detection
      scores, descending (every distinct operating point).

  Returns:
    {'score_thresholds', 'precision', 'recall', 'f1', 'tp', 'fp', 'fn'}: [S]
    arrays; 'best': the {'score_threshold', 'precision', 'recall', 'f1'} of the
    highest F1 (the highest threshold among equal F1s; None if S == 0);
    'iou_threshold'; 'per_class': {category name: {'precision', 'recall',
    'f1', 'tp', 'fp', 'fn'} [S] arrays and the class's 'best'}.

  Raises:
    ValueError: see `coco.check`.
  """
  category, outcome, num_gt, names = match(groundtruth, detections,
                                            iou_threshold)
  scores = np.array([d['score'] for d in detections], np.float64).reshape(-1)
  if score_thresholds is None:
    thresholds = np.unique(scores)[::-1]
  else:
    thresholds = np.asarray(score_thresholds, np.float64).reshape(-1)
  tp, fp, fn = _sweep_counts(scores, outcome, int(num_gt.sum()), thresholds)
  precision, recall, f1 = _ratios(tp, fp, fn)
  result = {'score_thresholds': thresholds, 'precision': precision,
            'recall': recall, 'f1': f1, 'tp': tp, 'fp': fp, 'fn': fn,
            'iou_threshold': float(iou_threshold),
            'best': _best(thresholds, precision, recall, f1)}
  per_class = {}
  for k, name in enumerate(names):
    mine = category == k
    counts = _sweep_counts(scores[mine], outcome[mine], int(num_gt[k]),
                           thresholds)
    ratios = _ratios(*counts)
    per_class[name] = dict(zip(('precision', 'recall', 'f1'), ratios))
    per_class[name].update(zip(('tp', 'fp', 'fn'), counts))
    per_class[name]['best'] = _best(thresholds, *ratios)
  result['per_class'] = per_class
  return result
