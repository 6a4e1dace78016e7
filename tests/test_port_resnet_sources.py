"""Ported timm and Keras ResNets compute what the originals compute.

The originals are the libraries' own models with random weights and random
BatchNorm statistics (so every tensor matters), in inference mode, on the same
inputs. timm runs in a separate process (the session's `originals`, made by
`torch_reference.py`: torch cannot be imported beside TensorFlow); Keras runs
here. Every conversion goes through the real command line, which imports
neither library for reading a file.
"""

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from detector import port
from detector.port import source_keras
from detector.port import source_timm
import port_helpers

SIZES = (64, 67)  # Even and odd: padding must match the originals' on both.
KERAS_FEATURES = {2: 'conv2_block3_out', 3: 'conv3_block4_out',
                  4: 'conv4_block6_out', 5: 'conv5_block3_out'}


def _assert_close(got, want, what):
  """max|got - want| <= 1e-4 max|want| (float32 through ~50 layers)."""
  got = np.asarray(got)
  assert got.shape == want.shape, what
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=1e-4 * np.abs(want).max(), err_msg=what)


# timm.


pytestmark = pytest.mark.xdist_group('torch_originals')


@pytest.fixture(scope='module')
def timm_reference(originals):
  out = originals / 'timm'
  with open(out / 'pretrained_cfg.json') as f:
    cfgs = json.load(f)
  return out / 'resnet50', np.load(out / 'resnet50' / 'expected.npz'), cfgs


@pytest.mark.parametrize('filename', ['state_dict.pth', 'state_dict.safetensors'])
def test_converted_timm_resnet50_equals_timm(timm_reference, filename, tmp_path):
  directory, expected, _ = timm_reference
  variables, metadata = port_helpers.convert(
      'timm', 'resnet50', directory / filename, tmp_path / 'resnet50.npz')
  assert metadata['source'] == 'timm' and metadata['origin'] == filename
  model = port.model_for(metadata)
  for size in SIZES:
    x = expected[f'x{size}']
    got = model.apply(variables, x.transpose(0, 2, 3, 1))
    for key in (2, 3, 4, 5, 'logits'):
      name = f'x{size}_{key if key == "logits" else f"C{key}"}'
      _assert_close(got[key], expected[name], name)


def test_timm_specs_follow_timm_pretrained_cfg(timm_reference):
  """Each ResNet Spec records its default tag's eval settings, as timm
  applies them, and its BatchNorm epsilon."""
  cfgs = timm_reference[2]
  archs = [a for a, s in source_timm.ARCHS.items() if s.backbone == 'resnet']
  assert archs
  for arch in archs:
    port_helpers.assert_follows_timm(arch, source_timm.ARCHS[arch], cfgs[arch])


# Keras.


def _randomise(model, rng):
  """Random biases, BatchNorm affines and statistics (Keras initialises them
  to constants); kernels keep their random initialisation."""
  for layer in model.layers:
    values = layer.get_weights()
    if not values:
      continue
    if type(layer).__name__ == 'BatchNormalization':
      c = values[0].shape
      values = [rng.uniform(0.5, 1.5, c), rng.uniform(-0.2, 0.2, c),
                rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 2.0, c)]
    else:
      values[1] = rng.uniform(-0.2, 0.2, values[1].shape)
    layer.set_weights([v.astype(np.float32) for v in values])


