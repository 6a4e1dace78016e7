"""The JAX backends: a training workdir's checkpoint, and a weights file from
`python -m detector.port` (an ImageNet classifier or a whole detector).

Both run one jitted function per batch size (`batch_sizes`), on uint8 images
already preprocessed by the host, and return the outputs of
`detector.predict.base`. `serving_fn` is that function with the variables
as an argument (`detector.export.network.whole` rebuilds it for exports).
"""

import json
import os
from typing import Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from detector import checkpoints
from detector import errors
from detector import tasks
from detector.predict import base

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


class JaxBackend(base.Backend):
  """`fn(variables, images) -> outputs`, jitted once per batch size."""
  batch_sizes = BATCH_SIZES

  def __init__(self, info: base.ModelInfo, fn: Callable, variables):
    self.info = info
    self.serving_fn = fn
    self.variables = variables
    self._jitted = jax.jit(fn)

  def run(self, images: np.ndarray):
    out = self._jitted(self.variables, jnp.asarray(images, jnp.uint8))
    return {k: np.asarray(v) for k, v in out.items()}


def load_workdir(path: str, step: Optional[int] = None) -> JaxBackend:
  """The model of a training workdir at its latest checkpoint (or `step`),
  with the EMA weights when the run kept them.

  Raises:
    errors.ConfigError: no checkpoint (or not that step) in the workdir, or
      a checkpoint its config cannot rebuild.
  """
  from detector import train  # pylint: disable=g-import-not-at-top
  classes = _read_classes(path)
  mngr, step = _checkpoint_step(path, step)
  try:
    meta = checkpoints.read_meta(mngr, step)
    config = _config_of(meta, path)
    s = train.build_setup(config, classes['class_names'], total_steps=1)
    state = checkpoints.restore_step(mngr, step, s.abstract_state)
  finally:
    mngr.close()
  task = s.task
  input_size = tuple(int(v) for v in config.eval_image_size)
  model_config = s.model_config
  serve = workdir_fn(task, s.eval_model, model_config, input_size)
  info = base.ModelInfo(
      task=task.name, class_names=tuple(classes['class_names']),
      category_ids=tuple(int(i) for i in classes['category_ids']),
      input_size=input_size, preprocessing=_preprocessing(config),
      max_detections=(int(model_config.max_detections)
                      if task.name == tasks.Detection.name else 0),
      step=int(step), source=os.path.abspath(path), format='jax',
      config=json.loads(config.to_json_best_effort()))
  return JaxBackend(info, serve, state.eval_variables())


def workdir_fn(task, model, model_config, input_size) -> Callable:
  """`(variables, images) -> outputs` of a workdir's `task` and `model`."""

  def serve(variables, images):
    out = task.predict(model, variables, images, model_config)
    if task.name == tasks.Detection.name:
      return base.detection_outputs(out['boxes'], out['scores'],
                                    out['classes'], out['valid'], input_size)
    return {'probabilities': out['probabilities'].astype(jnp.float32)}
  return serve


def workdir_config(path: str, step: Optional[int] = None
                   ) -> ml_collections.ConfigDict:
  """The config saved with a workdir's latest checkpoint (or `step`).

  Raises:
    errors.ConfigError: no such checkpoint.
  """
  mngr, step = _checkpoint_step(path, step)
  try:
    return _config_of(checkpoints.read_meta(mngr, step), path)
  finally:
    mngr.close()


def _read_classes(path):
  file = os.path.join(path, 'classes.json')
  if not os.path.isfile(file):
    raise errors.ConfigError(f'{path}: no classes.json; not a training '
                             'workdir (or it never started training)')
  with open(file) as f:
    return json.load(f)


def _checkpoint_step(path, step):
  directory = os.path.join(path, 'checkpoints')
  if not os.path.isdir(directory):
    raise errors.ConfigError(f'{path}: no checkpoints/ directory; train first '
                             '(main.py --workdir=...)')
  mngr = checkpoints.manager(path, keep=1, every_steps=1)
  steps = sorted(mngr.all_steps())
  if not steps or (step is not None and step not in steps):
    mngr.close()
    wanted = 'a checkpoint' if step is None else f'checkpoint step {step}'
    raise errors.ConfigError(f'{path}: no {wanted} in {directory} (steps: '
                             f'{steps or "none"})')
  return mngr, steps[-1] if step is None else step


