"""A detector's decoding and NMS as TensorFlow ops, for SavedModel and TFLite.

The same computation as `head.decode` followed by
`detector.models.detector.postprocess`, in ops that TensorFlow loads and
TFLite has as built-ins (`max_pool2d`, `top_k`, `gather`,
`NonMaxSuppressionV5`); the JAX versions cannot go through jax2tf
(`detector.export.network`). tests/test_export.py holds the two equal.

Exactness, where the TF and TFLite kernels differ from `detector.ops.nms`:
  * order: the candidates arrive sorted by score (ties: lower index first,
    as `lax.top_k` and `tf.math.top_k` both sort), which is the order the
    greedy NMS visits them in; the NMS kernels get each candidate's rank as
    its score, so their own tie-breaking (TFLite has none) never matters;
  * threshold: IoU > t suppresses; TF's kernel tests `>`, TFLite's `>=`, so
    TFLite gets the next float32 above t (`iou_threshold_for`);
  * per class: one NMS per class (boxes of other classes masked out), not
    the offset trick, whose rounding moves IoUs.
"""

import numpy as np
import tensorflow as tf

from detector.predict import base


def iou_threshold_for(threshold: float, runtime: str) -> float:
  """The threshold to give `runtime`'s NMS kernel ('tensorflow' suppresses
  at IoU > t, 'tflite' at IoU >= t) so that it suppresses at IoU > t."""
  if runtime == 'tflite':
    return float(np.nextafter(np.float32(threshold), np.float32(np.inf)))
  return float(threshold)


def decode(head: str, options, outputs, input_size):
  """`head.decode` for the heads `detector.export.network` exports.

  Args:
    head: 'centernet', 'retinanet' or 'efficientdet' (decoded as retinanet).
    options: the head's Options.
    outputs: the network's outputs (`network.Detection.network`), class
      scores as probabilities.
    input_size: (H, W) of the input.

  Returns:
    boxes [B, k, 4] yxyx input pixels, scores [B, k] (descending), classes
    [B, k] int32.
  """
  if head == 'centernet':
    return _centernet(outputs['heatmap'], outputs['tlbr'], options)
  return _retinanet(outputs['cls_logits'], outputs['box_deltas'], options,
                    input_size)


