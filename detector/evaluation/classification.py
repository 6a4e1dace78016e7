"""Image-classification metrics: accuracy, top-k, precision/recall/F1.

Inputs are plain numpy: `labels` int [N], the true class of each example in
[0, K), and `scores` float [N, K], logits or probabilities (only their order
within a row matters). The predicted class is the argmax of a row; ties go to
the lowest class index, as in `np.argmax`.

Per class k, with tp = examples of class k predicted k, fp = examples of
another class predicted k and fn = examples of class k predicted otherwise:

  precision = tp / (tp + fp), recall = tp / (tp + fn),
  F1 = 2 tp / (2 tp + fp + fn) (the harmonic mean of precision and recall).

Zero division gives 0, as scikit-learn's `zero_division=0`: a class never
predicted has precision 0, a class with no examples (no support) has recall 0,
and F1 is 0 when both precision and recall are.

Averages over classes:
  macro: the unweighted mean of the per-class values over all K classes,
    including classes absent from both the labels and the predictions (they
    count as 0), as scikit-learn does when `labels=range(K)` lists them.
  micro: precision, recall and F1 of the tp, fp and fn summed over classes.
    With one label and one prediction per example every error is one fp and
    one fn, so all three equal the accuracy.
  weighted: the mean of the per-class F1 weighted by support (examples per
    true class), so absent classes do not count.

Top-k accuracy is the fraction of examples whose true class is among the
min(k, K) highest scores of its row. Ties are broken as for the prediction:
among equal scores the lower class index ranks first, so the top-1 accuracy
always equals the accuracy. (scikit-learn's `top_k_accuracy_score` ranks the
higher index first among ties; the two agree whenever a row has no ties.)

The confusion matrix has rows = true class, columns = predicted class.
"""

import re
from typing import Any, Dict, Sequence

import numpy as np

_MAX_NAME = 20  # characters of a class name shown in figures and summaries


def _check(labels, scores, class_names, top_k):
  """Validated (labels int64 [N], scores [N, K], names list of K str)."""
  labels = np.asarray(labels)
  scores = np.asarray(scores)
  if scores.ndim != 2:
    raise ValueError(f'scores must be 2-D [N, K], got shape {scores.shape}')
  num, num_k = scores.shape
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D [N], got shape {labels.shape}')
  if len(labels) != num:
    raise ValueError(f'labels and scores disagree on N: labels has '
                     f'{len(labels)} examples, scores {num}')
  if num == 0:
    raise ValueError('no examples (N == 0): metrics are undefined')
  if num_k == 0:
    raise ValueError('scores has no classes (K == 0)')
  if not (np.issubdtype(labels.dtype, np.integer)
          and labels.dtype != np.bool_):
    raise ValueError(f'labels must be integers, got dtype {labels.dtype}')
  if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(
      scores.dtype, np.complexfloating):
    raise ValueError(f'scores must be real numbers, got dtype {scores.dtype}')
  if np.isnan(scores).any():
    raise ValueError('scores contain NaN')
  bad = (labels < 0) | (labels >= num_k)
  if bad.any():
    raise ValueError(f'labels out of range [0, {num_k}): '
                     f'{np.unique(labels[bad])[:10].tolist()}')
  class_names = [str(name) for name in class_names]
  if len(class_names) != num_k:
    raise ValueError(f'{len(class_names)} class names for {num_k} score '
                     f'columns')
  if len(set(class_names)) != num_k:
    raise ValueError('class names are not unique')
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or (
      top_k < 1):
    raise ValueError(f'top_k must be a positive integer, got {top_k!r}')
  return labels.astype(np.int64), scores, class_names


