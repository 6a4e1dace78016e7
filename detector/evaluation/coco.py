"""Vectorised COCO box evaluation (AP/AR), numerically equal to pycocotools.

Reproduces `COCOeval(coco_gt, coco_dt, 'bbox')` with `useCats=1` and default
parameters, tie-breaking included, so the 12 summary numbers and the
precision/recall arrays come out bit-identical rather than merely close.

Inputs are plain COCO objects:
  * ground truth: a COCO annotation dict with "images", "categories" and
    "annotations"; boxes are [x, y, w, h] in pixels, "area" is the annotation's
    (segmentation) area and "iscrowd" is 0/1.
  * detections: a list of {"image_id", "category_id", "bbox": [x, y, w, h],
    "score"} result dicts.

Shapes: T IoU thresholds (10), R recall points (101), K categories (ascending
id), A area ranges (all, small, medium, large), M max-detection limits
(1, 10, 100), I images (ascending id), G annotations, D detections.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

# Built like pycocotools' Params: the exact float values decide comparisons of
# IoUs that land on a threshold.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1)
AREA_LABELS = ('all', 'small', 'medium', 'large')
AREA_RANGES = np.array([[0 ** 2, 1e5 ** 2], [0 ** 2, 32 ** 2],
                        [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]], np.float64)
MAX_DETECTIONS = (1, 10, 100)
SUMMARY_KEYS = ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large',
                'AR1', 'AR10', 'AR100', 'AR_small', 'AR_medium', 'AR_large')


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """A validated COCO ground truth as arrays.

  Attributes:
    image_ids: [I] image ids, ascending (pycocotools' image order).
    category_ids: [K] category ids, ascending; category_names: K names.
    image, category: [G] int64 indices into image_ids / category_ids.
    boxes: [G, 4] float64 [x, y, w, h] boxes in pixels.
    area: [G] float64 the annotations' "area" field (w * h where absent).
    crowd: [G] bool, the annotations' "iscrowd" flag.
  """
  image_ids: np.ndarray
  category_ids: np.ndarray
  category_names: tuple
  image: np.ndarray
  category: np.ndarray
  boxes: np.ndarray
  area: np.ndarray
  crowd: np.ndarray


@dataclasses.dataclass(frozen=True)
class Detections:
  """Validated detections as arrays, indices relative to a `GroundTruth`.

  Attributes:
    image, category: [D] int64 indices into GroundTruth.image_ids/category_ids.
    boxes: [D, 4] float64 [x, y, w, h] boxes in pixels.
    scores: [D] float64 confidences.
  """
  image: np.ndarray
  category: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray


@dataclasses.dataclass(frozen=True)
class CocoEvaluation:
  """Accumulated results, laid out like pycocotools' `COCOeval.eval`.

  The T, R, A and M axes follow IOU_THRESHOLDS, RECALL_THRESHOLDS, AREA_LABELS
  and MAX_DETECTIONS; precision[t, :, k, 0, -1] against RECALL_THRESHOLDS is
  category k's PR curve at IoU threshold t.

  Attributes:
    precision: [T, R, K, A, M] interpolated precision; -1 where the category
      has no non-ignored ground truth in that area range.
    recall: [T, K, A, M] final recall, -1 under the same condition.
    scores: [T, R, K, A, M] detection score at each recall point, 0 past the
      last recall reached, -1 as above.
    category_ids: [K] ascending category ids; category_names: K names.
  """
  precision: np.ndarray
  recall: np.ndarray
  scores: np.ndarray
  category_ids: np.ndarray
  category_names: tuple


def _sorted_ids(records, what: str) -> np.ndarray:
  """The records' ids ascending, as pycocotools orders them; no duplicates."""
  ids = sorted(r['id'] for r in records)
  for a, b in zip(ids, ids[1:]):
    if a == b:
      raise ValueError(f'duplicate id {a!r} in {what}')
  return np.array(ids)


def _lookup(records, field, ids, where, target) -> np.ndarray:
  """[N] int64 positions of records[i][field] in sorted `ids`.

  Raises:
    ValueError: naming the first record whose id is not in `ids`.
  """
  values = [r[field] for r in records]
  found = np.array(values)
  if found.ndim == 1 and found.dtype.kind in 'iu' and ids.dtype.kind in 'iu':
    # Integer ids (the COCO norm): bisection is ~5x faster than dict look-ups.
    out = np.minimum(np.searchsorted(ids, found), ids.size - 1)
    out = np.where(ids[out] == found, out, -1)
  else:
    index = {id_: i for i, id_ in enumerate(ids.tolist())}
    out = np.fromiter((index.get(v, -1) for v in values), np.int64, len(values))
  bad = np.flatnonzero(out < 0)
  if bad.size:
    i = int(bad[0])
    raise ValueError(f'{where}[{i}]: {field} {values[i]!r} is not in {target}')
  return out


def _boxes(records, where) -> np.ndarray:
  """[N, 4] float64 boxes; rejects malformed boxes and negative sizes."""
  try:
    boxes = np.asarray([r['bbox'] for r in records], np.float64)
    boxes = boxes.reshape(len(records), 4)
  except (ValueError, TypeError) as e:
    raise ValueError(f'{where}: every bbox must be [x, y, w, h] ({e})') from e
  bad = np.flatnonzero((boxes[:, 2] < 0) | (boxes[:, 3] < 0))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f'{where}[{i}]: bbox {records[i]["bbox"]!r} has negative '
                     'width or height')
  return boxes


