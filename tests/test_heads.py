"""Head targets and decoding: a head that outputs its own training targets
must detect the ground truth exactly (a round trip through targets, decode,
NMS and the COCO evaluator), and the targets obey their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detector import errors
from detector.configs import cnn
from detector.evaluation import coco
from detector.models import detector as detector_lib
from detector.models.heads import centernet
from detector.ops import boxes as box_ops
from detector.ops import matching


def _scene(rng, num, size=96, max_boxes=8, min_side=8, max_side=40):
  """Well-separated boxes (no two share a stride-4 centre cell)."""
  boxes = []
  while len(boxes) < num:
    h, w = rng.uniform(min_side, max_side, 2)
    y, x = rng.uniform(0, size - h), rng.uniform(0, size - w)
    cand = np.array([y, x, y + h, x + w])
    centre = (cand[:2] + cand[2:]) / 2
    if all(np.abs(centre - (b[:2] + b[2:]) / 2).max() > 12 for b in boxes):
      boxes.append(cand)
  padded = np.zeros((max_boxes, 4), np.float32)
  padded[:num] = np.reshape(boxes, (num, 4))
  labels = np.zeros(max_boxes, np.int32)
  labels[:num] = rng.integers(0, 3, num)
  mask = np.arange(max_boxes) < num
  return padded, labels, mask


SIZE = (96, 96)  # The padded input of every scene.


def _model_config(head):
  config = cnn.get_config()
  model = config.model.copy_and_resolve_references()
  model.num_classes = 3
  model.head = head
  model.retinanet.min_level = 2
  model.retinanet.max_level = 4
  return model


def _head(config):
  """The configured head module (unbound: its loss, decode and merge)."""
  lib, options = detector_lib.head_options(config)
  return lib.Head(num_classes=config.num_classes, options=options)


def _as_coco(boxes, labels, mask, pred):
  images = [{'id': i + 1, 'width': 96, 'height': 96} for i in range(len(boxes))]
  anns, dets = [], []
  for i in range(len(boxes)):
    for b, l in zip(boxes[i][mask[i]], labels[i][mask[i]]):
      x, y, w, h = box_ops.yxyx_to_xywh(np.asarray(b, np.float64))
      anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': int(l),
                   'bbox': [x, y, w, h], 'area': w * h, 'iscrowd': 0})
    valid = np.asarray(pred['valid'][i])
    for b, c, s in zip(np.asarray(pred['boxes'][i])[valid],
                       np.asarray(pred['classes'][i])[valid],
                       np.asarray(pred['scores'][i])[valid]):
      x, y, w, h = box_ops.yxyx_to_xywh(np.asarray(b, np.float64))
      dets.append({'image_id': i + 1, 'category_id': int(c), 'bbox': [x, y, w, h],
                   'score': float(s)})
  gt = {'images': images, 'annotations': anns,
        'categories': [{'id': c, 'name': str(c)} for c in range(3)]}
  return gt, dets


def _perfect_centernet(boxes, labels, mask):
  """Outputs equal to the head's own targets: logits +10 at peaks, -10 elsewhere."""
  heat, targets, _ = jax.vmap(lambda b, l, m: centernet.targets_one_image(
      b, l, m, 3, (24, 24), 4))(boxes, labels, mask)
  ys = (jnp.arange(24) + 0.5) * 4
  cy, cx = ys[None, :, None], ys[None, None, :]
  tlbr = jnp.stack([cy - targets[..., 0], cx - targets[..., 1],
                    targets[..., 2] - cy, targets[..., 3] - cx], -1)
  return {'heatmap': jnp.where(heat >= 1 - 1e-6, 10.0, -10.0), 'tlbr': tlbr}