def _centernet(heat, tlbr, options):
  """Peaks (the maxima of their 3x3 neighbourhood) -> top-k boxes."""
  _, h, w, c = heat.shape
  pooled = tf.nn.max_pool2d(heat, 3, 1, 'SAME')  # SAME pads with -inf.
  heat = tf.where(tf.equal(heat, pooled), heat, tf.zeros_like(heat))
  k = min(options.topk, h * w * c)
  scores, idx = tf.math.top_k(tf.reshape(heat, [-1, h * w * c]), k)
  cell = idx // c
  classes = idx - cell * c
  stride = float(2 ** options.level)
  cy = (tf.cast(cell // w, tf.float32) + 0.5) * stride
  cx = (tf.cast(cell - (cell // w) * w, tf.float32) + 0.5) * stride
  t = tf.gather(tf.reshape(tlbr, [-1, h * w, 4]), cell, batch_dims=1)
  boxes = tf.stack([cy - t[..., 0], cx - t[..., 1], cy + t[..., 2],
                    cx + t[..., 3]], axis=-1)
  return boxes, scores, classes


def _retinanet(probs, deltas, options, input_size):
  """Top-k (anchor, class) scores -> boxes (`detector.ops.boxes.decode`)."""
  # pylint: disable=g-import-not-at-top
  from detector.ops import boxes as box_ops
  _, a, c = probs.shape
  k = min(options.pre_nms_topk, a * c)
  scores, idx = tf.math.top_k(tf.reshape(probs, [-1, a * c]), k)
  anchor = idx // c
  classes = idx - anchor * c
  d = tf.gather(deltas, anchor, batch_dims=1)
  anchors = np.asarray(options.anchors(tuple(input_size)), np.float32)
  ha = anchors[:, 2] - anchors[:, 0]
  wa = anchors[:, 3] - anchors[:, 1]
  centres = np.stack([anchors[:, 0] + 0.5 * ha, anchors[:, 1] + 0.5 * wa,
                      ha, wa], axis=-1)  # Float32, as box_ops computes them.
  cya, cxa, ha, wa = tf.unstack(tf.gather(tf.constant(centres), anchor), axis=-1)
  cy = d[..., 0] * ha + cya
  cx = d[..., 1] * wa + cxa
  limit = np.float32(box_ops.DEFAULT_MAX_LOG_SCALE)
  hh = ha * tf.exp(tf.minimum(d[..., 2], limit))
  ww = wa * tf.exp(tf.minimum(d[..., 3], limit))
  boxes = tf.stack([cy - 0.5 * hh, cx - 0.5 * ww, cy + 0.5 * hh,
                    cx + 0.5 * ww], axis=-1)
  return boxes, scores, classes


def postprocess(boxes, scores, classes, model_config, input_size,
                runtime: str = 'tensorflow'):
  """`detector.models.detector.postprocess` in the shared output convention.

  Args:
    boxes: [B, N, 4] yxyx input pixels; scores [B, N], sorted descending
      (ties: lower index first); classes [B, N] int32 (`decode`'s outputs).
    model_config: `config.model` (score_threshold, nms_iou_threshold,
      max_detections, num_classes).
    input_size: (H, W) of the input; boxes are clipped to it.
    runtime: whose NMS kernel runs the graph ('tensorflow' or 'tflite').

  Returns:
    `base.DETECTION_OUTPUTS` (normalised boxes, D = max_detections rows).
  """
  h, w = (float(v) for v in input_size)
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
  boxes = tf.stack([tf.clip_by_value(ymin, 0., h), tf.clip_by_value(xmin, 0., w),
                    tf.clip_by_value(ymax, 0., h), tf.clip_by_value(xmax, 0., w)],
                   axis=-1)
  area = (tf.maximum(boxes[..., 2] - boxes[..., 0], 0.)
          * tf.maximum(boxes[..., 3] - boxes[..., 1], 0.))
  keep = ((scores > 0.) & (scores >= model_config.score_threshold)
          & (area > 0.))
  n = boxes.shape[1]
  selected = _per_image(
      lambda b, k, c: _nms_one(b, k, c, model_config, runtime), boxes, keep,
      classes)
  d = int(model_config.max_detections)
  # The kept candidates in candidate (= score) order: the first D by rank.
  rank = tf.cast(n - tf.range(n), tf.float32)
  _, idx = tf.math.top_k(tf.where(selected, rank[None], -1.), min(d, n))
  valid = tf.cast(tf.gather(selected, idx, batch_dims=1), tf.float32)
  take = lambda x: tf.gather(x, idx, batch_dims=1)
  scale = tf.constant([h, w, h, w], tf.float32)
  # Rows past num_detections: zeros, class index 0 (as JAX's padding).
  out = {'detection_boxes': take(boxes) / scale * valid[..., None],
         'detection_scores': take(scores) * valid,
         'detection_classes': tf.cast(take(classes), tf.float32) * valid + 1.,
         'num_detections': tf.reduce_sum(valid, axis=-1)}
  if d > n:  # Fewer candidates than rows.
    pad = lambda x, value=0.: tf.pad(
        x, [[0, 0], [0, d - n]] + [[0, 0]] * (len(x.shape) - 2),
        constant_values=value)
    out = dict(out, detection_boxes=pad(out['detection_boxes']),
               detection_scores=pad(out['detection_scores']),
               detection_classes=pad(out['detection_classes'], 1.))
  return {k: out[k] for k in base.DETECTION_OUTPUTS}


def _per_image(fn, *args):
  """fn applied to each image of [B, ...] args (B static: unrolled)."""
  batch = args[0].shape[0]
  if batch is not None:
    return tf.stack([fn(*(a[i] for a in args)) for i in range(batch)])
  n = args[0].shape[1]
  return tf.map_fn(lambda xs: fn(*xs), args,
                   fn_output_signature=tf.TensorSpec([n], tf.bool))


def _nms_one(boxes, keep, classes, model_config, runtime):
  """[N] bool: the candidates of one image that per-class greedy NMS keeps.

  Args:
    boxes: [N, 4] yxyx pixels; keep [N] bool (the candidates NMS may
      select); classes [N] int32; candidates sorted by descending score.
  """
  n = boxes.shape[0]
  m = min(int(model_config.max_detections), n)
  rank = tf.cast(n - tf.range(n), tf.float32)  # The visiting order.
  iou = iou_threshold_for(model_config.nms_iou_threshold, runtime)
  slots = tf.range(m)
  num_classes = int(model_config.num_classes)
  picks = []
  for c in range(num_classes):
    s = tf.where(keep & tf.equal(classes, c), rank, -tf.ones_like(rank))
    idx, _, count = tf.raw_ops.NonMaxSuppressionV5(
        boxes=boxes, scores=s, max_output_size=m, iou_threshold=iou,
        score_threshold=0., soft_nms_sigma=0., pad_to_max_output_size=True)
    # Unused slots scatter to distinct places past N, dropped below.
    picks.append(tf.where(slots < count, idx, n + c * m + slots))
  hits = tf.scatter_nd(tf.concat(picks, 0)[:, None],
                       tf.ones([num_classes * m], tf.float32),
                       [n + num_classes * m])
  return hits[:n] > 0.5
