"""Ported timm and Keras EfficientNets compute what the originals compute.

The originals are the libraries' own models with random weights and random
BatchNorm statistics (convs re-drawn He-normal so the logits depend on the
input), in inference mode, on the same inputs, saved in the library's own
formats. timm runs in a separate process (the session's `originals`, made by
`torch_reference.py`: torch cannot be imported beside TensorFlow); Keras runs
here. Every conversion goes through the real command line. Inputs are 64 and
67 px: TF SAME and symmetric padding differ at stride 2 between even and odd
sides.
"""

import functools
import json
import os
import shutil
from unittest import mock

import h5py
import jax
import numpy as np
import pytest

from detector import port
from detector.models.backbones import efficientnet
from detector.port import source_keras
from detector.port import source_timm
import port_helpers

SIZES = (64, 67)
# timm arch -> the file format its test converts.
TIMM_ARCHS = {'efficientnet_b0': 'state_dict.pth',
              'tf_efficientnet_b0': 'state_dict.safetensors',
              'tf_efficientnet_b2': 'state_dict.pth',
              'tf_efficientnet_lite0': 'state_dict.safetensors'}
TIMM_EFFICIENTNETS = [a for a, s in source_timm.ARCHS.items()
                      if s.backbone == 'efficientnet']
KERAS_ARCHS = ('EfficientNetB0', 'EfficientNetB2')


@functools.lru_cache(maxsize=None)
def _apply_for(metadata_json):
  """A jitted apply of the model a metadata (as JSON) describes, shared by
  the files that convert to the same model; keys become strings."""
  model = port.model_for(json.loads(metadata_json))
  return jax.jit(lambda v, x: {str(k): y for k, y in model.apply(v, x).items()})


def _outputs(variables, metadata, x):
  key = json.dumps({k: metadata[k] for k in ('backbone', 'backbone_kwargs',
                                             'norm_epsilon', 'num_classes')},
                   sort_keys=True)
  return {k: np.asarray(v) for k, v in _apply_for(key)(variables, x).items()}


def _assert_equal_to(expected, got, size):
  """C2..C5 and logits: max|got - want| <= 1e-4 max|want| (float32)."""
  for key in ('2', '3', '4', '5', 'logits'):
    name = f'x{size}_{"logits" if key == "logits" else "C" + key}'
    want = expected[name]
    assert got[key].shape == want.shape, name
    np.testing.assert_allclose(got[key], want, rtol=0,
                               atol=1e-4 * np.abs(want).max(), err_msg=name)
  # The logits depend on the input at least 10 times the tolerance, so
  # input-dependent errors (padding, a wrong kernel) show in them too.
  logits = expected[f'x{size}_logits']
  assert np.abs(logits[0] - logits[1]).max() > 1e-3 * np.abs(logits).max()


# timm.


pytestmark = pytest.mark.xdist_group('torch_originals')


@pytest.fixture(scope='module')
def timm_reference(originals):
  """Random timm originals of TIMM_ARCHS (among others), and the pretrained
  cfgs of every timm EfficientNet (plus efficientnet_b5's, to show why it is
  left out)."""
  out = originals / 'timm'
  with open(out / 'pretrained_cfg.json') as f:
    return out, json.load(f)


@pytest.mark.parametrize('arch', list(TIMM_ARCHS))
def test_converted_timm_efficientnet_equals_timm(timm_reference, arch,
                                                 tmp_path):
  directory, cfgs = timm_reference
  filename = TIMM_ARCHS[arch]
  variables, metadata = port_helpers.convert(
      'timm', arch, directory / arch / filename, tmp_path / f'{arch}.npz')
  assert metadata['origin'] == filename
  # The padding and epsilon the timm model itself has.
  same = 'Conv2dSame' in cfgs[arch]['conv_classes']
  assert metadata['backbone_kwargs'] == dict(
      variant=arch.split('_')[-1], padding='same' if same else 'symmetric')
  assert [metadata['norm_epsilon']] == cfgs[arch]['bn_epsilons']
  expected = np.load(directory / arch / 'expected.npz')
  for size in SIZES:
    got = _outputs(variables, metadata,
                   expected[f'x{size}'].transpose(0, 2, 3, 1))
    _assert_equal_to(expected, got, size)


