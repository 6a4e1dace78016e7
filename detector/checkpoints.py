"""Orbax checkpoints of the train state, and the resume order.

Layout: `workdir/checkpoints/<step>/{state, meta}`; `state` is the whole
`TrainState` (params, batch_stats, opt_state, step, rng), `meta` a JSON dict
with the step and the config it was written with. The position in the data is
the step: the input pipeline is a pure function of (seed, step).

Resume order (the trainer): (1) the latest checkpoint in the workdir, whole
state; else (2) a fresh initialisation overwritten from `config.init_from`, a
file converted by `python -m detector.port` (`resolve_init_from` checks it
against the config first; `load_backbone` copies an ImageNet backbone,
`load_detector` a whole detector's backbone, neck and head, its class layer
fitted to the dataset's classes); else (3) the fresh initialisation alone. A run started from
`init_from` and interrupted therefore resumes from its checkpoint, never from
the ImageNet weights again.
"""

import collections
import os
import re
import time
from typing import Any, Optional
import weakref

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from detector import errors
from detector.port import weights as weights_lib


class IncompatibleCheckpointError(errors.ConfigError):
  """A checkpoint whose parameters do not fit the configured model."""


def manager(workdir: str, keep: int, every_steps: int) -> ocp.CheckpointManager:
  """An asynchronous CheckpointManager keeping the latest `keep` steps."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=every_steps,
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      enable_async_checkpointing=True,
      create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options,
      item_handlers={'state': _state_handler(),
                     'meta': ocp.JsonCheckpointHandler()})


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """The train state's handler, its array handling set per manager.

  With one process, jax.Arrays are written without Orbax's replica-parallel
  split (its default), which first divides each replicated array among the
  process's devices: on 8 fake CPU devices that held the loop several times
  longer per save (BENCHMARKS.md). Several processes keep it: there it
  spreads the writes. A registry of this manager's own, not Orbax's global
  one, so that nothing outside this checkpoint changes.
  """
  # The settings StandardCheckpointHandler gives its PyTree handler: the
  # files are the ones it writes.
  kwargs = dict(save_concurrent_gb=96, restore_concurrent_gb=96, use_ocdbt=True)
  if jax.process_count() > 1:
    return ocp.PyTreeCheckpointHandler(**kwargs)
  handlers = [(ty, ocp.type_handlers.get_type_handler(ty))
              for ty in ocp.type_handlers.supported_types() if ty is not jax.Array]
  handlers.append((jax.Array, ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False)))
  return ocp.PyTreeCheckpointHandler(
      type_handler_registry=ocp.type_handlers.create_type_handler_registry(
          *handlers), **kwargs)


# The step of each manager's save in flight. Orbax writes in background
# threads and a failed write surfaces only at the next save or wait, which
# must still name the step that failed.
_in_flight = weakref.WeakKeyDictionary()


def save(mngr: ocp.CheckpointManager, step: int, state, meta: dict,
         force: bool = False) -> bool:
  """Starts an asynchronous save; returns whether one was started.

  The previous save is waited for first (Orbax would wait too), so that its
  failure is raised here as a CheckpointError naming its step. Logs how long
  the loop was held up.

  Raises:
    errors.CheckpointError: the previous save or this one failed to write.
  """
  start = time.perf_counter()
  previous = _in_flight.get(mngr)
  if previous is not None and (force or mngr.should_save(step)):
    wait(mngr)
  waited = time.perf_counter() - start
  try:
    started = mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)),
                        force=force)
  except Exception as e:  # pylint: disable=broad-except
    # Orbax and TensorStore raise OSError, ValueError and others for I/O.
    raise _write_error(mngr, step, e) from e
  if started:
    _in_flight[mngr] = step
    logging.info('Checkpoint step %d started; the loop waited %.2f s%s.', step,
                 time.perf_counter() - start,
                 f' ({waited:.2f} s for step {previous} to finish writing)'
                 if waited >= 0.01 else '')
  return started


def wait(mngr: ocp.CheckpointManager):
  """Blocks until the save in flight is written.

  Raises:
    errors.CheckpointError: it failed to write (e.g. a full disk).
  """
  step = _in_flight.pop(mngr, None)
  try:
    mngr.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    raise _write_error(mngr, step, e) from e
  # Orbax finalises a step by renaming its temporary directory; a failure it
  # only logged would leave no `<step>` directory.
  if (step is not None and jax.process_index() == 0
      and not (mngr.directory / str(step)).exists()):
    raise _write_error(mngr, step, None)


def _os_error(e: BaseException) -> Optional[str]:
  """'No space left on device' from an OSError or a TensorStore message
  ("... [os_error_code='28']") anywhere in the exception's chain."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.strerror:
      return e.strerror
    match = re.search(r"os_error_code='?(\d+)", str(e))
    if match:
      return os.strerror(int(match.group(1)))
    e = e.__cause__ or e.__context__
  return None


