"""IoU-based assignment of ground-truth boxes to anchors (RetinaNet / RPN).

Written for one image with a fixed number of (possibly padded) ground-truth
boxes; use `jax.vmap` for a batch.
"""

import jax.numpy as jnp

from detector.ops import boxes as box_ops

POSITIVE = 1
NEGATIVE = 0
IGNORED = -1


def match_anchors(anchors, gt_boxes, gt_valid, positive_iou: float = 0.5,
                  negative_iou: float = 0.4, allow_low_quality: bool = True):
  """Assigns each anchor to its best ground-truth box and labels it.

  Rules, applied per anchor with IoUs against valid gts only:
    * max IoU >= positive_iou                    -> label 1 (positive)
    * max IoU <  negative_iou                    -> label 0 (negative)
    * otherwise                                  -> label -1 (ignored)
    * low-quality matches (if allow_low_quality, as in Detectron2 / Faster
      R-CNN): for each valid gt, every anchor whose IoU with it equals that
      gt's maximum IoU over all anchors (and is > 0) becomes positive and is
      matched to that gt, overriding the rules above, so that each gt that
      overlaps any anchor has a positive anchor. An anchor best for several
      gts takes the one it overlaps most (lowest gt index on exact ties).
  Padded gts (gt_valid False) are never matched; without valid gts every
  anchor is negative.

  Args:
    anchors: float array [A, 4], `[ymin, xmin, ymax, xmax]` in pixels.
    gt_boxes: float array [M, 4], same format; padding rows: anything finite.
    gt_valid: bool array [M], True for real boxes.
    positive_iou: IoU threshold for positives, in [0, 1].
    negative_iou: IoU threshold below which anchors are negatives, in
      [0, positive_iou].
    allow_low_quality: whether to apply the low-quality rule.

  Returns:
    matched_gt: int32 array [A] in [0, M); the index of the valid gt with the
      highest IoU (lowest index on ties; the low-quality gt for low-quality
      positives). Meaningful only where labels == 1; 0 without valid gts.
    labels: int32 array [A] with values in {1, 0, -1} as above.

  Raises:
    ValueError: if negative_iou > positive_iou.
  """
  if negative_iou > positive_iou:
    raise ValueError(f'negative_iou ({negative_iou}) must be <= positive_iou '
                     f'({positive_iou}).')
  anchors, gt_boxes = jnp.asarray(anchors), jnp.asarray(gt_boxes)
  gt_valid = jnp.asarray(gt_valid, dtype=bool)
  if gt_boxes.shape[0] == 0:
    # argmax over an empty axis is undefined; with no gts at all every anchor is
    # background, which is a static fact here.
    return (jnp.zeros((anchors.shape[0],), jnp.int32),
            jnp.full((anchors.shape[0],), NEGATIVE, jnp.int32))
  # [A, M]. Invalid gts get IoU -1 so that they lose every argmax / max, are
  # below every threshold, and fail the "> 0" test of the low-quality rule.
  iou = box_ops.pairwise_iou(anchors, gt_boxes)
  iou = jnp.where(gt_valid[None, :], iou, -1.0)

  matched_gt = jnp.argmax(iou, axis=1).astype(jnp.int32)
  max_iou = jnp.max(iou, axis=1)
  labels = jnp.where(
      max_iou >= positive_iou, POSITIVE,
      jnp.where(max_iou < negative_iou, NEGATIVE, IGNORED)).astype(jnp.int32)

  if allow_low_quality:
    matched_gt, labels = _low_quality_matches(iou, matched_gt, labels)
  return matched_gt, labels


def _low_quality_matches(iou, matched_gt, labels):
  """Each gt's best anchors become positives matched to it (the rule in
  `match_anchors`); iou [A, M] with -1 for invalid gts."""
  # [M] best IoU of each gt over all anchors. The equality test below is
  # exact because both sides come from the same float32 matrix, so every
  # anchor that ties for a gt's maximum is included (Detectron2 does the
  # same rather than taking a single argmax).
  gt_max_iou = jnp.max(iou, axis=0)
  is_best = (iou == gt_max_iou[None, :]) & (gt_max_iou[None, :] > 0)
  best_iou = jnp.where(is_best, iou, -1.0)
  low_quality_gt = jnp.argmax(best_iou, axis=1).astype(jnp.int32)
  is_low_quality = jnp.any(is_best, axis=1)
  return (jnp.where(is_low_quality, low_quality_gt, matched_gt),
          jnp.where(is_low_quality, POSITIVE, labels))
