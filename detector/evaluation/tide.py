"""Detection errors in the TIDE sense (Bolya et al., ECCV 2020), and the AP
that fixing each kind would gain.

Inputs are the plain COCO objects of `detector.evaluation.coco` (boxes
[x, y, w, h] in pixels; crowd annotations are ignore regions).

TIDE scores at one IoU (`pos_threshold`, 0.5) with its own matching: per
image, detections in descending score order (the first `max_dets` = 100 of
the image over all classes), each takes the highest-IoU unused ground truth
of its class at IoU >= pos_threshold. An unmatched detection over a crowd
region of its class (crowd IoU > pos_threshold) is ignored: out of the AP, though
tidecv 1.0.1 still gives it an error kind. Every unmatched detection is one
error, tested in this order:

  Loc   its best IoU with a ground truth of its class is in [bg, pos]
  Cls   IoU >= pos with a ground truth of another class
  Dupe  IoU >= pos with a ground truth of its class already matched
  Bkg   IoU <= bg with every ground truth (bg = background_threshold, 0.1)
  Both  anything else (wrong class and poorly placed)

and every unmatched ground truth that no Loc or Cls error could have taken is
Miss. Fixing a kind recomputes the mean AP over classes with that kind
corrected and nothing else: a Cls or Loc error becomes the true positive of
its unmatched ground truth (only the highest-scoring error per ground truth;
the others are dropped), Dupe, Bkg and Both detections are dropped, a Miss
leaves the ground-truth count. The gain is max(fixed AP - AP, 0), in AP
points (0-100) as TIDE prints them. Two special gains: FalsePos (every false
positive scored below every true positive) and FalseNeg (every unmatched
ground truth removed).

This reproduces the `tidecv` package (1.0.1) number for number; the test
suite checks it against tidecv on random and real detections. It is written
here because tidecv needs OpenCV, pandas and seaborn at import time and loops
in Python over dictionaries; this works on arrays and keeps each detection's
kind, which the evaluation report draws.
"""

from typing import Dict, List, Sequence

import numpy as np

from detector.evaluation import coco

# TIDE's main error kinds, in its order; and the outcomes of the others.
MAIN_ERRORS = ('Cls', 'Loc', 'Both', 'Dupe', 'Bkg', 'Miss')
SPECIAL_ERRORS = ('FalsePos', 'FalseNeg')
TRUE_POSITIVE, NOT_SCORED = 'TP', 'beyond_max_dets'