def _perfect_retinanet(boxes, labels, mask, config):
  """Each box's single best anchor fires with exact deltas; others are silent."""
  anchors = jnp.asarray(_head(config).options.anchors(SIZE))
  matched, match_labels = jax.vmap(lambda b, m: matching.match_anchors(
      anchors, b, m))(boxes, mask)
  gt_boxes = jnp.take_along_axis(jnp.asarray(boxes), matched[..., None], 1)
  gt_labels = jnp.take_along_axis(jnp.asarray(labels), matched, 1)
  deltas = box_ops.encode(gt_boxes, anchors)
  iou = jax.vmap(lambda b: box_ops.pairwise_iou(anchors, b))(jnp.asarray(boxes))
  best = jnp.argmax(jnp.where(mask[:, None, :], iou, -1), axis=1)  # [B, K]
  fire = jnp.zeros(match_labels.shape, bool)
  fire = jax.vmap(lambda f, i, m: f.at[jnp.where(m, i, 0)].max(m))(fire, best, mask)
  logits = jnp.where(fire[..., None] & (jax.nn.one_hot(gt_labels, 3) > 0), 10., -10.)
  return {'cls_logits': logits, 'box_deltas': deltas}


def test_centernet_targets_follow_their_definition():
  rng = np.random.default_rng(0)
  boxes, labels, mask = _scene(rng, 5)
  heat, targets, weights = centernet.targets_one_image(
      jnp.asarray(boxes), jnp.asarray(labels), jnp.asarray(mask), 3, (24, 24), 4)
  heat, targets, weights = map(np.asarray, (heat, targets, weights))
  for b, l in zip(boxes[mask], labels[mask]):
    cy, cx = int((b[0] + b[2]) / 2 // 4), int((b[1] + b[3]) / 2 // 4)
    assert heat[cy, cx, l] == pytest.approx(1.0)
    np.testing.assert_allclose(targets[cy, cx], b, rtol=1e-6)
  assert heat.max() <= 1.0 and heat.min() >= 0.0
  # Exactly one peak of 1 per box (boxes are well separated).
  assert (heat >= 1 - 1e-6).sum() == mask.sum()
  # Weights sum to 1 per box (where no other box claims its cells).
  assert weights.sum() == pytest.approx(mask.sum(), rel=1e-3)


def test_centernet_perfect_outputs_give_ap_one():
  rng = np.random.default_rng(1)
  scenes = [_scene(rng, n) for n in (1, 3, 5, 0)]
  boxes, labels, mask = (np.stack(x) for x in zip(*scenes))
  config = _model_config('centernet')
  outputs = _perfect_centernet(boxes, labels, mask)
  pred = detector_lib.postprocess(_head(config).decode(outputs, SIZE), config,
                                  SIZE)
  assert int(pred['valid'].sum()) == int(mask.sum())
  gt, dets = _as_coco(boxes, labels, mask, pred)
  metrics = coco.evaluate_coco(gt, dets)
  assert metrics['AP'] == pytest.approx(1.0)


def test_retinanet_perfect_outputs_give_ap_one():
  rng = np.random.default_rng(2)
  scenes = [_scene(rng, n, min_side=12) for n in (2, 4, 1)]
  boxes, labels, mask = (np.stack(x) for x in zip(*scenes))
  config = _model_config('retinanet')
  outputs = _perfect_retinanet(boxes, labels, mask, config)
  pred = detector_lib.postprocess(_head(config).decode(outputs, SIZE), config,
                                  SIZE)
  assert int(pred['valid'].sum()) == int(mask.sum())
  gt, dets = _as_coco(boxes, labels, mask, pred)
  assert coco.evaluate_coco(gt, dets)['AP'] == pytest.approx(1.0)


@pytest.mark.parametrize('head', ['centernet', 'retinanet'])
def test_loss_is_finite_and_lower_for_targets_than_for_noise(head):
  rng = np.random.default_rng(3)
  scenes = [_scene(rng, n, min_side=12) for n in (3, 0)]
  boxes, labels, mask = (np.stack(x) for x in zip(*scenes))
  images = jnp.asarray(rng.integers(0, 255, (2, 96, 96, 3)), jnp.uint8)
  batch = {'image': images, 'boxes': jnp.asarray(boxes),
           'labels': jnp.asarray(labels), 'box_mask': jnp.asarray(mask)}
  config = _model_config(head)
  model = detector_lib.build(config, train=False)
  # Under jit: eager first calls compile op by op, far slower.
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), images)
  loss_fn = lambda v: model.head.loss(model.apply(v, images), batch)
  (loss, parts), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      variables)
  assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in parts.values())
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('head', ['centernet', 'retinanet'])
def test_merge_flipped_maps_mirror_outputs_back(head):
  """The perfect outputs of the mirrored scene, merged with those of the scene,
  give the scene's outputs back, and detections equal to the ground truth."""
  rng = np.random.default_rng(5)
  # Random float boxes keep centres off cell borders, where mirroring could
  # move a centre into the neighbouring cell.
  scenes = [_scene(rng, n, min_side=12) for n in (3, 1, 4)]
  boxes, labels, mask = (np.stack(x) for x in zip(*scenes))
  mirrored = boxes.copy()
  mirrored[..., 1], mirrored[..., 3] = 96 - boxes[..., 3], 96 - boxes[..., 1]
  mirrored[~mask] = 0
  config = _model_config(head)
  lib = _head(config)
  if head == 'centernet':
    outputs = _perfect_centernet(boxes, labels, mask)
    flipped = _perfect_centernet(mirrored, labels, mask)
  else:
    outputs = _perfect_retinanet(boxes, labels, mask, config)
    flipped = _perfect_retinanet(mirrored, labels, mask, config)
  merged = lib.merge_flipped(outputs, flipped, SIZE)
  for key in outputs:
    np.testing.assert_allclose(merged[key], outputs[key], atol=2e-3)
  pred = detector_lib.postprocess(lib.decode(merged, SIZE), config, SIZE)
  gt, dets = _as_coco(boxes, labels, mask, pred)
  assert coco.evaluate_coco(gt, dets)['AP'] == pytest.approx(1.0)
  # Merging a scene with a different (unmirrored) one must not pass.
  wrong = lib.merge_flipped(outputs, outputs, SIZE)
  assert not all(np.allclose(wrong[k], outputs[k], atol=2e-3) for k in outputs)