def test_timm_efficientnet_specs_follow_timm(timm_reference):
  """Each Spec: its default tag's eval settings as timm applies them (resize
  floor(size / crop_pct), centre crop), the models' BatchNorm epsilon, TF
  SAME padding exactly where timm builds Conv2dSame, and the variant."""
  cfgs = timm_reference[1]
  for arch in TIMM_EFFICIENTNETS:
    spec, cfg = source_timm.ARCHS[arch], cfgs[arch]
    port_helpers.assert_follows_timm(arch, spec, cfg)
    same = 'Conv2dSame' in cfg['conv_classes']
    assert spec.kwargs == dict(variant=arch.split('_')[-1],
                               padding='same' if same else 'symmetric'), arch
  # Left out: resize-then-crop cannot express timm's 'squash'.
  assert 'efficientnet_b5' not in source_timm.ARCHS
  assert cfgs['efficientnet_b5']['crop_mode'] == 'squash'


def test_timm_wrong_arch_or_padding_is_caught(timm_reference, tmp_path):
  directory = timm_reference[0]
  b2 = directory / 'tf_efficientnet_b2' / 'state_dict.pth'
  # A b2 file converted as b0 fails, naming the tensors that do not fit.
  result = port_helpers.port('--source=timm', '--arch=tf_efficientnet_b0',
                             f'--input={b2}', f'--output={tmp_path / "wrong.npz"}')
  assert result.returncode == 2, result.stderr
  # b2's stage 3 is 48 channels wide (b0's 40); its stage 1 has 2 blocks.
  assert ('blocks.2.0.conv_pwl.weight (48, 144, 1, 1) -> '
          'stage3_block0/project/conv/kernel needs (1, 1, 144, 40)'
          in result.stderr)
  assert 'blocks.0.1.conv_dw.weight' in result.stderr
  assert '--arch' in result.stderr
  assert not os.path.exists(tmp_path / 'wrong.npz')
  # A tf_ file converted as its PyTorch-trained twin has the same shapes and
  # converts, but symmetric padding (and eps 1e-5) computes something else:
  # the comparison above would catch a wrong padding choice.
  variables, metadata = port_helpers.convert(
      'timm', 'efficientnet_b0',
      directory / 'tf_efficientnet_b0' / 'state_dict.pth', tmp_path / 'b0.npz')
  expected = np.load(directory / 'tf_efficientnet_b0' / 'expected.npz')
  got = _outputs(variables, metadata, expected['x64'].transpose(0, 2, 3, 1))
  want = expected['x64_logits']
  assert np.abs(got['logits'] - want).max() > 1e-2 * np.abs(want).max()


# Keras.


def _feature_layers(variant):
  """Keras layer names whose outputs are C2..C5: the last block of stages
  2, 3, 5 and 7 (its residual add, or its projection BN in a one-block
  stage, which has no residual)."""
  stages = efficientnet.stages(variant)
  names = []
  for s in (2, 3, 5, 7):
    n = stages[s - 1].blocks
    names.append(f'block{s}{chr(ord("a") + n - 1)}_add' if n > 1
                 else f'block{s}a_project_bn')
  return names


def _randomise(model, rng):
  """Random BatchNorm affines and statistics, He-normal conv and dense
  kernels over their own fan-in, random biases; the Normalization layer as
  the keras.applications ImageNet file holds it (mean, and the standard
  deviation as its variance)."""
  for layer in model.layers:
    kind = type(layer).__name__
    values = layer.get_weights()
    if kind == 'BatchNormalization':
      c = values[0].shape
      values = [rng.uniform(0.5, 1.5, c), rng.uniform(-0.2, 0.2, c),
                rng.uniform(-0.5, 0.5, c), rng.uniform(0.5, 2.0, c)]
    elif kind == 'Normalization':
      values = [np.array([0.485, 0.456, 0.406]),
                np.array([0.229, 0.224, 0.225]), values[2]]
    elif kind in ('Conv2D', 'DepthwiseConv2D', 'Dense'):
      shape = values[0].shape
      fan_in = np.prod(shape[:2] if kind == 'DepthwiseConv2D' else shape[:-1])
      values[0] = rng.normal(size=shape) * np.sqrt(2.0 / fan_in)
      if len(values) > 1:
        values[1] = rng.uniform(-0.2, 0.2, values[1].shape)
    elif values:
      raise AssertionError(f'{layer.name}: {kind} not randomised')
    layer.set_weights([np.asarray(v).astype(layer.weights[i].dtype)
                       for i, v in enumerate(values)])


