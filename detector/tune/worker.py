"""A sweep worker: takes trials from the study until it holds enough, trains
each in `STUDY_DIR/trials/<number>`, and scores the best on the test split
once every trial has ended.

A trial's config is the base config (with the command's `--config.*`
overrides), the values drawn for the space, and what a sweep needs: the test
split and the monitoring reference switched off (trials are chosen on the
validation split alone), `eval_every_steps` giving `reports` intermediate
values, and a checkpoint at each of them, so that an interrupted trial loses
at most one interval.
"""

import dataclasses
import json
import math
import os
import threading
import time
from typing import Any, Dict, List, Optional

from absl import logging
import ml_collections
import optuna
from optuna.trial import TrialState

from detector import checkpoints
from detector import errors
from detector.tune import space as space_lib
from detector.tune import study as study_lib

# Per task: the validation metric maximised by default, and the ones allowed.
OBJECTIVES = {
    'detection': ('AP', ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium',
                         'AP_large', 'AR1', 'AR10', 'AR100')),
    'classification': ('accuracy', ('accuracy', 'macro_f1', 'macro_precision',
                                    'macro_recall', 'micro_f1', 'weighted_f1',
                                    'top5')),
}


@dataclasses.dataclass
class Sweep:
  """What every trial of one study shares."""
  study: optuna.Study
  storage: Any
  lock: study_lib.StudyLock
  base: ml_collections.ConfigDict   # The config with the command's overrides.
  reference: ml_collections.ConfigDict  # get_config(arg) alone, for diffs.
  space: Dict[str, Any]
  study_dir: str
  trials: int                       # Trials the study holds when done.
  objective: str
  reports: int
  sampler: str
  seed: int
  stale_after_s: float
  test_split: str                   # The base config's, scored at the end.
  config_path: str                  # The base config file, absolute.
  config_arg: Optional[str]         # Its argument (`cnn.py:tiny` -> 'tiny').

  def trial_dir(self, number: int) -> str:
    return os.path.join(self.study_dir, 'trials', str(number))


def trial_config(sweep: Sweep, values: Dict[str, Any]):
  """(the trial's locked config, every value the space set)."""
  config = sweep.base.copy_and_resolve_references()
  with config.unlocked():
    values = space_lib.apply(config, sweep.space, values)
    config.test_split = ''
    if 'monitoring_images' in config:
      config.monitoring_images = 0
    if 'eval_report' in config:  # Seconds a trial; the scored ones get theirs.
      config.eval_report = False
    if not config.eval_every_steps:
      if config.num_epochs:
        raise errors.ConfigError(
            'config.num_epochs is set: set --config.eval_every_steps too, so '
            'that trials report intermediate values to the pruner')
      config.eval_every_steps = max(1, math.ceil(config.num_train_steps /
                                                 sweep.reports))
    config.checkpoint_every_steps = min(config.checkpoint_every_steps,
                                        config.eval_every_steps)
  return config.lock(), values


def flat(config, prefix='') -> Dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def settings(sweep: Sweep, config) -> Dict[str, Any]:
  """The keys in which a trial's config differs from `get_config(arg)`,
  with the test split and monitoring restored (what best_config.py sets)."""
  mine = flat(config)
  mine['test_split'] = sweep.test_split
  if 'monitoring_images' in mine:
    mine['monitoring_images'] = sweep.reference.monitoring_images
  theirs = flat(sweep.reference)
  return {k: v for k, v in mine.items() if k not in theirs or theirs[k] != v}


def _latest_step(workdir: str) -> Optional[int]:
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return None
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()]
  return max(steps) if steps else None


def next_trial(sweep: Sweep) -> Optional[optuna.Trial]:
  """The next trial for this worker, or None when the study holds enough."""
  with sweep.lock.held():
    study_lib.requeue_stale(sweep.study, sweep.storage, sweep.stale_after_s)
    trials = sweep.study.get_trials(deepcopy=False, states=study_lib.COUNTED)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if not waiting and len(trials) >= sweep.trials:
      return None
    # A fresh sampler seeded with the trial count: workers sharing a study
    # do not draw the same values, and one worker's sweep is reproducible.
    sweep.study.sampler = study_lib.make_sampler(sweep.sampler,
                                                 sweep.seed + len(trials))
    trial = sweep.study.ask()
    trial.set_user_attr('worker', study_lib.this_worker())
    trial.set_user_attr('heartbeat', time.time())
    return trial


class _Reporter:
  """`on_evaluation` for train_and_evaluate: reports the objective at the
  percent of training done and asks the pruner."""

  def __init__(self, trial: optuna.Trial, objective: str, task: str,
               reported):
    self.trial, self.objective, self.task = trial, objective, task
    self.pruned = False
    self.final: Optional[float] = None
    self.done = set(reported)  # Percentages a previous run reported.

  def __call__(self, step, total, metrics):
    if self.objective not in metrics:
      raise errors.ConfigError(
          f'--objective={self.objective}: not among the {self.task} '
          f'metrics {sorted(k for k, v in metrics.items() if isinstance(v, float))}')
    value = float(metrics[self.objective])
    percent = round(100 * step / total)
    if step == total:
      self.final = value
    if percent not in self.done:  # A resumed trial may repeat a report.
      self.trial.report(value, percent)
      self.done.add(percent)
    if step < total and self.trial.should_prune():
      logging.info('Trial %d pruned at step %d of %d: %s %.4f.',
                   self.trial.number, step, total, self.objective, value)
      self.pruned = True
      return True
    return False