def test_head_options_are_checked_before_anything_is_built():
  """A head's options are its `Options`: an unknown key, a bad value or a
  level the neck does not make is a ConfigError naming the key."""
  config = _model_config('retinanet')
  config.retinanet.box_loss = 'l1'
  with pytest.raises(errors.ConfigError,
                     match=r"retinanet.box_loss='l1': expected one of"):
    detector_lib.build(config, train=True)
  config = _model_config('retinanet')
  config.retinanet.max_level = 7  # The FPN makes levels 2..5.
  with pytest.raises(errors.ConfigError,
                     match=r'reads levels \[2, 3, 4, 5, 6, 7\] but the fpn '
                     r'neck makes \[2, 3, 4, 5\]'):
    detector_lib.build(config, train=True)
  config = _model_config('centernet')
  with config.centernet.unlocked():
    config.centernet.sigma = 2.0
  with pytest.raises(errors.ConfigError, match=r'centernet.*sigma.*its options '
                     r"are \[.*'gaussian_alpha'"):
    detector_lib.build(config, train=True)
  config = _model_config('centernet')
  config.centernet.prior_prob = 1.0
  with pytest.raises(errors.ConfigError, match=r'prior_prob=1.0: must be in'):
    detector_lib.build(config, train=True)


def test_head_declares_the_input_stride():
  """Input sizes must be multiples of the deepest level any part makes or
  reads: 32 for the CNN + FPN(2..5); 128 when the head reads level 7."""
  config = _model_config('centernet')
  assert detector_lib.build(config, train=False).required_stride == 32
  config = _model_config('retinanet')
  config.fpn.max_level = config.retinanet.max_level = 7
  assert detector_lib.build(config, train=False).required_stride == 128
