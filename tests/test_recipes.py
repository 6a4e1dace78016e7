"""The published training recipes and the step-decay learning rate.

* Each recipe file's docstring table (`| recipe | key | value | published |
  source |`) is parsed and every row compared with the config the file
  builds, and every key that matters to a recipe (its optimizer, loss,
  decoding and data settings, and everything it changes from the file's
  default config) must have a row: the table and the code cannot drift
  apart.
* The learning-rate schedules against brute-force loops over every step:
  Detectron2's warm-up and multi-step decay for `configs/resnet50.py:coco`,
  the cosine of EfficientDet (and how far the official code's cosine phase
  lags it), and the errors a user can cause.
* Every recipe (`resnet50.py:coco`, `:voc`, `efficientnet.py:d0_coco` ...
  `:d7_coco`) trains two steps and evaluates once on TFDS's mock data of its
  real dataset (`coco/2017`, `voc/2007` + `voc/2012`; offline), with the
  model as the recipe builds it and only the sizes a 2-core CPU needs
  shrunk (128 px, batch 2, 4 images per split).
"""

import ast
import json
import math
import os
import re
import time
import zlib

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jax.sharding import NamedSharding, PartitionSpec as P

from detector import errors
from detector import train
from detector.configs import efficientnet
from detector.configs import resnet50
from detector.data import detection
from detector.train import evaluate
from detector.train import optim
from detector.train import step as step_lib

ROW_HEADER = '| recipe | key | value | published | source |'
RESULT_HEADER = '| recipe | published | source |'

# Per recipe file: the table's recipe names -> get_config arguments, the
# file's default config, and the keys of its model the table must cover
# (besides those every recipe must, `_relevant_keys`).
FILES = {
    'resnet50': dict(
        module=resnet50, recipes={'coco': 'coco', 'voc': 'voc'},
        base=lambda name: resnet50.get_config(),
        model_keys=('model.resnet.depth', 'model.resnet.stride_in_1x1',
                    'model.fpn.min_level', 'model.fpn.max_level',
                    'model.fpn.width', 'model.fpn.use_norm',
                    'model.retinanet.use_norm',
                    'model.retinanet.anchor_style')),
    'efficientnet': dict(
        module=efficientnet,
        recipes={f'd{i}': f'd{i}_coco' for i in range(8)},
        base=lambda name: efficientnet.get_config(name),
        model_keys=('model.efficientnet.variant', 'model.efficientnet.padding',
                    'model.bifpn.width', 'model.bifpn.repeats',
                    'model.bifpn.fusion', 'model.efficientdet.act',
                    'model.norm_momentum', 'model.norm_epsilon')),
}
# Keys every recipe's table has, whatever their value.
COMMON_KEYS = (
    'dataset', 'extra_train_datasets', 'train_split', 'eval_split',
    'test_split', 'image_size', 'eval_image_size', 'input.augmentations',
    'input.max_boxes', 'batch_size', 'num_train_steps', 'num_epochs',
    'ema_decay', 'init_from', 'model.backbone', 'model.neck', 'model.head',
    'model.score_threshold', 'model.nms_iou_threshold', 'model.max_detections',
    'model.flip_test', 'optimizer.name', 'optimizer.learning_rate',
    'optimizer.weight_decay', 'optimizer.warmup_steps', 'optimizer.schedule',
    'optimizer.grad_clip_norm', 'optimizer.freeze_at',
    'optimizer.backbone_lr_mult')
HEAD_KEYS = ('min_level', 'max_level', 'width', 'num_convs', 'num_scales',
             'aspect_ratios', 'anchor_scale', 'prior_prob', 'positive_iou',
             'negative_iou', 'focal_alpha', 'focal_gamma', 'box_loss',
             'box_loss_weight', 'pre_nms_topk')


def _cells(line):
  return [c.strip() for c in line.strip().strip('|').split('|')]


