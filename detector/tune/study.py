"""The Optuna side of a sweep: storage, sampler, pruner, and the bookkeeping
that lets several workers share a study and a killed sweep continue.

Workers take trials under a lock (a file lock beside a SQLite database, a
PostgreSQL advisory lock), so that the study never holds more trials than
asked for. A trial records the worker running it (host, pid, the process's
start time) and a heartbeat. A RUNNING trial whose worker is gone (the same
host and no such process, or no heartbeat for `stale_after_s`) is put back
to WAITING: Optuna hands WAITING trials out first, with their number and
parameters kept, so the next worker resumes it in its own workdir instead
of starting another.
"""

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import threading
import time
from typing import Optional

from absl import logging
import optuna
from optuna.trial import TrialState

from detector import errors

SAMPLERS = ('tpe', 'random', 'cmaes')
PRUNERS = ('median', 'hyperband', 'none')
# States that use up one of the study's trials.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
           TrialState.RUNNING, TrialState.WAITING)
HEARTBEAT_S = 30


def default_storage(study_dir: str) -> str:
  return 'sqlite:///' + os.path.join(os.path.abspath(study_dir), 'study.db')


def _hide_password(url: str) -> str:
  return re.sub(r'(://[^:/@]*):[^@/]*@', r'\1:***@', url)


def _kind(url: str) -> str:
  scheme = url.split('://', 1)[0] if '://' in url else ''
  kind = scheme.split('+', 1)[0]
  if kind not in ('sqlite', 'postgresql'):
    raise errors.ConfigError(
        f'--storage={_hide_password(url)}: expected sqlite:///PATH or '
        'postgresql://USER@HOST:PORT/DATABASE')
  return kind


def open_storage(url: str) -> optuna.storages.RDBStorage:
  """The study's database; one-line ConfigError when it cannot be reached."""
  kind = _kind(url)
  if kind == 'sqlite':
    path = url.split(':///', 1)[-1]
    if not os.path.isdir(os.path.dirname(os.path.abspath(path)) or '.'):
      raise errors.ConfigError(f'--storage={url}: no directory for {path}')
    # Workers wait for each other's writes instead of failing at once.
    engine_kwargs = {'connect_args': {'timeout': 120}}
  else:
    engine_kwargs = {'pool_pre_ping': True, 'connect_args': {
        'connect_timeout': 10}}
  try:
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise _unreachable(url, e) from None


def _unreachable(url, e):
  # SQLAlchemy and the drivers raise many types; the first line says why.
  reason = (str(getattr(e, 'orig', None) or e).strip().splitlines() or
            [type(e).__name__])[0]
  return errors.ConfigError(f'--storage={_hide_password(url)}: cannot open '
                            f'the study database: {reason}')


def make_sampler(name: str, seed: int):
  if name == 'tpe':
    # multivariate + group: conditional keys are modelled jointly with the
    # keys they depend on; constant_liar: parallel workers spread out.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                      constant_liar=True)
  if name == 'random':
    return optuna.samplers.RandomSampler(seed=seed)
  if name == 'cmaes':
    # CMA-ES draws numbers; categorical keys fall back to random draws.
    return optuna.samplers.CmaEsSampler(seed=seed,
                                        warn_independent_sampling=False)
  raise errors.ConfigError(f'--sampler={name}: expected one of {SAMPLERS}')