def _keras2_style_copy(src, dst):
  """A legacy file as Keras 2 writes it: weight names end in ':0', and
  depthwise kernels are named 'depthwise_kernel'."""
  shutil.copy(src, dst)
  with h5py.File(dst, 'r+') as f:
    for layer in f.attrs['layer_names']:
      group = f[layer]
      names = [n.decode() if isinstance(n, bytes) else str(n)
               for n in group.attrs['weight_names']]
      renamed = [n.replace('dwconv/kernel', 'dwconv/depthwise_kernel') + ':0'
                 for n in names]
      for old, new in zip(names, renamed):
        group.move(old, new)
      if names:
        group.attrs['weight_names'] = [n.encode() for n in renamed]


@pytest.fixture(scope='module')
def keras_reference(tmp_path_factory):
  """Per arch: a random keras.applications EfficientNet saved as
  `.weights.h5` (B0 also in the legacy and Keras 2 formats), and what
  `EfficientNetBx(weights='imagenet')` -- the model the ImageNet weights are
  for, with its second Rescaling -- computes with that file on raw RGB 0-255
  images: logits and C2..C5, and its preprocessing constants."""
  import keras  # pylint: disable=g-import-not-at-top
  from keras.src.legacy.saving import legacy_h5_format  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp('keras')
  references = {}
  for arch in KERAS_ARCHS:
    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, arch)
    model = build(weights=None, input_shape=(SIZES[0], SIZES[0], 3),
                  classifier_activation=None)
    _randomise(model, np.random.default_rng(0))
    path = out / f'{arch}.weights.h5'
    model.save_weights(str(path))
    files = {'weights.h5': path}
    if arch == 'EfficientNetB0':
      files['legacy.h5'] = out / f'{arch}_legacy.h5'
      with h5py.File(files['legacy.h5'], 'w') as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
      files['keras2.h5'] = out / f'{arch}_keras2.h5'
      _keras2_style_copy(files['legacy.h5'], files['keras2.h5'])
    expected, facts = {}, {}
    for size in SIZES:
      # weights='imagenet' loads whatever get_file returns: here our file.
      # An input tensor (rather than input_shape, which include_top with
      # 'imagenet' pins to the default size) gives any input size.
      with mock.patch('keras.src.applications.efficientnet.file_utils.get_file',
                      return_value=str(path)) as get_file:
        sized = build(weights='imagenet', classifier_activation=None,
                      input_tensor=keras.Input((size, size, 3)))
      assert get_file.called
      taps = keras.Model(sized.inputs, [sized.output] + [
          sized.get_layer(n).output
          for n in _feature_layers(arch[-2:].lower())])
      # Two images of different brightness: i.i.d. noise images of one
      # distribution look alike after global pooling.
      x = np.random.default_rng(size).uniform(0, 255, (2, size, size, 3))
      x = (x * np.array([1.0, 0.5])[:, None, None, None]).astype(np.float32)
      outputs = [keras.ops.convert_to_numpy(y) for y in taps(x, training=False)]
      expected[f'x{size}'] = x
      expected[f'x{size}_logits'] = outputs[0]
      for level, y in zip((2, 3, 4, 5), outputs[1:]):
        expected[f'x{size}_C{level}'] = y
    # The preprocessing layers of the 'imagenet' model, in order.
    pre = [layer for layer in sized.layers
           if type(layer).__name__ in ('Rescaling', 'Normalization')]
    assert [type(layer).__name__ for layer in pre] == [
        'Rescaling', 'Normalization', 'Rescaling']
    mean, variance = (keras.ops.convert_to_numpy(v)
                      for v in pre[1].weights[:2])
    facts = dict(
        scales=(np.float64(pre[0].scale), np.asarray(pre[2].scale, np.float64)),
        mean=mean.astype(np.float64), variance=variance.astype(np.float64),
        epsilons={layer.epsilon for layer in model.layers
                  if type(layer).__name__ == 'BatchNormalization'},
        tensors=source_keras.model_tensors(model))
    references[arch] = files, expected, facts
  return references