def box_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray = None):
  """pycocotools' IoU of [N, 4] and [M, 4] [x, y, w, h] boxes -> [N, M].

  Where crowd[j], the union is the area of a's box (COCO's crowd IoU).
  Not `ops.boxes.pairwise_iou`: that takes corners and has no crowd IoU,
  and areas from corners round differently from w * h, which moves IoUs
  that sit exactly at a threshold.
  """
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  iw = (np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
        - np.maximum(a[:, None, 0], b[None, :, 0]))
  ih = (np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
        - np.maximum(a[:, None, 1], b[None, :, 1]))
  inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
  area_a = a[:, 2] * a[:, 3]
  union = area_a[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
  if crowd is not None:
    union = np.where(np.asarray(crowd, bool)[None, :], area_a[:, None], union)
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _ap(scores: np.ndarray, correct: np.ndarray, num_gt: int) -> float:
  """TIDE's AP of one class in points: the precision envelope sampled at 101
  recalls i / 100 (COCO's interpolation, but without COCO's epsilon in the
  precision and with recalls i / 100 rather than `linspace`'s i * 0.01).

  `scores` and `correct` are in the order TIDE holds them; the sort is stable.
  """
  if num_gt <= 0:
    return 0.0
  order = np.argsort(-scores, kind='stable')
  hits = np.cumsum(correct[order])
  precision = hits / np.arange(1, len(order) + 1)
  recall = hits / num_gt
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  at = np.searchsorted(recall, np.arange(101) / 100, side='left')
  sampled = np.zeros(101)
  sampled[at < len(precision)] = precision[at[at < len(precision)]]
  return float(np.mean(sampled) * 100)


def _mean_ap(points: Dict[int, List], num_gt: Dict[int, int]) -> float:
  """Mean over classes with points or ground truth (TIDE counts a class with
  detections and no ground truth as AP 0)."""
  aps = []
  for cls in num_gt:
    rows = points.get(cls, [])
    if not rows and num_gt[cls] == 0:
      continue
    scores = np.array([r[0] for r in rows], np.float64)
    correct = np.array([r[1] for r in rows], bool)
    aps.append(_ap(scores, correct, num_gt[cls]))
  return float(np.mean(aps)) if aps else 0.0


def analyse(groundtruth: dict, detections: Sequence[dict],
            pos_threshold: float = 0.5, background_threshold: float = 0.1,
            max_dets: int = 100) -> dict:
  """TIDE's error analysis of `detections` against `groundtruth`.

  Args:
    groundtruth: COCO annotation dict; crowd annotations are ignore regions.
    detections: COCO result dicts, boxes [x, y, w, h] in pixels.
    pos_threshold: IoU of a true positive.
    background_threshold: IoU at or below which a detection is background.
    max_dets: detections scored per image (highest scores first).

  Returns:
    {'ap': TIDE's mean AP at pos_threshold (points, 0-100),
     'delta_ap': {kind: AP points gained by fixing it} for MAIN_ERRORS and
       SPECIAL_ERRORS,
     'counts': {kind: number of errors} for MAIN_ERRORS,
     'detection_kind': [D] list, per input detection, its error kind, 'TP'
       or 'beyond_max_dets',
     'ignored': indices of the detections over a crowd region (out of the
       AP; tidecv still gives each an error kind, and so does this),
     'missed': indices into groundtruth['annotations'] of the Miss errors,
     'unmatched': indices of every unmatched non-crowd ground truth}.

  Raises:
    ValueError: see `coco.check`.
  """
  coco.check(groundtruth, detections)
  annotations = groundtruth.get('annotations', [])
  by_image_gt: Dict[int, List[int]] = {}
  for j, a in enumerate(annotations):
    by_image_gt.setdefault(a['image_id'], []).append(j)
  by_image_dt: Dict[int, List[int]] = {}
  for i, d in enumerate(detections):
    by_image_dt.setdefault(d['image_id'], []).append(i)
  kinds = [NOT_SCORED] * len(detections)
  # Per class: the AP points in push order, (score, correct, detection index).
  points: Dict[int, List] = {}
  num_gt: Dict[int, int] = {}
  errors = []  # (kind, detection index or -1, gt index or -1)
  best = {}    # gt index -> (score, detection index) of its best Cls/Loc error
  unmatched, missed, ignored = [], [], []
  for image in groundtruth.get('images', []):
    gt_idx = by_image_gt.get(image['id'], [])
    crowd = np.array([bool(annotations[j].get('iscrowd', 0)) for j in gt_idx],
                     bool)
    gts = [j for j, c in zip(gt_idx, crowd) if not c]
    regions = [j for j, c in zip(gt_idx, crowd) if c]
    for j in gts:
      cls = annotations[j]['category_id']
      num_gt[cls] = num_gt.get(cls, 0) + 1
    dts = by_image_dt.get(image['id'], [])
    dts = sorted(dts, key=lambda i: -detections[i]['score'])[:max_dets]
    gt_used = np.zeros(len(gts), bool)
    usable = np.zeros(len(gts), bool)
    if dts:
      dt_box = np.array([detections[i]['bbox'] for i in dts], np.float64)
      dt_cls = np.array([detections[i]['category_id'] for i in dts])
      gt_box = np.array([annotations[j]['bbox'] for j in gts],
                        np.float64).reshape(-1, 4)
      gt_cls = np.array([annotations[j]['category_id'] for j in gts])
      iou = box_iou(dt_box, gt_box)
      same = dt_cls[:, None] == gt_cls[None, :]
      cls_iou = iou * same
      buffer = cls_iou.copy()
      used = np.zeros(len(dts), object)  # True, False or None (ignored)
      used[:] = False
      matched_with = {}
      for p in range(len(dts)):
        if not len(gts):
          break
        g = int(np.argmax(buffer[p]))
        if buffer[p, g] >= pos_threshold:
          used[p] = True
          gt_used[g] = True
          matched_with[g] = p
          buffer[:, g] = 0
      for j in regions:
        region_iou = box_iou(dt_box, [annotations[j]['bbox']], [True])[:, 0]
        for p in range(len(dts)):
          if (used[p] is False and region_iou[p] > pos_threshold
              and annotations[j]['category_id'] == dt_cls[p]):
            used[p] = None
      used_cls = iou * same * gt_used[None, :]
      other_cls = iou * ~same
      for p, i in enumerate(dts):
        cls, score = dt_cls[p], detections[i]['score']
        if used[p] is None:
          ignored.append(i)
        else:
          points.setdefault(cls, []).append((score, bool(used[p]), i))
        if used[p]:
          kinds[i] = TRUE_POSITIVE
          continue
        # tidecv 1.0.1 also classifies the ignored detections: they count as
        # errors and a Cls/Loc fix can make one a true positive, but unfixed
        # they stay out of the AP.
        kind, g = 'Both', -1
        if not len(gts):
          kind = 'Bkg'
        elif background_threshold <= cls_iou[p].max() <= pos_threshold:
          kind, g = 'Loc', int(np.argmax(cls_iou[p]))
        elif other_cls[p].max() >= pos_threshold:
          kind, g = 'Cls', int(np.argmax(other_cls[p]))
        elif used_cls[p].max() >= pos_threshold:
          kind = 'Dupe'
        elif iou[p].max() <= background_threshold:
          kind = 'Bkg'
        kinds[i] = kind
        if kind in ('Loc', 'Cls') and not gt_used[g]:
          usable[g] = True
          if gts[g] not in best or best[gts[g]][0] < score:
            best[gts[g]] = (score, i)
        errors.append((kind, i, gts[g] if g >= 0 else -1, used[p] is False))
    for g, j in enumerate(gts):
      if not gt_used[g]:
        unmatched.append(j)
        if not usable[g]:
          missed.append(j)
          errors.append(('Miss', -1, j, False))

  for cls in points:
    num_gt.setdefault(cls, 0)
  ap = _mean_ap(points, num_gt)

  def fixed(kind=None, scores_of=None, fewer_gt=None):
    """Mean AP with errors of `kind` fixed, TIDE's way."""
    gt_count = dict(num_gt)
    rows: Dict[int, List] = {}
    for error, i, j, scored in errors:  # Errors first, then the true positives.
      if error == 'Miss':
        if error == kind:
          gt_count[annotations[j]['category_id']] -= 1
        continue
      cls, score = detections[i]['category_id'], detections[i]['score']
      correct = False
      if error == kind:
        if error not in ('Cls', 'Loc') or j < 0 or best.get(j, (0, -1))[1] != i:
          continue
        correct = True
        if error == 'Cls':
          cls = annotations[j]['category_id']
      elif not scored:
        continue
      if scores_of is not None:
        score = scores_of(correct)
      rows.setdefault(cls, []).append((score, correct))
    for cls, kept in points.items():
      for score, correct, _ in kept:
        if correct:
          rows.setdefault(cls, []).append(
              (scores_of(True) if scores_of else score, True))
    if fewer_gt:
      for j in fewer_gt:
        gt_count[annotations[j]['category_id']] -= 1
    return _mean_ap(rows, gt_count)

  delta = {kind: max(fixed(kind) - ap, 0.0) for kind in MAIN_ERRORS}
  delta['FalsePos'] = fixed(scores_of=lambda correct: 1.0 if correct else 0.0) - ap
  delta['FalseNeg'] = fixed(fewer_gt=unmatched) - ap
  counts = {kind: 0 for kind in MAIN_ERRORS}
  for error, *_ in errors:
    counts[error] += 1
  return {'ap': ap, 'delta_ap': delta, 'counts': counts,
          'detection_kind': kinds, 'ignored': ignored, 'missed': missed,
          'unmatched': unmatched}
