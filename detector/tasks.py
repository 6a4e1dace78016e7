"""The tasks, `config.task`: 'detection' (default) and 'classification'.

`tasks.get(config)` returns the task object. The trainer, checkpoints, the
optimizer and the loop are shared and ask it for everything that differs:
its part of the config checks, the stride input sizes must be multiples of,
a dataset's class names and category ids, the model, the loss, the
prediction function, the data pipeline (`task.data`: training stream and
evaluation batches), the batch keys the train step reads, the host-side
counters it logs, and the scoring of a split. Nothing outside this module
branches on the task: a new task is a new class here and one line in TASKS.

Model code is imported at once; the data pipelines and evaluation (which
need TensorFlow) only when first asked for, so that models, losses and the
train step import without TensorFlow.
"""

import functools
import importlib
from typing import Callable, Dict, Tuple

import ml_collections

from detector import errors
from detector.models import classifier
from detector.models import detector


class Task:
  """What differs between tasks; see the module docstring."""
  name: str = ''
  batch_keys: Tuple[str, ...] = ()  # Keys of a training batch the step reads.
  # {key summed from training batches on the host: the scalar it is logged as
  # (train/<name>), per log interval}.
  host_counters: Dict[str, str] = {}
  _data_module = ''  # Its data pipeline, imported when first used.

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @functools.cached_property
  def data(self):
    """The task's data pipeline module (`check_config`, `class_names`,
    `category_ids`, `train_dataset`, `eval_batches`)."""
    return importlib.import_module(self._data_module)

  def check_config(self) -> int:
    """Raises ConfigError for the task's own settings (augmentations, the
    model's options), before any data is read; returns the input stride."""
    self.data.check_config(self.config)
    return self.input_stride(self.config.model)

  def class_names(self, builder, spec: str):
    """The dataset's class names (a ConfigError for the other task's data)."""
    raise NotImplementedError

  def category_ids(self, builder, names):
    return self.data.category_ids(builder, names)

  def train_dataset(self, builder, start_step: int = 0):
    return self.data.train_dataset(self.config, builder, start_step)

  def input_stride(self, model_config) -> int:
    """Image sizes must be multiples of this."""
    raise NotImplementedError

  def build_model(self, model_config, train: bool):
    raise NotImplementedError

  def loss_fn(self, model, model_config) -> Callable:
    """`(outputs, batch) -> (loss, parts)` of `model`'s outputs."""
    raise NotImplementedError

  def predict(self, model, variables, images, model_config) -> dict:
    """Jit-compatible: uint8 images [B, H, W, 3] -> a dict of [B, ...] arrays."""
    raise NotImplementedError

  def evaluate_split(self, setup, state, split, predict_fn, writer,
                     out_dir=None, keep_images=0):
    """Scores one split (process 0 returns its metrics, others None)."""
    raise NotImplementedError


class Detection(Task):
  """Boxes and classes: backbone -> neck -> head (`detector.models.detector`)."""
  name = 'detection'
  batch_keys = ('image', 'boxes', 'labels', 'box_mask')
  # Ground-truth boxes cut by input.max_boxes.
  host_counters = {'num_dropped': 'boxes_over_max_boxes'}
  _data_module = 'detector.data.detection'

  def class_names(self, builder, spec):
    return self.data.class_names(builder, spec)

  def input_stride(self, model_config):
    model_config = model_config.copy_and_resolve_references()
    # Any class count builds the module; the dataset's is not read yet.
    model_config.num_classes = max(model_config.num_classes, 1)
    return detector.build(model_config, train=False).required_stride

  def build_model(self, model_config, train):
    return detector.build(model_config, train)

  def loss_fn(self, model, model_config):
    del model_config  # The head's options travel with the model.
    return model.head.loss

  def predict(self, model, variables, images, model_config):
    return detector.predict(model, variables, images, model_config)

  def evaluate_split(self, setup, state, split, predict_fn, writer,
                     out_dir=None, keep_images=0):
    from detector.train import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.detection_split(self.config, setup, state, split,
                                    predict_fn, writer, out_dir, keep_images)


class Classification(Task):
  """One label per image: backbone -> global pooling -> dense classifier."""
  name = 'classification'
  batch_keys = ('image', 'label')
  _data_module = 'detector.data.classification'

  def class_names(self, builder, spec):
    return self.data.class_names(builder, self.config.label_key, spec)

  def input_stride(self, model_config):
    del model_config
    return 1  # Global pooling takes any size the backbone does.

  def build_model(self, model_config, train):
    return classifier.build(model_config, train)

  def loss_fn(self, model, model_config):
    del model
    return functools.partial(classifier.loss, config=model_config)

  def predict(self, model, variables, images, model_config):
    return classifier.predict(model, variables, images, model_config)

  def evaluate_split(self, setup, state, split, predict_fn, writer,
                     out_dir=None, keep_images=0):
    del keep_images  # No images are drawn for classification.
    from detector.train import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.classification_split(self.config, setup, state, split,
                                         predict_fn, writer, out_dir)


TASKS = {task.name: task for task in (Detection, Classification)}


def get(config: ml_collections.ConfigDict) -> Task:
  """The task of `config.task` (its settings are checked by `check_config`)."""
  name = config.get('task', 'detection')
  if name not in TASKS:
    raise errors.ConfigError(f'config.task={name!r}: expected one of '
                             f'{sorted(TASKS)}')
  return TASKS[name](config)