def _tables(doc):
  """(value rows, result rows) of a docstring: [recipe, key, value,
  published, source] and [recipe, published, source] cells."""
  rows, results, mode = [], [], None
  for line in doc.splitlines():
    text = line.strip()
    if text in (ROW_HEADER, RESULT_HEADER):
      mode = 'rows' if text == ROW_HEADER else 'results'
    elif mode and text.startswith('|---'):
      continue
    elif mode and text.startswith('|'):
      cells = _cells(text)
      assert len(cells) == (5 if mode == 'rows' else 3), line
      (rows if mode == 'rows' else results).append(cells)
    else:
      mode = None
  return rows, results


def _recipes(cell, names):
  """The recipe names a table cell covers: 'all', 'coco', 'd0-d6' or a
  comma-separated list of these."""
  out = []
  for part in (p.strip() for p in cell.split(',')):
    match = re.fullmatch(r'd(\d)-d(\d)', part)
    if part == 'all':
      out += list(names)
    elif match:
      out += [f'd{i}' for i in range(int(match[1]), int(match[2]) + 1)]
    else:
      out.append(part)
  assert set(out) <= set(names), (cell, names)
  return out


def _flat(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def _norm(value):
  if isinstance(value, (list, tuple)):
    return tuple(_norm(v) for v in value)
  return value


def _relevant_keys(config, model_keys):
  """The keys a recipe's table must have: COMMON_KEYS, the head's anchor,
  matching, loss and decoding options, the file's model keys, and the
  settings that the recipe's choices make matter."""
  head = config.model.head
  keys = set(COMMON_KEYS) | set(model_keys)
  keys |= {f'model.{head}.{k}' for k in HEAD_KEYS}
  if config.model[head].box_loss == 'huber':
    keys.add(f'model.{head}.huber_delta')
  augmentations = config.input.augmentations
  if 'scale_jitter' in augmentations:
    keys.add('input.scale_jitter')
  if 'mosaic' in augmentations:
    keys.add('input.mosaic_prob')
  if 'color_jitter' in augmentations:
    keys |= {f'input.color_jitter.{k}' for k in config.input.color_jitter}
  opt = config.optimizer
  if opt.warmup_steps:
    keys.add('optimizer.warmup_init_factor')
  if opt.schedule == 'cosine':
    keys.add('optimizer.end_learning_rate_factor')
  else:
    keys |= {'optimizer.decay_steps', 'optimizer.decay_factor'}
  keys |= ({'optimizer.momentum', 'optimizer.nesterov'} if opt.name == 'sgd'
           else {'optimizer.b1', 'optimizer.b2'})
  return keys


@pytest.mark.parametrize('file', sorted(FILES))
def test_docstring_table_is_the_config(file):
  """Every row of the file's table equals the built config; every relevant
  key of every recipe, and every key a recipe changes from the file's
  default config, has exactly one row; every recipe has a published AP."""
  spec = FILES[file]
  rows, results = _tables(spec['module'].__doc__)
  names = spec['recipes']
  assert rows and results
  table = {}
  for recipe_cell, key_cell, value, _, source in rows:
    assert source, f'{key_cell}: no source'
    key = key_cell.strip('`')
    for recipe in _recipes(recipe_cell, names):
      assert (recipe, key) not in table, f'{recipe} {key}: two rows'
      table[recipe, key] = ast.literal_eval(value)
  for recipe, arg in names.items():
    config = spec['module'].get_config(arg)
    flat = _flat(config.copy_and_resolve_references())
    documented = {k for r, k in table if r == recipe}
    for key in documented:
      assert key in flat, f'{file}:{arg}: the table has {key}, not a config key'
      assert _norm(flat[key]) == _norm(table[recipe, key]), (
          f'{file}:{arg} {key}: config {flat[key]!r}, table '
          f'{table[recipe, key]!r}')
    base = _flat(spec['base'](recipe).copy_and_resolve_references())
    changed = {k for k in flat if k not in base or base[k] != flat[k]}
    missing = (_relevant_keys(config, spec['model_keys']) | changed) - documented
    assert not missing, f'{file}:{arg}: no table row for {sorted(missing)}'
  ap = {}
  for recipe_cell, published, source in results:
    assert source
    for recipe in _recipes(recipe_cell, names):
      ap.setdefault(recipe, []).append(float(published))
  assert set(ap) == set(names)


def test_published_efficientdet_ap_is_the_readme_column():
  """The AP val column of google/automl efficientdet/README.md (2022), in
  order D0..D7: the table's results rows, increasing with the size."""
  _, results = _tables(efficientnet.__doc__)
  ap = [float(p) for _, p, _ in results]
  assert ap == [34.3, 40.2, 43.5, 46.8, 49.3, 51.2, 52.1, 53.4]


# Learning-rate schedules.


def _config(**optimizer):
  config = resnet50.get_config()
  config.optimizer.update(optimizer)
  return config


def _lr(config, total):
  schedule = optim.learning_rate_schedule(config, total)
  return np.asarray(jax.jit(jax.vmap(schedule))(np.arange(total)), np.float64)


def _detectron2_lr(step, base, warmup, factor, milestones, gamma):
  """Detectron2's WarmupMultiStepLR at iteration `step` (0-based), written
  as its LRMultiplier computes it: the multi-step value times the linear
  warm-up factor."""
  lr = base * gamma ** sum(1 for m in milestones if step >= m)
  if step < warmup:
    alpha = step / warmup
    lr *= factor * (1 - alpha) + alpha
  return lr


def test_step_schedule_is_detectron2s_multistep():
  """configs/resnet50.py:coco's schedule over all 90000 steps equals
  Detectron2's (BASE_LR 0.01, WARMUP_ITERS 1000, WARMUP_FACTOR 1/1000,
  STEPS (60000, 80000), GAMMA 0.1): iteration 60000 (0-based, the 60001st
  step) is the first at 0.1x."""
  config = resnet50.get_config('coco')
  lr = _lr(config, 90000)
  expected = np.array([_detectron2_lr(s, 0.01, 1000, 0.001, (60000, 80000),
                                      0.1) for s in range(90000)])
  np.testing.assert_allclose(lr, expected, rtol=2e-6)
  assert lr[0] == pytest.approx(1e-5) and lr[1000] == pytest.approx(0.01)
  assert lr[59999] == pytest.approx(0.01) and lr[60000] == pytest.approx(1e-3)
  assert lr[79999] == pytest.approx(1e-3) and lr[80000] == pytest.approx(1e-4)


@pytest.mark.parametrize('warmup,init,decay_steps,factor', [
    (0, 0.0, (5, 17), 0.1), (7, 0.0, (3, 20), 0.5), (10, 0.25, (), 0.1),
    (4, 0.001, (29,), 0.2)])
def test_step_schedule_matches_brute_force(warmup, init, decay_steps, factor):
  """Small schedules, warm-up and decay overlapping or not, against the
  definition: peak x (init + (1 - init) min(step / warmup, 1)) x factor **
  (decay steps <= step)."""
  config = _config(learning_rate=0.3, warmup_steps=warmup, schedule='step',
                   warmup_init_factor=init, decay_steps=decay_steps,
                   decay_factor=factor)
  total = 30
  expected = []
  for step in range(total):
    lr = 0.3 * factor ** sum(1 for d in decay_steps if step >= d)
    if warmup:
      lr *= init + (1 - init) * min(step / warmup, 1)
    expected.append(lr)
  np.testing.assert_allclose(_lr(config, total), expected, rtol=1e-6)


def test_cosine_schedule_with_warmup_init_matches_brute_force():
  """The cosine schedule, unchanged by the new keys at their defaults, and
  with a warm-up from peak x warmup_init_factor."""
  for init in (0.0, 0.1):
    config = _config(learning_rate=0.08, warmup_steps=10, warmup_init_factor=init,
                     end_learning_rate_factor=0.01)
    total = 50
    expected = []
    for step in range(total):
      if step < 10:
        expected.append(0.08 * (init + (1 - init) * step / 10))
      else:
        cos = 0.5 * (1 + math.cos(math.pi * (step - 10) / 40))
        expected.append(0.08 * (0.01 + 0.99 * cos))
    np.testing.assert_allclose(_lr(config, total), expected, rtol=1e-5,
                               atol=1e-9)


def test_efficientdet_cosine_follows_the_official_schedule():
  """configs/efficientnet.py:d0_coco over its 562500 steps against
  google/automl's det_model_fn.cosine_lr_schedule (lr 0.08, warm-up from
  0.008 over 1875 steps, then 0.5 lr (1 + cos(pi t / (T - W))) with t the
  global step): equal during warm-up, then within the official phase lag,
  at most 0.53% of the peak."""
  config = efficientnet.get_config('d0_coco')
  total = config.num_train_steps
  lr = _lr(config, total)
  steps = np.arange(total, dtype=np.float64)
  warmup = 1875
  official = np.where(
      steps < warmup, 0.008 + steps / warmup * (0.08 - 0.008),
      0.5 * 0.08 * (1 + np.cos(np.pi * steps / (total - warmup))))
  np.testing.assert_allclose(lr[:warmup], official[:warmup], rtol=1e-5)
  lag = np.abs(lr - official).max() / 0.08
  assert lag <= 0.0053, lag
  assert lr[warmup] == pytest.approx(0.08) and lr[-1] < 1e-8


@pytest.mark.parametrize('change,message', [
    (dict(schedule='linear'), r"config.optimizer.schedule='linear': expected "
     r"one of \('cosine', 'step'\)"),
    (dict(schedule='step', decay_steps=(80, 60)),
     r'config.optimizer.decay_steps=\(80, 60\): must be strictly increasing'),
    (dict(schedule='step', decay_steps=(60, 100)),
     r'config.optimizer.decay_steps=\(60, 100\): each must be in \[1, 100\)'),
    (dict(schedule='step', decay_steps=(0,)),
     r'config.optimizer.decay_steps=\(0,\): each must be in \[1, 100\)'),
    (dict(schedule='step', decay_steps=(10.5,)),
     r'config.optimizer.decay_steps=\(10.5,\): expected whole step numbers'),
    (dict(schedule='step', decay_factor=0.0),
     r'config.optimizer.decay_factor=0.0: must be > 0'),
    (dict(warmup_init_factor=1.5),
     r'config.optimizer.warmup_init_factor=1.5: must be in \[0, 1\]'),
])
def test_bad_schedule_settings_name_the_key(change, message):
  with pytest.raises(errors.ConfigError, match=message):
    optim.learning_rate_schedule(_config(**change), 100)


def test_a_recipe_shortened_without_its_decay_steps_is_refused():
  """The :coco recipe at 1000 steps keeps decay steps it can never reach:
  refused when the optimizer is made, naming the key."""
  config = resnet50.get_config('coco')
  with pytest.raises(errors.ConfigError, match=r'decay_steps=\(60000, 80000\)'
                     r'.*\[1, 1000\)'):
    optim.make_optimizer(config, 1000)


# Every recipe trains on TFDS's mock data of its dataset.

SPLIT_SIZES = {'train': 4, 'validation': 4, 'test': 4}


def _split_dict(builder):
  return tfds.core.SplitDict([
      tfds.core.SplitInfo(
          name=name, shard_lengths=[n], num_bytes=0,
          filename_template=tfds.core.ShardedFileTemplate(
              data_dir=builder.data_path, dataset_name=builder.name,
              split=name, filetype_suffix='tfrecord',
              template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'))
      for name, n in SPLIT_SIZES.items()])


def _example(builder, split, index):
  """Example `index` of `split`: random values of the builder's declared
  features, one object count per example, valid boxes, mostly uncrowded."""
  info = builder.info.features.get_tensor_info()
  num_classes = builder.info.features['objects']['label'].num_classes
  rng = np.random.default_rng(zlib.crc32(
      f'{builder.info.full_name}/{split}/{index}'.encode()))
  n = int(rng.integers(1, 5))
  h, w = (int(v) for v in rng.integers(60, 160, 2))

  def value(key, tensor_info):
    shape = [n if d is None else d for d in tensor_info.shape]
    dtype = tensor_info.np_dtype
    if key == 'bbox':
      lo = rng.uniform(0, 0.6, (n, 2))
      return np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (n, 2))],
                            -1).astype(dtype)
    if 'label' in key:
      return rng.integers(0, num_classes, shape).astype(dtype)
    if dtype == bool:
      return rng.uniform(size=shape) < 0.2
    if tensor_info.tf_dtype == tf.string:
      return f'{split}_{index:06d}.jpg'.encode()
    return rng.integers(1, 100, shape).astype(dtype)

  example = {'image': rng.integers(0, 256, (h, w, 3)).astype(np.uint8)}
  for key, tensor_info in info.items():
    if key == 'image':
      continue
    example[key] = ({k: value(k, t) for k, t in tensor_info.items()}
                    if isinstance(tensor_info, dict) else value(key, tensor_info))
  if 'image/id' in example:  # Unique within a split, as COCO's.
    example['image/id'] = np.int64(1000 * list(SPLIT_SIZES).index(split)
                                   + index)
  return example


