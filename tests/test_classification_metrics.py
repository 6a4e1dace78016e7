"""detector.evaluation.classification against scikit-learn's metrics."""

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from detector.evaluation import classification


def _names(num_k):
  return [f'class_{k}' for k in range(num_k)]


def _sklearn_top_k(labels, scores, k):
  """sklearn's top-k accuracy; binary problems take P(class 1) as 1-D score."""
  num_k = scores.shape[1]
  if num_k == 2:
    # sklearn wants a 1-D score for two classes; a probability in [0, 1]
    # is thresholded at 0.5, i.e. class 1 iff its logit is the larger.
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    scores = shifted[:, 1] / shifted.sum(axis=1)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UndefinedMetricWarning)  # k >= K
    return skm.top_k_accuracy_score(labels, scores, k=k,
                                    labels=np.arange(num_k))


def _assert_matches_sklearn(labels, scores):
  """Every number of `metrics` equals scikit-learn's on tie-free scores."""
  num_k = scores.shape[1]
  assert (np.diff(np.sort(scores, axis=1), axis=1) != 0).all(), 'ties'
  names = _names(num_k)
  predicted = scores.argmax(axis=1)
  everything = np.arange(num_k)
  m = classification.metrics(labels, scores, names)
  assert m['num_examples'] == len(labels)
  assert m['class_names'] == names
  np.testing.assert_allclose(m['accuracy'],
                             skm.accuracy_score(labels, predicted))
  np.testing.assert_array_equal(
      m['confusion_matrix'],
      skm.confusion_matrix(labels, predicted, labels=everything))
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels, predicted, labels=everything, zero_division=0)
  assert list(m['per_class']) == names
  per_class = list(m['per_class'].values())
  np.testing.assert_allclose([c['precision'] for c in per_class], precision)
  np.testing.assert_allclose([c['recall'] for c in per_class], recall)
  np.testing.assert_allclose([c['f1'] for c in per_class], f1)
  np.testing.assert_array_equal([c['support'] for c in per_class], support)
  np.testing.assert_array_equal(
      [c['predicted'] for c in per_class],
      skm.confusion_matrix(labels, predicted, labels=everything).sum(axis=0))
  for average in ('macro', 'micro'):
    p, r, f, _ = skm.precision_recall_fscore_support(
        labels, predicted, labels=everything, average=average,
        zero_division=0)
    np.testing.assert_allclose(
        [m[f'{average}_precision'], m[f'{average}_recall'],
         m[f'{average}_f1']], [p, r, f], err_msg=average)
  np.testing.assert_allclose(
      m['weighted_f1'],
      skm.f1_score(labels, predicted, labels=everything, average='weighted',
                   zero_division=0))
  for k in (1, 2, 3, 5, 10):
    got = classification.metrics(labels, scores, names, top_k=k)[f'top{k}']
    np.testing.assert_allclose(got, _sklearn_top_k(labels, scores, k),
                               err_msg=f'top{k}')
  return m