def load_groundtruth(groundtruth: dict) -> GroundTruth:
  """Validates a COCO annotation dict and converts it to arrays.

  Raises:
    ValueError: on duplicate image/category ids or category names, an
      annotation whose image_id/category_id is unknown, or a box with negative
      width/height (messages name the annotation's index).
  """
  categories = sorted(groundtruth.get('categories', []), key=lambda c: c['id'])
  anns = groundtruth.get('annotations', [])
  image_ids = _sorted_ids(groundtruth.get('images', []), "groundtruth['images']")
  category_ids = _sorted_ids(categories, "groundtruth['categories']")
  names = tuple(str(c.get('name', c['id'])) for c in categories)
  if len(set(names)) != len(names):
    raise ValueError("duplicate category names in groundtruth['categories']; "
                     'per-class results are keyed by name')
  where = "groundtruth['annotations']"
  image = _lookup(anns, 'image_id', image_ids, where, "groundtruth['images']")
  category = _lookup(anns, 'category_id', category_ids, where,
                     "groundtruth['categories']")
  boxes = _boxes(anns, where)
  # pycocotools requires "area"; the box area keeps converted datasets that
  # lack segmentation areas usable.
  area = np.array([a['area'] if 'area' in a else b[2] * b[3]
                   for a, b in zip(anns, boxes)], np.float64).reshape(-1)
  crowd = np.array([bool(a.get('iscrowd', 0)) for a in anns], bool).reshape(-1)
  return GroundTruth(image_ids, category_ids, names, image, category, boxes,
                     area, crowd)


def load_detections(detections: Sequence[dict], gt: GroundTruth) -> Detections:
  """Validates COCO result dicts against `gt` and converts them to arrays.

  Raises:
    ValueError: on an image_id/category_id absent from the ground truth or a
      box with negative width/height (messages name the detection's index).
  """
  image = _lookup(detections, 'image_id', gt.image_ids, 'detections',
                  "groundtruth['images']")
  category = _lookup(detections, 'category_id', gt.category_ids, 'detections',
                     "groundtruth['categories']")
  boxes = _boxes(detections, 'detections')
  scores = np.array([d['score'] for d in detections], np.float64).reshape(-1)
  return Detections(image, category, boxes, scores)


def pairwise_box_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray,
                     gt_crowd: np.ndarray) -> np.ndarray:
  """[P] IoUs of matching rows of [P, 4] [x, y, w, h] boxes, 0 if disjoint.

  For crowd ground truth the "IoU" is intersection / detection area, as in
  COCO. The arithmetic follows pycocotools' C `bbIou` operation for operation
  so that IoUs sitting exactly on a threshold compare the same way.
  """
  dx, dy, dw, dh = det_boxes.T
  gx, gy, gw, gh = gt_boxes.T
  iw = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
  ih = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
  inter = iw * ih
  det_area = dw * dh
  union = np.where(gt_crowd, det_area, det_area + gw * gh - inter)
  overlap = (iw > 0) & (ih > 0)
  return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