def _write_error(mngr: ocp.CheckpointManager, step: Optional[int],
                 e: Optional[BaseException]) -> errors.CheckpointError:
  """A CheckpointError naming the directory, step, cause and resume point."""
  try:
    mngr.reload()  # Re-reads the directory: only finalised steps count.
    last = mngr.latest_step()
  except Exception:  # pylint: disable=broad-except
    last = None
  if e is None:
    reason = 'Orbax did not finalise its directory'
  else:  # The OS error, else the error's first line (Orbax logged it whole).
    lines = str(e).strip().splitlines()
    reason = _os_error(e) or (
        f'{type(e).__name__}: {lines[0][:300] if lines else ""}')
  what = f'checkpoint step {step}' if step is not None else 'a checkpoint'
  resume = (f'the last checkpoint written is step {last}, where the same '
            'command resumes once the cause is fixed' if last is not None
            else 'no checkpoint has been written, so a rerun starts over')
  return errors.CheckpointError(
      f'Could not write {what} to {mngr.directory}: {reason}. Training '
      f'stopped rather than continue without checkpoints; {resume}.')


def _key_name(key):
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _leaf_paths(tree):
  """{'params/backbone/stem/conv/kernel': leaf} for a state or its metadata."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(_key_name(k) for k in path): leaf for path, leaf in flat}


def check_compatible(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """Raises IncompatibleCheckpointError naming the first mismatching path."""
  stored = mngr.item_metadata(step)['state']
  stored = _leaf_paths(stored)
  wanted = _leaf_paths(abstract_state)
  for path, leaf in wanted.items():
    if path not in stored:
      raise IncompatibleCheckpointError(
          f'checkpoint step {step} in {mngr.directory} has no {path} '
          f'(shape {tuple(leaf.shape)}) that the configured model needs; it '
          'was written by a different config. Use a new --workdir or the '
          'config the checkpoint was written with.')
    shape = tuple(getattr(stored[path], 'shape', ()) or ())
    if shape != tuple(leaf.shape):
      raise IncompatibleCheckpointError(
          f'checkpoint step {step} in {mngr.directory}: {path} has shape '
          f'{shape}, the configured model needs {tuple(leaf.shape)}. Use a new '
          '--workdir or the config the checkpoint was written with.')
  extra = sorted(set(stored) - set(wanted))
  if extra:
    raise IncompatibleCheckpointError(
        f'checkpoint step {step} in {mngr.directory} has {extra[0]} which the '
        'configured model does not have; it was written by a different config.')


def restore_or_none(mngr: ocp.CheckpointManager, abstract_state) -> Optional[Any]:
  """Restores the latest readable checkpoint into `abstract_state`'s
  shardings, or returns None when there is none.

  A checkpoint that cannot be read (half-written by a crash, truncated or
  corrupt files) is renamed `<step>.unreadable` (kept for inspection, out of
  the way of the step that will be written again) and the previous one is
  tried, with a warning naming both. A checkpoint of another config is not
  corruption: IncompatibleCheckpointError. If checkpoints exist but none can
  be read, a ConfigError names them rather than starting over silently.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  bad = []
  for step in steps:
    try:
      state = restore_step(mngr, step, abstract_state)
    except IncompatibleCheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Orbax, TensorStore and JSON raise many kinds of error for bad files.
      bad.append(step)
      _set_aside(mngr, step)
      logging.warning('Checkpoint step %d in %s cannot be read (%s: %s); '
                      'renamed to %d.unreadable. Trying the previous one.',
                      step, mngr.directory, type(e).__name__,
                      str(e).splitlines()[0][:300] if str(e) else '', step)
      continue
    if bad:
      logging.warning('Resumed from checkpoint step %d in %s instead of the '
                      'unreadable step(s) %s.', step, mngr.directory, bad)
    else:
      logging.info('Resumed from checkpoint step %d in %s', step, mngr.directory)
    return state
  unreadable = sorted(n for n in os.listdir(str(mngr.directory))
                      if '.unreadable' in n) if os.path.isdir(
                          str(mngr.directory)) else []
  if bad or unreadable:
    raise errors.ConfigError(
        f'no checkpoint in {mngr.directory} can be read (steps {bad or "-"}; '
        f'set aside: {unreadable}); move them away to start from scratch')
  return None


