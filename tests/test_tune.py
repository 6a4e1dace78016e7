"""`python -m detector.tune` against real processes and real databases: two
workers on one SQLite file killed with SIGKILL and rerun, a pruned trial,
two workers on a PostgreSQL server started here, and the bad-input errors.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import ml_collections
import optuna
from optuna.trial import TrialState
import pytest

from detector import errors
from detector.configs import cnn
from detector.tune import space as s
from detector.tune import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The studies share compiled programs through the session's XLA cache: one
# xdist worker, in file order.
pytestmark = pytest.mark.xdist_group('tune')

SPACE = '''
from detector.tune import space as s

def get_space():
  return {
      'optimizer.learning_rate': s.LogUniform(1e-3, 1e-2),
      'model.score_threshold': s.Categorical([0.001, 0.99]),
      'model.centernet.box_loss_weight': s.Uniform(
          1.0, 8.0, when={'model.score_threshold': 0.001}),
  }
'''


def _space_file(tmp_path):
  path = tmp_path / 'space.py'
  path.write_text(SPACE)
  return str(path)


def _command(study_dir, space, data_dir, *extra):
  return [sys.executable, '-m', 'detector.tune',
          '--config=configs/cnn.py:tiny', f'--space={space}',
          f'--study_dir={study_dir}', f'--config.data_dir={data_dir}',
          '--reports=3', *extra]


def _start(command, log_path):
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  return subprocess.Popen(command, cwd=ROOT, stdout=log,
                          stderr=subprocess.STDOUT)


def _wait(procs, timeout=600):
  for proc in procs:
    assert proc.wait(timeout=timeout) == 0, f'worker exit {proc.returncode}'


def _study(study_dir, name=None, storage=None):
  return optuna.load_study(
      study_name=name or os.path.basename(study_dir),
      storage=storage or f'sqlite:///{study_dir}/study.db')


def _read(*paths):
  return ''.join(open(p).read() for p in paths)


# ---------------------------------------------------------------- the space


def _config():
  return cnn.get_config('tiny')


@pytest.mark.parametrize('space, message', [
    ({'optimizer.learnig_rate': s.LogUniform(1e-3, 1e-2)},
     'the config has no key optimizer.learnig_rate'),
    ({'optimizer.learning_rate': s.Uniform(0.01, 0.001)},
     'empty or inverted range'),
    ({'optimizer.learning_rate': s.Uniform(0.01, 0.01)},
     'empty or inverted range'),
    ({'optimizer.learning_rate': s.LogUniform(0.0, 0.01)}, 'needs low > 0'),
    ({'batch_size': s.Uniform(8.0, 32.0)},
     'config.batch_size holds a int, which Uniform does not draw'),
    ({'model.head': s.Int(1, 3)}, 'holds a str, which Int does not draw'),
    ({'optimizer.weight_decay': s.Categorical([1e-4, 'high'])},
     "'high' cannot be set in config.optimizer.weight_decay"),
    ({'model.retinanet.focal_gamma': s.Uniform(1.0, 2.0,
                                               when={'model.head': 'retinanet'})},
     "its condition names 'model.head', which is not a key drawn before it"),
    ({'num_train_steps': s.Derived(lambda c: c.batch_sise * 2)},
     'Derived fails on the config'),
])
def test_space_check_names_the_key(space, message):
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    s.check(space, _config())


def test_drawn_values_follow_conditions_and_fit_the_config():
  """Property: over many random draws, a conditional key is drawn exactly
  when its condition holds, every value lies in its distribution, and the
  config accepts it (tuples included)."""
  space = {
      'optimizer.learning_rate': s.LogUniform(1e-4, 1e-1),
      'batch_size': s.Categorical([8, 16]),
      'model.head': s.Categorical(['centernet', 'retinanet']),
      'model.retinanet.focal_gamma': s.Uniform(
          1.0, 3.0, when={'model.head': 'retinanet'}),
      'model.retinanet.num_convs': s.Int(1, 4, when={'model.head': [
          'retinanet']}),
      'input.scale_jitter': s.Categorical([(0.75, 1.25), (0.5, 1.5)]),
      'num_train_steps': s.Derived(lambda c: 480 // c.batch_size),
  }
  s.check(space, _config())
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
  heads = set()
  for _ in range(40):
    trial = study.ask()
    values = s.suggest(trial, space)
    config = _config().copy_and_resolve_references()
    with config.unlocked():
      values = s.apply(config, space, values)
    retina = values['model.head'] == 'retinanet'
    heads.add(values['model.head'])
    assert ('model.retinanet.focal_gamma' in values) == retina
    assert ('model.retinanet.num_convs' in values) == retina
    assert 1e-4 <= config.optimizer.learning_rate <= 1e-1
    assert config.input.scale_jitter in ((0.75, 1.25), (0.5, 1.5))
    assert isinstance(config.input.scale_jitter, tuple)
    assert config.num_train_steps == 480 // config.batch_size
    # A finished trial's parameters give back the same values.
    assert s.values_from_params(space, trial.params) == {
        k: v for k, v in values.items() if k != 'num_train_steps'}
    study.tell(trial, 0.0)
  assert heads == {'centernet', 'retinanet'}


def test_stale_trial_rule():
  """A trial is stale when its worker's process is gone (this host) or its
  heartbeat is old (another host); never while the worker lives."""
  alive = study_lib.this_worker()
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  child.wait()
  dead = {'host': socket.gethostname(), 'pid': child.pid,
          'start': alive['start']}
  now = time.time()

  def trial(worker, beat):
    return optuna.trial.create_trial(
        state=TrialState.RUNNING, user_attrs={'worker': worker,
                                              'heartbeat': beat})
  assert not study_lib.is_stale(trial(alive, now - 9999), 300, now)
  assert study_lib.is_stale(trial(dead, now), 300, now)
  recycled = dict(alive, start='1')  # This pid, but another process's.
  assert study_lib.is_stale(trial(recycled, now), 300, now)
  other = {'host': 'elsewhere', 'pid': os.getpid(), 'start': None}
  assert not study_lib.is_stale(trial(other, now - 100), 300, now)
  assert study_lib.is_stale(trial(other, now - 400), 300, now)


# -------------------------------------------------------------- bad input


@pytest.mark.parametrize('extra, message', [
    (['--sampler=grid'], 'flag --sampler=grid: value should be one of'),
    (['--storage=postgresql://nobody@127.0.0.1:9/none'],
     'cannot open the study database'),
    (['--storage=mysql://a@b/c'], 'expected sqlite:///PATH or postgresql://'),
    (['--devices_per_trial=3'],
     '--devices_per_trial=3: must divide'),
])
def test_bad_command_is_one_line_before_any_trial(tmp_path, tiny_data_dir,
                                                  extra, message):
  study_dir = tmp_path / 'study'
  proc = subprocess.run(
      _command(study_dir, _space_file(tmp_path), tiny_data_dir, *extra),
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert not os.path.exists(study_dir / 'trials')


def test_space_error_from_the_command(tmp_path, tiny_data_dir):
  space = tmp_path / 'bad.py'
  space.write_text('from detector.tune import space as s\n'
                   'def get_space():\n'
                   '  return {"optimizer.warmup_steps": s.Int(50, 10)}\n')
  proc = subprocess.run(_command(tmp_path / 'study', space, tiny_data_dir),
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert lines == ['error: space optimizer.warmup_steps: Int(low=50, high=10) '
                   'is an empty or inverted range; need low < high'], (
                       proc.stderr[-2000:])


# ---------------------------------------------------- two workers, SQLite


def _interrupted(study_dir):
  """Numbers of RUNNING trials that have a checkpoint but have not ended."""
  try:
    trials = _study(study_dir).get_trials(states=(TrialState.RUNNING,))
  except Exception:  # pylint: disable=broad-except
    return []  # Not created yet.
  def finalised(number):  # Not `<step>.orbax-checkpoint-tmp-*`.
    directory = os.path.join(study_dir, 'trials', str(number), 'checkpoints')
    return os.path.isdir(directory) and any(
        name.isdigit() for name in os.listdir(directory))
  return [t.number for t in trials if finalised(t.number)]


def test_two_workers_killed_and_rerun_complete_each_trial_once(
    tmp_path, tiny_data_dir):
  study_dir = str(tmp_path / 'study')
  command = _command(study_dir, _space_file(tmp_path), tiny_data_dir,
                     '--trials=6', '--pruner=none')
  first = [_start(command, tmp_path / f'first_{i}.log') for i in range(2)]
  deadline = time.time() + 400
  while not _interrupted(study_dir):
    assert time.time() < deadline, 'no trial reached a checkpoint'
    assert all(p.poll() is None for p in first), _read(
        tmp_path / 'first_0.log')[-3000:]
    time.sleep(0.2)
  for proc in first:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  killed = _interrupted(study_dir)
  assert killed, 'the kill landed after the trials ended'

  second = [_start(command, tmp_path / f'second_{i}.log') for i in range(2)]
  _wait(second)
  log_first = _read(*(tmp_path / f'first_{i}.log' for i in range(2)))
  log_second = _read(*(tmp_path / f'second_{i}.log' for i in range(2)))

  trials = _study(study_dir).get_trials()
  assert [t.number for t in trials] == list(range(6))
  assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
  # Distinct trials: the baseline, then five draws of the sampler.
  assert trials[0].user_attrs.get('baseline')
  assert trials[0].params['optimizer.learning_rate'] == 3e-3
  assert len({t.params['optimizer.learning_rate'] for t in trials}) == 6
  logs = log_first + log_second
  for t in trials:
    # Each trial started once; the interrupted ones resumed from their
    # checkpoint (or, killed before their first one, restarted).
    assert logs.count(f'Trial {t.number} starts in') == 1, t.number
    assert bool(t.user_attrs.get('interrupted')) == (
        f'Trial {t.number} resumes from' in log_second
        or f'Trial {t.number} restarts in' in log_second), t.number
  for number in killed:
    match = re.search(rf'Trial {number} resumes from its checkpoint at step '
                      r'(\d+)', log_second)
    assert match and int(match.group(1)) >= 2, log_second[-3000:]
    assert trials[number].user_attrs['resumed_from'] == int(match.group(1))
    assert f'Trial {number} starts in' in log_first

  # The study's outputs.
  with open(os.path.join(study_dir, 'results.csv')) as f:
    assert len(f.read().strip().splitlines()) == 7
  for name in ('optimization_history', 'parallel_coordinate',
               'param_importances', 'intermediate_values'):
    assert os.path.getsize(os.path.join(study_dir, 'plots', f'{name}.png')) > 5000
    assert os.path.getsize(os.path.join(study_dir, 'plots', f'{name}.html')) > 1000
  best = max(trials, key=lambda t: t.value)
  tested = _study(study_dir).user_attrs['test']
  with open(os.path.join(study_dir, 'trials', str(best.number), 'eval',
                         'metrics_test.json')) as f:
    assert tested[str(best.number)] == json.load(f)['AP']
  assert set(tested) <= {str(best.number), '0'}  # Best and baseline only.
  runs = os.listdir(os.path.join(study_dir, 'tensorboard'))
  assert sorted(r for r in runs if r.startswith('trial_')) == [
      f'trial_{i}' for i in range(6)]

  # best_config.py, run by main.py as it is, trains the best trial again:
  # the same validation AP (training is deterministic on a CPU).
  workdir = tmp_path / 'again'
  proc = subprocess.run(
      [sys.executable, 'main.py', f'--config={study_dir}/best_config.py',
       f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / 'eval' / 'metrics_validation.json') as f:
    assert json.load(f)['AP'] == pytest.approx(best.value, abs=1e-9)
  assert os.path.exists(workdir / 'eval' / 'metrics_test.json')


# ----------------------------------------------------------------- pruning


def test_lagging_trial_is_pruned(tmp_path, tiny_data_dir):
  """Two trials run to the end; the third keeps no detection (scores below
  0.99), so its first AP is 0, under theirs: the median pruner stops it."""
  study_dir = str(tmp_path / 'study')
  good = json.dumps({'optimizer.learning_rate': 3e-3,
                     'model.score_threshold': 0.001,
                     'model.centernet.box_loss_weight': 5.0})
  other = json.dumps({'optimizer.learning_rate': 5e-3,
                      'model.score_threshold': 0.001,
                      'model.centernet.box_loss_weight': 2.0})
  bad = json.dumps({'optimizer.learning_rate': 3e-3,
                    'model.score_threshold': 0.99})
  proc = subprocess.run(
      _command(study_dir, _space_file(tmp_path), tiny_data_dir, '--trials=3',
               '--nobaseline', '--pruner=median',
               '--pruner_startup_trials=2', f'--enqueue={good}',
               f'--enqueue={other}', f'--enqueue={bad}'),
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  trials = _study(study_dir).get_trials()
  assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                       TrialState.PRUNED]
  first = min(trials[2].intermediate_values)
  assert trials[2].intermediate_values == {first: 0.0}
  # The premise: the others' AP at that point was above it.
  assert all(t.intermediate_values[first] > 0 for t in trials[:2])
  assert 'Trial 2 pruned at step' in proc.stderr
  # It stopped there: no final evaluation in its workdir.
  assert not os.path.exists(os.path.join(study_dir, 'trials', '2', 'eval',
                                         'metrics_validation.json'))


# -------------------------------------------------------------- PostgreSQL


def _pg_bin(name):
  found = sorted(glob.glob(f'/usr/lib/postgresql/*/bin/{name}'))
  path = found[-1] if found else shutil.which(name)
  assert path, (f'{name} not found: scripts/install_system_packages.sh '
                'installs PostgreSQL')
  return path


@pytest.fixture
def postgresql(tmp_path):
  """A PostgreSQL server of its own on a free port; its URL."""
  del tmp_path
  # Outside pytest's 0700 tree, which the postgres user cannot enter.
  root = tempfile.mkdtemp(prefix='detector-pg-')
  data = os.path.join(root, 'data')
  as_user = []
  if os.geteuid() == 0:  # The server refuses to run as root.
    shutil.chown(root, 'postgres')
    as_user = ['runuser', '-u', 'postgres', '--']
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  def run(*args):
    proc = subprocess.run(as_user + list(args), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
  run(_pg_bin('initdb'), '-D', data, '-A', 'trust', '-U', 'postgres')
  run(_pg_bin('pg_ctl'), '-D', data, '-w', '-l', os.path.join(root, 'log'),
      '-o', f'-p {port} -k {root} -c listen_addresses=127.0.0.1', 'start')
  yield f'postgresql://postgres@127.0.0.1:{port}/postgres'
  subprocess.run(as_user + [_pg_bin('pg_ctl'), '-D', data, '-m', 'fast',
                            'stop'], capture_output=True, timeout=120)
  shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql(tmp_path, tiny_data_dir, postgresql):
  command = _command(str(tmp_path / 'study'), _space_file(tmp_path),
                     tiny_data_dir, '--trials=2', f'--storage={postgresql}',
                     '--study_name=shared', '--pruner=none')
  workers = [_start(command, tmp_path / f'worker_{i}.log') for i in range(2)]
  _wait(workers)
  logs = [_read(tmp_path / f'worker_{i}.log') for i in range(2)]
  trials = _study(str(tmp_path / 'study'), 'shared', postgresql).get_trials()
  assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
  # Each worker ran one trial: they shared the study, not duplicated it.
  started = [re.findall(r'Trial (\d+) starts in', log) for log in logs]
  assert sorted(sum(started, [])) == ['0', '1'], logs[0][-2000:]
  assert all(len(s) == 1 for s in started)
  assert {t.user_attrs['worker']['pid'] for t in trials} == {
      w.pid for w in workers}
