"""The evaluation report (`detector.report`) and the analyses under it, each
checked against an independent reference: tidecv for the TIDE breakdown,
the COCO evaluator for the PR curves and AP by range, brute force and
hand-built cases for the confusion matrix, headless Chromium for the page."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from detector.evaluation import coco
from detector.evaluation import confusion
from detector.evaluation import curves
from detector.evaluation import prf
from detector.evaluation import tide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = '/usr/bin/chromium'


def random_case(seed, num_images=30, num_classes=4, crowd=0.05):
  """Objects, detections near them (right or wrong class, jittered by 1, 4
  or 10 px), detections of nothing, some crowd regions; scores rounded to
  two decimals so that ties occur."""
  rng = np.random.default_rng(seed)
  images = [{'id': 100 - i, 'width': 100, 'height': 100}
            for i in range(num_images)]  # Ids not in list order.
  categories = [{'id': 3 * c + 1, 'name': f'c{c}'} for c in range(num_classes)]
  cat_ids = [c['id'] for c in categories]
  annotations, detections = [], []
  for image in images:
    for _ in range(rng.integers(0, 6)):
      x, y = rng.uniform(0, 70, 2)
      w, h = rng.uniform(5, 30, 2)
      cls = int(rng.choice(cat_ids))
      annotations.append({'image_id': image['id'], 'category_id': cls,
                          'bbox': [x, y, w, h],
                          'iscrowd': int(rng.random() < crowd)})
      for _ in range(rng.integers(0, 4)):
        j = rng.normal(0, rng.choice([1, 4, 10]), 4)
        detections.append({
            'image_id': image['id'],
            'category_id': cls if rng.random() < 0.7 else int(rng.choice(cat_ids)),
            'bbox': [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)],
            'score': float(np.round(rng.random(), 2))})
    for _ in range(rng.integers(0, 3)):
      x, y = rng.uniform(0, 70, 2)
      w, h = rng.uniform(5, 30, 2)
      detections.append({'image_id': image['id'],
                         'category_id': int(rng.choice(cat_ids)),
                         'bbox': [x, y, w, h], 'score': float(rng.random())})
  return ({'images': images, 'categories': categories,
           'annotations': annotations}, detections)


def tidecv_reference(groundtruth, detections):
  """tidecv's AP50, main and special dAP50 and error counts."""
  from tidecv import Data, TIDE  # pylint: disable=g-import-not-at-top
  gt, preds = Data('gt'), Data('preds')
  for c in groundtruth['categories']:
    gt.add_class(c['id'], c['name'])
  for image in groundtruth['images']:
    gt.add_image(image['id'], str(image['id']))
  for a in groundtruth['annotations']:
    if a.get('iscrowd'):
      gt.add_ignore_region(a['image_id'], a['category_id'], a['bbox'])
    else:
      gt.add_ground_truth(a['image_id'], a['category_id'], a['bbox'])
  for d in detections:
    preds.add_detection(d['image_id'], d['category_id'], d['score'], d['bbox'])
  evaluator = TIDE()
  run = evaluator.evaluate(gt, preds, mode=TIDE.BOX)
  delta = dict(evaluator.get_main_errors()['preds'])
  delta.update(evaluator.get_special_errors()['preds'])
  counts = {kind.short_name: len(errors)
            for kind, errors in run.error_dict.items()}
  return run.ap, delta, counts


@pytest.fixture(scope='module')
def workdir(tiny_data_dir, tmp_path_factory):
  """configs/cnn.py:tiny trained long enough to detect something, with the
  report on (it is written when training ends)."""
  from detector import train  # pylint: disable=g-import-not-at-top
  from detector.configs import cnn  # pylint: disable=g-import-not-at-top
  config = cnn.get_config('tiny').unlock()
  config.data_dir = tiny_data_dir
  config.num_train_steps = 400
  config.checkpoint_every_steps = 400
  config.optimizer.warmup_steps = 40
  config.optimizer.learning_rate = 1e-2
  config.eval_report = True
  config.monitoring_images = 0
  path = str(tmp_path_factory.mktemp('report') / 'run')
  train.train_and_evaluate(config, path)
  return path