def _ratio(num, den):
  """num / den elementwise as float64, 0 where den == 0."""
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def top_k_hits(labels: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
  """[N] bool: is the label among the min(k, K) highest scores of its row.

  The rank of the label is the number of classes scoring strictly higher plus
  those scoring equal with a lower index (ties: lower index first).

  Args:
    labels: int [N] in [0, K).
    scores: [N, K] scores.
    k: how many of the top classes count.

  Returns:
    [N] bool hits.
  """
  own = np.take_along_axis(scores, labels[:, None], axis=1)
  lower = np.arange(scores.shape[1])[None, :] < labels[:, None]
  rank = ((scores > own) | ((scores == own) & lower)).sum(axis=1)
  return rank < k


def metrics(labels: np.ndarray, scores: np.ndarray,
            class_names: Sequence[str], top_k: int = 5) -> Dict[str, Any]:
  """Accuracy, top-k accuracy, P/R/F1 and the confusion matrix.

  Args:
    labels: int [N], the true class of each example, in [0, K).
    scores: float [N, K], logits or probabilities; the prediction is the
      argmax of each row (ties: lowest index).
    class_names: K unique names, in class order.
    top_k: k of the top-k accuracy (min(top_k, K) classes count).

  Returns:
    A JSON-serialisable dict (python floats, ints, lists): 'num_examples',
    'accuracy', f'top{top_k}', 'macro_precision', 'macro_recall',
    'macro_f1', 'micro_precision', 'micro_recall', 'micro_f1',
    'weighted_f1', 'per_class' ({name: {'precision', 'recall', 'f1',
    'support', 'predicted'}} in class order), 'confusion_matrix' (K x K ints,
    rows true, columns predicted) and 'class_names'.

  Raises:
    ValueError: on N == 0, shape mismatches, labels outside [0, K), NaN
      scores, non-integer labels, a wrong number of (or duplicate) class
      names, or top_k < 1.
  """
  labels, scores, class_names = _check(labels, scores, class_names, top_k)
  num, num_k = scores.shape
  predicted = np.argmax(scores, axis=1)
  confusion = np.bincount(labels * num_k + predicted,
                          minlength=num_k * num_k).reshape(num_k, num_k)
  tp = np.diag(confusion)
  support = confusion.sum(axis=1)
  num_predicted = confusion.sum(axis=0)
  fp = num_predicted - tp
  fn = support - tp
  precision = _ratio(tp, tp + fp)
  recall = _ratio(tp, tp + fn)
  f1 = _ratio(2 * tp, 2 * tp + fp + fn)
  micro_tp, micro_fp, micro_fn = tp.sum(), fp.sum(), fn.sum()
  per_class = {
      name: {'precision': float(precision[k]), 'recall': float(recall[k]),
             'f1': float(f1[k]), 'support': int(support[k]),
             'predicted': int(num_predicted[k])}
      for k, name in enumerate(class_names)}
  return {
      'num_examples': int(num),
      'accuracy': float(micro_tp / num),
      f'top{top_k}': float(top_k_hits(labels, scores, top_k).mean()),
      'macro_precision': float(precision.mean()),
      'macro_recall': float(recall.mean()),
      'macro_f1': float(f1.mean()),
      'micro_precision': float(_ratio(micro_tp, micro_tp + micro_fp)),
      'micro_recall': float(_ratio(micro_tp, micro_tp + micro_fn)),
      'micro_f1': float(_ratio(2 * micro_tp,
                               2 * micro_tp + micro_fp + micro_fn)),
      'weighted_f1': float((f1 * support).sum() / support.sum()),
      'per_class': per_class,
      'confusion_matrix': confusion.astype(int).tolist(),
      'class_names': list(class_names),
  }


def _short(name: str, length: int = _MAX_NAME) -> str:
  """name cut to `length` characters, the last one an ellipsis if cut."""
  return name if len(name) <= length else name[:length - 1] + '\u2026'


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str],
                            title: str = '') -> np.ndarray:
  """The confusion matrix drawn as an image.

  Colour is the row-normalised fraction (a row with no examples is all 0);
  each cell shows its count when K <= 30. The figure grows with K up to
  12 x 12 inches at 100 dpi.

  Args:
    matrix: [K, K] counts, rows true class, columns predicted class.
    class_names: K names, shown (cut to 20 characters) on both axes.
    title: figure title.

  Returns:
    uint8 [H, W, 3] RGB image.

  Raises:
    ValueError: if matrix is not square or class_names does not have K names.
  """
  # A Figure of its own, not pyplot's: no global backend or figure state.
  # pylint: disable=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  # pylint: enable=g-import-not-at-top
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise ValueError(f'matrix must be square [K, K], got shape {matrix.shape}')
  num_k = matrix.shape[0]
  if len(class_names) != num_k:
    raise ValueError(f'{len(class_names)} class names for a {num_k} x '
                     f'{num_k} matrix')
  rows = matrix.sum(axis=1, keepdims=True)
  fraction = _ratio(matrix, np.broadcast_to(rows, matrix.shape))
  size = float(np.clip(2.5 + 0.3 * num_k, 5, 12))
  fig = Figure(figsize=(size + 1, size), dpi=100)
  canvas = FigureCanvasAgg(fig)
  ax = fig.subplots()
  image = ax.imshow(fraction, cmap='Blues', vmin=0, vmax=1,
                    interpolation='nearest')
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label='fraction of the true class')
  _label_cells(ax, matrix, fraction, [_short(str(n)) for n in class_names])
  if title:
    ax.set_title(title)
  fig.tight_layout()
  canvas.draw()
  return np.ascontiguousarray(
      np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3])


