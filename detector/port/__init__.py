"""Converters of published checkpoints into the project's weights file:
ImageNet backbones, and whole COCO detectors (`detector.port.detectors`).

    python -m detector.port --source=SOURCE --arch=ARCH [--input=FILE] --output=FILE

Each source lives in `detector/port/source_<name>.py` (see `common` for what
one provides). The file format is described in `detector.port.weights`;
loading it needs neither PyTorch nor Keras. Converting a file needs neither
either: PyTorch files are read by `detector.port.torch_file` (no pickled code
runs), Keras files by h5py. Only `download` (no --input) needs the source's
library, and says which to install when it is missing. The torch sources
never import TensorFlow: torch 2.14 (through triton) crashes when loaded into
a process that already holds it.
"""

import importlib
import os
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp

from detector import errors
from detector import models
from detector.models import layers
from detector.port import common
from detector.port import detectors
from detector.port import weights

SOURCES = {
    'torchvision': 'detector.port.source_torchvision',
    'timm': 'detector.port.source_timm',
    'keras': 'detector.port.source_keras',
    'efficientnet_lite': 'detector.port.source_efficientnet_lite',
    'effdet': 'detector.port.source_effdet',
}

IMAGENET_LABELS = os.path.join(os.path.dirname(__file__), 'imagenet_labels.txt')


def source_module(source: str):
  if source not in SOURCES:
    raise errors.ConfigError(f'--source={source!r}: converters exist for '
                             f'{sorted(SOURCES) + ["workdir"]}')
  return importlib.import_module(SOURCES[source])


def spec_for(source: str, arch: str):
  """The `common.Spec` (a backbone) or `detectors.DetectorSpec` of `arch`."""
  module = source_module(source)
  archs = {**getattr(module, 'ARCHS', {}), **getattr(module, 'DETECTORS', {})}
  if arch not in archs:
    raise errors.ConfigError(f'--arch={arch!r} is not a {source} architecture '
                             f'this tool converts: {sorted(archs)}')
  return archs[arch]


def model_for(metadata: Dict[str, Any], norm_kind: str = 'batch_norm'):
  """The Flax classifier (eval mode) that a converted file initialises."""
  norm = layers.make_norm(norm_kind, train=False,
                          epsilon=metadata['norm_epsilon'])
  return models.backbone_class(metadata['backbone'])(
      num_classes=metadata['num_classes'], norm=norm,
      **metadata['backbone_kwargs'])


def expected_shapes(metadata: Dict[str, Any]) -> Dict[str, Dict[str, tuple]]:
  size = metadata['preprocessing']['image_size']
  shapes = jax.eval_shape(model_for(metadata).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, size, size, 3)))
  return {c: {p: tuple(v.shape) for p, v in weights.flatten(dict(shapes[c])).items()}
          for c in shapes}


def imagenet_labels():
  with open(IMAGENET_LABELS) as f:
    labels = [line.rstrip('\n') for line in f]
  assert len(labels) == 1000, IMAGENET_LABELS
  return labels


def port(source: str, arch: str, output: str, input_path: Optional[str] = None):
  """Converts and writes `output`; returns the metadata written."""
  if source == 'workdir':  # This project's own detector, from its checkpoint.
    if not input_path:
      raise errors.ConfigError('--source=workdir needs --input=WORKDIR')
    return detectors.port_workdir(input_path, output)
  module = source_module(source)
  spec = spec_for(source, arch)
  if input_path:
    tensors, origin = module.read(input_path), input_path
  else:  # Asks the source library to download its published weights.
    tensors, origin = module.download(arch)
  if isinstance(spec, detectors.DetectorSpec):
    return detectors.port(module, source, arch, output, tensors, origin)
  metadata = dict(arch=arch, source=source, origin=os.path.basename(origin),
                  backbone=spec.backbone, backbone_kwargs=dict(spec.kwargs),
                  num_classes=1000, norm_epsilon=spec.norm_epsilon,
                  preprocessing=dict(spec.preprocessing),
                  labels=imagenet_labels())
  converted = common.convert(
      tensors, expected_shapes(metadata), origin,
      target=lambda name: module.target(name, arch),
      layout=getattr(module, 'layout', common.torch_layout), arch=arch)
  variables = {c: weights.unflatten(v) for c, v in converted.items() if v}
  weights.save(output, variables, metadata)
  return metadata
