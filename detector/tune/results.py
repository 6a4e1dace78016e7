"""What a sweep leaves in STUDY_DIR: results.csv and results.md (after every
trial), and when the study has ended: plots/ (PNG, and HTML to explore),
best_config.py and tensorboard/ (the HParams dashboard).
"""

import csv
import io
import json
import os
import shutil
import warnings
from typing import Any, Dict, List

from absl import logging
import optuna
from optuna.trial import TrialState

from detector.tune import space as space_lib

PLOTS = ('optimization_history', 'parallel_coordinate', 'param_importances',
         'intermediate_values')


def _write(path: str, text: str):
  """Atomic: another worker or a reader never sees half a file."""
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def _shown(value):
  return f'{value:.4g}' if isinstance(value, float) else str(value)


def rows(sweep) -> List[Dict[str, Any]]:
  """One dict per trial, in trial order: its state, scores and settings."""
  tested = sweep.study.user_attrs.get('test', {})
  out = []
  for t in sweep.study.get_trials(deepcopy=False):
    values = space_lib.values_from_params(sweep.space, t.params)
    row = {'trial': t.number, 'state': t.state.name,
           f'validation_{sweep.objective}': t.value,
           f'test_{sweep.objective}': tested.get(str(t.number)),
           'baseline': bool(t.user_attrs.get('baseline')),
           'reports': len(t.intermediate_values),
           'last_report_percent': max(t.intermediate_values, default=None),
           'seconds': t.user_attrs.get('seconds'),
           'resumed_from_step': t.user_attrs.get('resumed_from')}
    row.update({k: repr(v) if isinstance(v, tuple) else v
                for k, v in values.items()})
    out.append(row)
  return out


def write_tables(sweep):
  table = rows(sweep)
  keys = list(dict.fromkeys(k for row in table for k in row))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, keys, lineterminator='\n')
  writer.writeheader()
  writer.writerows(table)
  _write(os.path.join(sweep.study_dir, 'results.csv'), buffer.getvalue())
  _write(os.path.join(sweep.study_dir, 'results.md'), markdown(sweep, table,
                                                               keys))


def markdown(sweep, table, keys) -> str:
  """The trials as a Markdown table, best validation score first."""
  done = [r for r in table if r['state'] == 'COMPLETE']
  lines = [f'# Study `{sweep.study.study_name}`', '',
           f'{len(done)} of {len(table)} trials complete; objective: '
           f'validation {sweep.objective} (higher is better).', '']
  skip = {'reports', 'last_report_percent'}
  columns = [k for k in keys if k not in skip]
  order = sorted(table, key=lambda r: (r[f'validation_{sweep.objective}']
                                       is None,
                                       -(r[f'validation_{sweep.objective}']
                                         or 0.0), r['trial']))
  lines.append('| ' + ' | '.join(columns) + ' |')
  lines.append('|' + '---|' * len(columns))
  for row in order:
    lines.append('| ' + ' | '.join(
        '' if row.get(k) is None else _shown(row[k]) for k in columns) + ' |')
  return '\n'.join(lines) + '\n'