@pytest.fixture(scope='module')
def keras_reference(tmp_path_factory):
  """A random keras.applications ResNet50 saved in every format, and its
  logits and C2..C5 on RGB 0-255 images given in its own (caffe) form."""
  import keras  # pylint: disable=g-import-not-at-top
  from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('keras')
  keras.utils.set_random_seed(0)
  expected, model = {}, None
  for size in SIZES:  # include_top needs a fixed size: one model per size.
    sized = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3),
                                        classifier_activation=None)
    if model is None:
      model = sized
      _randomise(model, np.random.default_rng(0))
    else:
      sized.set_weights(model.get_weights())
    taps = keras.Model(sized.input, [sized.output] + [
        sized.get_layer(name).output for name in KERAS_FEATURES.values()])
    x = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3))
    x = x.astype(np.float32)
    caffe = keras.applications.resnet50.preprocess_input(x.copy())
    outputs = [keras.ops.convert_to_numpy(y) for y in taps(caffe, training=False)]
    expected[f'x{size}'] = x
    expected[f'x{size}_logits'] = outputs[0]
    for level, y in zip(KERAS_FEATURES, outputs[1:]):
      expected[f'x{size}_C{level}'] = y
  model.save_weights(str(out / 'resnet50.weights.h5'))
  with h5py.File(out / 'resnet50_legacy.h5', 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  model.save(str(out / 'resnet50.keras'))
  facts = dict(
      epsilons={layer.epsilon for layer in model.layers
                if type(layer).__name__ == 'BatchNormalization'},
      bgr_mean=-keras.applications.resnet50.preprocess_input(
          np.zeros((1, 1, 1, 3), np.float32))[0, 0, 0],
      tensors=source_keras.model_tensors(model))
  return out, expected, facts


@pytest.mark.parametrize('filename', ['resnet50.weights.h5', 'resnet50_legacy.h5'])
def test_converted_keras_resnet50_equals_keras(keras_reference, filename,
                                               tmp_path):
  directory, expected, facts = keras_reference
  variables, metadata = port_helpers.convert(
      'keras', 'ResNet50', directory / filename, tmp_path / 'resnet50.npz')
  assert metadata['norm_epsilon'] == 1.001e-5 and facts['epsilons'] == {1.001e-5}
  pre = metadata['preprocessing']
  # Keras subtracts a BGR mean from BGR pixels; ours is the same mean in RGB.
  np.testing.assert_allclose(pre['mean'], facts['bgr_mean'][::-1], rtol=1e-6)
  assert pre['std'] == [1.0, 1.0, 1.0]
  model = port.model_for(metadata)
  for size in SIZES:
    x = (expected[f'x{size}'] - np.float32(pre['mean'])) / np.float32(pre['std'])
    got = model.apply(variables, x)
    for key in (2, 3, 4, 5, 'logits'):
      name = f'x{size}_{key if key == "logits" else f"C{key}"}'
      _assert_close(got[key], expected[name], name)


def _text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def _keras2_style_copy(src, dst):
  """The legacy file as Keras 2 writes it: weight names end in ':0'."""
  shutil.copy(src, dst)
  with h5py.File(dst, 'r+') as f:
    for layer in f.attrs['layer_names']:
      group = f[layer]
      names = [_text(n) for n in group.attrs['weight_names']]
      for name in names:
        group.move(name, name + ':0')
      if names:
        group.attrs['weight_names'] = [(n + ':0').encode() for n in names]


def test_keras_formats_read_alike(keras_reference, tmp_path):
  """Keras 3, legacy (Keras 3 and Keras 2 naming) and .keras files give the
  same tensors, named as the model names its variables (which `download`
  relies on)."""
  directory, _, facts = keras_reference
  want = facts['tensors']
  _keras2_style_copy(directory / 'resnet50_legacy.h5', tmp_path / 'keras2.h5')
  for path in (directory / 'resnet50.weights.h5', directory / 'resnet50_legacy.h5',
               directory / 'resnet50.keras', tmp_path / 'keras2.h5'):
    got = source_keras.read(str(path))
    assert sorted(got) == sorted(want), path
    for name, value in want.items():
      np.testing.assert_array_equal(got[name], value, err_msg=f'{path}: {name}')


# Errors.


def _layer_group(f, layer):
  """The Keras 3 group of the layer named `layer`."""
  for key in f['layers']:
    if f[f'layers/{key}/vars'].attrs.get('name') == layer:
      return f'layers/{key}'
  raise KeyError(layer)


def test_bad_files_fail_naming_what_is_wrong(keras_reference, tmp_path):
  directory = keras_reference[0]
  out = tmp_path / 'x.npz'
  keras3 = directory / 'resnet50.weights.h5'

  def fails(source, arch, path, *needles):
    result = port_helpers.port(f'--source={source}', f'--arch={arch}',
                               f'--input={path}', f'--output={out}')
    assert result.returncode == 2, result.stderr
    for needle in needles:
      assert needle in result.stderr, (needle, result.stderr)
    assert not out.exists()

  # The wrong arch: ResNet101 has 17 more blocks in stage 4 (18 variables each).
  fails('keras', 'ResNet101', keras3, '306 missing', 'stage4_block10/conv1',
        '--arch')
  # A layer missing from a damaged file.
  damaged = tmp_path / 'damaged.weights.h5'
  shutil.copy(keras3, damaged)
  with h5py.File(damaged, 'r+') as f:
    del f[_layer_group(f, 'conv3_block2_2_bn')]
  fails('keras', 'ResNet50', damaged, 'stage3_block1/conv2/norm/mean')
  # A tensor with no place in the model (a renamed classifier).
  renamed = tmp_path / 'renamed.h5'
  shutil.copy(directory / 'resnet50_legacy.h5', renamed)
  with h5py.File(renamed, 'r+') as f:
    f.move('predictions', 'logits')
    f['logits'].attrs['weight_names'] = [b'logits/kernel', b'logits/bias']
    f['logits'].move('predictions', 'logits')
    f.attrs['layer_names'] = [
        ('logits' if _text(n) == 'predictions' else _text(n)).encode()
        for n in f.attrs['layer_names']]
  fails('keras', 'ResNet50', renamed, 'logits/kernel', 'params/classifier/kernel')
  # A truncated file.
  truncated = tmp_path / 'truncated.weights.h5'
  with open(keras3, 'rb') as f:
    truncated.write_bytes(f.read(os.path.getsize(keras3) // 2))
  fails('keras', 'ResNet50', truncated, 'not a readable HDF5 file')
  # Files of another kind.
  fake = tmp_path / 'fake.safetensors'
  fake.write_bytes(b'\x00' * 64)
  fails('timm', 'resnet50', fake, 'not a safetensors file')
  fails('timm', 'resnet50', keras3, 'not a PyTorch state dict')
  fails('keras', 'ResNet50', fake, 'not a readable HDF5 file')