def _random(seed, num, num_k, signal=1.0):
  """Labels and scores that predict the label better than chance."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_k, num)
  scores = rng.normal(size=(num, num_k))
  scores[np.arange(num), labels] += signal
  return labels, scores


@pytest.mark.parametrize('seed,num,num_k', [
    (0, 50, 2), (1, 200, 2), (2, 300, 5), (3, 500, 10), (4, 40, 12)])
def test_random_cases_match_sklearn(seed, num, num_k):
  labels, scores = _random(seed, num, num_k)
  m = _assert_matches_sklearn(labels, scores)
  assert 0 < m['accuracy'] < 1  # not a degenerate case


def test_never_predicted_and_unsupported_classes_match_sklearn():
  # K = 7: class 3 is never predicted (it always scores lowest), class 5 has
  # no examples, class 6 neither has examples nor is predicted.
  num_k = 7
  rng = np.random.default_rng(5)
  labels = rng.choice([0, 1, 2, 3, 4], 120)
  scores = rng.normal(size=(120, num_k))
  scores[np.arange(120), labels] += 1.0
  scores[:, 3] -= 100.0
  scores[:, 6] -= 100.0
  m = _assert_matches_sklearn(labels, scores)
  c = m['per_class']
  assert c['class_3']['predicted'] == 0 and c['class_3']['support'] > 0
  assert c['class_3']['precision'] == c['class_3']['recall'] == 0
  assert c['class_3']['f1'] == 0
  assert c['class_5']['support'] == 0 and c['class_5']['predicted'] > 0
  assert c['class_5']['precision'] == c['class_5']['recall'] == 0
  assert c['class_5']['f1'] == 0
  assert c['class_6']['support'] == c['class_6']['predicted'] == 0
  # Macro averages over all 7 classes, the absent ones counting as 0.
  f1 = [c[name]['f1'] for name in _names(num_k)]
  assert m['macro_f1'] == pytest.approx(sum(f1) / 7)
  assert m['macro_recall'] < np.mean([x['recall'] for x in c.values()
                                      if x['support']])


def test_fewer_examples_than_classes_match_sklearn():
  labels = np.array([2, 0])
  scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
  m = _assert_matches_sklearn(labels, scores)
  assert m['accuracy'] == 0.5
  assert m['confusion_matrix'] == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_perfect_predictions():
  num_k = 4
  labels = np.tile(np.arange(num_k), 3)
  scores = np.eye(num_k)[labels] * 5.0 + 0.01 * np.arange(num_k)
  m = classification.metrics(labels, scores, _names(num_k))
  for key in ('accuracy', 'top5', 'macro_precision', 'macro_recall',
              'macro_f1', 'micro_precision', 'micro_recall', 'micro_f1',
              'weighted_f1'):
    assert m[key] == 1.0, key
  for c in m['per_class'].values():
    assert c == {'precision': 1.0, 'recall': 1.0, 'f1': 1.0, 'support': 3,
                 'predicted': 3}
  assert m['confusion_matrix'] == (3 * np.eye(num_k, dtype=int)).tolist()


def test_ties_rank_the_lower_index_first():
  # All scores equal: the prediction is class 0, and the top-k classes are
  # 0 .. k-1, so top-1 equals the accuracy.
  # (sklearn's top_k_accuracy_score ranks the higher index first: 0.25, 0.25.)
  labels = np.array([0, 0, 1, 3])
  scores = np.zeros((4, 4))
  m = classification.metrics(labels, scores, _names(4), top_k=2)
  assert m['accuracy'] == 0.5
  assert m['top2'] == 0.75
  assert classification.metrics(labels, scores, _names(4),
                                top_k=1)['top1'] == 0.5
  assert m['per_class']['class_0']['predicted'] == 4


def test_top_k_above_num_classes_counts_every_class():
  labels, scores = _random(6, 30, 3, signal=0.0)
  m = classification.metrics(labels, scores, _names(3), top_k=5)
  assert m['top5'] == 1.0
  assert classification.metrics(labels, scores, _names(3),
                                top_k=2)['top2'] < 1.0


def _assert_plain_json(value):
  """Only dict/list/str/int/float, exactly (no numpy scalars)."""
  if isinstance(value, dict):
    for key, item in value.items():
      assert type(key) is str
      _assert_plain_json(item)
  elif isinstance(value, list):
    for item in value:
      _assert_plain_json(item)
  else:
    assert type(value) in (str, int, float), (value, type(value))


def test_output_is_json_serialisable():
  labels, scores = _random(7, 60, 7)
  m = classification.metrics(labels.astype(np.int32),
                             scores.astype(np.float32), _names(7))
  _assert_plain_json(m)
  assert json.loads(json.dumps(m)) == m


@pytest.mark.parametrize('labels,scores,names,top_k,message', [
    ([0, 1], np.zeros(2), ['a', 'b'], 5, '2-D'),
    ([[0, 1]], np.zeros((2, 2)), ['a', 'b'], 5, 'labels must be 1-D'),
    ([0, 1, 1], np.zeros((2, 2)), ['a', 'b'], 5, 'disagree on N'),
    ([0, 2], np.zeros((2, 2)), ['a', 'b'], 5, r'out of range \[0, 2\)'),
    ([0, -1], np.zeros((2, 2)), ['a', 'b'], 5, 'out of range'),
    (np.zeros(0, int), np.zeros((0, 2)), ['a', 'b'], 5, 'N == 0'),
    ([0.0, 1.0], np.zeros((2, 2)), ['a', 'b'], 5, 'integers'),
    ([0, 1], [[0.0, np.nan], [0.0, 1.0]], ['a', 'b'], 5, 'NaN'),
    ([0, 1], np.zeros((2, 2)), ['a'], 5, '1 class names for 2'),
    ([0, 1], np.zeros((2, 2)), ['a', 'a'], 5, 'not unique'),
    ([0, 1], np.zeros((2, 2)), ['a', 'b'], 0, 'top_k'),
])
def test_invalid_inputs_raise(labels, scores, names, top_k, message):
  with pytest.raises(ValueError, match=message):
    classification.metrics(np.asarray(labels), np.asarray(scores), names,
                           top_k=top_k)


def test_format_metrics():
  labels, scores = _random(8, 100, 7)
  m = classification.metrics(labels, scores, _names(6) + ['x' * 40])
  text = classification.format_metrics(m, max_classes=5)
  assert f'accuracy {m["accuracy"]:.4f}' in text
  assert f'top5 {m["top5"]:.4f}' in text
  assert f'f1 {m["macro_f1"]:.4f}' in text
  assert 'class_4' in text and 'class_5' not in text
  assert text.splitlines()[-1] == '... 2 more'
  full = classification.format_metrics(m)
  assert 'more' not in full
  assert 'x' * 40 not in full and 'x' * 19 in full  # long names are cut


@pytest.mark.parametrize('num_k', [3, 60])
def test_confusion_matrix_figure(num_k):
  labels, scores = _random(9, 20 * num_k, num_k, signal=2.0)
  m = classification.metrics(labels, scores, _names(num_k))
  image = classification.confusion_matrix_figure(
      m['confusion_matrix'], m['class_names'], title=f'K={num_k}')
  assert image.dtype == np.uint8
  assert image.ndim == 3 and image.shape[2] == 3
  assert 200 <= image.shape[0] <= 2000 and 200 <= image.shape[1] <= 2000
  assert image.reshape(-1, 3).astype(np.float64).var(axis=0).sum() > 0


def test_confusion_matrix_figure_rejects_bad_shapes():
  with pytest.raises(ValueError, match='square'):
    classification.confusion_matrix_figure(np.zeros((2, 3)), ['a', 'b'])
  with pytest.raises(ValueError, match='class names'):
    classification.confusion_matrix_figure(np.zeros((2, 2)), ['a'])
