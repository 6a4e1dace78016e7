"""Transfer learning: init_from, frozen levels and BatchNorm, backbone learning rate.

Each property is checked against a plain fact: a frozen variable is bit for
bit what it was, a loaded one is bit for bit the file's, SGD without momentum
or weight decay moves the backbone by exactly `backbone_lr_mult` times what it
moves it with a factor of 1.
"""

import json
import os

from absl import logging
import jax
import numpy as np
import pytest

import synthetic

from detector import checkpoints
from detector import errors
from detector import train
from detector.models import detector as detector_lib
from detector.train import optim
from detector.port import weights

CLASSES = [f'c{i}' for i in range(6)]


def _batch(config, seed=0):
  return synthetic.detection_batch(config, seed,
                                   corner_max=config.image_size[0] - 24)


def _one_step(config):
  s = train.build_setup(config, CLASSES, 10)
  state = s.init_fn(jax.random.PRNGKey(0))
  if config.init_from:
    state = checkpoints.load_backbone(state, config.init_from)
  before = jax.tree.map(np.asarray, (state.params, state.batch_stats))
  sharding = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec('data'))
  state, _ = train.make_train_step(s)(state, train.device_batch(
      _batch(config), sharding, s.task.batch_keys))
  after = jax.tree.map(np.asarray, (state.params, state.batch_stats))
  return s, before, after


def _flat(tree):
  return weights.flatten(tree)


def test_backbone_levels_follow_strides(tiny_config):
  levels = detector_lib.backbone_levels(tiny_config.model)
  # cnn: a stride-2 stem, then each stage downsamples by 2 from level 2 on.
  assert levels['stem'] == 1
  assert levels['stage2_down'] == levels['stage2_block0'] == 2
  assert levels['stage5_block0'] == 5


def test_freeze_at_and_frozen_batch_norm_keep_weights_fixed(tiny_config, tmp_path):
  config = tiny_config
  # From loaded weights: at a fresh initialisation the zero BatchNorm scale
  # closing each residual block (frozen here) would keep its convs at zero
  # gradient.
  config.init_from = str(tmp_path / 'backbone.npz')
  _backbone_file(config, config.init_from)
  config.optimizer.freeze_at = 2
  config.model.backbone_norm = 'frozen_batch_norm'
  s, (p0, b0), (p1, b1) = _one_step(config)
  p0, p1, b0, b1 = _flat(p0), _flat(p1), _flat(b0), _flat(b1)
  labels = _flat(s.labels)
  for path, label in labels.items():
    changed = not np.array_equal(p0[path], p1[path])
    top = path.split('/')[1] if path.startswith('backbone/') else None
    if top in ('stem', 'stage2_down', 'stage2_block0'):
      assert label == optim.FROZEN and not changed, path
    elif path.startswith('backbone/') and path.endswith(('norm/scale', 'norm/bias')):
      assert label == optim.FROZEN and not changed, path  # Frozen BN affine.
    elif path.startswith('backbone/'):
      assert label == optim.BACKBONE and changed, path
    else:
      assert label == optim.TRAINED, path
  # Frozen BatchNorm statistics stay; the neck's trainable ones move.
  for path in b0:
    same = np.array_equal(b0[path], b1[path])
    assert same == path.startswith('backbone/'), path
  # No optimizer state is kept for frozen parameters.
  n_frozen = sum(1 for l in labels.values() if l == optim.FROZEN)
  n_state = len(jax.tree.leaves(s.abstract_state.opt_state))
  n_params = len(labels)
  assert n_state < 2 * n_params - n_frozen, (n_state, n_params, n_frozen)


def test_backbone_learning_rate_factor(tiny_config):
  config = tiny_config
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.warmup_steps = 0
  # Large enough that a step is far above float32 rounding of the weights.
  config.optimizer.learning_rate = 1.0
  deltas = {}
  for mult in (1.0, 0.25):
    config.optimizer.backbone_lr_mult = mult
    _, (p0, _), (p1, _) = _one_step(config)
    p0, p1 = _flat(p0), _flat(p1)
    deltas[mult] = {k: p1[k] - p0[k] for k in p0}
    ulp = {k: 4 * np.spacing(np.abs(p0[k]).max()) for k in p0}
  for path, full in deltas[1.0].items():
    want = full * (0.25 if path.startswith('backbone/') else 1.0)
    # Up to float rounding of the weights and of lr * mult * grad.
    np.testing.assert_allclose(deltas[0.25][path], want, rtol=0,
                               atol=1e-5 * np.abs(full).max() + ulp[path],
                               err_msg=path)
  assert any(np.abs(d).max() > 0 for p, d in deltas[1.0].items()
             if p.startswith('backbone/'))


def _backbone_file(config, path, seed=1, **meta):
  """A weights file for the config's cnn backbone, with random values and
  an extra classifier the detector has no place for."""
  backbone = detector_lib.build_backbone(config.model, train=False)
  h, w = config.image_size
  variables = backbone.init(jax.random.PRNGKey(seed), np.zeros((1, h, w, 3), np.float32))
  variables = jax.tree.map(lambda x: np.asarray(x) + 0.5, variables)  # Not an init.
  variables = {'params': dict(variables['params'],
                              classifier={'kernel': np.ones((4, 3), np.float32)}),
               'batch_stats': variables['batch_stats']}
  metadata = dict(arch='cnn-test', source='test', origin='test',
                  backbone='cnn', backbone_kwargs=config.model.cnn.to_dict(),
                  num_classes=3, norm_epsilon=1e-3,
                  preprocessing=dict(resize=72, image_size=64,
                                     interpolation='bilinear',
                                     mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0]))
  metadata.update(meta)
  weights.save(path, variables, metadata)
  return variables


