"""The two tasks, `config.task`: 'detection' (default) and 'classification'.

The trainer, checkpoints and the optimizer are shared; what differs is
looked up here: the model module (`build`, `loss`, `predict`), the data
module (`train_dataset`, `eval_batches`, `check_augmentations`) and the
batch keys the train step reads.
"""

from detector import errors

TASKS = ('detection', 'classification')
DETECTION_KEYS = ('image', 'boxes', 'labels', 'box_mask')
CLASSIFICATION_KEYS = ('image', 'label')


def task(config) -> str:
  name = config.get('task', 'detection')
  if name not in TASKS:
    raise errors.ConfigError(f'config.task={name!r}: expected one of {TASKS}')
  return name


def is_classification(config) -> bool:
  return task(config) == 'classification'


def data_module(config):
  # pylint: disable=g-import-not-at-top
  if is_classification(config):
    from detector.data import classification
    return classification
  from detector.data import pipeline
  return pipeline


def model_module(task_name: str):
  """The model module of a task (`build`, `predict`; the classifier's also
  `loss`, a detector's loss is its head's)."""
  # pylint: disable=g-import-not-at-top
  if task_name == 'classification':
    from detector.models import classifier
    return classifier
  from detector.models import detector
  return detector


def train_keys(config):
  return CLASSIFICATION_KEYS if is_classification(config) else DETECTION_KEYS
