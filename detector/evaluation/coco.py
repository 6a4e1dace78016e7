"""COCO box evaluation (AP/AR) by faster-coco-eval, with input checks and
per-class AP.

`evaluate_coco` runs faster-coco-eval's `COCOeval_faster(gt, dt, 'bbox')`, a
C++ port of pycocotools' evaluation (the test suite checks it against
pycocotools on random cases with crowds, ties and thresholds hit exactly),
with pycocotools' default parameters, and returns its 12 summary numbers by
name, plus AP and AP50 per category read from its precision array. It is
used rather than pycocotools itself for speed: a 1000-image split with 70k
detections takes a third of pycocotools' time (BENCHMARKS.md). Around it this
module only checks the input (the libraries fail on bad input with a bare
assert or KeyError, or merge duplicate ids silently), hands them copies (they
write into the dicts they are given) and silences their prints.

Inputs are plain COCO objects:
  * ground truth: a COCO annotation dict with "images", "categories" and
    "annotations"; boxes are [x, y, w, h] in pixels, "area" is the annotation's
    (segmentation) area (w * h where absent), "iscrowd" is 0/1 (0 where absent);
    image and category ids are integers.
  * detections: a list of {"image_id", "category_id", "bbox": [x, y, w, h],
    "score"} result dicts.
Annotation ids are not read: the evaluation keys annotations by id and takes
a match with id 0 for no match, so the copies are numbered 1..G in list order.
"""

import contextlib
import io
from typing import Dict, Sequence, Tuple

from faster_coco_eval import COCO
from faster_coco_eval import COCOeval_faster
import numpy as np

SUMMARY_KEYS = ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large',
                'AR1', 'AR10', 'AR100', 'AR_small', 'AR_medium', 'AR_large')


def quiet():
  """Context manager that swallows the libraries' progress prints (stdout)."""
  return contextlib.redirect_stdout(io.StringIO())


def _unique_ids(records, where: str) -> set:
  """The records' integer "id" values; raises ValueError on a duplicate or a
  non-integer id."""
  ids = set()
  for i, record in enumerate(records):
    if not isinstance(record['id'], (int, np.integer)) or isinstance(
        record['id'], bool):
      raise ValueError(f'{where}[{i}]: id {record["id"]!r} is not an integer')
    if record['id'] in ids:
      raise ValueError(f'{where}[{i}]: duplicate id {record["id"]!r}')
    ids.add(record['id'])
  return ids


def _check_records(records, where: str, fields, image_ids, category_ids):
  """Raises ValueError at the first record with a bad field, naming both."""
  for i, record in enumerate(records):
    for field in fields:
      if field not in record:
        raise ValueError(f'{where}[{i}]: no {field!r} field')
    for field, known, target in (('image_id', image_ids, "groundtruth['images']"),
                                 ('category_id', category_ids,
                                  "groundtruth['categories']")):
      if record[field] not in known:
        raise ValueError(f'{where}[{i}]: {field} {record[field]!r} is not in '
                         f'{target}')
    box = record['bbox']
    try:
      problem = ('is not [x, y, w, h]' if len(box) != 4 else
                 'has negative width or height' if box[2] < 0 or box[3] < 0
                 else None)
    except TypeError:
      problem = 'is not [x, y, w, h]'
    if problem:
      raise ValueError(f'{where}[{i}]: bbox {box!r} {problem}')


def check(groundtruth: dict, detections: Sequence[dict]) -> dict:
  """Validates a COCO annotation dict and result dicts against it.

  Returns:
    {category id: category name ("name", else str(id))}.

  Raises:
    ValueError: on duplicate image/category ids or category names, a missing
      field, an annotation or detection whose image_id/category_id is unknown,
      or a bbox that is not [x, y, w, h] with w, h >= 0 (messages name the
      record's index).
  """
  categories = groundtruth.get('categories', [])
  image_ids = _unique_ids(groundtruth.get('images', []), "groundtruth['images']")
  category_ids = _unique_ids(categories, "groundtruth['categories']")
  names = {c['id']: str(c.get('name', c['id'])) for c in categories}
  if len(set(names.values())) != len(names):
    raise ValueError("duplicate category names in groundtruth['categories']; "
                     'per-class results are keyed by name')
  _check_records(groundtruth.get('annotations', []),
                 "groundtruth['annotations']",
                 ('image_id', 'category_id', 'bbox'), image_ids, category_ids)
  _check_records(detections, 'detections',
                 ('image_id', 'category_id', 'bbox', 'score'), image_ids,
                 category_ids)
  return names