def write_plots(study: optuna.Study, out_dir: str) -> List[str]:
  """PNG and HTML of each of PLOTS that the study's trials allow; returns
  the files written."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # Files only: no display is needed or wanted.
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from optuna import visualization  # pylint: disable=g-import-not-at-top
  from optuna.visualization import matplotlib as mpl_vis  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name in PLOTS:
    try:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # Optuna's "experimental" notices.
        ax = getattr(mpl_vis, f'plot_{name}')(study)
        figure = (ax.flat[0] if hasattr(ax, 'flat') else ax).figure
        figure.set_size_inches(9, 5.5)
        path = os.path.join(out_dir, f'{name}.png')
        figure.savefig(path, dpi=110, bbox_inches='tight')
        plt.close(figure)
        written.append(path)
        path = os.path.join(out_dir, f'{name}.html')
        # plotly.js once beside the pages, so they open offline.
        getattr(visualization, f'plot_{name}')(study).write_html(
            path, include_plotlyjs='directory')
        written.append(path)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
      # Too few finished trials for this plot (importances need two).
      logging.info('Plot %s skipped: %s', name, e)
  return written


def write_best_config(sweep, number: int, value: float) -> str:
  """STUDY_DIR/best_config.py: get_config(arg) of the base config file with
  the best trial's settings; main.py runs it as it is."""
  with open(os.path.join(sweep.trial_dir(number), 'settings.json')) as f:
    settings = json.load(f)  # key -> repr of the value.
  # Relative when the study lives beside the configs (in the repository),
  # so that the folder can move with it.
  inside = os.path.commonpath([sweep.config_path, sweep.study_dir]) != '/'
  base = (os.path.relpath(sweep.config_path, sweep.study_dir) if inside
          else sweep.config_path)
  lines = ''.join(f'    {k!r}: {v},\n' for k, v in settings.items())
  tested = sweep.study.user_attrs.get('test', {}).get(str(number))
  test = (f', test {sweep.objective} {tested:.4f}' if tested is not None
          else '')
  text = f'''"""The best trial of the sweep in this folder: trial {number}, validation
{sweep.objective} {value:.4f}{test}.

    python main.py --config={os.path.join(sweep.study_dir, 'best_config.py')} --workdir=DIR

It is `{sweep.config_path}` (argument {sweep.config_arg!r}) with SETTINGS: the
values drawn for the trial, the sweep command's --config overrides and the
trial's evaluation interval. Train for longer with --config.num_train_steps.
"""

import importlib.util
import os

BASE = {base!r}  # The base config file (relative: to this one).
BASE_ARG = {sweep.config_arg!r}
SETTINGS = {{
{lines}}}


def get_config(arg=None):
  del arg  # The sweep's argument is BASE_ARG.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), BASE)
  spec = importlib.util.spec_from_file_location('best_config_base', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = (module.get_config() if BASE_ARG is None
            else module.get_config(BASE_ARG))
  with config.unlocked():
    for key, value in SETTINGS.items():
      *parents, leaf = key.split('.')
      node = config
      for part in parents:
        node = node[part]
      node[leaf] = value
  return config
'''
  path = os.path.join(sweep.study_dir, 'best_config.py')
  _write(path, text)
  return path


def _domain(d):
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
  if isinstance(d, (space_lib.Uniform, space_lib.LogUniform)):
    return hp.RealInterval(float(d.low), float(d.high))
  if isinstance(d, space_lib.Int):
    return hp.IntInterval(d.low, d.high)
  if isinstance(d, space_lib.Categorical):
    choices = [space_lib.encode(c) for c in d.choices]
    if len({type(c) for c in choices}) == 1 and None not in choices:
      return hp.Discrete(choices)
  return None


def write_tensorboard(sweep, out_dir: str):
  """The HParams dashboard: one run per finished trial, its drawn values,
  validation (and test) objective, and the intermediate values as a curve."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
  shutil.rmtree(out_dir, ignore_errors=True)  # Rewritten whole each time.
  hparams = {key: hp.HParam(key, _domain(d)) for key, d in sweep.space.items()
             if not isinstance(d, space_lib.Derived)}
  validation, test = f'validation/{sweep.objective}', f'test/{sweep.objective}'
  with tf.summary.create_file_writer(out_dir).as_default():
    hp.hparams_config(hparams=list(hparams.values()), metrics=[
        hp.Metric(validation, display_name=f'validation {sweep.objective}'),
        hp.Metric(test, display_name=f'test {sweep.objective}')])
  tested = sweep.study.user_attrs.get('test', {})
  for t in sweep.study.get_trials(deepcopy=False,
                                  states=(TrialState.COMPLETE,
                                          TrialState.PRUNED)):
    writer = tf.summary.create_file_writer(
        os.path.join(out_dir, f'trial_{t.number}'))
    with writer.as_default():
      hp.hparams({hparams[k]: v for k, v in t.params.items() if k in hparams},
                 trial_id=str(t.number))
      for percent, value in sorted(t.intermediate_values.items()):
        tf.summary.scalar(validation, value, step=percent)
      if str(t.number) in tested:
        tf.summary.scalar(test, tested[str(t.number)], step=100)
    writer.close()


def write_report(sweep) -> List[str]:
  """Everything: tables, plots, best_config.py, TensorBoard; returns the
  plot files."""
  write_tables(sweep)
  plots = write_plots(sweep.study, os.path.join(sweep.study_dir, 'plots'))
  try:
    best = sweep.study.best_trial
  except ValueError:
    best = None  # No trial completed.
  if best is not None:
    write_best_config(sweep, best.number, best.value)
  write_tensorboard(sweep, os.path.join(sweep.study_dir, 'tensorboard'))
  return plots