def restore_step(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """The state of checkpoint `step`, in `abstract_state`'s shardings.

  Raises:
    IncompatibleCheckpointError: it was written by another config.
    Exception: Orbax's, TensorStore's or JSON's errors for unreadable files.
  """
  check_compatible(mngr, step, abstract_state)
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          abstract_state, restore_args=ocp.checkpoint_utils
          .construct_restore_args(abstract_state))))['state']


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The JSON written beside checkpoint `step` (its step, the config)."""
  return mngr.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']


def _set_aside(mngr: ocp.CheckpointManager, step: int):
  """Renames an unreadable step directory to <step>.unreadable (process 0)."""
  if jax.process_index() == 0:
    path = os.path.join(str(mngr.directory), str(step))
    target = f'{path}.unreadable'
    if os.path.exists(target):
      target = f'{path}.unreadable.{os.getpid()}'
    if os.path.exists(path):
      os.rename(path, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f'checkpoint {step} set aside')
  mngr.reload()


def resolve_init_from(config: ml_collections.ConfigDict,
                      model_config: ml_collections.ConfigDict):
  """Checks `config.init_from` against the model and fills what it decides.

  The file's backbone and its settings (e.g. ResNet depth, EfficientNet
  variant and padding) must equal the config's: anything else is a
  ConfigError naming the key and the value to set. `model_config.norm_epsilon`
  (None) and `pixel_mean` / `pixel_std` (empty) are taken from the file,
  which records what the weights were trained with; values set explicitly and
  different from the file's are kept, with a warning. A whole-detector file
  (unless config.init_from_scope='backbone') must also have the config's
  neck and head architecture (`_check_detector`).

  Args:
    config: the experiment config (reads `init_from`).
    model_config: an unlocked copy of `config.model`, updated in place.
  """
  path = config.init_from
  if not path:
    return
  if not os.path.exists(path):
    raise errors.ConfigError(f'config.init_from={path}: no such file (convert '
                             'one with `python -m detector.port`)')
  meta = weights_lib.load_metadata(path)
  what = f'config.init_from={path} ({meta.get("arch")} from {meta.get("source")})'
  if meta.get('backbone') != model_config.backbone:
    raise errors.ConfigError(
        f'{what} holds a {meta.get("backbone")!r} backbone but '
        f'config.model.backbone={model_config.backbone!r}')
  sub = model_config[model_config.backbone]
  for key, value in meta.get('backbone_kwargs', {}).items():
    here = sub.get(key, None)
    if isinstance(here, (tuple, list)):
      here = list(here)
    if key not in sub or here != value:
      raise errors.ConfigError(
          f'{what} was converted with {key}={value!r} but '
          f'config.model.{model_config.backbone}.{key}='
          f'{sub.get(key, "<not set>")!r}; set '
          f'--config.model.{model_config.backbone}.{key}={value}')
  if meta.get('kind') == 'detector' and config.get(
      'init_from_scope', 'all') == 'all' and 'neck' in model_config:
    _check_detector(what, meta, model_config)
  prep = meta['preprocessing']
  for key, value in (('norm_epsilon', meta['norm_epsilon']),
                     ('pixel_mean', tuple(prep['mean'])),
                     ('pixel_std', tuple(prep['std']))):
    here = model_config[key]
    if here is None or (isinstance(here, tuple) and not here):
      model_config[key] = value
    elif not np.allclose(here, value):
      logging.warning('config.model.%s=%s differs from %s, which was trained '
                      'with %s; keeping the config\'s value.', key, here, what,
                      value)


# Settings of a neck or head that change what its weights compute (the rest
# are losses, matching and decoding, free to differ when fine-tuning).
_HEAD_ANCHORS = ('num_scales', 'aspect_ratios', 'anchor_scale', 'anchor_style')
_HEAD_ARCHITECTURE = ('min_level', 'max_level', 'width', 'num_convs',
                      'use_norm', 'act', 'redundant_bias')


def _check_detector(what, meta, model_config):
  """A whole-detector file against the config: the same neck and head with
  the same architecture (else a ConfigError naming the key and value to
  set); other anchors only warn, as fine-tuning can re-learn them. Fills
  `backbone_norm_epsilon` from the file when unset."""
  file_model = meta['model']
  for key in ('neck', 'head'):
    if file_model[key] != model_config[key]:
      raise errors.ConfigError(
          f'{what} is a detector with {key} {file_model[key]!r} but '
          f'config.model.{key}={model_config[key]!r}; set '
          f'--config.model.{key}={file_model[key]}')
  neck, head = model_config.neck, model_config.head
  checks = [(neck, k, True) for k in file_model[neck]]
  checks += [(head, k, True) for k in _HEAD_ARCHITECTURE]
  checks += [(head, k, False) for k in _HEAD_ANCHORS]
  for part, key, required in checks:
    if key not in file_model[part]:
      continue
    value = file_model[part][key]
    here = model_config[part].get(key, '<not set>')
    if weights_lib.json_lists(here) == weights_lib.json_lists(value):
      continue
    message = (f'{what} was converted with model.{part}.{key}={value!r} but '
               f'config.model.{part}.{key}={here!r}')
    if required:
      raise errors.ConfigError(f'{message}; set --config.model.{part}.{key}='
                               f'{_flag(value)}')
    logging.warning('%s: the file\'s head predicts boxes against other '
                    'anchors, which fine-tuning must re-learn.', message)
  if (model_config.get('backbone_norm_epsilon', None) is None
      and file_model.get('backbone_norm_epsilon') is not None):
    model_config.backbone_norm_epsilon = file_model['backbone_norm_epsilon']


def _flag(value):
  """`value` as a --config flag takes it (tuples, not JSON lists)."""
  if isinstance(value, list):
    return '"' + repr(weights_lib.config_tuples(value)) + '"'
  return value


def _groups(paths):
  """{'params/stage2_block0/conv1/...'} -> sorted top-level module names."""
  return sorted({p.split('/')[1] for p in paths})


def load_backbone(state, path: str, key: str = 'backbone'):
  """Returns `state` with `params[key]` and `batch_stats[key]` from `path`.

  Every array the file shares with the backbone is copied (shapes must match:
  a mismatch is a ConfigError naming the variable, except for a classifier
  of another class count, left as initialised); the log lists the module
  groups loaded, missing from the file (left as initialised) and in the file
  but unused (e.g. an ImageNet classifier). The EMA, when kept, starts from
  the loaded weights too.
  """
  variables, meta = weights_lib.load(path)
  if meta.get('kind') == 'detector':  # Its backbone, for another model.
    variables = {c: tree.get('backbone', {}) for c, tree in variables.items()}
  flat_file = weights_lib.flatten(variables)
  target = {}
  for collection in ('params', 'batch_stats'):
    tree = getattr(state, collection).get(key, {})
    target.update(weights_lib.flatten({collection: tree}))
  loaded = _loadable(path, flat_file, target)
  logging.info('init_from %s (%s from %s): loaded %d arrays in %d groups: %s',
               path, meta.get('arch'), meta.get('source'), len(loaded),
               len(_groups(loaded)), ', '.join(_groups(loaded)))
  missing = {p for p in set(target) - loaded
             if p.split('/')[1] != 'classifier' or p not in flat_file}
  log = logging.warning if missing else logging.info
  log('init_from: missing from the file (left as initialised): %s',
      ', '.join(_groups(missing)) or 'none')
  logging.info('init_from: in the file but unused: %s',
               ', '.join(_groups(set(flat_file) - loaded)) or 'none')
  return _with_values(state, {p: flat_file[p] for p in loaded}, key)


def _with_values(state, values, key):
  """`state` with `values` ({'<collection>/<path below key>': array}) in its
  params and batch_stats, and in its EMA when kept (which so starts from
  them too)."""
  by_collection = collections.defaultdict(dict)
  for p, value in values.items():
    collection, rest = p.split('/', 1)
    by_collection[collection][rest] = value
  put = lambda collection, tree: _put(tree, by_collection[collection], key)
  ema = state.ema
  if ema is not None:
    ema = {'params': put('params', ema['params']),
           'batch_stats': put('batch_stats', ema['batch_stats'])}
  return state.replace(params=put('params', state.params),
                       batch_stats=put('batch_stats', state.batch_stats),
                       ema=ema)


def _loadable(path, flat_file, target):
  """The paths of `target` to load from the file, its shapes checked."""
  loaded = {p for p in target if p in flat_file}
  # A classifier for another number of classes than the file's (ImageNet's
  # 1000) starts fresh: that is fine-tuning, not a mismatch.
  replaced = {p for p in loaded if p.split('/')[1] == 'classifier'
              and tuple(flat_file[p].shape) != tuple(target[p].shape)}
  if replaced:
    logging.info('init_from: the file\'s classifier (%s) is not loaded: it '
                 'has another number of classes than the config.',
                 ', '.join(f'{p} {tuple(flat_file[p].shape)}'
                           for p in sorted(replaced)))
  loaded -= replaced
  for p in sorted(loaded):
    if tuple(flat_file[p].shape) != tuple(target[p].shape):
      raise errors.ConfigError(
          f'config.init_from={path}: {p} has shape {tuple(flat_file[p].shape)}'
          f', the configured backbone needs {tuple(target[p].shape)}')
  if not loaded:
    raise errors.ConfigError(
        f'config.init_from={path}: no variable of the file has a place in the '
        f'configured backbone (file groups: {_groups(flat_file)[:8]}, '
        f'backbone groups: {_groups(target)[:8]})')
  return loaded


def _put(tree, values, key):
  """`tree` with the leaves under `key` ('' for all) that `values` ({path
  below key: array}) holds replaced, each placed in the leaf's sharding."""
  new = {}
  for p, leaf in weights_lib.flatten(tree).items():
    if not key:
      value = values.get(p)
    else:
      value = values.get(p[len(key) + 1:]) if p.startswith(key + '/') else None
    if value is None:
      new[p] = leaf
    else:  # Each process places its own shards (works for any sharding).
      value = np.asarray(value, leaf.dtype)
      new[p] = jax.make_array_from_callback(
          value.shape, leaf.sharding, lambda index, v=value: v[index])
  return weights_lib.unflatten(new)


