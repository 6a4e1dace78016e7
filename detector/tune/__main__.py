"""Hyper-parameter sweeps: `python -m detector.tune` (also `detector-tune`).

    python -m detector.tune --config=configs/cnn.py --space=configs/spaces/cnn.py \\
        --study_dir=studies/cnn --trials=16

The same command started again continues the sweep; started on several
machines with one `--storage=postgresql://...` (and a shared --study_dir, so
that a trial interrupted on one machine resumes on another), it runs them as
workers of one study. `--config.key=value` overrides apply to every trial
(a per-trial budget: `--config.num_train_steps=400`). `--report_only`
rewrites the results of the study as it stands.
"""

import json
import os

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from detector import errors
from detector import runtime
from detector import tasks

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'The base config file (configs/*.py[:arg]); --config.key '
    'overrides apply to every trial.', lock_config=True)
flags.DEFINE_string('space', None, 'The search space file (configs/spaces/*.py).')
flags.DEFINE_string('study_dir', None, 'Trials train in STUDY_DIR/trials/N; '
                    'results, plots and best_config.py are written here.')
flags.DEFINE_integer('trials', 16, 'Trials the study holds when it ends, over '
                     'all workers and runs (complete, pruned or failed).')
flags.DEFINE_string('storage', None, 'Optuna storage URL: default '
                    'sqlite:///STUDY_DIR/study.db; postgresql://USER:PASSWORD'
                    '@HOST:PORT/DATABASE for workers on several machines.')
flags.DEFINE_string('study_name', None, 'Default: the basename of --study_dir.')
flags.DEFINE_enum('sampler', 'tpe', ['tpe', 'random', 'cmaes'],
                  'tpe (multivariate, grouped for conditional keys), random, '
                  'or cmaes (numeric keys; categorical ones drawn at random).')
flags.DEFINE_enum('pruner', 'median', ['median', 'hyperband', 'none'],
                  'Stops trials whose intermediate validation score lags.')
flags.DEFINE_integer('pruner_startup_trials', 4, 'median: trials that run to '
                     'the end before any is pruned.')
flags.DEFINE_integer('reports', 4, 'Intermediate evaluations per trial when '
                     'the config\'s eval_every_steps is 0.')
flags.DEFINE_string('objective', None, 'The validation metric maximised: AP '
                    '(default), AP50, ... for detection; accuracy (default), '
                    'macro_f1, ... for classification.')
flags.DEFINE_bool('baseline', True, 'The first trial is the config\'s own '
                  'values of the space\'s keys, scored like the others.')
flags.DEFINE_multi_string('enqueue', [], 'A JSON dict {key: value} of values '
                          'to try before sampling (repeatable).')
flags.DEFINE_integer('seed', 0, 'Sampler seed (mixed with the trial count).')
flags.DEFINE_integer('devices_per_trial', 0, 'Run trials side by side, each '
                     'on this many of the local devices (0: one trial on all).')
flags.DEFINE_float('stale_after_s', 300, 'A running trial of another machine '
                   'without a heartbeat for this long is resumed here.')
flags.DEFINE_bool('report_only', False, 'Write the results and plots of the '
                  'study as it stands; run no trial.')
flags.mark_flags_as_required(['config', 'space', 'study_dir'])


def _config_file():
  """(absolute path of the --config file, its argument or None)."""
  name = config_flags.get_config_filename(FLAGS['config'])
  path, sep, arg = name.partition(':')
  return os.path.abspath(path), (arg if sep else None)


def _reference(path, arg):
  """get_config(arg) of the config file, without the command's overrides."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('_detector_tune_base', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def _objective(config):
  from detector.tune import worker  # pylint: disable=g-import-not-at-top
  default, allowed = worker.OBJECTIVES[config.task]
  name = FLAGS.objective or default
  if name not in allowed:
    raise errors.ConfigError(f'--objective={name}: expected one of {allowed} '
                             f'for {config.task}')
  return name


def _check_study(study, identity):
  """The study's first command fixed its config, space and objective."""
  recorded = study.user_attrs.get('identity')
  if recorded is None:
    study.set_user_attr('identity', identity)
    return
  for key, value in identity.items():
    if recorded.get(key) != value:
      raise errors.ConfigError(
          f'study {study.study_name!r} was made with {key}={recorded.get(key)!r}'
          f', this command has {value!r}: use the first command, or a new '
          '--study_dir / --study_name')


def _groups():
  devices = jax.local_devices()
  k = FLAGS.devices_per_trial or len(devices)
  if k < 1 or k > len(devices) or len(devices) % k:
    raise errors.ConfigError(f'--devices_per_trial={FLAGS.devices_per_trial}: '
                             f'must divide the {len(devices)} local devices')
  return [devices[i:i + k] for i in range(0, len(devices), k)]


