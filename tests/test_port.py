"""Ported torchvision ResNets compute what the originals compute.

The originals are torchvision's own models with random weights and random
BatchNorm statistics (so every tensor matters), run in eval mode on the same
input; the converted file goes through the real CLI and loads without torch.
"""

import subprocess
import sys

import detector  # pylint: disable=unused-import
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')  # In requirements-test.txt: never skipped in CI.
torchvision = pytest.importorskip('torchvision')

from detector import errors  # pylint: disable=g-import-not-at-top
from detector import port
from detector.port import weights


def _random_torchvision(arch, seed):
  torch.manual_seed(seed)
  model = torchvision.models.get_model(arch, weights=None).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  return model


def _torch_features(model, x):
  """C2..C5 and logits of a torchvision ResNet, NHWC numpy."""
  with torch.no_grad():
    y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = {}
    for level, layer in zip((2, 3, 4, 5), (model.layer1, model.layer2,
                                           model.layer3, model.layer4)):
      y = layer(y)
      out[level] = y.permute(0, 2, 3, 1).numpy()
    out['logits'] = model(x).numpy()
  return out


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_converted_resnet_equals_torchvision(tmp_path, arch):
  model = _random_torchvision(arch, seed=0)
  src = tmp_path / f'{arch}.pth'
  torch.save(model.state_dict(), src)
  out = tmp_path / f'{arch}.npz'
  # The real command line, in a fresh process.
  result = subprocess.run(
      [sys.executable, '-m', 'detector.port', '--source=torchvision',
       f'--arch={arch}', f'--input={src}', f'--output={out}'],
      capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  variables, metadata = weights.load(str(out))
  assert metadata['arch'] == arch and metadata['image_size'] == 224
  # Odd and even sizes: padding must match PyTorch's on both.
  for size in (64, 67):
    x = np.random.default_rng(size).normal(size=(2, 3, size, size)).astype(np.float32)
    expected = _torch_features(model, torch.from_numpy(x))
    got = port.model_for(arch).apply(variables, x.transpose(0, 2, 3, 1))
    for key, want in expected.items():
      scale = np.abs(want).max()
      np.testing.assert_allclose(np.asarray(got[key]), want, rtol=0,
                                 atol=2e-5 * max(scale, 1.0), err_msg=str(key))


def test_wrong_arch_names_the_tensors(tmp_path):
  src = tmp_path / 'r18.pth'
  torch.save(_random_torchvision('resnet18', 1).state_dict(), src)
  with pytest.raises(errors.ConfigError,
                     match=r'layer1\.0\.conv1\.weight.*needs.*--arch'):
    port.port('torchvision', 'resnet50', str(tmp_path / 'x.npz'), str(src))


def test_pickled_code_is_not_run(tmp_path):
  """A file holding a whole pickled module is refused by weights-only loading."""
  src = tmp_path / 'model.pth'
  torch.save(_random_torchvision('resnet18', 2), src)
  with pytest.raises(errors.ConfigError, match='weights_only=True'):
    port.port('torchvision', 'resnet18', str(tmp_path / 'x.npz'), str(src))


def test_unknown_source_and_arch_fail_with_the_choices(tmp_path):
  with pytest.raises(errors.ConfigError, match=r"--source='caffe'"):
    port.port('caffe', 'resnet50', str(tmp_path / 'x.npz'))
  with pytest.raises(errors.ConfigError, match=r"--arch='resnet51'"):
    port.port('torchvision', 'resnet51', str(tmp_path / 'x.npz'))