def class_layers(head: str):
  """The module names, under 'head', of `head`'s class prediction layer."""
  from detector import models  # pylint: disable=g-import-not-at-top
  return models.head_module(head).CLASS_LAYERS


def load_detector(state, path: str, class_names, head: str):
  """Returns `state` with every variable of the whole-detector file `path`.

  Every array is copied but the class prediction layer (`class_layers`)
  when the file's classes are not the dataset's `class_names`: if each of
  them is among the file's labels (by name, case and '_' / ' ' ignored),
  that layer's outputs for them are taken, in the dataset's order (COCO's
  80 from a 90-class file, say); otherwise it keeps its fresh
  initialisation, for fine-tuning. The log names what was loaded, fitted or
  re-initialised; any other shape mismatch is a ConfigError naming the
  variable. The EMA, when kept, starts from the result too.
  """
  variables, meta = weights_lib.load(path)
  flat_file = weights_lib.flatten(variables)
  target = {}
  for collection in ('params', 'batch_stats'):
    target.update(weights_lib.flatten({collection: getattr(state, collection)}))
  layers = tuple(class_layers(head))
  # '<collection>/head/<layer>/...': a class layer's variables.
  is_class = lambda p: any(p.split('/', 1)[1].startswith(f'head/{layer}/')
                           for layer in layers)
  values, refit, fresh = {}, [], []
  labels = list(meta.get('labels') or [])
  same_classes = [_label_key(n) for n in labels] == [
      _label_key(n) for n in class_names]
  picks = _class_picks(labels, class_names)
  for p, leaf in target.items():
    if p not in flat_file:
      continue
    array = flat_file[p]
    if is_class(p) and not same_classes:
      if picks is not None and array.shape[-1] % len(labels) == 0:
        per_anchor = array.shape[-1] // len(labels)
        taken = array.reshape(array.shape[:-1] + (per_anchor, len(labels)))
        array = taken[..., picks].reshape(array.shape[:-1] + (-1,))
        refit.append(p)
      elif tuple(array.shape) != tuple(leaf.shape):
        fresh.append(p)
        continue
    if tuple(array.shape) != tuple(leaf.shape):
      raise errors.ConfigError(
          f'config.init_from={path}: {p} has shape {tuple(array.shape)}, the '
          f'configured model needs {tuple(leaf.shape)}')
    values[p] = array
  missing = sorted(set(target) - set(values) - set(fresh))
  unused = sorted(set(flat_file) - set(target))
  logging.info('init_from %s (%s from %s, a detector of %d classes): loaded '
               '%d of the model\'s %d arrays.', path, meta.get('arch'),
               meta.get('source'), len(labels), len(values), len(target))
  if refit:
    logging.info('init_from: class layer %s: the outputs of the dataset\'s '
                 '%d classes taken from the file\'s %d by name.',
                 ', '.join(refit), len(class_names), len(labels))
  if fresh:
    logging.warning('init_from: class layer %s re-initialised: the file\'s '
                    '%d classes are not the dataset\'s %d (%s...).',
                    ', '.join(fresh), len(labels), len(class_names),
                    ', '.join(list(class_names)[:4]))
  if missing:
    logging.warning('init_from: missing from the file (left as initialised): '
                    '%s', ', '.join(missing[:20]))
  if unused:
    logging.warning('init_from: in the file but unused: %s',
                    ', '.join(unused[:20]))
  return _with_values(state, values, '')


def _label_key(name):
  return str(name).lower().replace('_', ' ').strip()


def _class_picks(labels, class_names):
  """Indices into `labels` of each of `class_names` (by name), or None when
  one is missing."""
  index = {}
  for i, name in enumerate(labels):
    index.setdefault(_label_key(name), i)
  picks = [index.get(_label_key(n)) for n in class_names]
  return None if not picks or None in picks else picks


def is_detector_file(path: str) -> bool:
  return bool(path) and weights_lib.load_metadata(path).get('kind') == 'detector'
