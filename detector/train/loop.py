"""The training loop: resume, steps, logs, checkpoints, preemption, evaluation.

Resume order: the latest checkpoint in workdir/checkpoints (whole state,
same position in the data) -> `config.init_from` (ported weights) -> a fresh
initialisation from `config.seed`.
"""

import math
import os
import signal
import threading
from typing import Callable, Optional

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections

from detector import checkpoints
from detector import errors
from detector import runtime
from detector import tasks
from detector.train import evaluate
from detector.train import build
from detector.train import step as step_lib


# (step, total steps, metrics of the eval split) -> whether to stop training.
OnEvaluation = Callable[[int, int, dict], Optional[bool]]


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint and stopping.',
                    signum)
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _Profiler:
  """A JAX profiler trace of `config.profile_steps` (first to last) into
  workdir/profile/; stopped on leaving the loop in any case."""

  def __init__(self, steps, workdir):
    steps = sorted(int(s) for s in steps)  # setup.check_config checked them.
    self.first, self.last = (steps[0], steps[-1]) if steps else (None, None)
    self.directory = os.path.join(workdir, 'profile')
    self.running = False

  def __enter__(self):
    return self

  def before(self, step):
    if step == self.first:
      jax.profiler.start_trace(self.directory)
      self.running = True

  def after(self, step, state):
    if self.running and step == self.last:
      self._stop(state)

  def _stop(self, state=None):
    if state is not None:
      jax.block_until_ready(state)  # The trace holds the steps' device work.
    jax.profiler.stop_trace()
    self.running = False
    logging.info('Profiler trace of steps %d..%d written to %s (TensorBoard: '
                 'Profile tab).', self.first, self.last, self.directory)

  def __exit__(self, *exc):
    if self.running:
      self._stop()


class _TrainMetrics:
  """Averages the step metrics over a log interval, with the task's host-side
  counters, in one compiled call per step instead of a dozen eager ops."""

  def __init__(self, host_counters):
    self.host_counters = host_counters
    self.counts = dict.fromkeys(host_counters, 0)
    self.merged = None
    self._first = self._merge = None

  def add(self, batch, metrics):
    for key in self.host_counters:
      self.counts[key] += int(batch[key].sum())
    if self._first is None:
      collection = step_lib.metrics_collection(sorted(metrics))
      self._first = jax.jit(lambda m: collection.single_from_model_output(**m))
      self._merge = jax.jit(
          lambda acc, m: acc.merge(collection.single_from_model_output(**m)))
    self.merged = (self._first(metrics) if self.merged is None
                   else self._merge(self.merged, metrics))

  def pop(self):
    """The interval's {train/<name>: value}; starts a new interval."""
    values = {f'train/{k}': v for k, v in self.merged.compute().items()}
    values.update({f'train/{name}': self.counts[key]
                   for key, name in self.host_counters.items()})
    self.counts = dict.fromkeys(self.host_counters, 0)
    self.merged = None
    return values


def _initial_state(config, s, mngr):
  """The resume order: checkpoint -> config.init_from -> scratch."""
  state = checkpoints.restore_or_none(mngr, s.abstract_state)
  if state is None:
    state = s.init_fn(jax.random.PRNGKey(config.seed))
    if config.init_from and _whole_detector(config, s):
      logging.info('No checkpoint in %s: the whole detector from %s (seed '
                   '%d).', mngr.directory, config.init_from, config.seed)
      state = checkpoints.load_detector(state, config.init_from,
                                        s.class_names, s.model_config.head)
    elif config.init_from:
      logging.info('No checkpoint in %s: backbone from %s, the rest '
                   'initialised (seed %d).', mngr.directory, config.init_from,
                   config.seed)
      state = checkpoints.load_backbone(state, config.init_from)
    else:
      logging.info('No checkpoint in %s: initialising from scratch (seed %d).',
                   mngr.directory, config.seed)
  # Statistics need every value in this process: not so for FSDP shards on
  # other hosts.
  parameter_overview.log_parameter_overview(
      state.params, include_stats=all(
          x.is_fully_addressable or x.is_fully_replicated
          for x in jax.tree_util.tree_leaves(state.params)))
  return state