def test_init_from_loads_the_backbone_and_reports_groups(tiny_config, tmp_path,
                                                           monkeypatch):
  path = str(tmp_path / 'backbone.npz')
  saved = _backbone_file(tiny_config, path)
  tiny_config.init_from = path
  tiny_config.ema_decay = 0.9
  s = train.build_setup(tiny_config, CLASSES, 10)
  # Epsilon and pixel statistics come from the file when the config leaves them unset.
  assert s.model_config.norm_epsilon == 1e-3
  assert tuple(s.model_config.pixel_mean) == (1.0, 2.0, 3.0)
  logged = []
  monkeypatch.setattr(logging, 'info', lambda msg, *a: logged.append(msg % a))
  monkeypatch.setattr(logging, 'warning', lambda msg, *a: logged.append(msg % a))
  fresh = s.init_fn(jax.random.PRNGKey(0))
  state = checkpoints.load_backbone(fresh, path)
  for collection in ('params', 'batch_stats'):
    got = _flat(getattr(state, collection)['backbone'])
    want = _flat(saved[collection])
    for k, v in got.items():
      np.testing.assert_array_equal(np.asarray(v), want[k], err_msg=k)
    ema = _flat(state.ema[collection]['backbone'])
    for k, v in ema.items():
      np.testing.assert_array_equal(np.asarray(v), want[k], err_msg=k)
  # The neck and head keep their initialisation.
  for a, b in zip(jax.tree.leaves(fresh.params['head']), jax.tree.leaves(state.params['head'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  text = '\n'.join(logged)
  assert 'loaded' in text and 'stem' in text
  assert 'unused: classifier' in text
  assert 'missing from the file (left as initialised): none' in text


def test_init_from_mismatches_are_named(tiny_config, tmp_path):
  path = str(tmp_path / 'backbone.npz')
  _backbone_file(tiny_config, path)
  tiny_config.init_from = path
  other = tiny_config.copy_and_resolve_references()
  other.model.cnn.depths = (2, 1, 1, 1)
  with pytest.raises(errors.ConfigError, match=r'depths=\[1, 1, 1, 1\].*config.model.cnn.depths'):
    train.build_setup(other, CLASSES, 10)
  other = tiny_config.copy_and_resolve_references()
  other.model.backbone = 'resnet'
  with pytest.raises(errors.ConfigError, match="'cnn' backbone.*backbone='resnet'"):
    checkpoints.resolve_init_from(other, other.model)
  tiny_config.init_from = str(tmp_path / 'nothere.npz')
  with pytest.raises(errors.ConfigError, match='nothere.npz: no such file'):
    train.build_setup(tiny_config, CLASSES, 10)


def test_resume_order_checkpoint_then_init_from_then_scratch(tiny_config, tmp_path):
  path = str(tmp_path / 'backbone.npz')
  saved = _backbone_file(tiny_config, path)
  tiny_config.init_from = path
  tiny_config.num_train_steps = 3
  tiny_config.eval_every_steps = 2
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config, workdir)
  # The periodic evaluation left one point of the AP curve (the final one is
  # the end-of-training evaluation's).
  with open(os.path.join(workdir, 'eval', 'history_validation.jsonl')) as f:
    history = [json.loads(line) for line in f]
  assert [h['step'] for h in history] == [2] and 0 <= history[0]['AP'] <= 1
  # Started from the file: after 3 small steps the stem is near the file's,
  # far from a fresh initialisation.
  mngr = checkpoints.manager(workdir, 3, 3)
  s = train.build_setup(tiny_config, CLASSES, 3)
  state = checkpoints.restore_or_none(mngr, s.abstract_state)
  stem = np.asarray(state.params['backbone']['stem']['conv']['kernel'])
  want = saved['params']['stem']['conv']['kernel']
  assert np.abs(stem - want).max() < 0.1 * np.abs(want).max()
  # A second run with more steps resumes from the checkpoint, not the file.
  tiny_config.num_train_steps = 5
  tiny_config.init_from = str(tmp_path / 'changed.npz')
  os.rename(path, tiny_config.init_from)
  changed = _backbone_file(tiny_config, tiny_config.init_from, seed=7)
  changed = changed['params']['stem']['conv']['kernel']
  train.train_and_evaluate(tiny_config, workdir)
  mngr = checkpoints.manager(workdir, 3, 3)
  s = train.build_setup(tiny_config, CLASSES, 5)
  resumed = checkpoints.restore_or_none(mngr, s.abstract_state)
  assert int(resumed.step) == 5
  stem5 = np.asarray(resumed.params['backbone']['stem']['conv']['kernel'])
  assert np.abs(stem5 - stem).max() < 0.2 * np.abs(stem5 - changed).max()


def test_removed_sync_batch_norm_is_refused_with_the_reason(tiny_config):
  """'sync_batch_norm' built exactly 'batch_norm' (under jit on the global
  batch, BatchNorm statistics already span every device): it is gone, and a
  config still naming it says what to use."""
  tiny_config.model.norm = 'sync_batch_norm'
  with pytest.raises(errors.ConfigError,
                     match=r"norm='sync_batch_norm'.*'batch_norm' is "
                     'cross-replica already'):
    train.build_setup(tiny_config, CLASSES, 10)
