"""Tests of detector.evaluation against pycocotools and brute force.

`coco.evaluate_coco` runs faster-coco-eval; pycocotools, the reference the
field trusts and a separate implementation, is run here the standard way on
the caller's dicts: the 12 summary numbers must equal `COCOeval.stats` (to
1e-12: the C++ port rounds differently in the last bits), per-class AP a
separate run restricted to that category, on random cases with crowds, ties,
IoUs exactly on thresholds and more than 100 detections per image; ids,
missing fields and copies must be handled. Precision/recall/F1 is checked
against a plain-Python implementation of its documented rules and
hand-computed examples; bad input against the expected errors.
"""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation import coco
from detector.evaluation import prf

_WIDTH, _HEIGHT = 640, 480


def _ann(ann_id, image_id, category_id, bbox, iscrowd=0):
  return {'id': ann_id, 'image_id': image_id, 'category_id': category_id,
          'bbox': bbox, 'area': bbox[2] * bbox[3], 'iscrowd': iscrowd}


def _det(image_id, category_id, bbox, score):
  return {'image_id': image_id, 'category_id': category_id, 'bbox': bbox,
          'score': score}


def _random_box(rng, min_side, max_side):
  """A [x, y, w, h] box inside the image, sides log-uniform in a range."""
  w, h = np.exp(rng.uniform(np.log(min_side), np.log(max_side), 2))
  w, h = min(w, _WIDTH - 1), min(h, _HEIGHT - 1)
  x, y = rng.uniform(0, _WIDTH - w), rng.uniform(0, _HEIGHT - h)
  return [round(float(v), 2) for v in (x, y, w, h)]


def _make_case(seed, num_images, num_categories):
  """A random COCO ground truth and detections exercising every corner.

  Non-contiguous category/image ids listed out of order, 0-15 annotations per
  image of all sizes (some exactly 32x32), crowd regions, duplicated boxes, an
  "area" field that differs from w*h, detections by jittering ground truth plus
  false positives, >100 detections on some images (with true positives past
  the 100th), scores rounded to two decimals (ties), detections on images
  without ground truth, and "grid" images whose boxes sit on a 4-pixel grid so
  that IoUs tie with each other and land exactly on thresholds (0.5, 0.75).
  """
  rng = np.random.default_rng(seed)
  cat_ids = [int(c) for c in rng.choice(np.arange(1, 200), num_categories, False)]
  img_ids = [int(i) for i in rng.choice(np.arange(1, 10**5), num_images, False)]
  images = [{'id': i, 'width': _WIDTH, 'height': _HEIGHT} for i in img_ids]
  categories = [{'id': c, 'name': f'class_{c}'} for c in cat_ids]
  anns, dets = [], []
  for img in img_ids:
    num_gt = 0 if rng.random() < 0.15 else int(rng.integers(0, 16))
    grid = rng.random() < 0.25
    gts = []
    for _ in range(num_gt):
      cat = cat_ids[int(rng.integers(num_categories))]
      roll = rng.random()
      if grid:
        box = [float(v) for v in 4 * rng.integers(0, 12, 2)] + [
            float(v) for v in rng.choice([8., 16., 32., 64.], 2)]
      elif roll < 0.05:
        box = [float(rng.integers(0, 500)), float(rng.integers(0, 400)), 32., 32.]
      elif roll < 0.1 and gts:
        box, cat = list(gts[-1][0]), gts[-1][1]
      else:
        box = _random_box(rng, 4, 400)
      crowd = int(rng.random() < 0.08)
      if crowd:
        box = _random_box(rng, 100, 450)
      gts.append((box, cat))
      ann = _ann(len(anns) + 1, img, cat, box, crowd)
      if rng.random() < 0.5:  # like a segmentation area, smaller than the box
        ann['area'] *= float(rng.uniform(0.5, 1.0))
      anns.append(ann)
    for box, cat in gts:
      for _ in range(int(rng.integers(0, 4))):
        jitter = rng.normal(0, 0.12, 4) * [box[2], box[3], box[2], box[3]]
        if grid:
          jitter = 4. * rng.integers(-1, 2, 4)
        jbox = [box[0] + jitter[0], box[1] + jitter[1],
                max(box[2] + jitter[2], 0.5), max(box[3] + jitter[3], 0.5)]
        if rng.random() < 0.1:
          cat = cat_ids[int(rng.integers(num_categories))]
        dets.append(_det(img, cat, [round(float(v), 2) for v in jbox],
                         round(float(rng.uniform(0.05, 1.0)), 2)))
    crowded = rng.random() < 0.08
    num_fp = int(rng.integers(110, 160)) if crowded else int(rng.integers(0, 12))
    # On crowded images most false positives outscore the true positives of
    # the same category, pushing some past the 100-detection cut.
    crowded_cat = gts[0][1] if gts else cat_ids[0]
    for _ in range(num_fp):
      cat = crowded_cat if crowded else cat_ids[int(rng.integers(num_categories))]
      dets.append(_det(img, cat, _random_box(rng, 3, 300),
                       round(float(rng.uniform(0.3 if crowded else 0., 1.)), 2)))
  dets = [dets[i] for i in rng.permutation(len(dets))]
  rng.shuffle(images)
  rng.shuffle(categories)
  return {'images': images, 'categories': categories, 'annotations': anns}, dets


