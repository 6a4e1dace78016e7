"""Exact greedy non-maximum suppression with fixed-size outputs.

Algorithm. Greedy NMS visits candidates in decreasing score order, keeps a
candidate unless an already kept box overlaps it with IoU > threshold, and
stops after `max_output` keeps. Equivalently, the next kept box is always the
highest-scoring candidate that is still alive, and keeping it kills every
candidate it overlaps. We run that loop directly with `lax.while_loop`:

  alive = valid candidates
  repeat until max_output boxes are kept or nothing is alive:
    best = argmax(score over alive)           # O(N)
    keep best; alive &= IoU(best, all) <= t   # O(N), one IoU row
    alive[best] = False

This is the sort-then-scan formulation with the scan restricted to the boxes
that are actually kept: suppressed candidates never cost an iteration, and
only the IoU rows of kept boxes are computed instead of the full N x N matrix.
Cost is O(max_output * N) time and O(N) memory (2000 candidates and 100
outputs: 100 iterations over 2000-element vectors). It is exact greedy NMS,
not an approximation; equal scores are visited lowest index first (the order of
a stable descending sort).

Under `jax.vmap` the loop runs until every batch element is done; finished
elements are carried through unchanged by `while_loop`'s batching rule.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from detector.ops import boxes as box_ops


def _greedy_nms(boxes, scores, classes, valid_in, iou_threshold, max_output):
  """Shared implementation of `nms` and `batched_nms` (see their docstrings)."""
  boxes = jnp.asarray(boxes)
  scores = jnp.asarray(scores)
  num_boxes = boxes.shape[0]
  if max_output < 0:
    raise ValueError(f'max_output must be >= 0, got {max_output}.')
  if num_boxes == 0 or max_output == 0:
    # Static shapes: nothing can be selected, and argmax over an empty axis
    # would fail to trace.
    return (jnp.zeros((max_output,), jnp.int32),
            jnp.zeros((max_output,), bool))

  # `scores > -inf` is also False for NaN, so NaN scores are never selected.
  alive = scores > -jnp.inf
  if valid_in is not None:
    alive &= jnp.asarray(valid_in, dtype=bool)
  neg_inf = jnp.array(-jnp.inf, scores.dtype)
  positions = jnp.arange(num_boxes, dtype=jnp.int32)

  def cond(state):
    count, alive, _, _ = state
    return (count < max_output) & jnp.any(alive)

  def body(state):
    count, alive, indices, valid = state
    best = jnp.argmax(jnp.where(alive, scores, neg_inf)).astype(jnp.int32)
    indices = indices.at[count].set(best)
    valid = valid.at[count].set(True)
    iou = box_ops.pairwise_iou(boxes[best][None, :], boxes)[0]
    # Strictly greater, as in torchvision and TF: IoU == threshold survives.
    suppressed = iou > iou_threshold
    if classes is not None:
      suppressed &= classes == classes[best]
    # The kept box is removed explicitly: an empty box has IoU 0 with itself,
    # and a threshold >= 1 would never suppress it.
    alive = alive & ~suppressed & (positions != best)
    return count + 1, alive, indices, valid

  state = (jnp.int32(0), alive, jnp.zeros((max_output,), jnp.int32),
           jnp.zeros((max_output,), bool))
  _, _, indices, valid = jax.lax.while_loop(cond, body, state)
  return indices, valid


def nms(boxes,
        scores,
        iou_threshold: float,
        max_output: int,
        valid_in: Optional[jax.Array] = None):
  """Greedy hard non-maximum suppression with a fixed-size output.

  Args:
    boxes: float array [N, 4], `[ymin, xmin, ymax, xmax]` in pixels (any
      consistent unit works; only IoUs are used).
    scores: float array [N]. Entries equal to -inf (or NaN) are never selected,
      which is how padded or pre-filtered candidates are excluded.
    iou_threshold: Python float in [0, 1]; a candidate is suppressed when its
      IoU with an already kept box is strictly greater than this.
    max_output: Python int >= 0, the static output size.
    valid_in: optional bool array [N]; False entries are never selected (an
      alternative to setting their scores to -inf).

  Returns:
    indices: int32 array [max_output], indices into `boxes` of the kept boxes
      in decreasing score order (ties: lower index first). Unused slots hold 0.
    valid: bool array [max_output], True for the used slots, which always form
      a prefix.

  Works under `jax.jit` (with `iou_threshold` and `max_output` static) and under
  `jax.vmap` over a leading batch axis of boxes, scores and valid_in.
  """
  return _greedy_nms(boxes, scores, None, valid_in, iou_threshold, max_output)


def batched_nms(boxes,
                scores,
                classes,
                iou_threshold: float,
                max_output: int,
                valid_in: Optional[jax.Array] = None):
  """Per-class greedy NMS: boxes of different classes never suppress each other.

  The result equals running `nms` separately for every class, merging the kept
  boxes and taking the `max_output` highest-scoring ones. Rather than the
  common trick of offsetting each class's boxes by a large constant (which in
  float32 rounds coordinates once class * offset is large and so changes IoUs
  near the threshold), suppression is simply restricted to boxes with the same
  class id, which is exact and costs nothing extra.

  Args:
    boxes: float array [N, 4], `[ymin, xmin, ymax, xmax]` in pixels.
    scores: float array [N]; -inf (or NaN) entries are never selected.
    classes: int array [N] of class ids (any values; only equality is used).
    iou_threshold: Python float in [0, 1]; suppression when IoU > threshold
      with a kept box of the same class.
    max_output: Python int >= 0, the static output size over all classes.
    valid_in: optional bool array [N]; False entries are never selected.

  Returns:
    indices: int32 array [max_output], indices into `boxes` of the kept boxes
      in decreasing score order over all classes. Unused slots hold 0.
    valid: bool array [max_output], True for the used slots (a prefix).

  Works under `jax.jit` (static `iou_threshold`, `max_output`) and `jax.vmap`.
  """
  classes = jnp.asarray(classes)
  return _greedy_nms(boxes, scores, classes, valid_in, iou_threshold,
                     max_output)
