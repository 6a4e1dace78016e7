"""Search spaces: config keys mapped to distributions, checked before a trial.

A space file (`configs/spaces/*.py`) defines `get_space()`, returning a dict
from dotted config keys to the distributions below, in the order they are
drawn:

    from detector.tune import space as s

    def get_space():
      return {
          'optimizer.learning_rate': s.LogUniform(1e-3, 1e-2),
          'model.head': s.Categorical(['centernet', 'retinanet']),
          # Drawn only in the trials whose model.head is 'retinanet'.
          'model.retinanet.focal_gamma': s.Uniform(
              1.0, 3.0, when={'model.head': 'retinanet'}),
          # Not searched: computed from the values drawn so far.
          'num_train_steps': s.Derived(lambda config: 6400 // config.batch_size),
      }

`when` maps earlier keys of the space to the value they must have, a list of
values one of which they must have, or a predicate. Categorical choices may
be tuples (`input.scale_jitter`); Optuna stores such a choice as its repr.
"""

import dataclasses
import importlib.util
import math
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import ml_collections

from detector import errors

Condition = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class _Distribution:
  when: Optional[Condition] = dataclasses.field(default=None, kw_only=True)

  def fits(self, kind: type) -> bool:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Uniform(_Distribution):
  """A float drawn uniformly from [low, high] (`step`: on that grid)."""
  low: float
  high: float
  step: Optional[float] = None

  def fits(self, kind):
    return kind is float


@dataclasses.dataclass(frozen=True)
class LogUniform(_Distribution):
  """A float whose logarithm is uniform on [log low, log high]; low > 0."""
  low: float
  high: float

  def fits(self, kind):
    return kind is float


@dataclasses.dataclass(frozen=True)
class Int(_Distribution):
  """An integer in [low, high] (both included), every `step`; `log`: its
  logarithm uniform (low >= 1)."""
  low: int
  high: int
  step: int = 1
  log: bool = False

  def fits(self, kind):
    return kind in (int, float)  # An integer value fits a float key too.


@dataclasses.dataclass(frozen=True)
class Categorical(_Distribution):
  """One of `choices`: numbers, strings, booleans, None or tuples of them."""
  choices: Sequence[Any]

  def fits(self, kind):
    return True  # Each choice is assigned to the config when it is checked.


@dataclasses.dataclass(frozen=True)
class Derived(_Distribution):
  """Not searched: `fn(config)`, the config holding the values drawn so far
  (for example a step count that keeps the images per trial constant)."""
  fn: Callable[[ml_collections.ConfigDict], Any]

  def fits(self, kind):
    return True


Space = Dict[str, _Distribution]


def load(path: str) -> Space:
  """The space of the file `path` (its `get_space()`), not yet checked."""
  if not os.path.isfile(path):
    raise errors.ConfigError(f'--space={path}: no such file')
  spec = importlib.util.spec_from_file_location('_detector_search_space', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(f'--space={path}: the file fails to load: '
                             f'{type(e).__name__}: {e}') from None
  if not callable(getattr(module, 'get_space', None)):
    raise errors.ConfigError(f'--space={path}: the file has no get_space()')
  space = module.get_space()
  if not isinstance(space, Mapping) or not space:
    raise errors.ConfigError(f'--space={path}: get_space() must return a '
                             'non-empty dict of config key -> distribution')
  return dict(space)


def _parent(config, key):
  """(the ConfigDict holding `key`, its last part); raises for a missing key."""
  *parents, leaf = key.split('.')
  node = config
  for i, part in enumerate(parents):
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict):
      raise KeyError('.'.join(parents[:i + 1]))
  if leaf not in node:
    raise KeyError(key)
  return node, leaf


def get(config, key):
  node, leaf = _parent(config, key)
  return node[leaf]


def key_type(config, key) -> type:
  """The Python type a config key holds (a None field's declared type)."""
  node, leaf = _parent(config, key)
  kind = node.get_type(leaf)
  return bool if kind is bool else kind


def assign(config, key, value):
  """Sets `key` in the (unlocked or locked) config, with its type checks."""
  node, leaf = _parent(config, key)
  if isinstance(node[leaf], tuple) and isinstance(value, list):
    value = tuple(value)
  node[leaf] = value