def match_detections(gt: GroundTruth, dt: Detections, gt_ignore: np.ndarray,
                     iou_thresholds: np.ndarray,
                     max_detections: Optional[int] = None):
  """COCO greedy matching of all (image, category) groups at once.

  Within a group, detections in descending score order (ties in input order)
  each take the available ground truth with the highest IoU >= threshold,
  preferring non-ignored over ignored ground truth; ties in IoU go to the later
  annotation. Non-crowd ground truth is available until matched, crowd ground
  truth always. Each (ignore column, threshold) pair is an independent lane.

  Args:
    gt: ground truth.
    dt: detections.
    gt_ignore: [G, A] bool, ground truth ignored in each of A columns.
    iou_thresholds: [T] match thresholds (IoU >= threshold matches).
    max_detections: keep only this many top-scoring detections per group.

  Returns:
    order: [D'] indices into `dt` of the kept detections, ordered by category,
      image, then descending score.
    rank: [D'] each kept detection's position within its group.
    matched: [D', A, T] bool, the detection matched some ground truth.
    matched_ignored: [D', A, T] bool, ... and that ground truth is ignored.
  """
  num_images, num_lanes = len(gt.image_ids), gt_ignore.shape[1]
  # Two stable sorts: by group, and within a group by descending score with
  # ties in input order, as pycocotools' per-image mergesort.
  order = np.argsort(-dt.scores, kind='stable')
  order = order[np.argsort(dt.category[order] * num_images + dt.image[order],
                           kind='stable')]
  det_key = dt.category[order] * num_images + dt.image[order]
  first = np.flatnonzero(np.r_[True, det_key[1:] != det_key[:-1]])
  rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
  if max_detections is not None:
    keep = rank < max_detections
    order, rank, det_key = order[keep], rank[keep], det_key[keep]
  thresholds = np.asarray(iou_thresholds, np.float64)
  matched = np.zeros((len(order), num_lanes, len(thresholds)), bool)
  matched_ignored = np.zeros_like(matched)

  # Every (detection, ground truth) pair of a group: with ground truth sorted
  # by group (stably, so annotation order survives within a group) each
  # detection finds its group's slice by bisection.
  gt_order = np.argsort(gt.category * num_images + gt.image, kind='stable')
  gt_key = (gt.category * num_images + gt.image)[gt_order]
  lo = np.searchsorted(gt_key, det_key, 'left')
  counts = np.searchsorted(gt_key, det_key, 'right') - lo
  pair_det = np.repeat(np.arange(len(order)), counts)
  within = np.arange(len(pair_det)) - np.repeat(np.cumsum(counts) - counts, counts)
  pair_gt = gt_order[np.repeat(lo, counts) + within]
  pair_iou = pairwise_box_iou(dt.boxes[order[pair_det]], gt.boxes[pair_gt],
                              gt.crowd[pair_gt])
  # A pair below the lowest threshold can never match in any lane.
  keep = pair_iou >= thresholds.min(initial=np.inf)
  pair_det, pair_gt, pair_iou = pair_det[keep], pair_gt[keep], pair_iou[keep]
  if not len(pair_det):
    return order, rank, matched, matched_ignored

  # Greedy matching is sequential only within a group, and detections of equal
  # rank belong to different groups, so one vectorised step per rank (at most
  # max_detections steps) advances every group and lane in lock-step.
  base = np.lexsort((pair_det, rank[pair_det]))
  pair_det, pair_gt, pair_iou = pair_det[base], pair_gt[base], pair_iou[base]
  seg_start = np.flatnonzero(np.r_[True, pair_det[1:] != pair_det[:-1]])
  seg_id = np.repeat(np.arange(len(seg_start)),
                     np.diff(np.r_[seg_start, len(pair_det)]))
  # prio[p, a] is pair p's position in column a's preference order; that order
  # keeps each detection's pairs contiguous, so the smallest available prio in
  # a detection's segment is its pick, and pair_at maps it back to the pair.
  num_pairs = len(pair_det)
  prio = np.empty((num_pairs, num_lanes), np.int64)
  pair_at = np.empty((num_pairs, num_lanes), np.int64)
  for a in range(num_lanes):
    pref = np.lexsort((-pair_gt, -pair_iou, gt_ignore[pair_gt, a], seg_id))
    prio[pref, a] = np.arange(num_pairs)
    pair_at[:, a] = pref
  iou_ok = pair_iou[:, None] >= thresholds[None, :]
  taken = np.zeros((len(gt.crowd), num_lanes, len(thresholds)), bool)
  lanes = np.arange(num_lanes)[None, :, None]
  step = rank[pair_det]
  step_start = np.flatnonzero(np.r_[True, step[1:] != step[:-1], True])
  for p0, p1 in zip(step_start[:-1], step_start[1:]):
    s0, s1 = np.searchsorted(seg_start, [p0, p1])
    g = pair_gt[p0:p1]
    available = iou_ok[p0:p1, None, :] & (~taken[g] | gt.crowd[g, None, None])
    cand = np.where(available, prio[p0:p1, :, None], num_pairs)
    best = np.minimum.reduceat(cand, seg_start[s0:s1] - p0, axis=0)
    found = best < num_pairs
    win_gt = pair_gt[pair_at[np.where(found, best, 0), lanes]]
    dets = pair_det[seg_start[s0:s1]]
    matched[dets] = found
    matched_ignored[dets] = found & gt_ignore[win_gt, lanes]
    _, a_idx, t_idx = np.nonzero(found)
    taken[win_gt[found], a_idx, t_idx] = True
  return order, rank, matched, matched_ignored