def _cocoeval_stats(groundtruth, detections, cat_ids=(None,)):
  """[len(cat_ids), 12] stats of COCOeval run the standard way on copies,
  once per entry of `cat_ids` (None: every category; else params.catIds)."""
  stats = []
  with contextlib.redirect_stdout(io.StringIO()):
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(groundtruth)
    coco_gt.createIndex()
    if detections:
      coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
    else:  # loadRes cannot take an empty list.
      coco_dt = COCO()
      coco_dt.dataset = dict(copy.deepcopy(groundtruth), annotations=[])
      coco_dt.createIndex()
    for ids in cat_ids:
      evaluator = COCOeval(coco_gt, coco_dt, 'bbox')
      if ids is not None:
        evaluator.params.catIds = ids
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
      stats.append(evaluator.stats)
  return np.asarray(stats, np.float64)


def _assert_matches_cocoeval(groundtruth, detections, reference=None):
  """Our summary against COCOeval's stats and per-category runs; returns it.

  `reference`: the (ground truth, detections) to run pycocotools on, when
  they differ from ours only in what our code normalizes.
  """
  reference = reference or (groundtruth, detections)
  categories = reference[0]['categories']
  result = coco.evaluate_coco(groundtruth, detections)
  got = np.array([result[key] for key in coco.SUMMARY_KEYS])
  assert all(type(result[key]) is float for key in coco.SUMMARY_KEYS)
  stats, *per_class = _cocoeval_stats(
      *reference, [None] + [[c['id']] for c in categories])
  np.testing.assert_allclose(got, stats, rtol=0, atol=1e-12)
  for category, class_stats in zip(categories, per_class):
    assert result['AP_per_class'][category['name']] == pytest.approx(
        class_stats[0], abs=1e-12)
    assert result['AP50_per_class'][category['name']] == pytest.approx(
        class_stats[1], abs=1e-12)
  assert len(result['AP_per_class']) == len(categories)
  return result


@pytest.mark.parametrize('seed,num_images,num_categories',
                         [(0, 60, 3), (1, 120, 5), (4, 150, 6)])
def test_matches_cocoeval_on_random_cases(seed, num_images, num_categories):
  groundtruth, detections = _make_case(seed, num_images, num_categories)
  per_image = np.unique([d['image_id'] for d in detections], return_counts=True)[1]
  assert per_image.max() > 100
  _assert_matches_cocoeval(groundtruth, detections)


def test_image_ids_must_be_integers():
  """COCO's ids are integers; a string id is named, not mis-evaluated."""
  groundtruth, detections = _make_case(9, 50, 3)
  for record in groundtruth['images']:
    record['id'] = f"img{record['id']}"
  for record in groundtruth['annotations'] + detections:
    record['image_id'] = f"img{record['image_id']}"
  with pytest.raises(ValueError, match=r"groundtruth\['images'\]\[0\]: id "
                     r"'img\d+' is not an integer"):
    coco.evaluate_coco(groundtruth, detections)


def test_annotation_ids_are_not_read():
  # pycocotools keys annotations by id and reads a match with id 0 as none;
  # evaluate_coco must give the numbers of the same annotations numbered 1..G.
  groundtruth, detections = _make_case(14, 40, 3)
  reference = copy.deepcopy(groundtruth)
  for i, ann in enumerate(groundtruth['annotations']):
    ann['id'] = i % 3  # zeros and duplicates
  result = _assert_matches_cocoeval(groundtruth, detections,
                                    (reference, detections))
  assert result['AP50'] > 0.1


