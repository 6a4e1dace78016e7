"""End-to-end tests of the trainer on the tiny shapes dataset.

Each property is checked against something independent of the code path under
test: pycocotools for the written files, a 1-device run for the 8-device
step, data-parallel steps for FSDP, the whole batch for accumulated
micro-batches, float32 for bfloat16. Interruptions and resume against an
uninterrupted run: tests/test_faults.py.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import pytest

from detector import checkpoints
from detector import errors
from detector import runtime
from detector import train
from detector.configs import cnn
from detector.train import state as state_lib
import synthetic

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


def test_train_then_evaluation_files_rescore(tiny_config, tmp_path,
                                             monkeypatch):
  # Interruptions and resume: tests/test_faults.py (real processes).
  workdir = str(tmp_path / 'wd')
  caches = []  # The cache itself: tests/test_runtime.py (fresh processes).
  monkeypatch.setattr(runtime, 'compilation_cache', caches.append)
  metrics = train.train_and_evaluate(tiny_config, workdir)
  assert caches == [tiny_config.compilation_cache_dir]
  assert metrics is not None and metrics['num_images'] == 32
  assert _final_state(workdir)[0] == tiny_config.num_train_steps

  # The written files re-score identically with pycocotools.
  eval_dir = os.path.join(workdir, 'eval')
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
  again = train.evaluate_checkpoint(tiny_config, workdir)
  assert again['AP'] == pytest.approx(metrics['AP'], abs=1e-9)
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
  config.grad_accum_steps = 3  # 8 examples do not split into 3 micro-batches.
  with pytest.raises(ValueError, match=r'grad_accum_steps=3 with config.batch_size=8'
                     r'.*multiple of grad_accum_steps x devices = 3'):
    train.check_config(config, str(tmp_path))
  config.grad_accum_steps = 2
  config.sharding = 'zero3'
  with pytest.raises(ValueError, match=r"config.sharding='zero3': expected one of "
                     r"\('data', 'fsdp'\)"):
    train.check_config(config, str(tmp_path))
  config.sharding = 'fsdp'
  train.check_config(config, str(tmp_path))
  # Checked here, before any data is read or model traced.
  config.profile_steps = (0, 1)
  with pytest.raises(ValueError, match=r'profile_steps=\(0, 1\): steps count '
                     'from 1'):
    train.check_config(config, str(tmp_path))
  config.profile_steps = ()
  config.model.head = 'retinanet'
  config.model.retinanet.box_loss = 'l2'
  with pytest.raises(ValueError, match=r"retinanet.box_loss='l2': expected one "
                     r"of \('giou', 'huber'\)"):
    train.check_config(config, str(tmp_path))
  config.model.retinanet.box_loss = 'giou'
  config.input.augmentations = ('hflip', 'cutout')
  with pytest.raises(ValueError, match=r"augmentations has \['cutout'\]"):
    train.check_config(config, str(tmp_path))
  config.input.augmentations = ('hflip',)
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(ValueError, match='cannot be written'):
    train.check_config(config, str(blocker / 'workdir'))


def _run_worker(case, tmp_path):
  """tests/devices_worker.py CASE on 8 fake CPU devices (a new process: the
  device count is fixed when JAX starts)."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +  # The suite's compile flags.
                      ' --xla_force_host_platform_device_count=8').strip()
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', 'devices_worker.py'), case,
       str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  assert proc.stdout.strip().endswith('OK'), proc.stdout[-3000:]


def test_eight_devices_match_one_device(tmp_path):
  """One step on 8 fake CPU devices equals the step on 1 device with
  BatchNorm over the whole batch (under jit the batch is global), traced
  once; a batch 8 devices cannot split fails naming both."""
  _run_worker('one_vs_eight', tmp_path)


def test_fsdp_matches_data_parallel(tmp_path):
  """FSDP on 8 fake devices computes the data-parallel steps with 1/8 of the
  sharded arrays per device."""
  _run_worker('fsdp', tmp_path)


def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
  """4 accumulated micro-batches (one without boxes) give the step of the
  whole batch, for a detector (its loss divided by the batch's box count)
  and a classifier (a mean over examples)."""
  _run_worker('accumulation', tmp_path)


def test_train_step_runs_without_tensorflow():
  """TensorFlow only feeds data: the models, the set-up and the jitted step
  import and run without it (a GPU or TPU machine may not have it)."""
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', 'no_tensorflow_worker.py')],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert proc.stdout.count('OK ') == 2, proc.stdout


def test_bfloat16_training_follows_float32():
  """The tiny detector fitted for 30 steps to one batch in bfloat16 compute
  (float32 parameters and optimizer state) ends within 5% of float32's loss,
  with float32 state throughout."""
  config = cnn.get_config('tiny')
  batch = synthetic.detection_batch(config, 0, size=(8, 24))
  curves = {}
  for dtype in ('float32', 'bfloat16'):
    config.model.dtype = dtype
    s = train.build_setup(config, [str(i) for i in range(6)], 30)
    step = train.make_train_step(s)
    state = s.init_fn(jax.random.PRNGKey(0))
    data = train.device_batch(batch, jax.sharding.NamedSharding(
        s.mesh, jax.sharding.PartitionSpec('data')), s.task.batch_keys)
    curves[dtype] = []
    for _ in range(30):
      state, metrics = step(state, data)
      curves[dtype].append(float(metrics['loss']))
    assert {x.dtype for x in jax.tree.leaves(state)} <= {
        np.dtype('float32'), np.dtype('int32'), np.dtype('uint32')}
  f32, bf16 = curves['float32'], curves['bfloat16']
  assert f32[-1] < 0.8 * f32[0], f32  # It learns, so the comparison means something.
  assert abs(bf16[-1] - f32[-1]) <= 0.05 * f32[-1], (f32, bf16)
  assert bf16 != f32  # bfloat16 really computed something else.


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
    ema = state_lib.update_ema(ema, params, stats, step, 0.9)
    d = min(0.9, (1 + step) / (10 + step))
    expected['w'] = d * expected['w'] + (1 - d) * params['w']
    expected['mean'] = d * expected['mean'] + (1 - d) * stats['mean']
  np.testing.assert_allclose(ema['params']['w'], expected['w'], rtol=1e-5)
  np.testing.assert_allclose(ema['batch_stats']['mean'], expected['mean'],
                             rtol=1e-5)


def test_nan_loss_stops_training_naming_the_step(tiny_config, tmp_path,
                                                 monkeypatch):
  from detector.models.heads import centernet  # pylint: disable=g-import-not-at-top
  real_loss = centernet.Head.loss

  def nan_loss(self, outputs, batch):
    loss, parts = real_loss(self, outputs, batch)
    return loss * float('nan'), parts

  monkeypatch.setattr(centernet.Head, 'loss', nan_loss)
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
