"""Tests for detector.ops, each against an independent NumPy / Python reference.

Exactness note: the matching and NMS tests compare thresholded and argmax'ed
IoUs, so float32 (JAX) and float64 (reference) must agree on every comparison.
They use integer box coordinates with sides <= 32 pixels: intersections and
unions are then exact integers <= 2048 in both precisions, two different IoU
fractions differ by >= 1 / 2048**2 (about 2.4e-7, more than one float32 ulp at
1), and an IoU differs from a threshold like 0.5 or 0.3 by >= 1 / (10 * 2048)
unless it equals it exactly. So both sides see the same orderings, ties and
threshold decisions, while exact ties (duplicate boxes, IoU exactly 0.5) still
occur and get tested.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detector.ops import anchors as anchor_ops
from detector.ops import boxes as box_ops
from detector.ops import losses
from detector.ops import matching
from detector.ops import nms as nms_ops

# Eager JAX compiles every primitive on its own, which on a small shared CPU
# costs far more than the computations; the tests call jitted wrappers instead
# (thresholds, sizes and weights static, as in real use).
_area = jax.jit(box_ops.area)
_pairwise_iou = jax.jit(box_ops.pairwise_iou)
_giou = jax.jit(box_ops.giou)
_encode = jax.jit(box_ops.encode, static_argnums=2)
_decode = jax.jit(box_ops.decode, static_argnums=(2, 3))
_clip = jax.jit(box_ops.clip)
_match = jax.jit(matching.match_anchors, static_argnums=(3, 4, 5))
_nms = jax.jit(nms_ops.nms, static_argnums=(2, 3))
_batched_nms = jax.jit(nms_ops.batched_nms, static_argnums=(3, 4))
_focal = jax.jit(losses.sigmoid_focal_loss, static_argnums=(2, 3))
_gaussian_focal = jax.jit(losses.gaussian_focal_loss, static_argnums=(2, 3))
_bce = jax.jit(losses.sigmoid_binary_cross_entropy)
_huber = jax.jit(losses.huber_loss, static_argnums=2)
_giou_loss = jax.jit(losses.giou_loss)


def _grad(fn, x, *args):
  """Gradient of sum(fn(x, *args)) with respect to x, computed under jit."""
  return jax.jit(jax.grad(lambda z: fn(z, *args).sum()))(x)


# ---------------------------------------------------------------------------
# Independent references (plain Python / float64 NumPy).
# ---------------------------------------------------------------------------


def _ref_area(box):
  return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def _ref_inter_union(a, b):
  """(intersection, union) areas of two yxyx boxes, with Python floats."""
  a = [float(v) for v in a]
  b = [float(v) for v in b]
  ih = min(a[2], b[2]) - max(a[0], b[0])
  iw = min(a[3], b[3]) - max(a[1], b[1])
  inter = max(ih, 0.0) * max(iw, 0.0)
  return inter, _ref_area(a) + _ref_area(b) - inter


def _ref_iou(a, b):
  """IoU of two yxyx boxes with Python floats; 0 for an empty union."""
  inter, union = _ref_inter_union(a, b)
  return inter / union if union > 0 else 0.0


def _ref_iou_matrix(a, b):
  return np.array([[_ref_iou(x, y) for y in b] for x in a], np.float64)


def _ref_giou(a, b):
  inter, union = _ref_inter_union(a, b)
  enclosing = _ref_area([min(a[0], b[0]), min(a[1], b[1]),
                         max(a[2], b[2]), max(a[3], b[3])])
  iou = inter / union if union > 0 else 0.0
  penalty = (enclosing - union) / enclosing if enclosing > 0 else 0.0
  return iou - penalty


def _ref_match(anchors, gt_boxes, gt_valid, pos, neg, low_quality):
  """Brute-force matcher with the documented rules, loops over anchors/gts."""
  num_anchors, num_gt = len(anchors), len(gt_boxes)
  iou = _ref_iou_matrix(anchors, gt_boxes)
  matched = np.zeros(num_anchors, np.int64)
  labels = np.zeros(num_anchors, np.int64)
  valid_ids = [j for j in range(num_gt) if gt_valid[j]]
  if not valid_ids:
    return matched, labels
  for i in range(num_anchors):
    best_j = valid_ids[0]
    for j in valid_ids:
      if iou[i, j] > iou[i, best_j]:
        best_j = j
    matched[i] = best_j
    if iou[i, best_j] >= pos:
      labels[i] = 1
    elif iou[i, best_j] < neg:
      labels[i] = 0
    else:
      labels[i] = -1
  if low_quality:
    gt_best = {j: max(iou[i, j] for i in range(num_anchors)) for j in valid_ids}
    for i in range(num_anchors):
      claims = [j for j in valid_ids
                if gt_best[j] > 0 and iou[i, j] == gt_best[j]]
      if claims:
        best_j = claims[0]
        for j in claims:
          if iou[i, j] > iou[i, best_j]:
            best_j = j
        matched[i] = best_j
        labels[i] = 1
  return matched, labels


def _ref_nms(boxes, scores, threshold, max_output, classes=None, valid=None):
  """Textbook greedy NMS: visit by descending score, keep unless overlapped."""
  n = len(scores)
  candidates = [i for i in range(n)
                if np.isfinite(scores[i]) and (valid is None or valid[i])]
  candidates.sort(key=lambda i: (-float(scores[i]), i))
  keep = []
  for i in candidates:
    if len(keep) == max_output:
      break
    if all(_ref_iou(boxes[i], boxes[k]) <= threshold
           for k in keep
           if classes is None or classes[k] == classes[i]):
      keep.append(i)
  return keep


def _sigmoid64(x):
  x = np.asarray(x, np.float64)
  return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------
# Random box generators.
# ---------------------------------------------------------------------------


def _int_boxes(rng, n, extent=64, max_side=32, min_side=1):
  """Integer-valued yxyx boxes with sides in [min_side, max_side], float32."""
  y0 = rng.integers(0, extent, n)
  x0 = rng.integers(0, extent, n)
  h = rng.integers(min_side, max_side + 1, n)
  w = rng.integers(min_side, max_side + 1, n)
  return np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)


def _clustered_int_boxes(rng, n, num_clusters=6, extent=96, jitter=4):
  """Integer boxes around a few cluster boxes, so that many overlap heavily."""
  centres = _int_boxes(rng, num_clusters, extent=extent, min_side=8)
  which = rng.integers(0, num_clusters, n)
  offsets = rng.integers(-jitter, jitter + 1, (n, 4))
  boxes = centres[which] + offsets
  # Keep sides in [1, 32] (see the module docstring) and the boxes valid.
  boxes[:, 2] = np.clip(boxes[:, 2], boxes[:, 0] + 1, boxes[:, 0] + 32)
  boxes[:, 3] = np.clip(boxes[:, 3], boxes[:, 1] + 1, boxes[:, 1] + 32)
  return boxes.astype(np.float32)


def _special_boxes():
  """Hand-picked boxes: disjoint, touching, nested, equal, empty, inverted."""
  return np.array([
      [0, 0, 10, 10],
      [20, 20, 30, 30],      # disjoint from the first
      [10, 0, 20, 10],       # shares an edge with the first
      [2, 3, 5, 7],          # nested in the first
      [0, 0, 10, 10],        # identical to the first
      [4, 4, 4, 9],          # zero height
      [5, 5, 5, 5],          # a point
      [8, 8, 3, 3],          # inverted
      [-5, -5, 5, 5],        # partly negative coordinates
      [0.5, 0.25, 9.75, 3.5],
  ], np.float32)


# ---------------------------------------------------------------------------
# boxes.py
# ---------------------------------------------------------------------------


def test_area():
  boxes = _special_boxes()
  expected = [_ref_area([float(v) for v in b]) for b in boxes]
  np.testing.assert_allclose(_area(boxes), expected, rtol=1e-6)
  assert _area(boxes[7]) == 0.0  # inverted box


def test_pairwise_iou_matches_brute_force():
  rng = np.random.default_rng(0)
  y0, x0 = rng.uniform(0, 50, (2, 30))
  h, w = rng.uniform(0, 30, (2, 30))
  random_boxes = np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)
  boxes_a = np.concatenate([_special_boxes(), random_boxes,
                            _int_boxes(rng, 20)])
  boxes_b = np.concatenate([_special_boxes(), random_boxes[::-1],
                            _int_boxes(rng, 15)])
  got = np.asarray(_pairwise_iou(boxes_a, boxes_b))
  assert got.shape == (len(boxes_a), len(boxes_b))
  np.testing.assert_allclose(got, _ref_iou_matrix(boxes_a, boxes_b),
                             rtol=1e-5, atol=1e-6)
  special = _special_boxes()
  iou = np.asarray(_pairwise_iou(special, special))
  assert iou[0, 4] == 1.0    # identical
  assert iou[0, 1] == 0.0    # disjoint
  assert iou[0, 2] == 0.0    # touching
  np.testing.assert_allclose(iou[0, 3], 12.0 / 100.0, rtol=1e-6)  # nested
  assert iou[5, 5] == 0.0 and iou[6, 6] == 0.0 and iou[7, 7] == 0.0  # empty


def test_pairwise_iou_batched_and_gradient_finite():
  rng = np.random.default_rng(1)
  a = np.stack([_int_boxes(rng, 5), _int_boxes(rng, 5)])
  b = np.stack([_int_boxes(rng, 3), _int_boxes(rng, 3)])
  got = _pairwise_iou(a, b)
  assert got.shape == (2, 5, 3)
  for k in range(2):
    np.testing.assert_allclose(got[k], _ref_iou_matrix(a[k], b[k]), rtol=1e-6)
  # Empty boxes must not produce NaN gradients (the union is 0 there).
  special = _special_boxes()
  grad = _grad(box_ops.pairwise_iou, special, special)
  assert np.all(np.isfinite(grad))


def test_encode_decode_round_trip():
  rng = np.random.default_rng(2)
  n = 500

  def random_boxes(min_side, max_side):
    cy, cx = rng.uniform(-50, 600, (2, n))
    h, w = rng.uniform(min_side, max_side, (2, n))
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2],
                    -1).astype(np.float32)

  boxes = random_boxes(2, 300)
  anchors = random_boxes(8, 256)
  for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
    deltas = _encode(boxes, anchors, weights)
    decoded = _decode(deltas, anchors, weights)
    np.testing.assert_allclose(decoded, boxes, rtol=1e-5, atol=2e-3)

  # encode against the formula, evaluated in float64.
  b = boxes.astype(np.float64)
  a = anchors.astype(np.float64)
  h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
  ha, wa = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
  expected = np.stack([
      10 * ((b[:, 0] + b[:, 2]) / 2 - (a[:, 0] + a[:, 2]) / 2) / ha,
      10 * ((b[:, 1] + b[:, 3]) / 2 - (a[:, 1] + a[:, 3]) / 2) / wa,
      5 * np.log(h / ha),
      5 * np.log(w / wa),
  ], -1)
  np.testing.assert_allclose(
      _encode(boxes, anchors, (10.0, 10.0, 5.0, 5.0)), expected,
      rtol=1e-4, atol=1e-4)


def test_decode_clamps_scale_and_encode_is_finite_for_padding():
  anchor = np.array([[0.0, 0.0, 16.0, 32.0]], np.float32)
  huge = np.array([[0.0, 0.0, 1e4, -1e4]], np.float32)
  out = np.asarray(_decode(huge, anchor))
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[0, 2] - out[0, 0], 16.0 * 1000 / 16, rtol=1e-5)
  np.testing.assert_allclose(out[0, 3] - out[0, 1], 0.0, atol=1e-6)
  # All-zero padding boxes: large but finite deltas (masked later by the loss).
  padding = np.zeros((1, 4), np.float32)
  assert np.all(np.isfinite(_encode(padding, anchor)))


def test_xywh_round_trip_numpy_and_jax():
  rng = np.random.default_rng(3)
  y0, x0 = rng.uniform(0, 100, (2, 7))
  h, w = rng.uniform(0, 50, (2, 7))
  boxes = np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)
  xywh = box_ops.yxyx_to_xywh(boxes)
  assert isinstance(xywh, np.ndarray) and xywh.dtype == np.float32
  np.testing.assert_allclose(xywh[:, 0], boxes[:, 1])
  np.testing.assert_allclose(xywh[:, 1], boxes[:, 0])
  np.testing.assert_allclose(xywh[:, 2], boxes[:, 3] - boxes[:, 1])
  np.testing.assert_allclose(xywh[:, 3], boxes[:, 2] - boxes[:, 0])
  back = box_ops.xywh_to_yxyx(xywh)
  assert isinstance(back, np.ndarray) and back.dtype == np.float32
  np.testing.assert_allclose(back, boxes, atol=1e-5)
  jax_xywh = box_ops.yxyx_to_xywh(jnp.asarray(boxes))
  assert isinstance(jax_xywh, jax.Array)
  np.testing.assert_allclose(jax_xywh, xywh)
  back = jax.jit(box_ops.xywh_to_yxyx)(jax_xywh)
  assert isinstance(back, jax.Array)
  np.testing.assert_allclose(back, boxes, atol=1e-5)


def test_clip():
  boxes = np.array([[-5, -5, 50, 70], [10, 20, 30, 40], [90, 90, 120, 130]],
                   np.float32)
  got = np.asarray(_clip(boxes, 64, 80))
  np.testing.assert_array_equal(
      got, [[0, 0, 50, 70], [10, 20, 30, 40], [64, 80, 64, 80]])
  # Per-image sizes broadcast against the box dimensions.
  batched = _clip(np.stack([boxes, boxes]), np.array([[64], [32]]),
                  np.array([[80], [16]]))
  np.testing.assert_array_equal(batched[1, 0], [0, 0, 32, 16])
  # NumPy stays NumPy (host-side export must not dispatch to JAX), JAX stays
  # JAX, and both give the same numbers.
  assert isinstance(box_ops.clip(boxes, 64, 80), np.ndarray)
  on_device = box_ops.clip(jnp.asarray(boxes), 64, 80)
  assert isinstance(on_device, jax.Array)
  np.testing.assert_array_equal(on_device, got)


def test_giou_matches_formula():
  rng = np.random.default_rng(4)
  y0, x0 = rng.uniform(0, 40, (2, 120))
  h, w = rng.uniform(0, 25, (2, 120))
  random_boxes = np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)
  # Random pairs plus every pair of the hand-picked boxes.
  special = _special_boxes()
  i, j = np.meshgrid(np.arange(len(special)), np.arange(len(special)))
  a = np.concatenate([random_boxes[:60], special[i.ravel()]])
  b = np.concatenate([random_boxes[60:], special[j.ravel()]])
  expected = [_ref_giou(x, y) for x, y in zip(a, b)]
  np.testing.assert_allclose(_giou(a, b), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_giou(a[:3], a[:3]), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------
# anchors.py
# ---------------------------------------------------------------------------

_ANCHOR_CONFIG = dict(image_size=(64, 96), min_level=3, max_level=5,
                      num_scales=2, aspect_ratios=(0.5, 1.0, 2.0),
                      anchor_scale=4.0)


def _ref_anchor(level, y, x, scale_index, ratio, num_scales, anchor_scale):
  stride = 2.0**level
  size = anchor_scale * stride * 2.0**(scale_index / num_scales)
  h, w = size * math.sqrt(ratio), size / math.sqrt(ratio)
  cy, cx = (y + 0.5) * stride, (x + 0.5) * stride
  return [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]


def test_anchor_counts_and_level_sizes():
  cfg = _ANCHOR_CONFIG
  assert anchor_ops.anchors_per_location(2, (0.5, 1.0, 2.0)) == 6
  assert anchor_ops.level_sizes((64, 96), 3, 5) == [(8, 12), (4, 6), (2, 3)]
  anchors = anchor_ops.generate_anchors(**cfg)
  assert isinstance(anchors, np.ndarray) and anchors.dtype == np.float32
  assert anchors.shape == ((8 * 12 + 4 * 6 + 2 * 3) * 6, 4)
  default = anchor_ops.generate_anchors((128, 128), 3, 7)
  assert default.shape == (sum((128 // 2**l)**2 for l in range(3, 8)) * 9, 4)


def test_anchor_order_matches_reshaped_head_output():
  """Anchors line up with a head output flattened as the detector does.

  Fills a fake head output [1, H, W, A * 4] with the expected anchor of each
  (y, x, a) slot, reshapes it to [1, H * W * A, 4], concatenates the levels and
  compares with `generate_anchors`.
  """
  cfg = _ANCHOR_CONFIG
  ratios, num_scales = cfg['aspect_ratios'], cfg['num_scales']
  num_anchors = num_scales * len(ratios)
  flat = []
  for level, (fh, fw) in zip(range(3, 6), anchor_ops.level_sizes(
      cfg['image_size'], 3, 5)):
    head = np.zeros((1, fh, fw, num_anchors * 4))
    for y in range(fh):
      for x in range(fw):
        for s in range(num_scales):
          for r, ratio in enumerate(ratios):
            a = s * len(ratios) + r
            head[0, y, x, 4 * a:4 * a + 4] = _ref_anchor(
                level, y, x, s, ratio, num_scales, cfg['anchor_scale'])
    flat.append(head.reshape(1, fh * fw * num_anchors, 4))
  expected = np.concatenate(flat, axis=1)[0]
  np.testing.assert_allclose(anchor_ops.generate_anchors(**cfg), expected,
                             rtol=1e-6, atol=1e-4)


def test_anchor_geometry():
  cfg = _ANCHOR_CONFIG
  anchors = anchor_ops.generate_anchors(**cfg).astype(np.float64)
  offset = 0
  for level, (fh, fw) in zip(range(3, 6), anchor_ops.level_sizes(
      cfg['image_size'], 3, 5)):
    stride = 2**level
    count = fh * fw * 6
    grid = anchors[offset:offset + count].reshape(fh, fw, 2, 3, 4)
    offset += count
    cy = (grid[..., 0] + grid[..., 2]) / 2
    cx = (grid[..., 1] + grid[..., 3]) / 2
    h = grid[..., 2] - grid[..., 0]
    w = grid[..., 3] - grid[..., 1]
    ys = (np.arange(fh) + 0.5) * stride
    xs = (np.arange(fw) + 0.5) * stride
    np.testing.assert_allclose(cy, np.broadcast_to(ys[:, None, None, None],
                                                   cy.shape), atol=1e-4)
    np.testing.assert_allclose(cx, np.broadcast_to(xs[None, :, None, None],
                                                   cx.shape), atol=1e-4)
    sizes = 4.0 * stride * 2.0**(np.arange(2) / 2)
    np.testing.assert_allclose(np.sqrt(h * w),
                               np.broadcast_to(sizes[:, None], h.shape),
                               rtol=1e-6)
    np.testing.assert_allclose(h / w, np.broadcast_to(
        np.array([0.5, 1.0, 2.0]), h.shape), rtol=1e-6)
  assert offset == len(anchors)


def test_anchor_bad_image_size():
  with pytest.raises(ValueError, match='level 3'):
    anchor_ops.generate_anchors((100, 128), 3, 5)
  with pytest.raises(ValueError, match='level 5'):
    anchor_ops.generate_anchors((64, 80), 3, 5)
  with pytest.raises(ValueError, match='level 7'):
    anchor_ops.level_sizes((320, 192), 3, 7)
  with pytest.raises(ValueError):
    anchor_ops.generate_anchors((64, 64), 5, 3)


# ---------------------------------------------------------------------------
# matching.py
# ---------------------------------------------------------------------------


def _matching_instance(rng, num_anchors=150, max_gt=8):
  anchors = _int_boxes(rng, num_anchors, extent=48)
  # Duplicate anchors create exact ties for a gt's best anchor.
  anchors[-10:] = anchors[:10]
  num_valid = rng.integers(0, max_gt + 1)
  gt = _int_boxes(rng, max_gt, extent=48, min_side=4)
  if max_gt > 1:
    gt[1] = gt[0]  # a duplicated gt: ties between gts for the same anchor
  valid = np.arange(max_gt) < num_valid
  # Padding rows that overlap anchors strongly: they must never be matched.
  gt[~valid] = anchors[rng.integers(0, num_anchors, (~valid).sum())]
  perm = rng.permutation(max_gt)
  return anchors, gt[perm], valid[perm]


def test_match_anchors_matches_brute_force_under_vmap():
  rng = np.random.default_rng(5)
  batch = [_matching_instance(rng) for _ in range(16)]
  anchors, gts, valid = (np.stack(x) for x in zip(*batch))
  match = jax.jit(jax.vmap(matching.match_anchors))
  matched, labels = match(anchors, gts, valid)
  assert matched.dtype == jnp.int32 and labels.dtype == jnp.int32
  low_quality_only = 0
  for k in range(len(batch)):
    ref_matched, ref_labels = _ref_match(anchors[k], gts[k], valid[k], 0.5,
                                         0.4, True)
    np.testing.assert_array_equal(labels[k], ref_labels)
    np.testing.assert_array_equal(matched[k], ref_matched)
    assert np.all(valid[k][np.asarray(matched[k])[ref_labels == 1]])
    max_iou = np.max(np.where(valid[k][None], _ref_iou_matrix(
        anchors[k], gts[k]), -1.0), axis=1)
    low_quality_only += np.sum((ref_labels == 1) & (max_iou < 0.5))
  assert low_quality_only > 0  # the low-quality rule was exercised


@pytest.mark.parametrize('low_quality', [True, False])
def test_match_anchors_thresholds_and_low_quality(low_quality):
  rng = np.random.default_rng(6)
  for _ in range(3):
    anchors, gts, valid = _matching_instance(rng, num_anchors=60, max_gt=5)
    matched, labels = _match(anchors, gts, valid, 0.6, 0.3, low_quality)
    ref_matched, ref_labels = _ref_match(anchors, gts, valid, 0.6, 0.3,
                                         low_quality)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(matched, ref_matched)


def test_match_anchors_low_quality_rule_by_hand():
  anchors = np.array([
      [0, 0, 10, 10],
      [0, 0, 10, 10],      # duplicate: ties for gt 0's best anchor
      [0, 15, 30, 35],     # IoU 150/750 with gt 0: below gt 0's best
      [50, 50, 60, 60],
      [100, 100, 110, 110],
  ], np.float32)
  gts = np.array([
      [0, 0, 10, 30],      # best IoU 1/3 with anchors 0 and 1
      [51, 51, 70, 70],    # best IoU 81/380 with anchor 3
      [200, 200, 210, 210],  # overlaps nothing
  ], np.float32)
  valid = np.array([True, True, True])
  matched, labels = _match(anchors, gts, valid)
  np.testing.assert_array_equal(labels, [1, 1, 0, 1, 0])
  np.testing.assert_array_equal(np.asarray(matched)[[0, 1, 3]], [0, 0, 1])
  _, labels = _match(anchors, gts, valid, allow_low_quality=False)
  np.testing.assert_array_equal(labels, [0, 0, 0, 0, 0])
  # An anchor that is the best anchor of a gt other than its argmax gt is
  # re-matched to that gt.
  anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 14]], np.float32)
  gts = np.array([[0, 0, 10, 12], [0, 0, 10, 10]], np.float32)
  matched, labels = _match(anchors, gts, np.array([True, True]))
  # Anchor 0 is gt 1's best (IoU 1); anchor 1 is gt 0's best (IoU 12/14).
  np.testing.assert_array_equal(labels, [1, 1])
  np.testing.assert_array_equal(matched, [1, 0])


def test_match_anchors_no_gts():
  anchors = _int_boxes(np.random.default_rng(7), 20)
  gts = np.tile(anchors[:1], (4, 1))  # padding identical to an anchor
  matched, labels = _match(anchors, gts, np.zeros(4, bool))
  np.testing.assert_array_equal(labels, 0)
  np.testing.assert_array_equal(matched, 0)
  matched, labels = _match(anchors, np.zeros((0, 4), np.float32),
                           np.zeros(0, bool))
  assert matched.shape == (20,) and np.all(labels == 0)
  with pytest.raises(ValueError):
    _match(anchors, gts, np.ones(4, bool), 0.3, 0.5)


# ---------------------------------------------------------------------------
# nms.py
# ---------------------------------------------------------------------------


def _nms_instance(rng, n, neg_inf_fraction=0.1, num_classes=4):
  boxes = _clustered_int_boxes(rng, n)
  # A permutation gives distinct scores, so the greedy order is unambiguous.
  scores = (rng.permutation(n) / n).astype(np.float32)
  scores[rng.uniform(size=n) < neg_inf_fraction] = -np.inf
  classes = rng.integers(0, num_classes, n).astype(np.int32)
  valid_in = rng.uniform(size=n) > 0.1
  return boxes, scores, classes, valid_in


def _check_nms_output(indices, valid, expected, max_output):
  indices, valid = np.asarray(indices), np.asarray(valid)
  assert indices.shape == (max_output,) and valid.shape == (max_output,)
  assert indices.dtype == np.int32 and valid.dtype == bool
  count = len(expected)
  np.testing.assert_array_equal(valid, np.arange(max_output) < count)
  np.testing.assert_array_equal(indices[:count], expected)
  np.testing.assert_array_equal(indices[count:], 0)


@pytest.mark.parametrize('threshold,max_output,use_valid_in', [
    (0.5, 200, False),   # more slots than survivors
    (0.3, 8, True),      # fewer slots than survivors
    (0.7, 40, False),
])
def test_nms_matches_brute_force(threshold, max_output, use_valid_in):
  rng = np.random.default_rng(int(threshold * 10) + max_output)
  n, batch = 160, 24
  instances = [_nms_instance(rng, n) for _ in range(batch)]
  boxes, scores, _, valid_in = (np.stack(x) for x in zip(*instances))
  if use_valid_in:
    fn = lambda b, s, v: nms_ops.nms(b, s, threshold, max_output, valid_in=v)
    indices, valid = jax.jit(jax.vmap(fn))(boxes, scores, valid_in)
  else:
    fn = lambda b, s: nms_ops.nms(b, s, threshold, max_output)
    indices, valid = jax.jit(jax.vmap(fn))(boxes, scores)
  survivors = []
  for k in range(batch):
    expected = _ref_nms(boxes[k], scores[k], threshold, max_output,
                        valid=valid_in[k] if use_valid_in else None)
    _check_nms_output(indices[k], valid[k], expected, max_output)
    survivors.append(len(_ref_nms(
        boxes[k], scores[k], threshold, n,
        valid=valid_in[k] if use_valid_in else None)))
  # Both regimes are really exercised: truncated outputs and unused slots.
  if max_output < 100:
    assert sum(s > max_output for s in survivors) >= batch // 2
  else:
    assert max(survivors) < max_output


@pytest.mark.parametrize('threshold,max_output', [(0.5, 30), (0.4, 200)])
def test_batched_nms_matches_brute_force(threshold, max_output):
  rng = np.random.default_rng(11 + max_output)
  n, batch = 120, 16
  instances = [_nms_instance(rng, n) for _ in range(batch)]
  boxes, scores, classes, _ = (np.stack(x) for x in zip(*instances))
  fn = lambda b, s, c: nms_ops.batched_nms(b, s, c, threshold, max_output)
  indices, valid = jax.jit(jax.vmap(fn))(boxes, scores, classes)
  for k in range(batch):
    expected = _ref_nms(boxes[k], scores[k], threshold, max_output,
                        classes=classes[k])
    _check_nms_output(indices[k], valid[k], expected, max_output)
    # Equivalently: per-class NMS, merged by score and truncated.
    merged = []
    for c in np.unique(classes[k]):
      mask = classes[k] == c
      merged += _ref_nms(boxes[k], np.where(mask, scores[k], -np.inf),
                         threshold, n)
    merged.sort(key=lambda i: -scores[k][i])
    assert merged[:max_output] == expected


def test_nms_edge_cases():
  boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11],
                    [50, 50, 60, 60], [5, 5, 5, 5]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
  # Identical boxes suppress each other; the empty box survives (IoU 0).
  indices, valid = _nms(boxes, scores, 0.5, 4)
  _check_nms_output(indices, valid, [0, 3, 4], 4)
  # IoU exactly equal to the threshold does not suppress (81/119 for 0 vs 2).
  indices, valid = _nms(boxes[[0, 2]], scores[:2], 81 / 119, 2)
  _check_nms_output(indices, valid, [0, 1], 2)
  # All candidates excluded.
  indices, valid = _nms(boxes, np.full(5, -np.inf, np.float32), 0.5, 3)
  _check_nms_output(indices, valid, [], 3)
  indices, valid = _nms(boxes, scores, 0.5, 3, valid_in=np.zeros(5, bool))
  _check_nms_output(indices, valid, [], 3)
  # Static empty shapes.
  indices, valid = _nms(boxes, scores, 0.5, 0)
  assert indices.shape == (0,) and valid.shape == (0,)
  indices, valid = _nms(np.zeros((0, 4), np.float32),
                        np.zeros(0, np.float32), 0.5, 2)
  _check_nms_output(indices, valid, [], 2)
  # Different classes never suppress each other.
  indices, valid = _batched_nms(boxes[:2], scores[:2], np.array([0, 1]),
                                0.5, 3)
  _check_nms_output(indices, valid, [0, 1], 3)


def test_nms_large_input_jit():
  rng = np.random.default_rng(12)
  n, max_output = 2000, 100
  y0, x0 = rng.uniform(0, 600, (2, n))
  h, w = rng.uniform(10, 120, (2, n))
  boxes = np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)
  scores = rng.permutation(n).astype(np.float32)
  fn = jax.jit(lambda b, s: nms_ops.nms(b, s, 0.5, max_output))
  indices, valid = fn(boxes, scores)
  expected = _ref_nms(boxes, scores, 0.5, max_output)
  # Continuous coordinates: float32 and float64 IoUs can only disagree on a
  # pair within rounding of the threshold; make sure no such pair matters.
  margins = [abs(_ref_iou(boxes[i], boxes[k]) - 0.5)
             for i in range(n) for k in expected]
  assert min(margins) > 1e-5
  _check_nms_output(indices, valid, expected, max_output)


# ---------------------------------------------------------------------------
# losses.py
# ---------------------------------------------------------------------------


def _ref_focal(x, t, alpha, gamma):
  """Float64 focal loss in BCE form.

  alpha_t (1 - p_t)**gamma * BCE(x, t), which for binary t is the direct
  -alpha_t (1 - p_t)**gamma log(p_t).
  """
  p = _sigmoid64(x)
  t = np.asarray(t, np.float64)
  p_t = p * t + (1 - p) * (1 - t)
  ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
  alpha_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0
  return alpha_t * (1 - p_t)**gamma * ce


def test_sigmoid_focal_loss_matches_direct_formula():
  rng = np.random.default_rng(13)
  x = rng.uniform(-12, 12, (64, 9)).astype(np.float32)
  t = (rng.uniform(size=(64, 9)) < 0.3).astype(np.float32)
  p = _sigmoid64(x)
  p_t = np.where(t == 1, p, 1 - p)
  for alpha, gamma in [(0.25, 2.0), (0.5, 1.0), (-1.0, 2.0), (0.25, 0.0)]:
    alpha_t = np.where(t == 1, alpha, 1 - alpha) if alpha >= 0 else 1.0
    direct = -alpha_t * (1 - p_t)**gamma * np.log(p_t)
    np.testing.assert_allclose(_focal(x, t, alpha, gamma), direct,
                               rtol=2e-5, atol=1e-30)
  # Soft targets: the BCE generalisation.
  soft = rng.uniform(size=(64, 9)).astype(np.float32)
  np.testing.assert_allclose(_focal(x, soft), _ref_focal(x, soft, 0.25, 2.0),
                             rtol=1e-4, atol=1e-6)


def test_sigmoid_focal_loss_extremes_and_gradients():
  x = np.array([100.0, -100.0, 100.0, -100.0, 0.0, 30.0], np.float32)
  t = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], np.float32)
  got = np.asarray(_focal(x, t, 0.25, 2.0))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got[:4], [0.0, 25.0, 75.0, 0.0], atol=1e-6,
                             rtol=1e-6)
  np.testing.assert_allclose(got[4], 0.25 * 0.25 * math.log(2), rtol=1e-6)
  np.testing.assert_allclose(got[5], 0.75 * 30.0, rtol=1e-6)
  for gamma in [2.0, 0.5, 0.0]:
    grad = _grad(lambda z, tt, g=gamma: losses.sigmoid_focal_loss(
        z, tt, 0.25, g), x, t)
    assert np.all(np.isfinite(grad)), gamma
  # Gradient against the float64 derivative of the direct formula.
  xs = np.linspace(-6, 6, 13).astype(np.float32)
  ts = (np.arange(13) % 2).astype(np.float32)
  grad = _grad(losses.sigmoid_focal_loss, xs, ts)
  eps = 1e-6
  numeric = (_ref_focal(xs.astype(np.float64) + eps, ts, 0.25, 2.0) -
             _ref_focal(xs.astype(np.float64) - eps, ts, 0.25, 2.0)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-6)


def _ref_gaussian_focal(x, heat, alpha, beta):
  p = _sigmoid64(x)
  heat = np.asarray(heat, np.float64)
  pos = -(1 - p)**alpha * np.log(p)
  neg = -(1 - heat)**beta * p**alpha * np.log(1 - p)
  return np.where(heat >= 1 - 1e-4, pos, neg)


def test_gaussian_focal_loss():
  rng = np.random.default_rng(14)
  x = rng.uniform(-10, 10, (32, 32)).astype(np.float32)
  heat = rng.uniform(size=(32, 32)).astype(np.float32)**3
  heat[rng.uniform(size=heat.shape) < 0.05] = 1.0
  heat[0, :4] = 0.99995  # counts as a peak (float32 rounding of the Gaussian)
  np.testing.assert_allclose(_gaussian_focal(x, heat),
                             _ref_gaussian_focal(x, heat, 2.0, 4.0),
                             rtol=2e-5, atol=1e-30)
  xe = np.array([100.0, -100.0, 100.0, -100.0], np.float32)
  he = np.array([1.0, 1.0, 0.0, 0.5], np.float32)
  got = np.asarray(_gaussian_focal(xe, he))
  np.testing.assert_allclose(got, [0.0, 100.0, 100.0, 0.0], atol=1e-6)
  grad = _grad(losses.gaussian_focal_loss, xe, he)
  assert np.all(np.isfinite(grad))
  grad = _grad(losses.gaussian_focal_loss, x, heat)
  assert np.all(np.isfinite(grad))


def test_bce_huber_and_giou_loss():
  rng = np.random.default_rng(15)
  x = rng.uniform(-20, 20, 50).astype(np.float32)
  t = rng.uniform(size=50).astype(np.float32)
  p = _sigmoid64(x)
  np.testing.assert_allclose(_bce(x, t),
                             -(t * np.log(p) + (1 - t) * np.log(1 - p)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_bce(np.float32(-100), np.float32(1)), 100.0,
                             rtol=1e-6)

  pred = rng.normal(size=50).astype(np.float32) * 3
  target = rng.normal(size=50).astype(np.float32)
  for delta in [1.0, 0.5, 2.0]:
    d = np.abs(pred.astype(np.float64) - target)
    expected = np.where(d <= delta, 0.5 * d**2, delta * (d - 0.5 * delta))
    np.testing.assert_allclose(_huber(pred, target, delta), expected,
                               rtol=1e-5, atol=1e-6)
    # Smooth-L1 with beta = delta is the same loss divided by delta.
    smooth_l1 = np.where(d < delta, 0.5 * d**2 / delta, d - 0.5 * delta)
    np.testing.assert_allclose(
        np.asarray(_huber(pred, target, delta)) / delta, smooth_l1,
        rtol=1e-5, atol=1e-6)

  a = _int_boxes(rng, 20)
  b = _int_boxes(rng, 20)
  np.testing.assert_allclose(_giou_loss(a, b),
                             [1 - _ref_giou(u, v) for u, v in zip(a, b)],
                             rtol=1e-5, atol=1e-6)
  inverted = a[:, [2, 3, 0, 1]]
  grad = _grad(losses.giou_loss, inverted, b)
  assert np.all(np.isfinite(grad))
