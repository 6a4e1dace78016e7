"""Real faults against real `main.py` processes, compared with a run that had
none: SIGKILL and SIGTERM mid-run, then resume; a checkpoint write that fails.

Where the SIGKILL lands is drawn from a seed printed in any failure message;
FAULTS_SEED=<seed> draws the same again.
"""

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
# Every step logged, so that the loss curve has a value per step; a
# checkpoint every 2 steps, so that a resumed run repeats a step or two. No
# validation split: the test split alone is compared.
FLAGS = ['--config=configs/cnn.py:tiny', f'--config.num_train_steps={STEPS}',
         '--config.log_every_steps=1', '--config.checkpoint_every_steps=2',
         f'--config.keep_checkpoints={STEPS}', '--config.eval_split=']

# The tests share the reference run (a module fixture): one xdist worker, in
# this order, so that the later processes load its compiled programs.
pytestmark = pytest.mark.xdist_group('faults')


def _main(workdir, data_dir):
  return ['main.py', f'--workdir={workdir}'] + FLAGS + [
      f'--config.data_dir={data_dir}']


def _start(workdir, data_dir, log):
  return subprocess.Popen([sys.executable] + _main(workdir, data_dir),
                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _run(args, **kwargs):
  """Runs python with `args` to its end; returns (exit status, output)."""
  proc = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True,
                        text=True, timeout=300, **kwargs)
  return proc.returncode, proc.stdout + proc.stderr


def _steps_on_disk(workdir):
  """Finalised checkpoint steps (not `<step>.orbax-checkpoint-tmp`)."""
  try:
    names = os.listdir(os.path.join(workdir, 'checkpoints'))
  except FileNotFoundError:
    return []
  return sorted(int(n) for n in names if n.isdigit())


def _signal_after_checkpoint(proc, workdir, step, delay, signum, log_path):
  """Sends `signum` to `proc` `delay` seconds after checkpoint `step` is on
  disk."""
  deadline = time.monotonic() + 300
  try:
    while not any(s >= step for s in _steps_on_disk(workdir)):
      if proc.poll() is not None or time.monotonic() > deadline:
        with open(log_path) as f:
          raise AssertionError(f'no checkpoint {step} (exit status '
                               f'{proc.returncode}):\n{f.read()[-3000:]}')
      time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signum)
    proc.wait(timeout=300)
  finally:
    if proc.poll() is None:  # Failed or timed out: no process left behind.
      proc.kill()
      proc.wait()


def _restore(workdir, step):
  """The whole train state of checkpoint `step`, as a tree of arrays."""
  mngr = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  state = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']
  mngr.close()
  return state


def _train_scalars(workdir):
  """{(tag, step): value} of the train/ scalars in workdir's event files.

  Each process writes its own file; a resumed run writes again the steps
  since its checkpoint, and the value written last counts.
  """
  latest = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    try:
      for event in tf.compat.v1.train.summary_iterator(path):
        for value in event.summary.value:
          key = (value.tag, event.step)
          if value.tag.startswith('train/') and (
              key not in latest or event.wall_time >= latest[key][0]):
            latest[key] = (event.wall_time, tf.make_ndarray(value.tensor))
    except tf.errors.DataLossError:
      pass  # A killed run's last record may be cut short; its step is rerun.
  return {key: value for key, (_, value) in latest.items()}


