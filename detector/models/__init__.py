"""Models, found by name from the config.

`config.model.backbone = 'cnn'` resolves through the tables below; adding a
backbone, neck or head means adding a file and one line here.
"""

import importlib

from detector import errors

BACKBONES = {
    'cnn': 'detector.models.backbones.cnn:CNN',
    'resnet': 'detector.models.backbones.resnet:ResNet',
    'efficientnet': 'detector.models.backbones.efficientnet:EfficientNet',
}
NECKS = {
    'fpn': 'detector.models.necks.fpn:FPN',
    'bifpn': 'detector.models.necks.bifpn:BiFPN',
}
HEADS = {  # Modules with `Options` and `Head`; see heads/__init__.py.
    'centernet': 'detector.models.heads.centernet',
    'retinanet': 'detector.models.heads.retinanet',
    'efficientdet': 'detector.models.heads.efficientdet',
}


def _lookup(table, kind, name):
  if name not in table:
    raise errors.ConfigError(f'config.model.{kind}={name!r} is not known; '
                             f'choose one of {sorted(table)}')
  module, _, attr = table[name].partition(':')
  module = importlib.import_module(module)
  return getattr(module, attr) if attr else module


def backbone_class(name):
  return _lookup(BACKBONES, 'backbone', name)


def neck_class(name):
  return _lookup(NECKS, 'neck', name)


def head_module(name):
  """The Python module implementing head `name` (`Options`, `Head`)."""
  return _lookup(HEADS, 'head', name)