def _files(workdir, split):
  with open(os.path.join(workdir, 'eval', f'groundtruth_{split}.json')) as f:
    groundtruth = json.load(f)
  with open(os.path.join(workdir, 'eval', f'detections_{split}.json')) as f:
    detections = json.load(f)
  return groundtruth, detections


@pytest.mark.parametrize('seed', range(12))
def test_tide_equals_tidecv_on_random_cases(seed):
  groundtruth, detections = random_case(seed, crowd=0.1 if seed % 2 else 0.0)
  ours = tide.analyse(groundtruth, detections)
  ap, delta, counts = tidecv_reference(groundtruth, detections)
  assert ours['ap'] == pytest.approx(ap, abs=1e-6)
  for kind in tide.MAIN_ERRORS + tide.SPECIAL_ERRORS:
    assert ours['delta_ap'][kind] == pytest.approx(delta[kind], abs=1e-6), kind
  assert ours['counts'] == counts
  # The premise: every kind occurs somewhere in these cases.
  assert sum(ours['counts'].values()) > 50


def test_tide_equals_tidecv_on_a_trained_detector(workdir):
  groundtruth, detections = _files(workdir, 'test')
  ours = tide.analyse(groundtruth, detections)
  ap, delta, counts = tidecv_reference(groundtruth, detections)
  assert ours['ap'] == pytest.approx(ap, abs=1e-6)
  for kind in tide.MAIN_ERRORS + tide.SPECIAL_ERRORS:
    # The bound is 0.1 AP points; the two agree to rounding.
    assert abs(ours['delta_ap'][kind] - delta[kind]) < 1e-6, kind
  assert ours['counts'] == counts
  assert ap > 1  # The premise: the detector finds objects.


def _coco_precision(groundtruth, detections, max_dets):
  evaluation, names = coco.evaluator(groundtruth, detections)
  evaluation.params.maxDets = [max_dets]
  with coco.quiet():
    evaluation.evaluate()
    evaluation.accumulate()
  return evaluation, [names[c] for c in evaluation.params.catIds]


@pytest.mark.parametrize('seed,max_dets', [(0, 100), (1, 100), (2, 1), (3, 2)])
def test_pr_curve_interpolated_gives_coco_ap_per_class(seed, max_dets):
  groundtruth, detections = random_case(seed, crowd=0.1)
  evaluation, names = _coco_precision(groundtruth, detections, max_dets)
  for t, iou in enumerate(evaluation.params.iouThrs):
    ours = curves.precision_recall_curves(groundtruth, detections, iou,
                                          max_dets=max_dets)
    for k, name in enumerate(names):
      reference = evaluation.eval['precision'][t, :, k, 0, 0]
      expected = reference.mean() if reference[0] > -1 else -1.0
      assert ours[name]['ap'] == pytest.approx(expected, abs=1e-6), (iou, name)


def test_pr_curves_of_a_trained_detector_give_its_ap50(workdir):
  groundtruth, detections = _files(workdir, 'test')
  metrics = coco.evaluate_coco(groundtruth, detections)
  ours = curves.precision_recall_curves(groundtruth, detections, 0.5)
  assert ours.keys() == metrics['AP50_per_class'].keys()
  for name, curve in ours.items():
    assert curve['ap'] == pytest.approx(metrics['AP50_per_class'][name],
                                        abs=1e-6)
    # Recall never falls along the curve, and ends at the split's recall.
    assert np.all(np.diff(curve['recall']) >= 0)
  assert max(metrics['AP50_per_class'].values()) > 0.01


def test_operating_point_equals_precision_recall_at_the_threshold():
  groundtruth, detections = random_case(5, crowd=0.0)
  curve = curves.precision_recall_curves(groundtruth, detections, 0.5,
                                         max_dets=10**6)
  for threshold in (0.2, 0.5, 0.8):
    expected = prf.precision_recall_f1(groundtruth, detections, threshold)
    for name, c in curve.items():
      point = curves.operating_point(c, threshold)
      assert point['recall'] == pytest.approx(
          expected['per_class'][name]['recall'], abs=1e-9)
      assert point['precision'] == pytest.approx(
          expected['per_class'][name]['precision'], abs=1e-9)