@pytest.fixture(scope='module')
def reference(tmp_path_factory, tiny_data_dir):
  """The workdir of the uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'wd')
  status, out = _run(_main(workdir, tiny_data_dir))
  assert status == 0, out[-3000:]
  return workdir


def test_killed_and_preempted_run_resumes_bit_for_bit(reference, tiny_data_dir,
                                                      tmp_path):
  """A run SIGKILLed at a random step, rerun, SIGTERMed, and rerun to the
  end finishes bit for bit where the uninterrupted run did."""
  seed = int(os.environ.get('FAULTS_SEED', random.randrange(2**31)))
  rng = random.Random(seed)
  where = f'(FAULTS_SEED={seed})'
  workdir = str(tmp_path / 'wd')

  # SIGKILL at a drawn moment after a drawn checkpoint is written: mid-step,
  # maybe mid-write of the next checkpoint.
  log = str(tmp_path / 'killed.log')
  with open(log, 'w') as f:
    proc = _start(workdir, tiny_data_dir, f)
    _signal_after_checkpoint(proc, workdir, rng.choice([2, 4]),
                             rng.uniform(0, 0.1), signal.SIGKILL, log)
  assert proc.returncode == -signal.SIGKILL, where
  resume_at = max(_steps_on_disk(workdir))
  with open(log) as f:
    logged = re.findall(r'\] \[(\d+)\] train/', f.read())
  where += f' SIGKILL after step {max(map(int, logged), default=0)} logged'

  # The rerun resumes; SIGTERM at a drawn moment after its first checkpoint:
  # it saves the step it is at (often between two periodic checkpoints) and
  # exits with status 0.
  term_at = resume_at + 2
  log = str(tmp_path / 'preempted.log')
  with open(log, 'w') as f:
    proc = _start(workdir, tiny_data_dir, f)
    _signal_after_checkpoint(proc, workdir, term_at, rng.uniform(0, 0.1),
                             signal.SIGTERM, log)
  with open(log) as f:
    out = f.read()
  assert proc.returncode == 0, f'{where}\n{out[-3000:]}'
  assert f'Resumed from checkpoint step {resume_at} ' in out, where
  assert 'Stopped at step' in out, f'SIGTERM came after the last step {where}'
  stopped = int(out.split('Stopped at step ')[1].split()[0])
  assert term_at <= stopped < STEPS, (stopped, where)
  assert max(_steps_on_disk(workdir)) == stopped, where
  assert _restore(workdir, stopped)['step'] == stopped, where  # Readable.
  assert not os.path.exists(os.path.join(workdir, 'eval')), where

  status, out = _run(_main(workdir, tiny_data_dir))
  assert status == 0, f'{where}\n{out[-3000:]}'
  assert f'Resumed from checkpoint step {stopped} ' in out, where

  # Bit for bit what the uninterrupted run computed: the whole state, every
  # step's logged training metrics, and the evaluation.
  final, _ = jax.tree_util.tree_flatten_with_path(_restore(workdir, STEPS))
  expected, _ = jax.tree_util.tree_flatten_with_path(
      _restore(reference, STEPS))
  assert [p for p, _ in final] == [p for p, _ in expected], where
  for (path, a), (_, b) in zip(final, expected):
    assert np.array_equal(a, b), (jax.tree_util.keystr(path), where)
  curve, expected = _train_scalars(workdir), _train_scalars(reference)
  assert {s for t, s in expected if t == 'train/loss'} == set(
      range(1, STEPS + 1)), where
  assert sorted(curve) == sorted(expected), where
  for key in expected:
    assert np.array_equal(curve[key], expected[key]), (
        key, curve[key], expected[key], where)
  with open(os.path.join(workdir, 'eval', 'metrics_test.json')) as f:
    metrics = json.load(f)
  with open(os.path.join(reference, 'eval', 'metrics_test.json')) as f:
    assert metrics == json.load(f), where


# `python -c _LIMITED N args...` runs `python args...` with writes past N
# bytes in a file failing (EFBIG; SIGXFSZ ignored rather than fatal). The
# limit and the ignored signal hold across exec; a preexec_fn would run
# Python between fork and exec, which a multithreaded parent (JAX) must not.
_LIMITED = ('import os, resource, signal, sys; '
            'signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
            'limit = int(sys.argv[1]); '
            'resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); '
            'os.execv(sys.executable, [sys.executable] + sys.argv[2:])')


def test_failed_checkpoint_write_stops_the_run(reference, tiny_data_dir,
                                               tmp_path):
  """Writes of more than 16 KiB fail (EFBIG): a checkpoint has bigger files,
  the run's event file stays smaller, and the dataset is already there."""
  workdir = str(tmp_path / 'wd')
  os.makedirs(os.path.join(workdir, 'checkpoints'))
  # Resumes from the reference run's step 4.
  shutil.copytree(os.path.join(reference, 'checkpoints', '4'),
                  os.path.join(workdir, 'checkpoints', '4'))
  shutil.copy(os.path.join(reference, 'classes.json'), workdir)
  # Reads from the shared compilation cache but writes nothing there: an
  # entry cut short at the limit would stay for the later processes.
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='1e9')
  # Its output goes to a pipe: a file would be cut short at the limit too.
  status, out = _run(['-c', _LIMITED, '16384'] + _main(workdir, tiny_data_dir),
                     env=env)
  assert status != 0, out[-3000:]
  message = [line for line in out.splitlines() if line.startswith('error: ')]
  assert message, out[-3000:]
  checkpoint_dir = os.path.join(workdir, 'checkpoints')
  # Step 6's write fails in Orbax's threads; the save of step 8 finds out.
  assert message[0] == (
      f'error: Could not write checkpoint step 6 to {checkpoint_dir}: File '
      'too large. Training stopped rather than continue without checkpoints; '
      'the last checkpoint written is step 4, where the same command resumes '
      'once the cause is fixed.'), out[-3000:]
  assert 'Traceback' not in out, out[-5000:]
  assert 'Checkpoint step 6 started; the loop waited' in out
  assert 'Checkpoint step 8 started' not in out
  assert _steps_on_disk(workdir) == [4]
  assert not os.path.exists(os.path.join(workdir, 'eval'))
