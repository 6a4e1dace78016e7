"""The confusion matrix of a detector at one IoU, with a background class.

Inputs are the plain COCO objects of `detector.evaluation.coco` (boxes
[x, y, w, h] in pixels).

Rows are the true class, columns the predicted class; the last row and
column are "background". Only detections with score >= score_threshold
count. A detection lands in

  [c, c]            it is a true positive of class c under COCO's matching
                    (the same matches as `prf.precision_recall_f1`);
  [t, c], t != c    otherwise, it overlaps a still-unmatched ground truth of
                    class t at IoU >= iou_threshold (detections in descending
                    score order, each taking the highest such IoU): a right
                    box with the wrong class;
  [background, c]   otherwise: a detection on background, or a duplicate of
                    an object already taken.

Each ground truth left unmatched lands in [t, background] (missed).
Detections that COCO's matching ignores (over a crowd region) and crowd
regions themselves are not counted. So row t sums to class t's ground truths
and column c to class c's counted detections.
"""

from typing import Sequence

import numpy as np

from detector.evaluation import prf
from detector.evaluation import tide


def confusion_matrix(groundtruth: dict, detections: Sequence[dict],
                     score_threshold: float,
                     iou_threshold: float = 0.5) -> dict:
  """Counts of (true class, predicted class) pairs; see the module docstring.

  Returns:
    {'labels': K category names (ascending id) + ['background'],
     'matrix': [K + 1, K + 1] int64 numpy array, rows true, columns
       predicted,
     'cell': [D] per input detection its (row, column), or None below the
       threshold or ignored,
     'missed': indices into groundtruth['annotations'] left unmatched}.

  Raises:
    ValueError: see `coco.check`.
  """
  kept = [i for i, d in enumerate(detections) if d['score'] >= score_threshold]
  chosen = [detections[i] for i in kept]
  category, outcome, _, names, matched = prf.match(
      groundtruth, chosen, iou_threshold, with_gt=True)
  annotations = groundtruth.get('annotations', [])
  # prf.match orders the categories by ascending id.
  cat_index = {cat: k for k, cat in enumerate(sorted(
      c['id'] for c in groundtruth.get('categories', [])))}
  background = len(names)
  matrix = np.zeros((background + 1, background + 1), np.int64)
  cell = [None] * len(detections)
  taken = set(int(j) for j in matched[outcome == prf.TP])
  for n in np.flatnonzero(outcome == prf.TP):
    matrix[category[n], category[n]] += 1
    cell[kept[n]] = (int(category[n]), int(category[n]))
  # The second pass, per image in descending score order (ties in input
  # order), over the detections COCO's matching left as false positives.
  free = {}
  for j, a in enumerate(annotations):
    if not a.get('iscrowd', 0) and j not in taken:
      free.setdefault(a['image_id'], []).append(j)
  false_pos = sorted(np.flatnonzero(outcome == prf.FP),
                     key=lambda n: -chosen[n]['score'])
  for n in false_pos:
    d = chosen[n]
    row = background
    candidates = [j for j in free.get(d['image_id'], [])
                  if annotations[j]['category_id'] != d['category_id']]
    if candidates:
      iou = tide.box_iou([d['bbox']], [annotations[j]['bbox']
                                       for j in candidates])[0]
      best = int(np.argmax(iou))
      if iou[best] >= iou_threshold:
        j = candidates[best]
        free[d['image_id']].remove(j)
        row = cat_index[annotations[j]['category_id']]
    matrix[row, category[n]] += 1
    cell[kept[n]] = (row, int(category[n]))
  missed = sorted(j for js in free.values() for j in js)
  for j in missed:
    matrix[cat_index[annotations[j]['category_id']], background] += 1
  return {'labels': list(names) + ['background'], 'matrix': matrix,
          'cell': cell, 'missed': missed}
