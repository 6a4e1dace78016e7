"""Converters of ImageNet checkpoints into the project's weights file.

    python -m detector.port --source=torchvision --arch=resnet50 \
        [--input=FILE] --output=FILE

Sources converted so far: `torchvision` ResNets (resnet18, 34, 50, 101, 152).
The file format is described in `detector.port.weights`; loading it needs
neither PyTorch nor Keras. PyTorch files are read with `weights_only=True`
(no pickled code runs). This package never imports TensorFlow: torch 2.14
(through triton) crashes when loaded into a process that already holds it.
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp

from detector import errors
from detector.models import layers
from detector.models.backbones import resnet
from detector.port import torchvision_resnet
from detector.port import weights

TORCHVISION_RESNETS = {f'resnet{d}': d for d in sorted(resnet.STAGES)}
SOURCES = {'torchvision': sorted(TORCHVISION_RESNETS)}


def model_for(arch: str):
  """The Flax classifier that a converted `arch` file initialises."""
  if arch in TORCHVISION_RESNETS:
    return resnet.ResNet(depth=TORCHVISION_RESNETS[arch], num_classes=1000,
                         norm=layers.make_norm('batch_norm', train=False))
  raise errors.ConfigError(f'--arch={arch!r}: expected one of '
                           f'{sorted(TORCHVISION_RESNETS)}')


def expected_shapes(arch: str) -> Dict[str, Dict[str, tuple]]:
  shapes = jax.eval_shape(model_for(arch).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 64, 64, 3)))
  return {c: {p: tuple(v.shape) for p, v in weights.flatten(dict(shapes[c])).items()}
          for c in ('params', 'batch_stats')}


def _read_torch(path: str):
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise errors.ConfigError(f'--input={path}: no such file') from None
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(
        f'--input={path}: not a PyTorch state dict loadable with '
        f'weights_only=True ({type(e).__name__}: {str(e)[:200]})') from None
  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']
  if not isinstance(obj, dict):
    raise errors.ConfigError(f'--input={path}: holds a {type(obj).__name__}, '
                             'expected a state dict of tensors')
  return {k: v.detach().float().numpy() for k, v in obj.items()
          if hasattr(v, 'detach')}


def port(source: str, arch: str, output: str, input_path: Optional[str] = None):
  """Converts and writes `output`; returns the metadata written."""
  if source not in SOURCES:
    raise errors.ConfigError(f'--source={source!r}: converters exist for '
                             f'{sorted(SOURCES)}')
  if arch not in SOURCES[source]:
    raise errors.ConfigError(f'--arch={arch!r} is not a {source} architecture '
                             f'this tool converts: {SOURCES[source]}')
  if input_path:
    state, origin = _read_torch(input_path), input_path
  else:  # Asks torchvision to download its default ImageNet weights.
    import torchvision  # pylint: disable=g-import-not-at-top
    model = torchvision.models.get_model(arch, weights='DEFAULT')
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    origin = f'torchvision.models.{arch}(weights="DEFAULT")'
  converted = torchvision_resnet.convert(state, expected_shapes(arch), origin)
  variables = {c: weights.unflatten(v) for c, v in converted.items()}
  metadata = dict(arch=arch, source=source, origin=origin,
                  **torchvision_resnet.PREPROCESSING)
  weights.save(output, variables, metadata)
  return metadata