def test_ap_by_size_equals_coco_and_by_aspect_equals_the_subset():
  groundtruth, detections = random_case(7, crowd=0.1)
  metrics = coco.evaluate_coco(groundtruth, detections)
  sizes = curves.ap_by_range(groundtruth, detections,
                             {'small': (0, 32 ** 2), 'medium': (32 ** 2, 96 ** 2),
                              'large': (96 ** 2, 1e10)}, 'area')
  assert sizes['small']['AP'] == pytest.approx(metrics['AP_small'], abs=1e-12)
  assert sizes['medium']['AP'] == pytest.approx(metrics['AP_medium'], abs=1e-12)
  # Tall objects on some images, wide ones on the others, detections of the
  # same shape: AP over "tall" is the COCO AP of the tall images alone.
  rng = np.random.default_rng(0)
  tall_images = set(range(10))
  images = [{'id': i} for i in range(20)]
  categories = [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]
  annotations, results = [], []
  for image in images:
    for _ in range(3):
      w, h = (8.0, 20.0) if image['id'] in tall_images else (20.0, 8.0)
      x, y = rng.uniform(0, 60, 2)
      cls = int(rng.integers(1, 3))
      annotations.append({'image_id': image['id'], 'category_id': cls,
                          'bbox': [x, y, w, h]})
      j = rng.normal(0, 2, 2)
      results.append({'image_id': image['id'],
                      'category_id': cls if rng.random() < 0.8 else 3 - cls,
                      'bbox': [x + j[0], y + j[1], w, h],
                      'score': float(rng.random())})
  groundtruth = {'images': images, 'categories': categories,
                 'annotations': annotations}
  by_aspect = curves.ap_by_range(groundtruth, results, curves.ASPECT_RANGES,
                                 'aspect')
  subset = {'images': [i for i in images if i['id'] in tall_images],
            'categories': categories,
            'annotations': [a for a in annotations
                            if a['image_id'] in tall_images]}
  expected = coco.evaluate_coco(subset, [r for r in results
                                         if r['image_id'] in tall_images])
  assert by_aspect['tall']['AP'] == pytest.approx(expected['AP'], abs=1e-12)
  assert by_aspect['tall']['AP50'] == pytest.approx(expected['AP50'], abs=1e-12)
  assert by_aspect['square']['AP'] == -1.0
  assert by_aspect['tall']['num_gt'] == 30


def test_confusion_matrix_puts_each_hand_built_case_in_its_cell():
  names = ['cat', 'dog']
  groundtruth = {
      'images': [{'id': 1}, {'id': 2}],
      'categories': [{'id': 7, 'name': 'cat'}, {'id': 9, 'name': 'dog'}],
      'annotations': [
          {'image_id': 1, 'category_id': 7, 'bbox': [10, 10, 20, 20]},  # 0
          {'image_id': 1, 'category_id': 9, 'bbox': [50, 50, 20, 20]},  # 1
          {'image_id': 2, 'category_id': 9, 'bbox': [0, 0, 10, 10]},    # 2
          {'image_id': 2, 'category_id': 7, 'bbox': [60, 0, 30, 30],
           'iscrowd': 1}]}
  detections = [
      # A right box with the right class, and its duplicate.
      {'image_id': 1, 'category_id': 7, 'bbox': [10, 10, 20, 20], 'score': .9},
      {'image_id': 1, 'category_id': 7, 'bbox': [11, 10, 20, 20], 'score': .8},
      # A right box with the wrong class (a dog called cat).
      {'image_id': 1, 'category_id': 7, 'bbox': [50, 51, 20, 20], 'score': .7},
      # A detection of nothing.
      {'image_id': 2, 'category_id': 9, 'bbox': [40, 40, 10, 10], 'score': .6},
      # Below the threshold: not counted.
      {'image_id': 2, 'category_id': 9, 'bbox': [0, 0, 10, 10], 'score': .1},
      # Over the crowd region: ignored.
      {'image_id': 2, 'category_id': 7, 'bbox': [62, 2, 10, 10], 'score': .5}]
  result = confusion.confusion_matrix(groundtruth, detections, 0.3)
  cat, dog, background = 0, 1, 2
  assert result['labels'] == names + ['background']
  assert result['cell'] == [(cat, cat), (background, cat), (dog, cat),
                            (background, dog), None, None]
  assert result['missed'] == [2]  # The dog of image 2 (its detection is low).
  expected = np.zeros((3, 3), int)
  expected[cat, cat] = 1
  expected[background, cat] = 1
  expected[dog, cat] = 1
  expected[background, dog] = 1
  expected[dog, background] = 1
  np.testing.assert_array_equal(result['matrix'], expected)