def _whole_detector(config, s) -> bool:
  """Whether init_from loads a whole detector: a detector file, into a
  detector, with config.init_from_scope 'all'."""
  scope = config.get('init_from_scope', 'all')
  if scope not in ('all', 'backbone'):
    raise errors.ConfigError(f'config.init_from_scope={scope!r}: expected '
                             "'all' or 'backbone'")
  return (scope == 'all' and s.task.name == tasks.Detection.name
          and checkpoints.is_detector_file(config.init_from))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None,
                       on_evaluation: Optional[OnEvaluation] = None):
  """Trains (resuming from workdir/checkpoints if present), then evaluates.

  Args:
    config: the experiment config.
    workdir: checkpoints, logs and eval/ go here.
    devices: the devices of the run's mesh (default: all).
    on_evaluation: called with (step, total steps, metrics of the eval split)
      after each `eval_every_steps` evaluation and the final one; returning
      True from a periodic call stops training there (a pruned sweep trial).

  Returns:
    The metrics dict of the test split (also in workdir/eval/metrics_test.json),
    or None when training stopped early (SIGTERM, or on_evaluation).
  """
  runtime.compilation_cache(config.get('compilation_cache_dir'))
  s = build.setup(config, workdir, devices)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(_flat_hparams(config))
  mngr = checkpoints.manager(workdir, config.keep_checkpoints,
                             config.checkpoint_every_steps)
  state = _initial_state(config, s, mngr)
  start = int(state.step)
  if start >= s.total_steps:
    logging.info('Checkpoint step %d is already the final step %d.', start,
                 s.total_steps)
  logging.info('Training steps %d..%d, global batch %d on %d devices.',
               start, s.total_steps, config.batch_size, s.mesh.size)
  state, preempted = _train(config, s, state, mngr, writer, workdir, start,
                            on_evaluation)
  mngr.close()
  if preempted:
    logging.info('Stopped at step %d on request; rerun the same command to '
                 'continue.', int(state.step))
    writer.flush()
    return None
  metrics = evaluate.evaluate_all(config, s, state, workdir, writer)
  writer.flush()
  if on_evaluation and config.eval_split and config.eval_split in metrics:
    on_evaluation(int(state.step), s.total_steps, metrics[config.eval_split])
  _write_monitoring_reference(config, workdir)
  return metrics.get(config.test_split)


def _write_monitoring_reference(config, workdir):
  """What the server's drift and canary checks compare traffic with."""
  if not (config.get('monitoring_images', 0) and config.eval_split):
    return
  if jax.process_count() > 1:  # It reloads the model in one process.
    logging.info('Multi-process run: write the monitoring reference with '
                 'python -m detector.monitoring --model=%s', workdir)
    return
  from detector.monitoring import reference  # pylint: disable=g-import-not-at-top
  reference.write_for_model(workdir, split=config.eval_split,
                            max_images=config.monitoring_images)