def _as_dataset(builder, split, **kwargs):
  """mock_data's as_dataset_fn: the examples of a split spec
  ('train+validation' too) as `_example` makes them."""
  del kwargs
  instruction = (split if isinstance(split, tfds.core.ReadInstruction)
                 else tfds.core.ReadInstruction.from_spec(split))
  parts = [(a.splitname, i) for a in instruction.to_absolute(builder.info.splits)
           for i in range(a.from_ or 0, SPLIT_SIZES[a.splitname] if a.to is None
                          else a.to)]
  signature = tf.nest.map_structure(
      lambda t: tf.TensorSpec(t.shape, t.tf_dtype),
      builder.info.features.get_tensor_info())
  ds = tf.data.Dataset.from_generator(
      lambda: (_example(builder, s, i) for s, i in parts),
      output_signature=signature)
  return ds.apply(tf.data.experimental.assert_cardinality(len(parts)))


@pytest.fixture
def mock_tfds(monkeypatch):
  """coco/2017, voc/2007 and voc/2012 offline: TFDS's mock builders (their
  real features and class names) with splits of SPLIT_SIZES examples."""
  real_builder = tfds.builder

  def builder(name, **kwargs):
    b = real_builder(name, **kwargs)
    b.info.set_splits(_split_dict(b))
    return b
  monkeypatch.setattr(tfds, 'builder', builder)
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_dataset_fn=_as_dataset):
    yield