@pytest.mark.parametrize('seed', range(4))
def test_confusion_matrix_agrees_with_precision_recall(seed):
  groundtruth, detections = random_case(seed, crowd=0.1)
  threshold = 0.4
  result = confusion.confusion_matrix(groundtruth, detections, threshold)
  expected = prf.precision_recall_f1(groundtruth, detections, threshold)
  matrix = result['matrix']
  names = result['labels'][:-1]
  for k, name in enumerate(names):
    counts = expected['per_class'][name]
    assert matrix[k, k] == counts['tp']
    assert matrix[k].sum() == counts['tp'] + counts['fn']  # Every object once.
    assert matrix[:, k].sum() == counts['tp'] + counts['fp']
  assert matrix[:-1, :-1].sum() - np.trace(matrix) > 0  # Premise: confusions.


def test_report_written_at_the_end_of_training(workdir):
  for split in ('validation', 'test'):
    html = os.path.join(workdir, 'eval', f'report_{split}.html')
    assert os.path.isfile(html)
  with open(os.path.join(workdir, 'eval', 'metrics_test.json')) as f:
    metrics = json.load(f)
  groundtruth, detections = _files(workdir, 'test')
  best = metrics['f1_optimal']
  sweep = prf.precision_recall_f1_sweep(groundtruth, detections)
  assert best['overall']['f1'] == pytest.approx(sweep['f1'].max())
  # Brute force: no threshold does better, and the stated one gives the F1.
  at = prf.precision_recall_f1(groundtruth, detections,
                               best['overall']['score_threshold'])
  assert at['f1'] == pytest.approx(best['overall']['f1'])
  for threshold in np.linspace(0, 1, 41):
    assert prf.precision_recall_f1(groundtruth, detections, threshold)['f1'] <= (
        best['overall']['f1'] + 1e-12)
  for name, b in best['per_class'].items():
    if b is not None:
      mine = prf.precision_recall_f1(groundtruth, detections,
                                     b['score_threshold'])['per_class'][name]
      assert mine['f1'] == pytest.approx(b['f1'])
  # The figures went to TensorBoard too.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tags = set()
  for name in os.listdir(workdir):
    if name.startswith('events.out.tfevents'):
      for event in tf.compat.v1.train.summary_iterator(
          os.path.join(workdir, name)):
        tags.update(v.tag for v in event.summary.value)
  for figure in ('pr_curves', 'f1_threshold', 'confusion_matrix',
                 'error_breakdown', 'ap_by_range', 'worst_images'):
    assert f'test/report/{figure}' in tags


def test_report_page_shows_every_figure_in_chromium(workdir):
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  html = os.path.join(workdir, 'eval', 'report_test.html')
  figures = sorted(os.listdir(os.path.join(workdir, 'eval', 'report_test')))
  assert {'pr_curves.png', 'f1_threshold.png', 'confusion_matrix.png',
          'error_breakdown.png', 'ap_by_range.png',
          'worst_images.png'} <= set(figures)
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM,
                                args=['--allow-file-access-from-files'])
    page = browser.new_page()
    page.goto('file://' + html)
    page.wait_for_load_state('load')
    shown = page.eval_on_selector_all('img', """imgs => imgs.map(img => ({
        src: img.getAttribute('src'), complete: img.complete,
        width: img.naturalWidth, height: img.naturalHeight}))""")
    text = page.inner_text('body')
    browser.close()
  assert sorted(os.path.basename(s['src']) for s in shown) == figures
  for image in shown:
    assert image['complete'] and image['width'] > 0 and image['height'] > 0, image
  assert 'Largest error kind (TIDE)' in text and 'Class with the lowest AP' in text