def test_missing_area_and_iscrowd_mean_box_area_and_not_crowd():
  groundtruth, detections = _make_case(15, 40, 3)
  reference = copy.deepcopy(groundtruth)
  for ann, ref in zip(groundtruth['annotations'],
                      reference['annotations']):
    del ann['area'], ann['iscrowd']
    ref['area'], ref['iscrowd'] = ann['bbox'][2] * ann['bbox'][3], 0
  _assert_matches_cocoeval(groundtruth, detections, (reference, detections))
  counts = prf.precision_recall_f1(groundtruth, detections, 0.3)
  assert counts == prf.precision_recall_f1(reference, detections, 0.3)


def test_inputs_are_not_modified():
  groundtruth, detections = _make_case(16, 30, 3)
  before = copy.deepcopy((groundtruth, detections))
  coco.evaluate_coco(groundtruth, detections)
  prf.precision_recall_f1(groundtruth, detections, 0.3)
  prf.precision_recall_f1_sweep(groundtruth, detections)
  assert (groundtruth, detections) == before


def test_empty_detections():
  groundtruth, _ = _make_case(5, 30, 3)
  result = _assert_matches_cocoeval(groundtruth, [])
  assert result['AP'] == 0.0 and result['AR100'] == 0.0
  counts = prf.precision_recall_f1(groundtruth, [], 0.0)
  assert counts['tp'] == counts['fp'] == 0 and counts['fn'] > 0
  sweep = prf.precision_recall_f1_sweep(groundtruth, [])
  assert len(sweep['score_thresholds']) == 0 and sweep['best'] is None


def test_category_with_ground_truth_but_no_detections():
  groundtruth, detections = _make_case(6, 50, 4)
  missing = groundtruth['categories'][0]
  detections = [d for d in detections if d['category_id'] != missing['id']]
  result = _assert_matches_cocoeval(groundtruth, detections)
  assert result['AP_per_class'][missing['name']] == 0.0


def test_category_without_ground_truth_is_minus_one():
  groundtruth, detections = _make_case(7, 40, 3)
  groundtruth['categories'].append({'id': 999, 'name': 'unused'})
  detections.append(_det(groundtruth['images'][0]['id'], 999, [1, 2, 30, 40], 0.9))
  result = _assert_matches_cocoeval(groundtruth, detections)
  assert result['AP_per_class']['unused'] == -1.0
  assert result['AP50_per_class']['unused'] == -1.0


def test_perfect_detections_give_ap_one():
  groundtruth, _ = _make_case(8, 40, 3)
  for ann in groundtruth['annotations']:
    ann['iscrowd'] = 0
  detections = [_det(a['image_id'], a['category_id'], a['bbox'], 1.0)
                for a in groundtruth['annotations']]
  result = _assert_matches_cocoeval(groundtruth, detections)
  assert result['AP'] == 1.0 and result['AP50'] == 1.0
  assert all(v == 1.0 for v in result['AP_per_class'].values())


@pytest.mark.parametrize('reverse', [False, True])
def test_iou_tie_goes_to_later_annotation_like_pycocotools(reverse):
  # The first detection overlaps both ground truths with IoU 2/3; which one it
  # takes decides whether the second detection still finds a match.
  anns = [_ann(1, 1, 4, [0, 0, 10, 10]), _ann(2, 1, 4, [4, 0, 10, 10])]
  groundtruth = {'images': [{'id': 1, 'width': 20, 'height': 20}],
                 'categories': [{'id': 4, 'name': 'x'}],
                 'annotations': anns[::-1] if reverse else anns}
  detections = [_det(1, 4, [2, 0, 10, 10], 0.9), _det(1, 4, [-2, 0, 10, 10], 0.8)]
  result = _assert_matches_cocoeval(groundtruth, detections)
  assert result['AP50'] == pytest.approx(51 / 101 if reverse else 1.0)
  counts = prf.precision_recall_f1(groundtruth, detections, 0.0)
  assert (counts['tp'], counts['fp']) == ((1, 1) if reverse else (2, 0))


def _brute_iou(d, g, crowd):
  iw = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
  ih = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
  if iw <= 0 or ih <= 0:
    return 0.0
  inter = iw * ih
  return inter / (d[2] * d[3] if crowd else d[2] * d[3] + g[2] * g[3] - inter)


