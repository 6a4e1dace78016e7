"""The evaluation report of a detector: where it fails, from the COCO files
that evaluation writes (`eval/{groundtruth,detections,metrics}_<split>.json`).

`analyse` computes every number (JSON-serialisable); `sections` turns them
into the report's tables and figures. Images are only read for the drawn
worst images, through a callable the caller supplies.
"""

from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from detector.evaluation import classification
from detector.evaluation import confusion
from detector.evaluation import curves
from detector.evaluation import prf
from detector.evaluation import tide
from detector.report import figures

PR_IOUS = (0.5, 0.75)
SIZE_RANGES = {'small': (0.0, 32.0 ** 2), 'medium': (32.0 ** 2, 96.0 ** 2),
               'large': (96.0 ** 2, 1e10)}  # pycocotools' areaRng.
MAX_CLASS_PANELS = 30  # PR panels drawn; tables list every class.


def _f1_optimal(sweep: dict) -> dict:
  """The sweep's F1-optimal points, overall and per class (None where no
  detection exists)."""
  return {'overall': sweep['best'], 'iou_threshold': sweep['iou_threshold'],
          'per_class': {name: c['best']
                        for name, c in sweep['per_class'].items()}}


def analyse(groundtruth: dict, detections: List[dict],
            score_threshold: float) -> dict:
  """Every number of the report.

  Args:
    groundtruth: COCO annotation dict (boxes [x, y, w, h] pixels).
    detections: COCO result dicts.
    score_threshold: the operating point (`config.prf_score_threshold`).

  Returns:
    {'curves': {IoU: {class: PR curve}} (numpy arrays),
     'operating_points': {IoU: {class: {'precision', 'recall'}}},
     'ap_by_iou': {IoU: {class: AP}},
     'sweep': prf sweep at IoU 0.5, 'f1_optimal': see `_f1_optimal`,
     'confusion': `confusion.confusion_matrix` at score_threshold,
     'tide': `tide.analyse`, 'ap_by_size', 'ap_by_aspect': {range: {'AP',
     'AP50', 'num_gt'}}, 'score_threshold'}.
  """
  out = {'score_threshold': float(score_threshold), 'curves': {},
         'operating_points': {}, 'ap_by_iou': {}}
  for iou in PR_IOUS:
    by_class = curves.precision_recall_curves(groundtruth, detections, iou)
    out['curves'][iou] = by_class
    out['operating_points'][iou] = {
        name: curves.operating_point(c, score_threshold)
        for name, c in by_class.items()}
    out['ap_by_iou'][iou] = {name: c['ap'] for name, c in by_class.items()}
  out['sweep'] = prf.precision_recall_f1_sweep(groundtruth, detections, 0.5)
  out['f1_optimal'] = _f1_optimal(out['sweep'])
  out['confusion'] = confusion.confusion_matrix(groundtruth, detections,
                                                score_threshold, 0.5)
  out['tide'] = tide.analyse(groundtruth, detections)
  out['ap_by_size'] = curves.ap_by_range(groundtruth, detections, SIZE_RANGES,
                                         'area')
  out['ap_by_aspect'] = curves.ap_by_range(groundtruth, detections,
                                           curves.ASPECT_RANGES, 'aspect')
  return out


def summary(analysis: dict) -> dict:
  """The JSON-serialisable part of `analyse` (no curves): written as
  eval/report_<split>.json."""
  t = analysis['tide']
  c = analysis['confusion']
  return {
      'score_threshold': analysis['score_threshold'],
      'f1_optimal': analysis['f1_optimal'],
      'ap_by_iou': {str(k): v for k, v in analysis['ap_by_iou'].items()},
      'operating_points': {str(k): v for k, v in
                           analysis['operating_points'].items()},
      'confusion_matrix': {'labels': c['labels'], 'rows': 'true class',
                           'columns': 'predicted class',
                           'matrix': c['matrix'].tolist()},
      'errors': {'tide_ap50': t['ap'], 'delta_ap50': t['delta_ap'],
                 'counts': t['counts']},
      'ap_by_size': analysis['ap_by_size'],
      'ap_by_aspect': analysis['ap_by_aspect']}


