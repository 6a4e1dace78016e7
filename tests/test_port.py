"""Ported torchvision ResNets compute what the originals compute.

The originals are torchvision's own models with random weights and random
BatchNorm statistics (so every tensor matters), run in eval mode on the same
inputs in a separate process (the session's `originals`, made by
`torch_reference.py`: torch cannot be imported beside TensorFlow); the
conversion goes through the real command line, and the converted file loads
here without torch.
"""

import os

import numpy as np
import pytest

from detector import port
from detector.port import weights
import port_helpers

pytestmark = pytest.mark.xdist_group('torch_originals')


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_converted_resnet_equals_torchvision(originals, tmp_path, arch):
  original = originals / 'torchvision' / arch / '0'
  expected = np.load(original / 'expected.npz')
  out = tmp_path / f'{arch}.npz'
  result = port_helpers.port('--source=torchvision', f'--arch={arch}',
                             f'--input={original / "state_dict.pth"}',
                             f'--output={out}')
  assert result.returncode == 0, result.stderr
  variables, metadata = weights.load(str(out))
  assert metadata['arch'] == arch
  assert metadata['preprocessing']['image_size'] == 224
  # Odd and even sizes: padding must match PyTorch's on both.
  for size in (64, 67):
    x = expected[f'x{size}']
    got = port.model_for(metadata).apply(variables, x.transpose(0, 2, 3, 1))
    for key in (2, 3, 4, 5, 'logits'):
      want = expected[f'x{size}_{key if key == "logits" else f"C{key}"}']
      scale = np.abs(want).max()
      np.testing.assert_allclose(np.asarray(got[key]), want, rtol=0,
                                 atol=2e-5 * max(scale, 1.0), err_msg=str(key))


def test_bad_inputs_fail_naming_what_is_wrong(originals, tmp_path):
  original = originals / 'torchvision' / 'resnet18' / '0'
  out = str(tmp_path / 'x.npz')
  # A resnet18 file converted as resnet50 names the mismatching tensors.
  result = port_helpers.port('--source=torchvision', '--arch=resnet50',
                             f'--input={original / "state_dict.pth"}',
                             f'--output={out}')
  assert result.returncode == 2
  assert 'layer1.0.conv1.weight' in result.stderr and '--arch' in result.stderr
  # A whole pickled module is refused, naming its class: no code runs.
  result = port_helpers.port('--source=torchvision', '--arch=resnet18',
                             f'--input={original / "model.pth"}',
                             f'--output={out}')
  assert result.returncode == 2
  assert 'refused to load torchvision.models.resnet.ResNet' in result.stderr
  assert 'weights_only=True' in result.stderr
  result = port_helpers.port('--source=caffe', '--arch=resnet50',
                             f'--output={out}')
  assert result.returncode == 2 and "--source='caffe'" in result.stderr
  result = port_helpers.port('--source=torchvision', '--arch=resnet51',
                             f'--output={out}')
  assert result.returncode == 2 and "--arch='resnet51'" in result.stderr
  assert not os.path.exists(out)