def _area_outside(area: np.ndarray) -> np.ndarray:
  """[N] areas -> [N, A] bool, outside each closed area range."""
  return ((area[:, None] < AREA_RANGES[None, :, 0]) |
          (area[:, None] > AREA_RANGES[None, :, 1]))


def _accumulate_lanes(tps, fps, scores, npig):
  """Precision/recall of one (category, maxDet) in L (area, IoU) lanes.

  Args:
    tps, fps: [N, L] bool true/false positive flags of N detections in global
      score order.
    scores: [N] the detections' scores in that order.
    npig: [L] number of non-ignored ground truths per lane (all > 0).

  Returns:
    precision [L, R], recall [L], scores [L, R].
  """
  n, num_lanes = tps.shape
  # Integer cumsums (over uint8 views: numpy's bool cumsum is several times
  # slower) are exact; forming fp + tp before the cast keeps the float
  # arithmetic op-for-op pycocotools'.
  tp_int = np.cumsum(tps.view(np.uint8), axis=0, dtype=np.int32)
  fp_int = np.cumsum(fps.view(np.uint8), axis=0, dtype=np.int32)
  tp_sum = tp_int.astype(np.float64)
  recall = tp_sum[-1] / npig if n else np.zeros(num_lanes)
  pr = tp_sum / ((fp_int + tp_int).astype(np.float64) + np.spacing(1))
  envelope = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
  # searchsorted(recall curve, r, 'left') is the first detection whose true
  # positive count reaches need, the least count c with c / npig >= r (same
  # float division): the position of the need-th true positive, found for all
  # lanes at once from the positions of all true positives.
  need = np.stack([np.searchsorted(np.arange(k + 1) / k, RECALL_THRESHOLDS,
                                   'left') for k in npig])
  lane, at = np.nonzero(tps.T)
  count = np.bincount(lane, minlength=num_lanes)[:, None]
  nth = np.cumsum(count)[:, None] - count + need - 1
  nth = at[np.clip(nth, 0, len(at) - 1)] if len(at) else 0
  pos = np.where(need == 0, 0, np.where(need <= count, nth, n))
  if not n:
    return np.zeros(pos.shape), recall, np.zeros(pos.shape)
  inside = pos < n
  pos = np.where(inside, pos, 0)
  precision = np.where(inside, envelope[pos, np.arange(num_lanes)[:, None]], 0.)
  return precision, recall, np.where(inside, scores[pos], 0.)