def worst_images(groundtruth: dict, detections: List[dict], analysis: dict,
                 count: int) -> List[dict]:
  """The `count` images with the most errors at the operating point.

  An image's errors are its detections with score >= the threshold that
  TIDE calls an error, plus its objects left unmatched at that threshold.

  Returns:
    [{'image_id', 'errors', 'boxes': [(xywh, colour, label)]}], most errors
    first (ties by image id); images without errors are left out.
  """
  threshold = analysis['score_threshold']
  kinds = analysis['tide']['detection_kind']
  ignored = set(analysis['tide']['ignored'])
  names = {c['id']: str(c.get('name', c['id']))
           for c in groundtruth.get('categories', [])}
  annotations = groundtruth.get('annotations', [])
  per_image: Dict[int, dict] = {}

  def entry(image_id):
    return per_image.setdefault(image_id, {'image_id': image_id, 'errors': 0,
                                           'boxes': []})
  missed = set(analysis['confusion']['missed'])
  for j, a in enumerate(annotations):
    e = entry(a['image_id'])
    if a.get('iscrowd', 0):
      e['boxes'].append((a['bbox'], figures.GROUND_TRUTH, 'crowd'))
    elif j in missed:
      e['errors'] += 1
      e['boxes'].append((a['bbox'], figures.ERROR_COLOURS['Miss'],
                         f'Miss {names[a["category_id"]]}'))
    else:
      e['boxes'].append((a['bbox'], figures.GROUND_TRUTH, ''))
  for i, d in enumerate(detections):
    if d['score'] < threshold or i in ignored or kinds[i] == tide.NOT_SCORED:
      continue
    e = entry(d['image_id'])
    kind = kinds[i]
    label = f'{names[d["category_id"]]} {d["score"]:.2f}'
    if kind != tide.TRUE_POSITIVE:
      e['errors'] += 1
      label = f'{kind}: {label}'
    e['boxes'].append((d['bbox'], figures.ERROR_COLOURS[kind], label))
  ranked = sorted((e for e in per_image.values() if e['errors']),
                  key=lambda e: (-e['errors'], e['image_id']))
  return ranked[:count]