def encode(choice):
  """A categorical choice as Optuna stores it (None, bool, int, float, str)."""
  if choice is None or isinstance(choice, (bool, int, float, str)):
    return choice
  return repr(choice)


def decode(distribution: Categorical, stored):
  """The choice whose `encode` is `stored`."""
  for choice in distribution.choices:
    if encode(choice) == stored:
      return choice
  raise ValueError(f'{stored!r} is not among {distribution.choices}')


def holds(condition: Optional[Condition], values: Mapping[str, Any]) -> bool:
  """Whether the values drawn so far meet a `when` condition."""
  for key, want in (condition or {}).items():
    if key not in values:
      return False  # Its own condition left it out of this trial.
    got = values[key]
    if callable(want):
      ok = want(got)
    elif isinstance(want, (list, set, frozenset)):
      ok = got in want
    else:
      ok = got == want
    if not ok:
      return False
  return True


def _check_range(key, d):
  name = type(d).__name__
  if not (isinstance(d.low, (int, float)) and isinstance(d.high, (int, float))
          and math.isfinite(d.low) and math.isfinite(d.high)):
    raise errors.ConfigError(f'space {key}: {name} needs finite numbers, got '
                             f'low={d.low!r} high={d.high!r}')
  if not d.low < d.high:
    raise errors.ConfigError(f'space {key}: {name}(low={d.low}, high={d.high}) '
                             'is an empty or inverted range; need low < high')
  if (isinstance(d, LogUniform) or getattr(d, 'log', False)) and d.low <= 0:
    raise errors.ConfigError(f'space {key}: {name} on a log scale needs '
                             f'low > 0, got {d.low}')
  if isinstance(d, Int) and not all(
      isinstance(v, int) and not isinstance(v, bool)
      for v in (d.low, d.high, d.step)):
    raise errors.ConfigError(f'space {key}: Int needs integer low, high and '
                             f'step, got {d.low!r}, {d.high!r}, {d.step!r}')
  step = getattr(d, 'step', None)
  if step is not None and not step > 0:
    raise errors.ConfigError(f'space {key}: step={step} must be > 0')


def _values_to_check(d):
  if isinstance(d, Categorical):
    return list(d.choices)
  if isinstance(d, (Uniform, LogUniform, Int)):
    return [d.low, d.high]
  return []


def check(space: Mapping[str, Any], config: ml_collections.ConfigDict,
          where: str = 'space'):
  """Raises ConfigError naming the first key that cannot work: not in the
  config, an empty or inverted range, a distribution or choice the key's type
  cannot hold, a `when` on a key not drawn before it."""
  probe = config.copy_and_resolve_references()  # Checks on a copy.
  seen = []
  for key, d in space.items():
    if not isinstance(key, str):
      raise errors.ConfigError(f'{where}: keys are dotted config names, got '
                               f'{key!r}')
    if not isinstance(d, _Distribution):
      raise errors.ConfigError(
          f'{where} {key}: {d!r} is not a distribution; use Uniform, '
          'LogUniform, Int, Categorical or Derived of detector.tune.space')
    try:
      kind = key_type(config, key)
    except KeyError as e:
      raise errors.ConfigError(f'{where} {key}: the config has no key '
                               f'{e.args[0]}') from None
    for other in (d.when or {}):
      if other not in seen:
        raise errors.ConfigError(
            f'{where} {key}: its condition names {other!r}, which is not a key '
            'drawn before it in the space')
    if isinstance(d, (Uniform, LogUniform, Int)):
      _check_range(key, d)
    if isinstance(d, Categorical):
      if isinstance(d.choices, (str, bytes)) or not len(d.choices):
        raise errors.ConfigError(f'{where} {key}: Categorical needs a '
                                 'non-empty list of choices')
      encoded = [encode(c) for c in d.choices]
      if len(set(map(repr, encoded))) != len(encoded):
        raise errors.ConfigError(f'{where} {key}: repeated choices in '
                                 f'{list(d.choices)}')
    if not d.fits(kind):
      raise errors.ConfigError(
          f'{where} {key}: config.{key} holds a {kind.__name__}, which '
          f'{type(d).__name__} does not draw')
    for value in _values_to_check(d):
      try:
        with probe.unlocked():
          assign(probe, key, value)
      except (TypeError, ValueError) as e:
        raise errors.ConfigError(
            f'{where} {key}: {value!r} cannot be set in config.{key} '
            f'({kind.__name__}): {e}') from None
    seen.append(key)
  probe = config.copy_and_resolve_references()
  _check_derived(space, probe, where)