def _brute_prf(groundtruth, detections, score_threshold, iou_threshold):
  """Plain-Python precision_recall_f1 rules; {name: [tp, fp, fn]}."""
  names = {c['id']: c['name'] for c in groundtruth['categories']}
  counts = {n: [0, 0, 0] for n in names.values()}
  for img in groundtruth['images']:
    for cat, name in names.items():
      gts = [a for a in groundtruth['annotations']
             if a['image_id'] == img['id'] and a['category_id'] == cat]
      dts = sorted((d for d in detections if d['image_id'] == img['id'] and
                    d['category_id'] == cat and d['score'] >= score_threshold),
                   key=lambda d: -d['score'])
      used = set()
      for d in dts:
        best, best_iou = None, iou_threshold
        for j, g in enumerate(gts):
          if g['iscrowd'] or j in used:
            continue
          iou = _brute_iou(d['bbox'], g['bbox'], False)
          if iou >= best_iou:  # ">=": ties go to the later annotation
            best, best_iou = j, iou
        if best is not None:
          used.add(best)
          counts[name][0] += 1
        elif not any(g['iscrowd'] and _brute_iou(d['bbox'], g['bbox'], True)
                     >= iou_threshold for g in gts):
          counts[name][1] += 1
      counts[name][2] += sum(1 for g in gts if not g['iscrowd']) - len(used)
  return counts


@pytest.mark.parametrize('seed,score_threshold,iou_threshold',
                         [(10, 0.3, 0.5), (11, 0.0, 0.75), (12, 0.6, 0.3)])
def test_precision_recall_f1_matches_brute_force(seed, score_threshold,
                                                 iou_threshold):
  groundtruth, detections = _make_case(seed, 40, 4)
  result = prf.precision_recall_f1(groundtruth, detections, score_threshold,
                                   iou_threshold)
  expected = _brute_prf(groundtruth, detections, score_threshold, iou_threshold)
  for name, (tp, fp, fn) in expected.items():
    got = result['per_class'][name]
    assert (got['tp'], got['fp'], got['fn']) == (tp, fp, fn), name
  tp, fp, fn = np.sum(list(expected.values()), axis=0)
  assert (result['tp'], result['fp'], result['fn']) == (tp, fp, fn)
  p, r = tp / (tp + fp), tp / (tp + fn)
  assert result['precision'] == pytest.approx(p)
  assert result['recall'] == pytest.approx(r)
  assert result['f1'] == pytest.approx(2 * p * r / (p + r))
  assert result['score_threshold'] == score_threshold
  assert result['iou_threshold'] == iou_threshold

  sweep = prf.precision_recall_f1_sweep(groundtruth, detections, iou_threshold,
                                        [0.9, score_threshold, 0.1])
  assert (sweep['tp'][1], sweep['fp'][1], sweep['fn'][1]) == (tp, fp, fn)
  for name, (tp, fp, fn) in expected.items():
    got = sweep['per_class'][name]
    assert (got['tp'][1], got['fp'][1], got['fn'][1]) == (tp, fp, fn), name


def test_precision_recall_f1_sweep_equals_single_thresholds():
  groundtruth, detections = _make_case(13, 30, 3)
  sweep = prf.precision_recall_f1_sweep(groundtruth, detections)
  assert np.all(np.diff(sweep['score_thresholds']) < 0)
  for i in range(0, len(sweep['score_thresholds']), 17):
    single = prf.precision_recall_f1(groundtruth, detections,
                                     sweep['score_thresholds'][i])
    for key in ('tp', 'fp', 'fn', 'precision', 'recall', 'f1'):
      assert sweep[key][i] == single[key], key
  assert sweep['best']['f1'] == np.max(sweep['f1'])


def test_precision_recall_f1_hand_example():
  groundtruth = {
      'images': [{'id': 1, 'width': 100, 'height': 100},
                 {'id': 2, 'width': 100, 'height': 100}],
      'categories': [{'id': 7, 'name': 'cat'}, {'id': 3, 'name': 'dog'}],
      'annotations': [_ann(1, 1, 7, [0, 0, 10, 10]),
                      _ann(2, 1, 7, [50, 50, 20, 20]),
                      _ann(3, 1, 7, [0, 60, 40, 40], iscrowd=1),
                      _ann(4, 2, 3, [10, 10, 30, 30])]}
  detections = [
      _det(1, 7, [0, 0, 10, 10], 0.9),    # TP
      _det(1, 7, [1, 0, 10, 10], 0.8),    # FP: its ground truth is taken
      _det(1, 7, [5, 65, 10, 10], 0.7),   # inside the crowd region: ignored
      _det(1, 7, [80, 0, 10, 10], 0.6),   # FP
      _det(2, 3, [10, 10, 30, 20], 0.5),  # TP at IoU 2/3
      _det(2, 3, [60, 60, 5, 5], 0.2),    # below the score threshold
  ]
  result = prf.precision_recall_f1(groundtruth, detections, score_threshold=0.5)
  assert (result['tp'], result['fp'], result['fn']) == (2, 2, 1)
  assert result['precision'] == pytest.approx(0.5)
  assert result['recall'] == pytest.approx(2 / 3)
  assert result['f1'] == pytest.approx(4 / 7)
  assert result['per_class']['cat'] == pytest.approx(
      {'precision': 1 / 3, 'recall': 0.5, 'f1': 0.4, 'tp': 1, 'fp': 2, 'fn': 1})
  assert result['per_class']['dog'] == pytest.approx(
      {'precision': 1.0, 'recall': 1.0, 'f1': 1.0, 'tp': 1, 'fp': 0, 'fn': 0})
  strict = prf.precision_recall_f1(groundtruth, detections, 0.5, iou_threshold=0.7)
  assert (strict['tp'], strict['fp'], strict['fn']) == (1, 3, 2)
  nothing = prf.precision_recall_f1(groundtruth, detections, 0.95)
  assert (nothing['precision'], nothing['recall'], nothing['f1']) == (0., 0., 0.)
  assert nothing['fn'] == 3