def _label_cells(ax, matrix, fraction, names):
  """Counts in the cells (K <= 30) and class names on both axes."""
  num_k = matrix.shape[0]
  if num_k <= 30:
    cell_size = float(np.clip(240 / num_k, 5, 10))
    for i in range(num_k):
      for j in range(num_k):
        ax.text(j, i, str(int(matrix[i, j])), ha='center', va='center',
                fontsize=cell_size,
                color='white' if fraction[i, j] > 0.5 else 'black')
  label_size = float(np.clip(400 / max(num_k, 1), 4, 10))
  ticks = np.arange(num_k)
  ax.set_xticks(ticks)
  ax.set_yticks(ticks)
  ax.set_xticklabels(names, rotation=90, fontsize=label_size)
  ax.set_yticklabels(names, fontsize=label_size)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')


def format_metrics(m: Dict[str, Any], max_classes: int = 20) -> str:
  """A short multi-line summary of a `metrics` result.

  Args:
    m: the dict returned by `metrics`.
    max_classes: per-class lines shown; the rest are counted in a last line.

  Returns:
    The summary, lines joined by newlines (no trailing newline).
  """
  top = sorted(key for key in m if re.fullmatch(r'top\d+', key))
  head = f'examples {m["num_examples"]}  accuracy {m["accuracy"]:.4f}'
  head += ''.join(f'  {key} {m[key]:.4f}' for key in top)
  lines = [head]
  for average in ('macro', 'micro'):
    lines.append(f'{average:<8} precision {m[average + "_precision"]:.4f}  '
                 f'recall {m[average + "_recall"]:.4f}  '
                 f'f1 {m[average + "_f1"]:.4f}')
  lines.append(f'{"weighted":<8} f1 {m["weighted_f1"]:.4f}')
  items = list(m['per_class'].items())
  shown = items[:max(max_classes, 0)]
  if shown:
    width = max(len(_short(name)) for name, _ in shown)
    width = max(width, len('class'))
    lines.append(f'{"class":<{width}}  precision  recall      f1  '
                 f'support  predicted')
    for name, c in shown:
      lines.append(f'{_short(name):<{width}}  {c["precision"]:9.4f}  '
                   f'{c["recall"]:6.4f}  {c["f1"]:6.4f}  {c["support"]:7d}  '
                   f'{c["predicted"]:9d}')
  if len(items) > len(shown):
    lines.append(f'... {len(items) - len(shown)} more')
  return '\n'.join(lines)