def _train(config, s, state, mngr, writer, workdir, start, on_evaluation):
  """Steps start+1..total; returns (state, whether stopped early)."""
  step_fn = step_lib.make_train_step(s)
  batch_sharding = NamedSharding(s.mesh, P('data'))
  train_iter = iter(s.task.train_dataset(s.builder, start_step=start)
                    .as_numpy_iterator()) if start < s.total_steps else iter(())
  report = periodic_actions.ReportProgress(num_train_steps=s.total_steps,
                                           writer=writer,
                                           every_steps=config.log_every_steps)
  metrics_log = _TrainMetrics(s.task.host_counters)
  pending = None  # (step, loss) of the previous step, checked one step late.
  predict_fn = None  # Compiled on the first periodic evaluation.
  stopped = False
  with _Preemption() as preemption, _Profiler(config.profile_steps,
                                              workdir) as profiler:
    for step in range(start + 1, s.total_steps + 1):
      profiler.before(step)
      batch = next(train_iter)
      state, metrics = step_fn(state, step_lib.device_batch(
          batch, batch_sharding, s.task.batch_keys))
      metrics_log.add(batch, metrics)
      profiler.after(step, state)
      if pending is not None:
        _check_finite(*pending)
      pending = (step, metrics['loss'])
      report(step)
      last = step == s.total_steps
      if step % config.log_every_steps == 0 or last:
        _check_finite(*pending)
        writer.write_scalars(step, metrics_log.pop())
      # CLU writes metrics from a thread: flushed before each checkpoint,
      # every step up to it is on disk once it is, so that after a SIGKILL
      # (the rerun logs from the checkpoint on) no step's metrics are lost.
      if preemption.requested or step % config.checkpoint_every_steps == 0 or last:
        _check_finite(*pending)
        writer.flush()
        checkpoints.save(mngr, step, state, _meta(step, config, s),
                         force=preemption.requested or last)
      if preemption.requested:
        stopped = True
        break
      if (config.eval_every_steps and step % config.eval_every_steps == 0
          and not last and config.eval_split):
        predict_fn = predict_fn or evaluate.make_predict_fn(s)
        metrics = evaluate.evaluate_during_training(config, s, state, workdir,
                                                    writer, predict_fn)
        if (on_evaluation and metrics is not None
            and on_evaluation(step, s.total_steps, metrics)):
          logging.info('Stopped at step %d: on_evaluation asked to stop.', step)
          stopped = True
          break
  checkpoints.wait(mngr)  # A failed write stops the run here: CheckpointError.
  if step_fn._cache_size() > 1:  # pylint: disable=protected-access
    logging.warning('The train step was compiled %d times; a shape or dtype '
                    'changed between steps.', step_fn._cache_size())  # pylint: disable=protected-access
  return state, stopped


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str):
  """`--mode=evaluate`: scores the latest checkpoint in workdir."""
  runtime.compilation_cache(config.get('compilation_cache_dir'))
  s = build.setup(config, workdir)
  mngr = checkpoints.manager(workdir, config.keep_checkpoints,
                             config.checkpoint_every_steps)
  state = checkpoints.restore_or_none(mngr, s.abstract_state)
  if state is None and config.init_from and _whole_detector(config, s):
    # A published detector, scored as converted (no training).
    logging.info('--mode=evaluate: no checkpoint in %s; evaluating the '
                 'detector of config.init_from=%s as it is.', mngr.directory,
                 config.init_from)
    state = checkpoints.load_detector(s.init_fn(jax.random.PRNGKey(config.seed)),
                                      config.init_from, s.class_names,
                                      s.model_config.head)
  if state is None:
    raise errors.ConfigError(f'--mode=evaluate: no checkpoint in '
                             f'{mngr.directory}; train first with --mode=train '
                             '(or set config.init_from to a detector file '
                             'from `python -m detector.port`)')
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  metrics = evaluate.evaluate_all(config, s, state, workdir, writer)
  writer.flush()
  mngr.close()
  return metrics.get(config.test_split)


def _check_finite(step, loss):
  value = float(loss)
  if not math.isfinite(value):
    raise errors.TrainingDivergedError(
        f'The training loss is {value} at step {step}. Common causes: a '
        'learning rate too high for this batch size (lower '
        'config.optimizer.learning_rate or raise warmup_steps), or degenerate '
        'boxes in the data. The last checkpoint is from before this step.')


def _meta(step, config, s):
  """Beside each checkpoint: the config, and `config.model` as the run
  resolved it (class count, and what `init_from` decided), so that
  `detector.load` rebuilds the model without the dataset or the weights
  file."""
  return {'step': int(step), 'config': config.to_json_best_effort(),
          'model_config': s.model_config.to_json_best_effort()}


def _flat_hparams(config, prefix=''):
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat_hparams(value, f'{prefix}{key}.'))
    elif isinstance(value, (int, float, str, bool)):
      out[f'{prefix}{key}'] = value
    else:
      out[f'{prefix}{key}'] = str(value)
  return out
