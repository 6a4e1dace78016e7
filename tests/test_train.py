"""End-to-end tests of the trainer on the tiny shapes dataset.

Each property is checked against something independent of the code path under
test: an uninterrupted run for resume, pycocotools for the written files, a
1-device run for the 8-device step.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import orbax.checkpoint as ocp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import pytest

from detector import checkpoints
from detector import errors
from detector import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _final_state(workdir):
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  step = mngr.latest_step()
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  return step, restored['state']


def _pycocotools_stats(eval_dir, split):
  gt = COCO()
  with open(os.path.join(eval_dir, f'groundtruth_{split}.json')) as f:
    gt.dataset = json.load(f)
  gt.createIndex()
  with open(os.path.join(eval_dir, f'detections_{split}.json')) as f:
    detections = json.load(f)
  assert detections, 'the model wrote no detections'
  evaluator = COCOeval(gt, gt.loadRes(detections), 'bbox')
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  return evaluator.stats


def test_train_preempt_resume_evaluate(tiny_config, tmp_path, monkeypatch):
  # Reference: one uninterrupted run.
  straight = str(tmp_path / 'straight')
  metrics = train.train_and_evaluate(tiny_config, straight)
  assert metrics is not None and metrics['num_images'] == 32

  # The same run stopped by a real SIGTERM during step 3, then rerun.
  resumed = str(tmp_path / 'resumed')
  calls = {'n': 0}
  real_device_batch = train.device_batch

  def device_batch_then_sigterm(*args, **kwargs):
    calls['n'] += 1
    if calls['n'] == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return real_device_batch(*args, **kwargs)

  monkeypatch.setattr(train, 'device_batch', device_batch_then_sigterm)
  assert train.train_and_evaluate(tiny_config, resumed) is None
  assert _final_state(resumed)[0] == 3
  assert not os.path.exists(os.path.join(resumed, 'eval'))
  monkeypatch.setattr(train, 'device_batch', real_device_batch)
  metrics_resumed = train.train_and_evaluate(tiny_config, resumed)

  # Resuming continues exactly where the uninterrupted run would be: same
  # data order, same RNG, same optimizer state -> the same final parameters.
  step_a, state_a = _final_state(straight)
  step_b, state_b = _final_state(resumed)
  assert step_a == step_b == tiny_config.num_train_steps
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                               atol=1e-7)
  assert metrics_resumed['AP'] == pytest.approx(metrics['AP'], abs=1e-6)

  # The written files re-score identically with pycocotools.
  eval_dir = os.path.join(resumed, 'eval')
  with open(os.path.join(eval_dir, 'metrics_test.json')) as f:
    written = json.load(f)
  stats = _pycocotools_stats(eval_dir, 'test')
  keys = ['AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large', 'AR1',
          'AR10', 'AR100', 'AR_small', 'AR_medium', 'AR_large']
  np.testing.assert_allclose([written[k] for k in keys], stats, atol=1e-6)
  for key in ('precision', 'recall', 'f1', 'tp', 'fp', 'fn'):
    assert key in written['prf']
  assert set(written['AP_per_class']) == {
      'circle', 'triangle', 'square', 'star', 'cross', 'crescent'}

  # Detections are COCO results in pixels of the original images.
  with open(os.path.join(eval_dir, 'detections_test.json')) as f:
    detections = json.load(f)
  with open(os.path.join(eval_dir, 'groundtruth_test.json')) as f:
    groundtruth = json.load(f)
  sizes = {im['id']: (im['width'], im['height']) for im in groundtruth['images']}
  for det in detections:
    x, y, w, h = det['bbox']
    width, height = sizes[det['image_id']]
    assert 0 <= x and 0 <= y and w > 0 and h > 0
    assert x + w <= width + 1e-3 and y + h <= height + 1e-3
    assert 0 < det['score'] <= 1

  # --mode=evaluate reproduces the metrics from the latest checkpoint.
  again = train.evaluate_checkpoint(tiny_config, resumed)
  assert again['AP'] == pytest.approx(metrics_resumed['AP'], abs=1e-9)
  assert again['step'] == tiny_config.num_train_steps


def test_incompatible_checkpoint_names_the_parameter(tiny_config, tmp_path):
  workdir = str(tmp_path / 'wd')
  tiny_config.num_train_steps = 1
  tiny_config.checkpoint_every_steps = 1
  tiny_config.eval_split = ''
  tiny_config.test_split = 'validation'
  train.train_and_evaluate(tiny_config, workdir)
  tiny_config.model.fpn.width = 24
  with pytest.raises(checkpoints.IncompatibleCheckpointError,
                     match=r'(params|batch_stats)/\S+ has shape \(.*\), the '
                     r'configured model needs'):
    train.train_and_evaluate(tiny_config, workdir)


def test_bad_config_values_say_what_to_change(tiny_config, tmp_path):
  config = tiny_config
  config.image_size = (100, 100)
  with pytest.raises(ValueError, match=r'image_size=\(100, 100\).*multiples of 32'):
    train.check_config(config, str(tmp_path))
  config.image_size = (64, 64)
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(ValueError, match='cannot be written'):
    train.check_config(config, str(blocker / 'workdir'))


def _run_python(code, env_extra, timeout=300):
  env = dict(os.environ, **env_extra)
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc.stdout


def test_eight_devices_match_one_device():
  """One step on 8 fake CPU devices equals the step on 1 device, traced once."""
  out = _run_python('''
      import sys
      sys.path.insert(0, 'configs')
      import detector
      import jax, numpy as np
      import cnn
      from detector import train
      assert jax.device_count() == 8, jax.devices()
      config = cnn.get_config('tiny')
      rng = np.random.default_rng(0)
      b, (h, w), k = config.batch_size, config.image_size, config.input.max_boxes
      yx = rng.uniform(0, 40, (b, k, 2))
      size = rng.uniform(6, 24, (b, k, 2))
      batch = {
          'image': rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8),
          'boxes': np.concatenate([yx, yx + size], -1).astype(np.float32),
          'labels': rng.integers(0, 6, (b, k)).astype(np.int32),
          'box_mask': rng.random((b, k)) < 0.5,
      }
      results = {}
      for n in (1, 8):
        s = train.build_setup(config, ['c%d' % i for i in range(6)], 10,
                              devices=jax.devices()[:n])
        step = train.make_train_step(s)
        state = s.init_fn(jax.random.PRNGKey(0))
        sharding = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec('data'))
        state, metrics = step(state, train.device_batch(batch, sharding))
        loss1 = float(metrics['loss'])
        state, metrics = step(state, train.device_batch(batch, sharding))
        assert step._cache_size() == 1, step._cache_size()
        results[n] = (loss1, float(metrics['loss']),
                      [np.asarray(x) for x in jax.tree.leaves(state.params)],
                      [np.asarray(x) for x in jax.tree.leaves(state.batch_stats)])
      (a1, a2, pa, ba), (b1, b2, pb, bb) = results[1], results[8]
      assert abs(a1 - b1) <= 1e-5 * abs(a1), (a1, b1)
      assert abs(a2 - b2) <= 1e-5 * abs(a2), (a2, b2)
      for x, y in zip(pa + ba, pb + bb):
        scale = max(np.abs(x).max(), 1e-6)
        assert np.abs(x - y).max() <= 1e-5 * scale, np.abs(x - y).max() / scale
      s = train.build_setup(config, ['c%d' % i for i in range(6)], 10)
      config.batch_size = 12
      try:
        train.check_config(config, '/tmp')
      except ValueError as e:
        assert 'batch_size=12' in str(e) and '8' in str(e), e
      else:
        raise AssertionError('batch 12 on 8 devices was accepted')
      print('OK', a1, b1)
  ''', {'XLA_FLAGS': (os.environ.get('XLA_FLAGS', '') +  # The suite's compile flags.
                      ' --xla_force_host_platform_device_count=8').strip()})
  assert 'OK' in out


def test_misspelt_config_key_fails_before_anything_starts(tmp_path):
  env = dict(os.environ)
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cnn.py',
       f'--workdir={tmp_path}/wd', '--config.optimiser=adam'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'optimiser' in proc.stderr and 'Did you mean "optimizer"' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'wd')


def test_ema_follows_its_formula():
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(3, 2)).astype(np.float32)}
  stats = {'mean': rng.normal(size=(2,)).astype(np.float32)}
  ema = {'params': params, 'batch_stats': stats}
  expected = {k: v.astype(np.float64) for k, v in {**params, **stats}.items()}
  for step in range(30):
    params = {'w': params['w'] + 1.0}
    stats = {'mean': stats['mean'] - 0.5}
    ema = train.update_ema(ema, params, stats, step, 0.9)
    d = min(0.9, (1 + step) / (10 + step))
    expected['w'] = d * expected['w'] + (1 - d) * params['w']
    expected['mean'] = d * expected['mean'] + (1 - d) * stats['mean']
  np.testing.assert_allclose(ema['params']['w'], expected['w'], rtol=1e-5)
  np.testing.assert_allclose(ema['batch_stats']['mean'], expected['mean'],
                             rtol=1e-5)


def test_nan_loss_stops_training_naming_the_step(tiny_config, tmp_path,
                                                 monkeypatch):
  from detector.models.heads import centernet  # pylint: disable=g-import-not-at-top
  real_loss = centernet.loss

  def nan_loss(outputs, batch, config):
    loss, parts = real_loss(outputs, batch, config)
    return loss * float('nan'), parts

  monkeypatch.setattr(centernet, 'loss', nan_loss)
  with pytest.raises(errors.TrainingDivergedError, match='nan at step 1'):
    train.train_and_evaluate(tiny_config, str(tmp_path / 'wd'))


def test_class_list_must_match_the_workdirs_checkpoints(tmp_path):
  workdir = str(tmp_path / 'wd')
  shapes = ['circle', 'triangle', 'square', 'star', 'cross', 'crescent']
  train.check_workdir_classes(workdir, 'shapes', shapes, range(1, 7))
  # No checkpoint yet: another dataset may start over in the workdir.
  train.check_workdir_classes(workdir, 'coco_json:/data/pets', ['cat', 'dog'], [3, 7])
  train.check_workdir_classes(workdir, 'shapes', shapes, range(1, 7))
  os.makedirs(os.path.join(workdir, 'checkpoints', '500'))
  train.check_workdir_classes(workdir, 'shapes/tiny', shapes, range(1, 7))
  with pytest.raises(errors.ConfigError, match=(
      r"trained on shapes with 6 classes \['circle'.*'crescent'\], but "
      r"config.dataset='coco_json:/data/pets' has 2 classes \['cat', 'dog'\]")):
    train.check_workdir_classes(workdir, 'coco_json:/data/pets', ['cat', 'dog'], [3, 7])
  # The same count in another order is another head too.
  with pytest.raises(errors.ConfigError, match='6 classes'):
    train.check_workdir_classes(workdir, 'shapes', shapes[::-1], range(1, 7))