def test_worst_images_count_their_errors():
  groundtruth, detections = random_case(3, crowd=0.0)
  from detector.report import detection  # pylint: disable=g-import-not-at-top
  threshold = 0.3
  analysis = {'score_threshold': threshold,
              'tide': tide.analyse(groundtruth, detections),
              'confusion': confusion.confusion_matrix(groundtruth, detections,
                                                      threshold)}
  worst = detection.worst_images(groundtruth, detections, analysis, 5)
  expected = collections.Counter()
  for i, d in enumerate(detections):
    if d['score'] >= threshold and analysis['tide']['detection_kind'][i] != 'TP':
      expected[d['image_id']] += 1
  for j in analysis['confusion']['missed']:
    expected[groundtruth['annotations'][j]['image_id']] += 1
  top = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
  assert [(w['image_id'], w['errors']) for w in worst] == top


def test_classification_report_lists_the_most_confused_pairs(tmp_path):
  from detector import report  # pylint: disable=g-import-not-at-top
  from detector.evaluation import classification  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  names = ['ant', 'bee', 'cat', 'dog']
  labels = rng.integers(0, 4, 200)
  scores = rng.dirichlet(np.ones(4), 200)
  scores[np.arange(200), labels] += rng.random(200) * 0.6
  scores /= scores.sum(1, keepdims=True)
  metrics = classification.metrics(labels, scores, names)
  metrics.update(step=10, split='test', dataset='made_up')
  top = np.argsort(-scores, 1)
  predictions = [{'index': i, 'label': names[labels[i]],
                  'predicted': names[top[i, 0]],
                  'top5': [[names[c], float(scores[i, c])] for c in top[i]]}
                 for i in range(200)]
  os.makedirs(tmp_path / 'eval')
  for name, value in (('metrics', metrics), ('predictions', predictions)):
    with open(tmp_path / 'eval' / f'{name}_test.json', 'w') as f:
      json.dump(value, f)
  requested = []

  def images(indices):
    indices = list(indices)
    requested.extend(indices)
    return {i: np.full((16, 16, 3), i % 255, np.uint8) for i in indices}

  out = report.write(str(tmp_path), 'test', images=images)
  pairs = collections.Counter(
      (p['label'], p['predicted']) for p in predictions
      if p['label'] != p['predicted'])
  expected = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
  from detector.report import classification as page  # pylint: disable=g-import-not-at-top
  got = page.confused_pairs(predictions)
  assert [((g['true'], g['predicted']), g['count']) for g in got] == expected
  # The examples of a pair are its most confident mistakes.
  first = got[0]
  confidence = {p['index']: p['top5'][0][1] for p in predictions}
  shown = first['examples']
  assert [confidence[i] for i in shown] == sorted(
      (confidence[i] for i in shown), reverse=True)
  assert set(requested) >= set(shown[:page.EXAMPLES_PER_PAIR])
  assert 'confusion_matrix' in out['figures'] and 'confused_0' in out['figures']
  assert os.path.isfile(out['html'])


def test_cli_names_the_missing_file(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'detector.report', f'--workdir={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert f'{tmp_path}/eval/metrics_test.json is missing' in result.stderr
  assert 'Traceback' not in result.stderr


def test_cli_rewrites_the_report(workdir):
  html = os.path.join(workdir, 'eval', 'report_validation.html')
  os.remove(html)
  result = subprocess.run(
      [sys.executable, '-m', 'detector.report', f'--workdir={workdir}',
       '--split=validation', '--max_images=4'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == html
  assert os.path.isfile(html)


def test_report_stands_when_the_images_cannot_be_read(workdir, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from detector import report  # pylint: disable=g-import-not-at-top
  os.makedirs(tmp_path / 'eval')
  for name in ('metrics', 'groundtruth', 'detections'):
    shutil.copy(os.path.join(workdir, 'eval', f'{name}_test.json'),
                tmp_path / 'eval')

  def unreadable(wanted):
    del wanted
    raise OSError('the dataset is gone')

  out = report.write(str(tmp_path), 'test', images=unreadable)
  assert 'worst_images' not in out['figures']
  assert 'pr_curves' in out['figures']
  with open(out['html']) as f:
    assert 'The images are not drawn' in f.read()