def evaluate_boxes(groundtruth: dict, detections: Sequence[dict]) -> CocoEvaluation:
  """COCO bbox evaluation with pycocotools-style [T, R, K, A, M] arrays.

  Args:
    groundtruth: COCO annotation dict (see module docstring).
    detections: list of COCO result dicts, boxes [x, y, w, h].

  Raises:
    ValueError: on unknown image/category ids or negative box sizes.
  """
  gt = load_groundtruth(groundtruth)
  dt = load_detections(detections, gt)
  num_k, num_a, num_m = len(gt.category_ids), len(AREA_LABELS), len(MAX_DETECTIONS)
  num_t, num_r = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
  gt_ignore = gt.crowd[:, None] | _area_outside(gt.area)
  order, rank, matched, matched_ignored = match_detections(
      gt, dt, gt_ignore, np.minimum(IOU_THRESHOLDS, 1 - 1e-10),
      max(MAX_DETECTIONS))
  boxes = dt.boxes[order]
  det_outside = _area_outside(boxes[:, 2] * boxes[:, 3])
  tp = matched & ~matched_ignored
  # Unmatched detections outside the area range are ignored, not false.
  fp = ~matched & ~det_outside[:, :, None]
  npig = np.stack([np.bincount(gt.category[~gt_ignore[:, a]], minlength=num_k)
                   for a in range(num_a)], axis=1)

  precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
  recall = -np.ones((num_t, num_k, num_a, num_m))
  score_at = -np.ones((num_t, num_r, num_k, num_a, num_m))
  bounds = np.searchsorted(dt.category[order], np.arange(num_k + 1))
  for k in range(num_k):
    areas = np.flatnonzero(npig[k] > 0)
    if not areas.size:
      continue
    idx = np.arange(bounds[k], bounds[k + 1])
    # Detections are already (image, rank) ordered, so a stable sort on score
    # breaks ties by image then rank like pycocotools' concatenate+mergesort.
    idx = idx[np.argsort(-dt.scores[order[idx]], kind='stable')]
    for m, max_det in enumerate(MAX_DETECTIONS):
      sel = idx[rank[idx] < max_det]
      shape, lanes = (len(areas), num_t, num_r), len(areas) * num_t
      p, r, s = _accumulate_lanes(
          tp[sel][:, areas].reshape(len(sel), lanes),
          fp[sel][:, areas].reshape(len(sel), lanes),
          dt.scores[order[sel]], np.repeat(npig[k, areas], num_t))
      precision[:, :, k, areas, m] = p.reshape(shape).transpose(1, 2, 0)
      recall[:, k, areas, m] = r.reshape(shape[:2]).T
      score_at[:, :, k, areas, m] = s.reshape(shape).transpose(1, 2, 0)
  return CocoEvaluation(precision, recall, score_at, gt.category_ids,
                        gt.category_names)


def _mean_defined(values: np.ndarray) -> float:
  """Mean over entries > -1, or -1.0 if none (pycocotools' convention)."""
  return float(np.mean(values[values > -1])) if (values > -1).any() else -1.0


def summarize(evaluation: CocoEvaluation) -> dict:
  """The 12 COCO summary numbers plus per-class AP and AP50.

  Returns:
    SUMMARY_KEYS -> float (-1.0 where undefined), as pycocotools' `stats`;
    'AP_per_class' / 'AP50_per_class': {category name: AP@[.5:.95] / AP@.5}
    at area "all", 100 detections (-1.0 for a class without ground truth).
  """
  prec, rec = evaluation.precision, evaluation.recall
  t50, t75 = (int(np.flatnonzero(IOU_THRESHOLDS == t)[0]) for t in (.5, .75))
  m100 = MAX_DETECTIONS.index(100)
  ap = lambda a, t=slice(None): _mean_defined(prec[t, :, :, a, m100])
  ar = lambda a, m=m100: _mean_defined(rec[:, :, a, m])
  values = (ap(0), ap(0, t50), ap(0, t75), ap(1), ap(2), ap(3),
            ar(0, 0), ar(0, 1), ar(0), ar(1), ar(2), ar(3))
  out = dict(zip(SUMMARY_KEYS, values))
  for key, t in (('AP_per_class', slice(None)), ('AP50_per_class', t50)):
    out[key] = {name: _mean_defined(prec[t, :, k, 0, m100])
                for k, name in enumerate(evaluation.category_names)}
  return out


def evaluate_coco(groundtruth: dict, detections: Sequence[dict]) -> dict:
  """COCO bbox AP/AR of `detections` against `groundtruth`.

  Args:
    groundtruth: COCO annotation dict; boxes [x, y, w, h] in pixels.
    detections: list of {"image_id", "category_id", "bbox", "score"} dicts.

  Returns:
    See `summarize`: pycocotools' 12 `COCOeval.stats` by name plus per-class
    AP@[.5:.95] and AP@.5.

  Raises:
    ValueError: on unknown image/category ids or negative box sizes.
  """
  return summarize(evaluate_boxes(groundtruth, detections))
