"""Whether a model's outputs on the canary images equal the recorded ones.

Recorded outputs and fresh ones come from the same artefact through the
same `detector.load` path, so they agree to float rounding; what this
catches is a deployment that changed the model's function (other weights,
a corrupted file, other preprocessing). Detections are matched one to one
rather than compared by position, so two near-equal scores that swap order
do not fail it.
"""

from typing import List, Tuple

import numpy as np

from detector.ops import boxes as box_ops

MIN_SCORE = 0.1      # Detections below this are not compared.
SCORE_TOL = 0.01     # |score difference| allowed.
MIN_IOU = 0.98       # Box overlap required of a match.
PROBABILITY_TOL = 1e-3


def record(prediction) -> dict:
  """A prediction (`Detections` or `Classification`) as stored."""
  if hasattr(prediction, 'boxes'):
    keep = prediction.scores >= MIN_SCORE - SCORE_TOL
    as64 = lambda a: np.asarray(a, np.float64)  # Short JSON decimals.
    return {'boxes': np.round(as64(prediction.boxes[keep]), 3).tolist(),
            'scores': np.round(as64(prediction.scores[keep]), 6).tolist(),
            'class_ids': prediction.class_ids[keep].tolist()}
  return {'class_ids': prediction.class_ids.tolist(),
          'probabilities': np.round(np.asarray(prediction.probabilities,
                                               np.float64), 6).tolist()}


def _unmatched(ours: dict, theirs: dict) -> List[str]:
  """Detections of `ours` scoring >= MIN_SCORE that `theirs` lacks."""
  boxes = np.asarray(theirs['boxes'], np.float64).reshape(-1, 4)
  scores = np.asarray(theirs['scores'], np.float64)
  classes = np.asarray(theirs['class_ids'])
  used = np.zeros(len(scores), bool)
  missing = []
  for box, score, cls in zip(ours['boxes'], ours['scores'], ours['class_ids']):
    if score < MIN_SCORE:
      continue
    ok = ((classes == cls) & ~used & (np.abs(scores - score) <= SCORE_TOL))
    if ok.any():
      # IoU is the same in xyxy as in the yxyx pairwise_iou documents.
      iou = np.asarray(box_ops.pairwise_iou(np.asarray([box]), boxes))[0]
      ious = np.where(ok, iou, -1.0)
      best = int(np.argmax(ious))
      if ious[best] >= MIN_IOU:
        used[best] = True
        continue
    # A detection at the edge of MIN_SCORE may fall just below it.
    if score < MIN_SCORE + SCORE_TOL:
      continue
    missing.append(f'class {cls} score {score:.3f} box '
                   f'{[round(float(v), 1) for v in box]}')
  return missing


def _top_k_differences(e: dict, a: dict) -> List[str]:
  """Classes whose probabilities differ, compared by class (near-equal ones
  may swap places); a class in one top-k only must be at its edge."""
  pe = dict(zip(e['class_ids'], e['probabilities']))
  pa = dict(zip(a['class_ids'], a['probabilities']))
  out = []
  for cls in sorted(set(pe) | set(pa)):
    if cls in pe and cls in pa:
      if abs(pe[cls] - pa[cls]) > PROBABILITY_TOL:
        out.append(f'class {cls}: probability {pa[cls]:.4f}, recorded '
                   f'{pe[cls]:.4f}')
    else:
      here, other = (pe, pa) if cls in pe else (pa, pe)
      if here[cls] > min(other.values(), default=0.0) + PROBABILITY_TOL:
        out.append(f'class {cls} ({here[cls]:.4f}) is in one top-k only')
  return out


def compare(expected: List[dict], actual: List[dict]) -> Tuple[bool, List[str]]:
  """(equal, the differences) of recorded and fresh `record`s, per image."""
  problems = []
  if len(expected) != len(actual):
    return False, [f'{len(actual)} outputs for {len(expected)} images']
  for i, (e, a) in enumerate(zip(expected, actual)):
    if 'boxes' in e:
      problems += [f'image {i}: recorded {m}, now missing'
                   for m in _unmatched(e, a)]
      problems += [f'image {i}: new {m}, not recorded'
                   for m in _unmatched(a, e)]
    else:
      problems += [f'image {i}: {m}' for m in _top_k_differences(e, a)]
  return not problems, problems