def run_trial(sweep: Sweep, trial: optuna.Trial, devices=None) -> TrialState:
  """Trains and scores one trial; tells the study how it ended."""
  from detector import train  # pylint: disable=g-import-not-at-top
  values = space_lib.suggest(trial, sweep.space)
  config, values = trial_config(sweep, values)
  workdir = sweep.trial_dir(trial.number)
  os.makedirs(workdir, exist_ok=True)
  resumed = _latest_step(workdir)
  if resumed is not None:
    logging.info('Trial %d resumes from its checkpoint at step %d in %s.',
                 trial.number, resumed, workdir)
    trial.set_user_attr('resumed_from', resumed)
  elif trial.user_attrs.get('interrupted'):
    logging.info('Trial %d restarts in %s: it was interrupted before its '
                 'first checkpoint.', trial.number, workdir)
  else:
    logging.info('Trial %d starts in %s: %s', trial.number, workdir,
                 ', '.join(f'{k}={v!r}' for k, v in values.items()))
  trial.set_user_attr('config', {k: repr(v) for k, v in values.items()})
  with open(os.path.join(workdir, 'settings.json'), 'w') as f:
    json.dump({k: repr(v) for k, v in settings(sweep, config).items()}, f,
              indent=1)
  trial_id = sweep.storage.get_trial_id_from_study_id_trial_number(
      sweep.storage.get_study_id_from_name(sweep.study.study_name),
      trial.number)
  reporter = _Reporter(trial, sweep.objective, config.task,
                       sweep.storage.get_trial(trial_id).intermediate_values)
  started = time.time()
  with study_lib.Heartbeat(sweep.storage, trial_id):
    try:
      train.train_and_evaluate(config, workdir, devices=devices,
                               on_evaluation=reporter)
    except errors.TrainingDivergedError as e:
      trial.set_user_attr('error', str(e))
      logging.warning('Trial %d failed: %s', trial.number, e)
      state = TrialState.FAIL
    except errors.ConfigError as e:
      # The drawn values cannot run (or the objective is wrong): recorded
      # as failed, and the command stops with the reason in one line.
      trial.set_user_attr('error', str(e))
      sweep.study.tell(trial, state=TrialState.FAIL)
      raise errors.ConfigError(f'trial {trial.number}: {e}') from None
    except BaseException:
      # Not the trial's fault (a bug, a full disk, Ctrl-C): it waits, with
      # its checkpoint, for the next run of the sweep.
      sweep.storage.set_trial_state_values(trial_id, TrialState.WAITING)
      raise
    else:
      state = (TrialState.PRUNED if reporter.pruned else
               TrialState.COMPLETE if reporter.final is not None else None)
  # Training time over every run of the trial (a resumed one has several).
  trial.set_user_attr('seconds', round(
      trial.user_attrs.get('seconds', 0.0) + time.time() - started, 1))
  if state is None:  # Stopped on SIGTERM: resumes on the next run.
    sweep.storage.set_trial_state_values(trial_id, TrialState.WAITING)
    return TrialState.WAITING
  sweep.study.tell(trial, reporter.final if state == TrialState.COMPLETE
                   else None, state=state)
  logging.info('Trial %d %s%s.', trial.number, state.name.lower(),
               f': {sweep.objective} {reporter.final:.4f}'
               if state == TrialState.COMPLETE else '')
  return state


def work(sweep: Sweep, devices=None, on_trial_end=None) -> List[int]:
  """Runs trials until the study holds enough; returns their numbers."""
  numbers = []
  while True:
    trial = next_trial(sweep)
    if trial is None:
      return numbers
    state = run_trial(sweep, trial, devices)
    numbers.append(trial.number)
    if state == TrialState.WAITING:  # SIGTERM: stop this worker.
      return numbers
    if on_trial_end:
      on_trial_end()


def work_in_groups(sweep: Sweep, groups, on_trial_end=None):
  """One thread per device group, each running trials side by side."""
  if len(groups) == 1:
    return work(sweep, groups[0], on_trial_end)
  failures = []

  def run(group):
    try:
      work(sweep, group, on_trial_end)
    except BaseException as e:  # pylint: disable=broad-except
      failures.append(e)

  threads = [threading.Thread(target=run, args=(g,), name=f'devices-{i}')
             for i, g in enumerate(groups)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if failures:
    raise failures[0]


def score_on_test(sweep: Sweep, number: int) -> Optional[dict]:
  """Scores trial `number`'s final weights on the base config's test split;
  returns its test metrics (also in its workdir's eval/metrics_<split>.json)."""
  from detector import train  # pylint: disable=g-import-not-at-top
  trial = sweep.study.trials[number]
  config, _ = trial_config(
      sweep, space_lib.values_from_params(sweep.space, trial.params))
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.eval_split = ''  # Validation was scored during the trial.
    config.test_split = sweep.test_split
    if 'eval_report' in config:
      config.eval_report = sweep.base.eval_report
  logging.info('Scoring trial %d on the %s split.', number, sweep.test_split)
  return train.evaluate_checkpoint(config.lock(), sweep.trial_dir(number))


def finish(sweep: Sweep) -> bool:
  """Once every trial has ended: the best trial, and the baseline trial (the
  config's own values) for comparison, each scored once on the test split.
  Returns whether the study has ended."""
  with sweep.lock.held():
    trials = sweep.study.get_trials(deepcopy=False, states=study_lib.COUNTED)
    if len(trials) < sweep.trials or any(
        t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
      return False  # Another worker is still at it; it finishes.
    tested = dict(sweep.study.user_attrs.get('test', {}))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not sweep.test_split or not complete:
      return True
    best = max(complete, key=lambda t: t.value)
    chosen = [best] + [t for t in complete
                       if t.user_attrs.get('baseline') and t is not best]
    for t in chosen:
      if str(t.number) not in tested:
        metrics = score_on_test(sweep, t.number)
        tested[str(t.number)] = float(metrics[sweep.objective])
        sweep.study.set_user_attr('test', tested)
    return True
