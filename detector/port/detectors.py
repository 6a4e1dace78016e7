"""Whole detectors (backbone, neck, head) into the project's weights file.

A source module that converts detectors has, beside or instead of `ARCHS`,
  DETECTORS: {arch: DetectorSpec} -- the model each converts into;
  target(name, arch) and layout(array, path, arch) as for backbones (see
    `detector.port.common`), with paths under `backbone/`, `neck/`, `head/`;
  read(path) and download(arch).
`port` below checks and writes the file; `port_workdir` writes one of this
project's own training workdirs (`--source=workdir`). Its metadata adds to the backbone
file's (`detector.port.weights`):
  kind: 'detector';
  model: `config.model` of the converted detector (architecture, anchors,
    box coding, decoding settings), which `config.init_from` checks a config
    against and `--mode=evaluate` can run as it is;
  labels: the class names, one per output class; label_ids: the dataset's
    category id of each (COCO's: index 0 of torchvision's 91 classes is its
    unused background, effdet's 90 are ids 1-90; both name the ten ids COCO
    never used 'N/A').
"""

import dataclasses
import os
from typing import Any, Callable, Dict, List

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from detector import errors

from detector.models import detector as detector_lib
from detector.port import common
from detector.port import weights

COCO_LABELS = os.path.join(os.path.dirname(__file__), 'coco_labels.txt')


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
  """What one converted detector becomes.

  model: a function returning `config.model` (unlocked) of the detector,
  num_classes included. labels / label_ids: per output class. preprocessing:
  `image_size` (the published input side), `mean` and `std` (RGB, 0-255).
  norm_epsilon: its BatchNorms'.
  """
  model: Callable[[], ml_collections.ConfigDict]
  labels: List[str]
  label_ids: List[int]
  preprocessing: Dict[str, Any]
  norm_epsilon: float


def coco_labels(first_id: int) -> List[str]:
  """COCO's category names by id 0..90 (0 '__background__', unused ids
  'N/A'), from `first_id` on: 0 for torchvision's 91 classes, 1 for 90."""
  with open(COCO_LABELS) as f:
    names = [line.rstrip('\n') for line in f]
  assert len(names) == 91, COCO_LABELS
  return names[first_id:]


def expected_shapes(model_config: ml_collections.ConfigDict):
  """{collection: {path: shape}} of the detector's variables."""
  model = detector_lib.build(model_config, train=False)
  size = 2 * model.required_stride
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, size, size, 3)))
  return {c: {p: tuple(v.shape) for p, v in weights.flatten(dict(shapes[c])).items()}
          for c in shapes}


def metadata(source: str, arch: str, origin: str, spec: DetectorSpec):
  model = spec.model()
  assert model.num_classes == len(spec.labels) == len(spec.label_ids), arch
  return _metadata(source, arch, origin, model, spec.labels, spec.label_ids,
                   spec.preprocessing, spec.norm_epsilon)


def _metadata(source, arch, origin, model, labels, label_ids, preprocessing,
              norm_epsilon):
  """A detector file's metadata (module docstring); `model` is its
  `config.model`, completed here with the epsilon and pixel statistics."""
  model = weights.json_lists(model.to_dict())
  model.update(norm_epsilon=norm_epsilon, pixel_mean=list(preprocessing['mean']),
               pixel_std=list(preprocessing['std']))
  return dict(
      kind='detector', arch=arch, source=source,
      origin=os.path.basename(os.path.normpath(origin)),
      backbone=model['backbone'],
      # What the weights depend on (not the training-time drop rates).
      backbone_kwargs={k: v for k, v in model[model['backbone']].items()
                       if 'drop' not in k},
      num_classes=len(labels), norm_epsilon=norm_epsilon,
      preprocessing=dict(preprocessing), labels=list(labels),
      label_ids=[int(i) for i in label_ids], model=model)


def model_config(meta: Dict[str, Any]) -> ml_collections.ConfigDict:
  """A detector file's `config.model`, as a ConfigDict (unlocked)."""
  return ml_collections.ConfigDict(weights.config_tuples(meta['model']))


def port(module, source: str, arch: str, output: str, tensors, origin: str):
  """Converts a detector's `tensors` and writes `output`; returns the
  metadata written."""
  spec = module.DETECTORS[arch]
  meta = metadata(source, arch, origin, spec)
  converted = common.convert(
      tensors, expected_shapes(model_config(meta)), origin,
      target=lambda name: module.target(name, arch),
      layout=getattr(module, 'layout', common.torch_layout), arch=arch)
  variables = {c: weights.unflatten(v) for c, v in converted.items() if v}
  weights.save(output, variables, meta)
  return meta


def port_workdir(path: str, output: str, step=None):
  """A training workdir's detector (its latest checkpoint, EMA weights when
  kept) as a whole-detector file: to share it, or to fine-tune from it."""
  from detector.predict import jax_backend  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    raise errors.ConfigError(f'--input={path}: not a training workdir')
  backend = jax_backend.load_workdir(path, step)
  info = backend.info
  if info.task != 'detection':
    raise errors.ConfigError(f'--input={path}: a {info.task} workdir; '
                             '--source=workdir converts detectors')
  model = ml_collections.ConfigDict(info.config['model'])
  meta = _metadata(
      'workdir', f'workdir step {info.step}', path, model, info.class_names,
      info.category_ids,
      dict(image_size=max(info.input_size),
           mean=list(model.pixel_mean or common.IMAGENET_MEAN),
           std=list(model.pixel_std or common.IMAGENET_STD)),
      model.norm_epsilon if model.norm_epsilon is not None else 1e-5)
  variables = jax.tree_util.tree_map(np.asarray, dict(backend.variables))
  weights.save(output, variables, meta)
  return meta