@pytest.mark.parametrize('arch,file_kind', [
    ('EfficientNetB0', 'weights.h5'), ('EfficientNetB0', 'legacy.h5'),
    ('EfficientNetB0', 'keras2.h5'), ('EfficientNetB2', 'weights.h5')])
def test_converted_keras_efficientnet_equals_keras(keras_reference, arch,
                                                   file_kind, tmp_path):
  files, expected, facts = keras_reference[arch]
  variables, metadata = port_helpers.convert('keras', arch, files[file_kind],
                                             tmp_path / f'{arch}.npz')
  assert metadata['backbone_kwargs'] == dict(variant=arch[-2:].lower(),
                                             padding='same')
  assert facts['epsilons'] == {metadata['norm_epsilon']} == {1e-3}
  # The fold, from the Keras model's own layers: x * r1 -> (. - m) / sqrt(v)
  # -> . * r2 equals (x - m / r1) / (sqrt(v) / (r1 r2)).
  r1, r2 = facts['scales']
  pre = metadata['preprocessing']
  np.testing.assert_allclose(pre['mean'], facts['mean'] / r1, rtol=1e-6)
  np.testing.assert_allclose(pre['std'], np.sqrt(facts['variance']) / (r1 * r2),
                             rtol=1e-6)
  for size in SIZES:
    x = ((expected[f'x{size}'] - np.float32(pre['mean']))
         / np.float32(pre['std']))
    _assert_equal_to(expected, _outputs(variables, metadata, x), size)


def test_keras_efficientnet_formats_read_alike(keras_reference):
  """The Keras 3, legacy and Keras 2 files give the model's tensors, named as
  the model names its variables (which `download` relies on); Keras 2's
  depthwise_kernel is the same tensor."""
  files, _, facts = keras_reference['EfficientNetB0']
  want = facts['tensors']
  assert any(n.endswith('dwconv/kernel') for n in want)
  assert any(n.startswith('normalization') for n in want)
  for kind, path in files.items():
    got = source_keras.read(str(path))
    got = {n.replace('depthwise_kernel', 'kernel'): v for n, v in got.items()}
    assert sorted(got) == sorted(want), kind
    for name, value in want.items():
      np.testing.assert_array_equal(got[name], value, err_msg=f'{kind}: {name}')


def _set_normalization(path, mean, variance):
  """Overwrites the Normalization layer's mean and variance in a Keras 3
  file (variables 0 and 1 of its group)."""
  with h5py.File(path, 'r+') as f:
    for key in f['layers']:
      if key.startswith('normalization'):
        f[f'layers/{key}/vars/0'][...] = mean
        f[f'layers/{key}/vars/1'][...] = variance
        return
  raise KeyError('normalization')


def test_keras_files_that_cannot_convert_fail_naming_why(keras_reference,
                                                         tmp_path):
  out = tmp_path / 'x.npz'

  def fails(arch, path, *needles):
    result = port_helpers.port('--source=keras', f'--arch={arch}',
                               f'--input={path}', f'--output={out}')
    assert result.returncode == 2, result.stderr
    for needle in needles:
      assert needle in result.stderr, (needle, result.stderr)
    assert not out.exists()

  b0 = keras_reference['EfficientNetB0'][0]['weights.h5']
  b2 = keras_reference['EfficientNetB2'][0]['weights.h5']
  # B2 has a third block in stage 2, and stage 3 is 48 channels wide (40).
  fails('EfficientNetB0', b2, 'block3a_project_bn/gamma (48,) -> '
        'stage3_block0/project/norm/scale needs (40,)',
        'block2c_expand_bn/gamma', '--arch')
  fails('EfficientNetB2', b0, 'block3a_project_bn/gamma (40,)',
        'batch_stats/stage2_block2/expand/norm/mean', '--arch')
  # A never-adapted Normalization (a model built with weights=None sees
  # x / 255): no mean/std folds it, so the converter refuses.
  unadapted = tmp_path / 'unadapted.weights.h5'
  shutil.copy(b0, unadapted)
  _set_normalization(unadapted, np.zeros(3), np.ones(3))
  fails('EfficientNetB0', unadapted, 'normalization', '/mean = [0.0, 0.0, 0.0]',
        '/variance = [1.0, 1.0, 1.0]', "metadata's mean/std")