def sections(analysis: dict, metrics: dict, class_names: List[str],
             images: Optional[Callable[[Iterable[int]], Dict[int, np.ndarray]]],
             worst: List[dict]) -> List[tuple]:
  """The report's blocks, in order: ('h2', text), ('p', text),
  ('table', header, rows), ('figure', name, caption, uint8 image)."""
  t = analysis['tide']
  threshold = analysis['score_threshold']
  ap = metrics.get('AP_per_class', {})
  blocks = [('h2', 'Summary')]
  p = metrics.get('prf', {})
  best = analysis['f1_optimal']['overall']
  rows = [[k, f'{metrics[k]:.4f}'] for k in
          ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large', 'AR100')
          if k in metrics]
  rows.append([f'P / R / F1 at score {threshold:g}, IoU 0.5',
               f'{p.get("precision", 0):.4f} / {p.get("recall", 0):.4f} / '
               f'{p.get("f1", 0):.4f}'])
  if best:
    rows.append(['F1-optimal score threshold (all classes)',
                 f'{best["score_threshold"]:.4f} (F1 {best["f1"]:.4f}, P '
                 f'{best["precision"]:.4f}, R {best["recall"]:.4f})'])
  largest = max(tide.MAIN_ERRORS, key=lambda k: t['delta_ap'][k])
  rows.append(['Largest error kind (TIDE)',
               f'{largest}: +{t["delta_ap"][largest]:.2f} AP50 points if fixed'])
  scored = {n: v for n, v in ap.items() if v >= 0}
  if scored:
    weakest = min(scored, key=scored.get)
    rows.append(['Class with the lowest AP', f'{weakest}: AP '
                 f'{scored[weakest]:.4f}'])
  blocks.append(('table', ['', 'value'], rows))

  blocks.append(('h2', 'Per class'))
  per_class = analysis['f1_optimal']['per_class']
  rows = []
  for name in class_names:
    b = per_class.get(name)
    op = analysis['operating_points'][0.5][name]
    rows.append([name, analysis['curves'][0.5][name]['num_gt'],
                 f'{ap.get(name, -1):.4f}',
                 f'{analysis["ap_by_iou"][0.5][name]:.4f}',
                 f'{analysis["ap_by_iou"][0.75][name]:.4f}',
                 f'{op["precision"]:.3f} / {op["recall"]:.3f}',
                 f'{b["score_threshold"]:.4f} ({b["f1"]:.3f})' if b else '-'])
  blocks.append(('table', ['class', 'objects', 'AP', 'AP50', 'AP75',
                           f'P / R at {threshold:g}',
                           'F1-optimal threshold (F1)'], rows))

  drawn = sorted(class_names, key=lambda n: -analysis['curves'][0.5][n]['num_gt']
                 )[:MAX_CLASS_PANELS]
  drawn = [n for n in class_names if n in drawn]
  blocks.append(('h2', 'Precision-recall curves'))
  more = (f' The {MAX_CLASS_PANELS} classes with the most objects are drawn.'
          if len(class_names) > MAX_CLASS_PANELS else '')
  blocks.append(('figure', 'pr_curves', 'Precision against recall per class '
                 'at IoU 0.5 and 0.75: thin, the raw curve; thick, COCO\'s '
                 '101-point envelope, whose mean is the AP; dot, the operating '
                 f'point at score {threshold:g}.' + more,
                 figures.pr_curves(analysis['curves'],
                                   analysis['operating_points'], drawn)))
  blocks.append(('h2', 'F1 against score threshold'))
  blocks.append(('figure', 'f1_threshold', 'F1 at IoU 0.5 for each score '
                 'threshold, per class and over all classes; dots mark each '
                 'F1-optimal threshold (also in metrics_<split>.json under '
                 '"f1_optimal").',
                 figures.f1_curves(analysis['sweep'], analysis['f1_optimal'],
                                   drawn, threshold)))

  c = analysis['confusion']
  blocks.append(('h2', 'Confusion matrix'))
  blocks.append(('figure', 'confusion_matrix', 'Detections with score >= '
                 f'{threshold:g} at IoU 0.5. Diagonal: true positives; '
                 'off the diagonal: a right box with the wrong class; '
                 'background row: detections of nothing, or duplicates; '
                 'background column: missed objects. Colour: fraction of the '
                 'row.',
                 classification.confusion_matrix_figure(
                     c['matrix'], c['labels'], title='true (rows) vs '
                     'predicted (columns)')))

  blocks.append(('h2', 'Error breakdown (TIDE)'))
  blocks.append(('p', f'TIDE\'s AP50 {t["ap"]:.2f} (its own mean over '
                 'classes, in points). Each kind\'s gain is the AP50 with '
                 'only that kind fixed, minus the AP50: Cls, right box and '
                 'wrong class; Loc, right class and IoU in [0.1, 0.5]; Both, '
                 'wrong class and poor box; Dupe, a second detection of a '
                 'matched object; Bkg, IoU <= 0.1 with every object; Miss, '
                 'objects no detection reached. FalsePos / FalseNeg: every '
                 'false positive scored last / every missed object removed.'))
  blocks.append(('table', ['kind', 'AP50 gain', 'errors'],
                 [[k, f'{t["delta_ap"][k]:.2f}',
                   t['counts'].get(k, '')] for k in
                  tide.MAIN_ERRORS + tide.SPECIAL_ERRORS]))
  blocks.append(('figure', 'error_breakdown', 'AP50 points gained by fixing '
                 'each kind of error, and the number of errors of each kind.',
                 figures.error_breakdown(t['delta_ap'], t['counts'],
                                         tide.MAIN_ERRORS,
                                         tide.SPECIAL_ERRORS)))

  blocks.append(('h2', 'AP by object size and aspect ratio'))
  groups = {'size (area in pixels)': analysis['ap_by_size'],
            'aspect ratio (width / height)': analysis['ap_by_aspect']}
  rows = [[group, label, r['num_gt'], f'{r["AP"]:.4f}', f'{r["AP50"]:.4f}']
          for group, ranges in groups.items() for label, r in ranges.items()]
  blocks.append(('table', ['by', 'range', 'objects', 'AP', 'AP50'], rows))
  blocks.append(('figure', 'ap_by_range', 'COCO AP over objects in each '
                 'range (small < 32², medium < 96², large; tall <= 0.75 < '
                 'square <= 1.33 < wide), with COCO\'s rule: objects outside '
                 'the range and unmatched detections outside it are ignored. '
                 '-1 (drawn as 0) where a range holds no object.',
                 figures.ap_by_range(groups)))

  blocks.append(('h2', 'Images with the most errors'))
  pixels = images(e['image_id'] for e in worst) if worst and images else {}
  shown = [e for e in worst if e['image_id'] in pixels]
  if not worst:
    blocks.append(('p', f'No image has an error at score {threshold:g}.'))
  elif not shown:
    blocks.append(('p', 'The images are not drawn: the split\'s images '
                   'could not be read (see the log).'))
  else:
    blocks.append(('figure', 'legend', 'Box colours.', figures.legend_strip()))
    blocks.append(('figure', 'worst_images',
                   f'The {len(shown)} images with the most errors at score '
                   f'{threshold:g}: ground truth green, missed objects '
                   'magenta, true positives blue, each error labelled with '
                   'its TIDE kind.',
                   figures.image_grid(
                       [figures.labelled_image(pixels[e['image_id']],
                                               e['boxes']) for e in shown],
                       [f'image {e["image_id"]}: {e["errors"]} errors'
                        for e in shown])))
  return blocks
