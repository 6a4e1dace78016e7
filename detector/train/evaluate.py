"""Evaluation of a trained model: jitted predictions -> metrics and files.

For each evaluated split, predictions run as one jitted function over the
device mesh (fixed shapes: padded images; for detection NMS with a fixed
top-K); on the host, they are scored by `detector.evaluation`.

Detection writes `workdir/eval/{metrics,detections,groundtruth}_<split>.json`:
COCO results and annotations, boxes `[x, y, w, h]` in pixels of the original
images (converted here, the one place where that happens), so that
pycocotools can re-score them. Classification writes
`workdir/eval/{metrics,predictions,confusion_matrix}_<split>.json` and
`confusion_matrix_<split>.png` (also a TensorBoard image).
"""

import json
import os
from typing import Dict, List

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from detector import visualize
from detector.evaluation import classification as classification_metrics
from detector.evaluation import coco
from detector.evaluation import prf
from detector.ops import boxes as box_ops


def make_predict_fn(setup):
  """Jitted (variables, images uint8 [B, H, W, 3]) -> the task's predictions
  (detections, or a classifier's {'probabilities'})."""
  batch = NamedSharding(setup.mesh, P('data'))
  # The variables stay sharded as in the train state (whole, or FSDP shards).
  variables = setup.state_sharding.eval_variables()
  return jax.jit(
      lambda variables, images: setup.task.predict(
          setup.eval_model, variables, images, setup.model_config),
      in_shardings=(variables, batch), out_shardings=batch)


def _gather(x):
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _global(setup, batch, keys):
  """This process's numpy batch arrays -> the whole global batch, on host."""
  sharding = NamedSharding(setup.mesh, P('data'))
  return {k: _gather(jax.make_array_from_process_local_data(sharding, batch[k]))
          for k in keys}


def predict_split(config, setup, state, split, predict_fn,
                  keep_images: int = 0):
  """Runs the detector on every image of `split`.

  Returns:
    (COCO result dicts for the whole split, a list of up to `keep_images`
    (image uint8 [H, W, 3], gt boxes, predicted boxes) in input pixels).
  """
  variables = state.eval_variables()
  sharding = NamedSharding(setup.mesh, P('data'))
  detections: List[dict] = []
  drawn = []
  for batch in setup.task.data.eval_batches(config, setup.builder, split):
    images = jax.make_array_from_process_local_data(sharding, batch['image'])
    out = {k: _gather(v) for k, v in predict_fn(variables, images).items()}
    meta = _global(setup, batch, ('image_id', 'scale', 'orig_size',
                                  'example_mask', 'boxes', 'box_mask'))
    detections.extend(to_coco_detections(out, meta, setup.category_ids))
    if len(drawn) < keep_images and jax.process_index() == 0:
      for i in np.flatnonzero(batch['example_mask'])[:keep_images - len(drawn)]:
        shown = out['valid'][i] & (out['scores'][i] >= config.prf_score_threshold)
        drawn.append((batch['image'][i], batch['boxes'][i][batch['box_mask'][i]],
                      out['boxes'][i][shown]))
  return detections, drawn


def to_coco_detections(out: Dict[str, np.ndarray], meta: Dict[str, np.ndarray],
                       category_ids=None):
  """Batched predictions in input pixels -> COCO result dicts.

  Boxes are divided by the resize scale (images are placed at the top-left
  when evaluating, so there is no offset), clipped to the original image and
  written as `[x, y, width, height]` pixels; category ids are
  `category_ids[class]` (the dataset's own ids), default class + 1.
  """
  results = []
  for i in np.flatnonzero(meta['example_mask']):
    valid = out['valid'][i]
    if not valid.any():
      continue
    h, w = meta['orig_size'][i]
    boxes = box_ops.clip(out['boxes'][i][valid] / meta['scale'][i], h, w)
    xywh = box_ops.yxyx_to_xywh(np.asarray(boxes, np.float64))
    for box, cls, score in zip(xywh, out['classes'][i][valid],
                               out['scores'][i][valid]):
      if box[2] <= 0 or box[3] <= 0:
        continue
      results.append({'image_id': int(meta['image_id'][i]),
                      'category_id': (int(category_ids[cls]) if category_ids
                                      else int(cls) + 1),
                      'bbox': [round(float(v), 3) for v in box],
                      'score': round(float(score), 5)})
  return results


def score(groundtruth, detections, config) -> dict:
  """COCO AP/AR, per-class AP and P/R/F1 at the configured operating point."""
  metrics = coco.evaluate_coco(groundtruth, detections)
  metrics['prf'] = prf.precision_recall_f1(
      groundtruth, detections, score_threshold=config.prf_score_threshold,
      iou_threshold=0.5)
  metrics['num_images'] = len(groundtruth['images'])
  metrics['num_detections'] = len(detections)
  return metrics


def _write_json(out_dir, split, files):
  for name, value in files.items():
    with open(os.path.join(out_dir, f'{name}_{split}.json'), 'w') as f:
      # json.dumps encodes in C; json.dump streams through the pure-Python
      # encoder, several seconds for ~10^5 detections.
      f.write(json.dumps(value))