def _small_case():
  groundtruth = {'images': [{'id': 5, 'width': 50, 'height': 50}],
                 'categories': [{'id': 2, 'name': 'a'}],
                 'annotations': [_ann(1, 5, 2, [0, 0, 10, 10])]}
  return groundtruth, [_det(5, 2, [0, 0, 10, 10], 0.5)]


def test_precision_recall_f1_has_no_cap_on_detections_per_image():
  groundtruth, _ = _small_case()
  # 150 higher-scoring misses before the hit: COCO's 100 per image would cut it.
  detections = [_det(5, 2, [20, 20, 5, 5], 0.9) for _ in range(150)]
  detections.append(_det(5, 2, [0, 0, 10, 10], 0.5))
  result = prf.precision_recall_f1(groundtruth, detections, 0.0)
  assert (result['tp'], result['fp'], result['fn']) == (1, 150, 0)
  sweep = prf.precision_recall_f1_sweep(groundtruth, detections)
  assert list(sweep['tp']) == [0, 1] and list(sweep['fp']) == [150, 150]


# Validation precedes the score threshold (0.9 keeps nothing here), so errors
# name indices into the caller's list.
_EVALUATORS = [coco.evaluate_coco,
               lambda g, d: prf.precision_recall_f1(g, d, 0.9),
               prf.precision_recall_f1_sweep]


@pytest.mark.parametrize('evaluate', _EVALUATORS)
@pytest.mark.parametrize('where,field,value,message', [
    ('detection', 'category_id', 42, r'detections\[1\]: category_id 42'),
    ('detection', 'image_id', 77, r'detections\[1\]: image_id 77'),
    ('annotation', 'category_id', 43, r"annotations'\]\[1\]: category_id 43"),
    ('annotation', 'image_id', 78, r"annotations'\]\[1\]: image_id 78"),
    ('detection', 'bbox', [0, 0, -1, 5], r'detections\[1\]: bbox .*negative'),
    ('annotation', 'bbox', [0, 0, 3, -2],
     r"annotations'\]\[1\]: bbox .*negative"),
])
def test_bad_input_raises(evaluate, where, field, value, message):
  groundtruth, detections = _small_case()
  records = detections if where == 'detection' else groundtruth['annotations']
  bad = dict(records[0], id=2)
  bad[field] = value
  records.append(bad)
  with pytest.raises(ValueError, match=message):
    evaluate(groundtruth, detections)


@pytest.mark.parametrize('evaluate', _EVALUATORS)
@pytest.mark.parametrize('change,message', [
    (lambda g, d: g['images'].append({'id': 5}),
     r"groundtruth\['images'\]\[1\]: duplicate id 5"),
    (lambda g, d: g['categories'].append({'id': 2, 'name': 'b'}),
     r"groundtruth\['categories'\]\[1\]: duplicate id 2"),
    (lambda g, d: g['categories'].append({'id': 3, 'name': 'a'}),
     'duplicate category names'),
    (lambda g, d: g['annotations'][0].pop('bbox'),
     r"annotations'\]\[0\]: no 'bbox' field"),
    (lambda g, d: d[0].pop('score'), r"detections\[0\]: no 'score' field"),
    (lambda g, d: d[0].update(bbox=[0, 0, 1]),
     r'detections\[0\]: bbox \[0, 0, 1\] is not \[x, y, w, h\]'),
    (lambda g, d: d[0].update(bbox=[0, 0, 'a', 1]), r'detections\[0\]: bbox .* is not'),
])
def test_malformed_input_raises(evaluate, change, message):
  groundtruth, detections = _small_case()
  change(groundtruth, detections)
  with pytest.raises(ValueError, match=message):
    evaluate(groundtruth, detections)