# Run whole by default: every recipe family (Detectron2's COCO, mmdetection's
# VOC, EfficientDet's COCO at D0). D1-D7 share D0's recipe and differ in the
# model's size, image size, anchor scale and step count; compiling their
# train step takes 2-7 minutes each on 2 cores (`test_recipes` in
# BENCHMARKS.md terms: ~30 minutes for the seven), so by default they are
# traced and lowered instead (test_larger_efficientdet_recipes_lower), and
# run whole with DETECTOR_TEST_ALL_RECIPES=1.
ALL_RECIPES = os.environ.get('DETECTOR_TEST_ALL_RECIPES') == '1'
LARGER = [f'd{i}_coco' for i in range(1, 8)]
RUNS = ([('resnet50', 'coco'), ('resnet50', 'voc'), ('efficientnet', 'd0_coco')]
        + [('efficientnet', arg) for arg in LARGER if ALL_RECIPES])


def _shrunk(file, arg, tmp_path):
  """(recipe, its copy shrunk to a CPU test): 128 px, batch 2, two steps
  with the schedule's step numbers scaled to them, nothing extra written."""
  recipe = FILES[file]['module'].get_config(arg)
  config = recipe.copy_and_resolve_references()
  config.data_dir = str(tmp_path / 'tfds')
  config.image_size = config.eval_image_size = (128, 128)
  config.batch_size = config.eval_batch_size = 2
  config.num_train_steps = 2
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, 1)
  if config.optimizer.schedule == 'step':
    config.optimizer.decay_steps = (1,)  # Step 2 runs decayed.
  config.input.shuffle_buffer = 8
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.num_images_to_draw = 1
  config.eval_report = False
  config.monitoring_images = 0
  # XLA's grouped convolution for the depthwise convs: the same parameters
  # and results as the CPU default's shifted multiply-adds (layers.py), and
  # fewer ops to compile.
  config.model.depthwise_impl = 'conv'
  model = config.model.to_dict()
  assert dict(model, depthwise_impl='auto') == recipe.model.to_dict()
  return recipe, config