def detection_split(config, setup, state, split, predict_fn, writer,
                    out_dir=None, keep_images=0):
  """Scores a detector on one split, writes its scalars (and files to
  `out_dir` if given). Returns the metrics on process 0, None on others."""
  step = int(state.step)
  detections, drawn = predict_split(config, setup, state, split, predict_fn,
                                    keep_images=keep_images)
  if jax.process_index() != 0:
    return None
  groundtruth = setup.task.data.groundtruth_coco(
      setup.builder, split, setup.class_names, setup.category_ids)
  metrics = score(groundtruth, detections, config)
  metrics.update(step=step, split=split, dataset=config.dataset)
  if out_dir:
    _write_json(out_dir, split, {'metrics': metrics, 'detections': detections,
                                 'groundtruth': groundtruth})
  scalars = {f'{split}/{k}': v for k, v in metrics.items()
             if isinstance(v, float)}
  scalars.update({f'{split}/{k}': metrics['prf'][k]
                  for k in ('precision', 'recall', 'f1')})
  scalars.update({f'{split}/AP_{name}': v
                  for name, v in metrics['AP_per_class'].items()})
  writer.write_scalars(step, scalars)
  if drawn:
    writer.write_images(step, {f'{split}/detections': np.stack([
        visualize.detections_figure(img, gt, pred) for img, gt, pred in drawn])})
  logging.info('%s at step %d: AP %.3f AP50 %.3f AP75 %.3f APs %.3f | P %.3f '
               'R %.3f F1 %.3f @ score %.2f', split, step, metrics['AP'],
               metrics['AP50'], metrics['AP75'], metrics['AP_small'],
               metrics['prf']['precision'], metrics['prf']['recall'],
               metrics['prf']['f1'], config.prf_score_threshold)
  return metrics


def _classify_split(config, setup, state, split, predict_fn):
  """(labels [N], probabilities [N, K] float64) of the whole split, in order."""
  variables = state.eval_variables()
  sharding = NamedSharding(setup.mesh, P('data'))
  parts = {'probabilities': [], 'label': [], 'index': []}
  for batch in setup.task.data.eval_batches(config, setup.builder, split):
    images = jax.make_array_from_process_local_data(sharding, batch['image'])
    out = {'probabilities': _gather(predict_fn(variables, images)['probabilities'])}
    out.update(_global(setup, batch, ('label', 'index', 'example_mask')))
    for k in parts:
      parts[k].append(out[k][out['example_mask']])
  order = np.argsort(np.concatenate(parts['index']), kind='stable')
  probabilities = np.concatenate(parts['probabilities'])[order].astype(np.float64)
  return np.concatenate(parts['label'])[order], probabilities


def _classification_files(setup, split, labels, probabilities, metrics):
  names = setup.class_names
  files = setup.task.data.filenames(setup.builder, split)
  top = np.argsort(-probabilities, axis=1, kind='stable')[:, :5]
  predictions = [
      {'index': i, **({'filename': files[i]} if files else {}),
       'label': names[labels[i]], 'predicted': names[top[i, 0]],
       'top5': [[names[c], round(float(probabilities[i, c]), 5)]
                for c in top[i]]}
      for i in range(len(labels))]
  return {'metrics': metrics, 'predictions': predictions,
          'confusion_matrix': {'class_names': names, 'rows': 'true class',
                               'columns': 'predicted class',
                               'matrix': metrics['confusion_matrix']}}


def classification_split(config, setup, state, split, predict_fn, writer,
                         out_dir=None):
  """`detection_split` for a classifier: every image of `split` once."""
  step = int(state.step)
  labels, probabilities = _classify_split(config, setup, state, split,
                                          predict_fn)
  if jax.process_index() != 0:
    return None
  names = setup.class_names
  metrics = classification_metrics.metrics(labels, probabilities, names)
  metrics.update(step=step, split=split, dataset=config.dataset)
  figure = classification_metrics.confusion_matrix_figure(
      np.asarray(metrics['confusion_matrix']), names,
      title=f'{split}, step {step}')
  if out_dir:
    _write_json(out_dir, split, _classification_files(
        setup, split, labels, probabilities, metrics))
    visualize.save_png(figure, os.path.join(out_dir,
                                            f'confusion_matrix_{split}.png'))
  scalars = {f'{split}/{k}': v for k, v in metrics.items()
             if isinstance(v, float)}
  scalars.update({f'{split}/F1_{name}': v['f1']
                  for name, v in metrics['per_class'].items()})
  writer.write_scalars(step, scalars)
  writer.write_images(step, {f'{split}/confusion_matrix': figure[None]})
  logging.info('%s at step %d:\n%s', split, step,
               classification_metrics.format_metrics(metrics))
  return metrics


def evaluate_during_training(config, setup, state, workdir, writer, predict_fn):
  """`config.eval_every_steps`: scores the eval split and appends
  {step, AP, AP50, ...} to workdir/eval/history_<split>.jsonl (the AP curve)."""
  split = config.eval_split
  metrics = setup.task.evaluate_split(setup, state, split, predict_fn, writer)
  if metrics is None:
    return None
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  row = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
  with open(os.path.join(out_dir, f'history_{split}.jsonl'), 'a') as f:
    f.write(json.dumps(row) + '\n')
  return metrics


def evaluate_all(config, setup, state, workdir, writer) -> dict:
  """Scores the eval and test splits; writes files; returns {split: metrics}
  (empty on processes other than 0)."""
  predict_fn = make_predict_fn(setup)
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  result = {}
  splits = [config.eval_split, config.test_split]
  for split in dict.fromkeys(s for s in splits if s):
    keep = config.get('num_images_to_draw', 0) if split == config.eval_split else 0
    metrics = setup.task.evaluate_split(setup, state, split, predict_fn, writer,
                                        out_dir=out_dir, keep_images=keep)
    if metrics is not None:
      result[split] = metrics
  if config.get('eval_report', False) and jax.process_index() == 0:
    from detector import report  # pylint: disable=g-import-not-at-top
    for split in result:
      report.write(workdir, split, config=config, writer=writer)
  return result
