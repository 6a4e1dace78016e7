"""The evaluation report of a classifier, from the files evaluation writes
(`eval/{metrics,predictions}_<split>.json`)."""

from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from detector.evaluation import classification
from detector.report import figures

MAX_PAIRS = 8      # Most confused (true, predicted) pairs listed.
EXAMPLES_PER_PAIR = 4


def confused_pairs(predictions: List[dict], count: int = MAX_PAIRS
                   ) -> List[dict]:
  """The (true, predicted) class pairs with the most errors.

  Args:
    predictions: eval/predictions_<split>.json rows ('index', 'label',
      'predicted', 'top5' [[class, probability], ...]).

  Returns:
    [{'true', 'predicted', 'count', 'examples': dataset indices, the most
    confident mistakes first}], most errors first (ties by names).
  """
  pairs: Dict[tuple, List[tuple]] = {}
  for row in predictions:
    if row['label'] != row['predicted']:
      confidence = row['top5'][0][1] if row.get('top5') else 0.0
      pairs.setdefault((row['label'], row['predicted']), []).append(
          (-confidence, row['index']))
  ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))
  return [{'true': t, 'predicted': p, 'count': len(rows),
           'examples': [i for _, i in sorted(rows)]}
          for (t, p), rows in ranked[:count]]


def sections(metrics: dict, predictions: List[dict],
             images: Optional[Callable[[Iterable[int]], Dict[int, np.ndarray]]]
             ) -> List[tuple]:
  """The report's blocks (see `detector.report.page.write`)."""
  names = metrics['class_names']
  blocks = [('h2', 'Summary'), ('table', ['', 'value'], [
      [k, f'{metrics[k]:.4f}'] for k in
      ('accuracy', 'top5', 'macro_precision', 'macro_recall', 'macro_f1',
       'micro_f1', 'weighted_f1') if k in metrics] + [
           ['examples', metrics['num_examples']]])]
  blocks.append(('h2', 'Per class'))
  blocks.append(('table', ['class', 'precision', 'recall', 'F1', 'support',
                           'predicted'],
                 [[n, f'{c["precision"]:.4f}', f'{c["recall"]:.4f}',
                   f'{c["f1"]:.4f}', c['support'], c['predicted']]
                  for n, c in metrics['per_class'].items()]))
  blocks.append(('h2', 'Confusion matrix'))
  blocks.append(('figure', 'confusion_matrix', 'Rows: true class; columns: '
                 'predicted class; colour: fraction of the row.',
                 classification.confusion_matrix_figure(
                     np.asarray(metrics['confusion_matrix']), names)))
  pairs = confused_pairs(predictions)
  blocks.append(('h2', 'Most confused classes'))
  if not pairs:
    blocks.append(('p', 'No example is misclassified.'))
    return blocks
  blocks.append(('table', ['true', 'predicted as', 'examples'],
                 [[p['true'], p['predicted'], p['count']] for p in pairs]))
  if images is None:
    blocks.append(('p', 'The examples are not drawn: the split\'s images '
                   'could not be read (see the log).'))
    return blocks
  wanted = [i for p in pairs for i in p['examples'][:EXAMPLES_PER_PAIR]]
  pixels = images(wanted)
  probability = {row['index']: row['top5'][0][1] for row in predictions
                 if row.get('top5')}
  for n, p in enumerate(pairs):
    shown = [i for i in p['examples'][:EXAMPLES_PER_PAIR] if i in pixels]
    if not shown:
      continue
    blocks.append(('figure', f'confused_{n}',
                   f'{p["true"]} predicted as {p["predicted"]} '
                   f'({p["count"]} examples; the most confident shown).',
                   figures.image_grid(
                       [pixels[i] for i in shown],
                       [f'#{i}: {p["predicted"]} {probability.get(i, 0):.2f}'
                        for i in shown])))
  return blocks