def evaluator(groundtruth: dict, detections: Sequence[dict],
              extra_calc: bool = False,
              own_area: bool = False) -> Tuple[COCOeval_faster, Dict]:
  """The bbox evaluator of checked copies of the inputs, not yet run.

  Args:
    groundtruth: COCO annotation dict (see module docstring).
    detections: list of COCO result dicts, boxes [x, y, w, h].
    extra_calc: also record each match (`eval['matched']` after
      `accumulate`: {"<detection id>_<annotation id>": IoU}).
    own_area: the detections carry the "area" that area ranges compare
      (`loadRes` would set w * h), for ranges over another property.

  Returns:
    (COCOeval_faster with pycocotools' default parameters, {category id:
    name}). Its detections carry ids 1..D in list order (as `loadRes`
    numbers them) and its annotations ids 1..G.

  Raises:
    ValueError: see `check`.
  """
  names = check(groundtruth, detections)
  annotations = [
      dict(a, id=i + 1, iscrowd=a.get('iscrowd', 0),
           area=a['area'] if 'area' in a else a['bbox'][2] * a['bbox'][3])
      for i, a in enumerate(groundtruth.get('annotations', []))]
  dataset = {'images': [dict(r) for r in groundtruth.get('images', [])],
             'categories': [dict(r) for r in groundtruth.get('categories', [])],
             'annotations': annotations}
  with quiet():
    coco_gt = COCO(dataset)
    if detections and own_area:
      coco_dt = COCO(dict(dataset, annotations=[
          dict(d, id=i + 1, iscrowd=0) for i, d in enumerate(detections)]))
    elif detections:
      coco_dt = coco_gt.loadRes([dict(d) for d in detections])
    else:  # loadRes reads the first result, so an empty set is built directly.
      coco_dt = COCO(dict(dataset, annotations=[]))
    return COCOeval_faster(coco_gt, coco_dt, 'bbox', extra_calc=extra_calc,
                           print_function=lambda *args, **kwargs: None), names


def _mean_defined(values: np.ndarray) -> float:
  """Mean over entries > -1, or -1.0 if none (pycocotools' convention)."""
  return float(np.mean(values[values > -1])) if (values > -1).any() else -1.0


def evaluate_coco(groundtruth: dict, detections: Sequence[dict]) -> dict:
  """COCO bbox AP/AR of `detections` against `groundtruth` (pycocotools'
  definition, computed by faster-coco-eval).

  Args:
    groundtruth: COCO annotation dict; boxes [x, y, w, h] in pixels.
    detections: list of {"image_id", "category_id", "bbox", "score"} dicts.
      Neither argument is modified.

  Returns:
    SUMMARY_KEYS -> float, the 12 `COCOeval.stats` by name (-1.0 where
    undefined); 'AP_per_class' / 'AP50_per_class': {category name:
    AP@[.5:.95] / AP@.5} at area "all", 100 detections per image (-1.0 for a
    category without ground truth).

  Raises:
    ValueError: see `check`.
  """
  evaluation, names = evaluator(groundtruth, detections)
  with quiet():
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  params = evaluation.params
  out = dict(zip(SUMMARY_KEYS, (float(v) for v in evaluation.stats[:12])))
  # [T, R, K] precision at area "all" and 100 detections per image.
  precision = evaluation.eval['precision'][
      :, :, :, params.areaRngLbl.index('all'), params.maxDets.index(100)]
  t50 = int(np.flatnonzero(params.iouThrs == .5)[0])
  for key, t in (('AP_per_class', slice(None)), ('AP50_per_class', t50)):
    out[key] = {names[cat]: _mean_defined(precision[t, :, k])
                for k, cat in enumerate(params.catIds)}
  return out