def make_pruner(name: str, startup_trials: int, reports: int):
  """Intermediate values are reported at the percent of training done, so
  trials of different step counts are compared at the same fraction."""
  if name == 'median':
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                       n_warmup_steps=0)
  if name == 'hyperband':
    return optuna.pruners.HyperbandPruner(
        min_resource=max(1, 100 // reports), max_resource=100,
        reduction_factor=3)
  if name == 'none':
    return optuna.pruners.NopPruner()
  raise errors.ConfigError(f'--pruner={name}: expected one of {PRUNERS}')


class StudyLock:
  """Mutual exclusion among every worker of a study, on every machine."""

  def __init__(self, url: str, study_name: str):
    self._thread_lock = threading.Lock()
    self._url = url
    self._kind = _kind(url)
    if self._kind == 'sqlite':
      self._path = url.split(':///', 1)[-1] + '.lock'
    else:
      import sqlalchemy  # pylint: disable=g-import-not-at-top
      try:
        self._engine = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool,
            connect_args={'connect_timeout': 10})
      except Exception as e:  # pylint: disable=broad-except
        raise _unreachable(url, e) from None
      digest = hashlib.sha256(f'detector.tune/{study_name}'.encode()).digest()
      self._key = int.from_bytes(digest[:8], 'big', signed=True)

  @contextlib.contextmanager
  def held(self):
    with self._thread_lock:
      if self._kind == 'sqlite':
        # flock: released by the kernel if this process dies holding it.
        with open(self._path, 'a') as f:
          fcntl.flock(f, fcntl.LOCK_EX)
          try:
            yield
          finally:
            fcntl.flock(f, fcntl.LOCK_UN)
      else:
        import sqlalchemy  # pylint: disable=g-import-not-at-top
        # A session-level advisory lock: the server drops it with the
        # connection, so a killed worker does not hold it.
        try:
          conn = self._engine.connect()
        except Exception as e:  # pylint: disable=broad-except
          raise _unreachable(self._url, e) from None
        with conn:
          conn.execute(sqlalchemy.text('SELECT pg_advisory_lock(:k)'),
                       {'k': self._key})
          try:
            yield
          finally:
            conn.execute(sqlalchemy.text('SELECT pg_advisory_unlock(:k)'),
                         {'k': self._key})


def _process_start(pid: int) -> Optional[str]:
  """The start time of process `pid` in clock ticks since boot (Linux), so a
  recycled pid is not mistaken for the worker; None where unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def this_worker() -> dict:
  pid = os.getpid()
  return {'host': socket.gethostname(), 'pid': pid,
          'start': _process_start(pid)}


def _alive(worker: dict) -> bool:
  pid = int(worker.get('pid', -1))
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # Exists, another user's.
  start = worker.get('start')
  return start is None or _process_start(pid) in (None, start)


def is_stale(trial: optuna.trial.FrozenTrial, stale_after_s: float,
             now: Optional[float] = None) -> bool:
  """Whether a RUNNING trial's worker is gone."""
  worker = trial.user_attrs.get('worker') or {}
  if worker.get('host') == socket.gethostname():
    return not _alive(worker)
  beat = trial.user_attrs.get('heartbeat')
  if beat is None:
    beat = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
  return (now or time.time()) - float(beat) > stale_after_s


def requeue_stale(study: optuna.Study, storage, stale_after_s: float):
  """Puts the RUNNING trials of dead workers back to WAITING (call it under
  the StudyLock); returns their numbers."""
  study_id = storage.get_study_id_from_name(study.study_name)
  numbers = []
  for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    if is_stale(trial, stale_after_s):
      trial_id = storage.get_trial_id_from_study_id_trial_number(
          study_id, trial.number)
      storage.set_trial_user_attr(
          trial_id, 'interrupted', trial.user_attrs.get('interrupted', 0) + 1)
      storage.set_trial_state_values(trial_id, TrialState.WAITING)
      worker = trial.user_attrs.get('worker') or {}
      logging.warning('Trial %d: its worker (%s pid %s) is gone; it is queued '
                      'to resume from its checkpoint.', trial.number,
                      worker.get('host'), worker.get('pid'))
      numbers.append(trial.number)
  return numbers


class Heartbeat:
  """Writes the time into a running trial every HEARTBEAT_S seconds."""

  def __init__(self, storage, trial_id: int, every_s: float = HEARTBEAT_S):
    self._storage, self._trial_id, self._every = storage, trial_id, every_s
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name=f'heartbeat-{trial_id}')

  def _run(self):
    while not self._stop.wait(self._every):
      try:
        self._storage.set_trial_user_attr(self._trial_id, 'heartbeat',
                                          time.time())
      except Exception as e:  # pylint: disable=broad-except
        # A database hiccup must not kill the training; the next beat retries.
        logging.warning('Heartbeat of trial id %d failed: %s', self._trial_id, e)

  def __enter__(self):
    self._storage.set_trial_user_attr(self._trial_id, 'heartbeat', time.time())
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