def _check_derived(space, probe, where):
  """Each Derived function runs on the config's own values and fits its key."""
  for key, d in space.items():
    if isinstance(d, Derived):
      try:
        value = d.fn(probe)
        with probe.unlocked():
          assign(probe, key, value)
      except Exception as e:  # pylint: disable=broad-except
        raise errors.ConfigError(f'{where} {key}: Derived fails on the '
                                 f'config: {type(e).__name__}: {e}') from None


def defaults(space: Mapping[str, Any], config) -> Dict[str, Any]:
  """The config's own values of the searched keys, as Optuna parameters
  (those whose condition holds), for enqueueing the unchanged config."""
  values, params = {}, {}
  for key, d in space.items():
    if isinstance(d, Derived) or not holds(d.when, values):
      continue
    value = get(config, key)
    values[key] = value
    params[key] = encode(value) if isinstance(d, Categorical) else value
  return params


def check_params(space: Mapping[str, Any], params: Mapping[str, Any],
                 where: str = 'baseline'):
  """Raises ConfigError unless each of `params` (Optuna's form) lies in its
  key's distribution."""
  for key, value in params.items():
    d = space.get(key)
    if d is None or isinstance(d, Derived):
      raise errors.ConfigError(f'{where}: {key} is not a searched key of the '
                               'space')
    if isinstance(d, Categorical):
      ok = value in [encode(c) for c in d.choices]
    else:
      ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
            and d.low <= value <= d.high)
    if not ok:
      raise errors.ConfigError(f'{where}: {key}={value!r} is outside the '
                               f'space\'s {d}')


def params_from_values(space: Mapping[str, Any], values: Mapping[str, Any],
                       where: str) -> Dict[str, Any]:
  """{key: value} as a user writes it (JSON: lists for tuples) -> Optuna's
  parameters, checked against the space."""
  params = {}
  for key, value in values.items():
    d = space.get(key)
    if isinstance(value, list):
      value = tuple(value)
    params[key] = encode(value) if isinstance(d, Categorical) else value
  check_params(space, params, where)
  return params


def _suggest(trial, key, d):
  if isinstance(d, Uniform):
    return trial.suggest_float(key, d.low, d.high, step=d.step)
  if isinstance(d, LogUniform):
    return trial.suggest_float(key, d.low, d.high, log=True)
  if isinstance(d, Int):
    return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
  return decode(d, trial.suggest_categorical(key, [encode(c) for c in
                                                   d.choices]))


def suggest(trial, space: Mapping[str, Any]) -> Dict[str, Any]:
  """Draws the trial's values through Optuna; returns {key: config value}
  for every key set, Derived ones included, in the space's order."""
  values = {}
  for key, d in space.items():
    if not holds(d.when, values):
      continue
    if isinstance(d, Derived):
      continue
    values[key] = _suggest(trial, key, d)
  return values


def values_from_params(space: Mapping[str, Any],
                       params: Mapping[str, Any]) -> Dict[str, Any]:
  """A finished trial's Optuna parameters -> {key: config value}."""
  values = {}
  for key, d in space.items():
    if key in params and not isinstance(d, Derived):
      values[key] = (decode(d, params[key]) if isinstance(d, Categorical)
                     else params[key])
  return values


def apply(config: ml_collections.ConfigDict, space: Mapping[str, Any],
          values: Mapping[str, Any]) -> Dict[str, Any]:
  """Sets `values` in the (unlocked) config, then the Derived keys whose
  condition holds; returns every value set."""
  out = dict(values)
  for key, value in values.items():
    assign(config, key, value)
  for key, d in space.items():
    if isinstance(d, Derived) and holds(d.when, out):
      out[key] = d.fn(config)
      assign(config, key, out[key])
  return out
