"""Image classification through the shared trainer: the model, its loss,
init_from fine-tuning, and a whole train -> evaluate run on `shapes_objects`.

Checked against plain facts: the ImageNet classifiers' parameter counts are
the originals', the loss is the label-smoothed cross-entropy written out in
numpy, the written metrics agree with the written predictions, a loaded
backbone is bit for bit the file's.
"""

import json
import os

from absl import logging
import jax
import numpy as np
from PIL import Image
import pytest

from detector import checkpoints
from detector import errors
from detector import train
from detector.configs import classify
from detector.configs import cnn
from detector.models import classifier as classifier_lib
from detector.port import weights
from detector.train import optim


@pytest.fixture(scope='module')
def objects_data_dir(tmp_path_factory):
  """A TFDS data dir with `shapes_objects/tiny` (and `shapes/tiny`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from detector.data import shapes  # pylint: disable=g-import-not-at-top,unused-import
  data_dir = str(tmp_path_factory.mktemp('tfds_objects'))
  for name in ('shapes_objects/tiny', 'shapes/tiny'):
    tfds.builder(name, data_dir=data_dir).download_and_prepare()
  return data_dir


def _config(data_dir, arg='tiny'):
  config = classify.get_config(arg)
  config.data_dir = data_dir
  return config


@pytest.mark.parametrize('arg,num_params', [
    ('resnet50', 25_557_032),   # torchvision resnet50.
    ('b0', 5_288_548),          # torchvision efficientnet_b0.
    ('lite0', 4_652_008),       # efficientnet_lite0 (the pip package's model).
])
def test_imagenet_classifiers_have_the_originals_parameter_count(arg, num_params):
  config = classify.get_config(arg)
  with config.unlocked():
    config.model.num_classes = 1000
  model = classifier_lib.build(config.model, train=False)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          np.zeros((1, 224, 224, 3), np.uint8))
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(shapes['params'])) == num_params
  out = jax.eval_shape(model.apply, shapes, np.zeros((2, 224, 224, 3), np.uint8))
  assert out['logits'].shape == (2, 1000)


def test_loss_is_label_smoothed_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(8, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, 8)
  config = classify.get_config('tiny').model
  loss, parts = classifier_lib.loss({'logits': logits}, {'label': labels}, config)
  a = config.label_smoothing
  assert a == 0.1
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.full((8, 5), a / 5)
  target[np.arange(8), labels] += 1 - a
  np.testing.assert_allclose(loss, -(target * log_p).sum(-1).mean(), rtol=1e-5)
  np.testing.assert_allclose(parts['accuracy'],
                             (logits.argmax(-1) == labels).mean())


def _with_classes(config, num_classes):
  model_config = config.model.copy_and_resolve_references()
  with model_config.unlocked():
    model_config.num_classes = num_classes
  return model_config


def test_init_from_keeps_a_classifier_of_another_class_count_fresh(
    tmp_path, monkeypatch):
  config = classify.get_config('tiny')
  path = str(tmp_path / 'imagenet_like.npz')
  model = classifier_lib.build(_with_classes(config, 10), train=False)
  variables = model.init(jax.random.PRNGKey(1), np.zeros((1, 32, 32, 3), np.uint8))
  saved = {k: jax.tree.map(lambda x: np.asarray(x) + 0.5, v['backbone'])
           for k, v in variables.items()}
  weights.save(path, saved, dict(
      arch='cnn-test', source='test', origin='test', backbone='cnn',
      backbone_kwargs=config.model.cnn.to_dict(), num_classes=10,
      norm_epsilon=1e-5, preprocessing=dict(
          resize=36, image_size=32, interpolation='bilinear',
          mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])))
  config.init_from = path
  config.optimizer.backbone_lr_mult = 0.1
  flat_saved = weights.flatten(saved)
  for names in ([f'c{i}' for i in range(6)], [f'c{i}' for i in range(10)]):
    s = train.build_setup(config, names, 10)
    # The classifier learns at the full rate; the backbone at 0.1 x.
    labels = weights.flatten(s.labels)
    assert labels['backbone/classifier/kernel'] == optim.TRAINED
    assert labels['backbone/stem/conv/kernel'] == optim.BACKBONE
    logged = []
    monkeypatch.setattr(logging, 'info', lambda msg, *a: logged.append(msg % a))
    fresh = s.init_fn(jax.random.PRNGKey(0))
    state = checkpoints.load_backbone(fresh, path)
    got = weights.flatten({'params': state.params['backbone'],
                           'batch_stats': state.batch_stats['backbone']})
    init = weights.flatten({'params': fresh.params['backbone']})
    for key, value in got.items():
      if 'classifier' in key and len(names) == 6:  # Another class count: fresh.
        np.testing.assert_array_equal(value, init[key], err_msg=key)
      else:
        np.testing.assert_array_equal(value, flat_saved[key], err_msg=key)
    text = '\n'.join(logged)
    assert ('classifier' in text and 'not loaded' in text) == (len(names) == 6)


def test_classifier_trains_evaluates_and_writes_consistent_files(
    objects_data_dir, tmp_path):
  config = _config(objects_data_dir)
  config.eval_every_steps = 3
  config.profile_steps = (2, 3)
  workdir = str(tmp_path / 'wd')
  metrics = train.train_and_evaluate(config, workdir)
  # config.profile_steps: a profiler trace in the workdir.
  traces = [f for _, _, files in os.walk(os.path.join(workdir, 'profile'))
            for f in files if f.endswith('.xplane.pb')]
  assert len(traces) == 1, traces
  eval_dir = os.path.join(workdir, 'eval')
  with open(os.path.join(eval_dir, 'predictions_test.json')) as f:
    predictions = json.load(f)
  with open(os.path.join(eval_dir, 'metrics_test.json')) as f:
    written = json.load(f)
  with open(os.path.join(eval_dir, 'confusion_matrix_test.json')) as f:
    confusion = json.load(f)
  names = confusion['class_names']
  assert names == ['circle', 'triangle', 'square', 'star', 'cross', 'crescent']
  # Every test image once, in the split's order, with its file name.
  assert [p['index'] for p in predictions] == list(range(len(predictions)))
  assert written['num_examples'] == len(predictions) > 0
  assert all(p['filename'].endswith('.png') for p in predictions)
  # The metrics are the predictions' (through the written files only).
  correct = [p['label'] == p['predicted'] for p in predictions]
  assert written['accuracy'] == pytest.approx(np.mean(correct))
  assert metrics['accuracy'] == written['accuracy']
  matrix = np.zeros((6, 6), int)
  for p in predictions:
    matrix[names.index(p['label']), names.index(p['predicted'])] += 1
  np.testing.assert_array_equal(confusion['matrix'], matrix)
  np.testing.assert_array_equal(written['confusion_matrix'], matrix)
  top5 = [p['label'] in [c for c, _ in p['top5']] for p in predictions]
  assert written['top5'] == pytest.approx(np.mean(top5))
  image = np.asarray(Image.open(os.path.join(eval_dir, 'confusion_matrix_test.png')))
  assert image.ndim == 3 and image.std() > 0
  with open(os.path.join(eval_dir, 'history_validation.jsonl')) as f:
    history = [json.loads(line) for line in f]
  assert [h['step'] for h in history] == [3]
  assert 0 <= history[0]['accuracy'] <= 1
  # --mode=evaluate scores the final checkpoint to the same numbers.
  again = train.evaluate_checkpoint(config, workdir)
  assert again['accuracy'] == written['accuracy']
  assert again['confusion_matrix'] == written['confusion_matrix']


def test_a_dataset_of_the_other_task_is_named(objects_data_dir, tmp_path):
  config = _config(objects_data_dir)
  config.dataset = 'shapes/tiny'
  with pytest.raises(errors.ConfigError, match=r"'shapes/tiny' has no class "
                     r"label.*detection dataset"):
    train.setup(config, str(tmp_path / 'a'))
  config = cnn.get_config('tiny')
  config.data_dir = objects_data_dir
  config.dataset = 'shapes_objects/tiny'
  with pytest.raises(errors.ConfigError, match=r"'shapes_objects/tiny' has no "
                     r"boxes.*configs/classify.py"):
    train.setup(config, str(tmp_path / 'b'))