def _enqueue(sweep, space_lib):
  """The baseline and --enqueue trials, each added once to the study."""
  wanted = []
  if FLAGS.baseline:
    params = space_lib.defaults(sweep.space, sweep.base)
    try:
      space_lib.check_params(sweep.space, params)
      wanted.append((params, {'baseline': True}))
    except errors.ConfigError as e:
      logging.warning('No baseline trial: %s', e)
  for text in FLAGS.enqueue:
    try:
      values = json.loads(text)
    except json.JSONDecodeError as e:
      raise errors.ConfigError(f'--enqueue={text}: not JSON ({e})') from None
    wanted.append((space_lib.params_from_values(sweep.space, values,
                                                f'--enqueue={text}'), None))
  with sweep.lock.held():
    for params, attrs in wanted:
      sweep.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError(f'unexpected arguments: {argv[1:]}')
  runtime.tensorflow_on_cpu()
  runtime.quiet_library_logs()
  # Trials run in this process and need no TensorFlow until they train.
  import optuna  # pylint: disable=g-import-not-at-top
  from detector.tune import results  # pylint: disable=g-import-not-at-top
  from detector.tune import space as space_lib  # pylint: disable=g-import-not-at-top
  from detector.tune import study as study_lib  # pylint: disable=g-import-not-at-top
  from detector.tune import worker  # pylint: disable=g-import-not-at-top
  optuna.logging.set_verbosity(optuna.logging.WARNING)

  config = FLAGS.config
  tasks.get(config)  # An unknown task fails here, before anything starts.
  config_path, config_arg = _config_file()
  space = space_lib.load(FLAGS.space)
  space_lib.check(space, config)
  objective = _objective(config)
  if not config.eval_split:
    raise errors.ConfigError('config.eval_split is empty: trials are scored on '
                             'the validation split; set one')
  if FLAGS.trials < 1:
    raise errors.ConfigError(f'--trials={FLAGS.trials}: must be >= 1')
  groups = _groups()
  study_dir = os.path.abspath(FLAGS.study_dir)
  os.makedirs(study_dir, exist_ok=True)
  url = FLAGS.storage or study_lib.default_storage(study_dir)
  name = FLAGS.study_name or os.path.basename(study_dir.rstrip('/'))
  lock = study_lib.StudyLock(url, name)
  with lock.held():  # Workers starting together create the tables once.
    storage = study_lib.open_storage(url)
    study = optuna.create_study(
        storage=storage, study_name=name, direction='maximize',
        load_if_exists=True,
        sampler=study_lib.make_sampler(FLAGS.sampler, FLAGS.seed),
        pruner=study_lib.make_pruner(FLAGS.pruner, FLAGS.pruner_startup_trials,
                                     FLAGS.reports))
    _check_study(study, {
        'config': os.path.relpath(config_path), 'config_arg': config_arg,
        'space': os.path.relpath(os.path.abspath(FLAGS.space)),
        'objective': objective})
  sweep = worker.Sweep(
      study=study, storage=storage, lock=lock,
      base=config, reference=_reference(config_path, config_arg), space=space,
      study_dir=study_dir, trials=FLAGS.trials, objective=objective,
      reports=FLAGS.reports, sampler=FLAGS.sampler, seed=FLAGS.seed,
      stale_after_s=FLAGS.stale_after_s, test_split=config.test_split,
      config_path=config_path, config_arg=config_arg)
  worker.trial_config(sweep, space_lib.values_from_params(
      space, space_lib.defaults(space, config)))  # eval_every_steps checks.

  if not FLAGS.report_only:
    _enqueue(sweep, space_lib)
    logging.info('Study %s in %s: %d trials wanted, %d there; %d device '
                 'group(s).', name, url if FLAGS.storage else study_dir,
                 FLAGS.trials, len(study.trials), len(groups))
    worker.work_in_groups(sweep, groups,
                          on_trial_end=lambda: results.write_tables(sweep))
    ended = worker.finish(sweep)
  else:
    ended = True
  plots = results.write_report(sweep)
  print(f'Results: {os.path.join(study_dir, "results.md")}; plots: '
        f'{", ".join(os.path.basename(p) for p in plots) or "none yet"}.')
  if not ended:
    print('Other workers are still running trials; the last one to finish '
          'scores the best trial on the test split.')
  else:
    try:
      best = study.best_trial
      tested = study.user_attrs.get('test', {}).get(str(best.number))
      print(f'Best: trial {best.number}, validation {objective} '
            f'{best.value:.4f}' + (f', test {objective} {tested:.4f}'
                                   if tested is not None else '') +
            f'; {os.path.join(study_dir, "best_config.py")}')
    except ValueError:
      print('No trial completed.')


def _main(argv):
  try:
    main(argv)
  except errors.ConfigError as e:
    # A user's mistake: one line, before any trial starts.
    logging.error('%s', e)
    raise SystemExit(f'error: {e}') from None


def run():
  """The program: `python -m detector.tune` and the `detector-tune` script."""
  runtime.run_program(__name__, _main,
                      flags_parser=runtime.parse_config_flags)


if __name__ == '__main__':
  run()