@pytest.mark.parametrize('file,arg', RUNS)
def test_recipe_trains_and_evaluates(file, arg, mock_tfds, tmp_path):
  """Two training steps and one evaluation of the recipe, its model as
  built, on mock data of its dataset; only sizes and the schedule's step
  numbers shrink with the run."""
  del mock_tfds
  _, config = _shrunk(file, arg, tmp_path)
  start = time.perf_counter()
  metrics = train.train_and_evaluate(config, str(tmp_path / 'wd'))
  print(f'{file}:{arg}: {time.perf_counter() - start:.0f} s')
  # Scored: the test split's images, ground truth and (after two steps
  # near the 0.01 prior, perhaps no) detections written as COCO files.
  assert metrics['num_images'] == SPLIT_SIZES[config.test_split]
  eval_dir = tmp_path / 'wd' / 'eval'
  with open(eval_dir / f'groundtruth_{config.test_split}.json') as f:
    assert len(json.load(f)['images']) == SPLIT_SIZES[config.test_split]
  with open(eval_dir / f'detections_{config.test_split}.json') as f:
    assert isinstance(json.load(f), list)
  steps = os.listdir(tmp_path / 'wd' / 'checkpoints')
  assert '2' in steps, steps


@pytest.mark.parametrize('arg', LARGER)
def test_larger_efficientdet_recipes_lower(arg, mock_tfds, tmp_path):
  """EfficientDet-D1..D7's recipes up to XLA: the run's set-up on mock COCO
  (dataset, classes, model, optimizer and schedule, sharded state), a
  training batch and an evaluation batch from the recipe's pipeline, and the
  jitted train step and prediction traced and lowered on them (compiling
  is what takes minutes). The whole run: DETECTOR_TEST_ALL_RECIPES=1."""
  del mock_tfds
  recipe, config = _shrunk('efficientnet', arg, tmp_path)
  start = time.perf_counter()
  s = train.setup(config, str(tmp_path / 'wd'))
  assert s.total_steps == 2 and s.ema_decay == recipe.ema_decay
  assert len(s.class_names) == 80
  batch = next(s.task.train_dataset(s.builder).as_numpy_iterator())
  assert batch['image'].shape == (2, 128, 128, 3)
  sharding = NamedSharding(s.mesh, P('data'))
  lowered = step_lib.make_train_step(s).lower(
      s.abstract_state, step_lib.device_batch(batch, sharding,
                                              s.task.batch_keys))
  state_out, metrics = lowered.out_info
  assert jax.tree_util.tree_structure(state_out) == (
      jax.tree_util.tree_structure(s.abstract_state))
  assert metrics['loss'].shape == () and 'learning_rate' in metrics
  images = next(detection.eval_batches(config, s.builder, config.eval_split))
  predictions = evaluate.make_predict_fn(s).lower(
      s.abstract_state.eval_variables(),
      jax.device_put(images['image'], sharding)).out_info
  assert predictions['boxes'].shape[:2] == (2, config.model.max_detections)
  print(f'efficientnet:{arg}: lowered in {time.perf_counter() - start:.0f} s')