def _config_of(meta, path) -> ml_collections.ConfigDict:
  """The run's config from a checkpoint's meta, its model as resolved then."""
  config = ml_collections.ConfigDict(json.loads(meta['config']))
  if 'model_config' in meta:  # Absent from checkpoints of older versions.
    config.model = ml_collections.ConfigDict(json.loads(meta['model_config']))
    config.init_from = ''  # Already resolved into the model config.
  elif config.init_from and not os.path.exists(config.init_from):
    raise errors.ConfigError(
        f'{path}: its checkpoints predate the model config beside them, and '
        f'config.init_from={config.init_from} (which completes the model) is '
        'gone; restore that file')
  return config


def _preprocessing(config) -> dict:
  if config.get('task', tasks.Detection.name) == tasks.Detection.name:
    return {'kind': 'fit_and_pad'}
  return {'kind': 'center_crop',
          'crop_fraction': float(config.input.eval_crop_fraction)}


class _NormalisedClassifier(nn.Module):
  """A weights file's backbone on uint8 images: its mean and std inside."""
  backbone: nn.Module
  mean: Tuple[float, ...]
  std: Tuple[float, ...]

  @nn.compact
  def __call__(self, images):
    x = (images.astype(jnp.float32) - jnp.asarray(self.mean)) / jnp.asarray(
        self.std)
    return self.backbone(x)['logits']


def load_weights(path: str) -> JaxBackend:
  """A classifier or a whole detector from a `python -m detector.port`
  weights file."""
  from detector import port  # pylint: disable=g-import-not-at-top
  from detector.port import weights as weights_lib  # pylint: disable=g-import-not-at-top
  variables, meta = weights_lib.load(path)
  if meta.get('kind') == 'detector':
    return _detector_weights(path, variables, meta)
  prep = meta['preprocessing']
  names = meta.get('labels') or port.imagenet_labels()
  serve = weights_fn(meta)
  size = int(prep['image_size'])
  info = base.ModelInfo(
      task=tasks.Classification.name, class_names=tuple(names),
      category_ids=tuple(range(len(names))), input_size=(size, size),
      preprocessing={'kind': 'resize_and_crop', 'resize': int(prep['resize']),
                     'interpolation': prep['interpolation']},
      source=os.path.abspath(path), format='jax', config=meta)
  return JaxBackend(info, serve, variables)


def _detector_weights(path, variables, meta) -> JaxBackend:
  """A converted detector at its published input size (square, fit and
  pad), its decoding settings as converted."""
  from detector.port import detectors  # pylint: disable=g-import-not-at-top
  model_config = detectors.model_config(meta)
  model_config.lock()
  task = tasks.Detection(ml_collections.ConfigDict(
      {'task': tasks.Detection.name, 'model': model_config}))
  model = task.build_model(model_config, train=False)
  size = int(meta['preprocessing']['image_size'])
  info = base.ModelInfo(
      task=task.name, class_names=tuple(meta['labels']),
      category_ids=tuple(int(i) for i in meta['label_ids']),
      input_size=(size, size), preprocessing={'kind': 'fit_and_pad'},
      max_detections=int(model_config.max_detections),
      source=os.path.abspath(path), format='jax', config=meta)
  return JaxBackend(info, workdir_fn(task, model, model_config, (size, size)),
                    variables)


def weights_fn(meta: dict, depthwise_impl: Optional[str] = None) -> Callable:
  """`(variables, images) -> {'probabilities'}` of a weights file with
  metadata `meta`; `depthwise_impl` overrides the backbone's (EfficientNet)."""
  from detector import port  # pylint: disable=g-import-not-at-top
  kwargs = dict(meta['backbone_kwargs'])
  backbone = port.model_for(meta)
  if depthwise_impl and 'depthwise_impl' in backbone.__dataclass_fields__:
    backbone = port.model_for(dict(meta, backbone_kwargs=dict(
        kwargs, depthwise_impl=depthwise_impl)))
  prep = meta['preprocessing']
  model = _NormalisedClassifier(backbone, tuple(prep['mean']),
                                tuple(prep['std']))

  def serve(variables, images):
    logits = model.apply({k: {'backbone': v} for k, v in variables.items()},
                         images)
    return {'probabilities': jax.nn.softmax(logits.astype(jnp.float32))}
  return serve
