"""keras.applications ImageNet classifiers -> our backbones.

Files are read with h5py alone (no Keras or TensorFlow import), in either
format `model.load_weights` accepts:
  Keras 3 `.weights.h5` (`model.save_weights`; also inside a `.keras` zip as
    `model.weights.h5`): one group per layer, `layers/<key>/vars/<i>`, where
    <key> is the layer's class in snake case made unique (`conv2d_16`,
    `batch_normalization_3`; nested models nest `layers/<key>/layers/...`),
    the `vars` group's attribute `name` is the layer's name, and the datasets
    `0..n-1` are its variables by position; `_KERAS3_VARIABLES` names the
    positions per class from each class's `save_own_variables` (keras 3.15).
  legacy HDF5 (Keras 2, and the downloadable keras.applications ImageNet
    files such as resnet50_weights_tf_dim_ordering_tf_kernels.h5; Keras 3
    still writes it through `legacy_h5_format.save_weights_to_hdf5_group`):
    root attribute `layer_names` (under a `model_weights` group in a whole
    saved model; split into `layer_names0`, `layer_names1`, ... when long),
    per layer a group with attribute `weight_names` ('conv1_conv/kernel:0' in
    Keras 2, 'conv1_conv/kernel' from Keras 3) naming datasets inside it.
Either way a tensor is named '<layer name>/<variable name>', e.g.
'conv1_conv/kernel', 'conv1_bn/moving_mean', 'predictions/bias'.

Keras kernels are already in the Flax layout (conv HWIO, dense [in, out]);
only depthwise kernels [kh, kw, C, 1] become [kh, kw, 1, C] (Keras 3 names
them `kernel`, Keras 2 `depthwise_kernel`; both are read).

ResNets (`ResNet50/101/152`, keras.applications naming -> ours):
  conv1_conv, conv1_bn                   -> stem/{conv, norm}
  conv{s}_block{b}_{k}_conv, _{k}_bn     -> stage{s}_block{b-1}/conv{k}/{conv, norm}
  conv{s}_block{b}_0_conv, _0_bn         -> stage{s}_block{b-1}/downsample/...
  predictions                            -> classifier
They are the original (Caffe) ResNet: v1, with the stride in the first 1x1 of
a bottleneck, and a bias in every conv (`stride_in_1x1`, `conv_bias` of our
ResNet); BatchNorm epsilon 1.001e-5 (keras/src/applications/resnet.py).
BatchNorm gamma/beta/moving_mean/moving_variance become scale/bias/mean/var.

Preprocessing: Keras ResNets take 'caffe' input (`resnet50.preprocess_input`):
BGR channel order, the BGR mean [103.939, 116.779, 123.68] subtracted, no
scaling. Our models take RGB, so the conversion reverses the input-channel
axis of the first conv kernel: the converted model takes RGB pixels minus the
RGB mean [123.68, 116.779, 103.939], std [1, 1, 1], as the metadata records,
and computes exactly what Keras computes on the same image. Keras prescribes
no resize or crop (its examples resize straight to 224); the metadata records
the original ResNet evaluation's shorter side 256 and centre crop 224.

EfficientNets (`EfficientNetB0..B7`, keras/src/applications/efficientnet.py;
keras.applications naming -> ours; stage s = 1..7, block letter a, b, ... ->
j = 0, 1, ...):
  stem_conv, stem_bn                     -> stem/{conv, norm}
  block{s}{letter}_expand_conv, _expand_bn   -> stage{s}_block{j}/expand/...
  block{s}{letter}_dwconv, _bn               -> .../depthwise/{conv, norm}
  block{s}{letter}_se_reduce, _se_expand     -> .../se/{reduce, expand}
  block{s}{letter}_project_conv, _project_bn -> .../project/{conv, norm}
  top_conv, top_bn                       -> head/{conv, norm}
  predictions                            -> classifier
BatchNorm epsilon: Keras' default 1e-3. Padding: TF SAME (padding='same').
Keras pads stride-2 convs explicitly, ZeroPadding2D(correct_pad(x, k)) and
then 'valid': correct_pad gives (k//2 - 1, k//2) on an even side and
(k//2, k//2) on an odd one, which is exactly TF SAME's split (total
max(k - 2, 0) or k - 1, the extra pixel after) -- as long as the side is
known when the model is built: with input_shape (None, None, 3) correct_pad
assumes even sides and an odd input then pads differently from ours.

The Keras model contains its preprocessing (in this order): Rescaling(1/255),
Normalization (mean m and variance v are variables stored in the weights
file) and, only when built with weights='imagenet', Rescaling(1/sqrt(s)) with
s = IMAGENET_STDDEV_RGB (0.229, 0.224, 0.225). The ImageNet file stores
m = (0.485, 0.456, 0.406) and v = s (the standard deviations, not their
squares: tensorflow/tensorflow#49930), which the second Rescaling corrects:
on 0-255 RGB pixels x the first conv sees (x / 255 - m) / sqrt(v) / sqrt(s)
= (x - 255 m) / (255 s). The metadata records that fold, mean 255 m =
(123.675, 116.28, 103.53) and std 255 s = (58.395, 57.12, 57.375): exact but
for float rounding, since Keras pads (ZeroPadding2D) after normalising, as
our model does. The fold is only right for those m and v, so the converter
checks them (`common.Constant`) and refuses a file that holds others (e.g.
mean 0 and variance 1: a model built with weights=None and never adapted,
which sees x / 255; no mean/std makes our model compute that exactly). What
a file cannot say is whether the model that will use it has the second
Rescaling: the conversion computes what `EfficientNetBx(weights='imagenet')`
(the model the ImageNet weights were made for) computes with the file; the
same file loaded into a model built with weights=None computes
(x / 255 - m) / sqrt(s), a different function. Keras prescribes no resize or
crop; the metadata records the TF originals' evaluation
(tensorflow/tpu models/official/efficientnet/preprocessing.py, copied in
timm/data/tf_preprocessing.py): a centre crop of image_size / (image_size +
32) of the shorter side resized to image_size, bicubic, i.e. shorter side
image_size + 32 then a centre crop of image_size, at Keras' default_size
(224, 240, 260, 300, 380, 456, 528, 600 for B0..B7).
"""

import io
import os
import re
import zipfile
from typing import Dict, Optional

import numpy as np

from detector import errors
from detector.port import common

# RGB order; Keras lists it as BGR [103.939, 116.779, 123.68].
_CAFFE_MEAN = (123.68, 116.779, 103.939)

ARCHS: Dict[str, common.Spec] = {
    f'ResNet{d}': common.Spec(
        'resnet', dict(depth=d, stride_in_1x1=True, conv_bias=True), 1.001e-5,
        common.preprocessing(224, 256, mean=_CAFFE_MEAN, std=(1.0, 1.0, 1.0)))
    for d in (50, 101, 152)}

# EfficientNetB{i}: Keras' default_size (see the module docstring).
_EFFICIENTNET_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
ARCHS.update({
    f'EfficientNetB{i}': common.Spec(
        'efficientnet', dict(variant=f'b{i}', padding='same'), 1e-3,
        common.preprocessing(size, size + 32, 'bicubic'))
    for i, size in enumerate(_EFFICIENTNET_SIZES)})

# What the EfficientNets' Normalization layer must hold for the metadata's
# mean and std (common.IMAGENET_*, 0-255) to fold Keras' preprocessing
# exactly: the ImageNet file's mean, and its "variance", which is the
# standard deviation (see the module docstring).
_FOLD = ("the metadata's mean/std (Keras' Rescaling(1/255), Normalization and "
         "Rescaling(1/sqrt(std)) folded for the ImageNet file's values)")
_NORMALIZATION = {
    'mean': common.Constant(tuple(m / 255 for m in common.IMAGENET_MEAN),
                            _FOLD),
    'variance': common.Constant(tuple(s / 255 for s in common.IMAGENET_STD),
                                _FOLD),
    'count': None,  # Samples seen by adapt(); plays no part in the output.
}

# Architectures trained on BGR input: their first conv's input channels are
# reversed so that the converted model takes RGB.
_BGR_INPUT = {'ResNet50', 'ResNet101', 'ResNet152'}

# Keras 3 `.weights.h5`: layer class (snake case) -> its variables' names in
# the order `save_own_variables` stores them (trainable then non-trainable, in
# creation order; convs and dense skip the bias when use_bias=False).
_KERAS3_VARIABLES = {
    'conv2d': ('kernel', 'bias'),
    'depthwise_conv2d': ('kernel', 'bias'),
    'dense': ('kernel', 'bias'),
    # Exactly four, or positions are ambiguous (scale/center=False drop one).
    'batch_normalization': ('gamma', 'beta', 'moving_mean', 'moving_variance'),
    'normalization': ('mean', 'variance', 'count'),
}
_EXACT_COUNT = {'batch_normalization', 'normalization'}


def _text(value) -> str:
  return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _tensor_name(layer: str, weight: str) -> str:
  """'<layer>/<variable>' from a Keras weight name, dropping any ':0' and
  scopes ('resnet50/conv1_conv/kernel:0' in a nested model -> 'conv1_conv/
  kernel'); a bare variable name gets `layer` as its scope."""
  parts = weight.split(':')[0].split('/')
  return '/'.join(parts[-2:]) if len(parts) > 1 else f'{layer}/{parts[0]}'


def _attribute_list(group, name):
  """An HDF5 list attribute as Keras writes it, whole or in chunks name0..."""
  if name in group.attrs:
    return [_text(v) for v in group.attrs[name]]
  values, chunk = [], 0
  while f'{name}{chunk}' in group.attrs:
    values += [_text(v) for v in group.attrs[f'{name}{chunk}']]
    chunk += 1
  return values


def _add(tensors, name, value, path):
  if name in tensors:
    raise errors.ConfigError(f'--input={path}: two variables named {name}')
  tensors[name] = np.asarray(value, np.float32)


def _read_legacy(group, path) -> Dict[str, np.ndarray]:
  tensors = {}
  for layer in _attribute_list(group, 'layer_names'):
    if layer not in group:
      raise errors.ConfigError(f'--input={path}: layer {layer} is listed but '
                               'has no group; the file is damaged')
    for weight in _attribute_list(group[layer], 'weight_names'):
      if weight not in group[layer]:
        raise errors.ConfigError(f'--input={path}: {layer}/{weight} is listed '
                                 'but missing; the file is damaged')
      _add(tensors, _tensor_name(layer, weight), group[layer][weight][()], path)
  return tensors


def _read_keras3(root, path) -> Dict[str, np.ndarray]:
  groups = []

  def collect(key, obj):  # Layers' variables; not the optimizer's.
    if key.startswith('layers/') and key.endswith('/vars'):
      groups.append((key, obj))

  root.visititems(collect)
  tensors = {}
  for key, group in groups:
    if not len(group):  # pylint: disable=g-explicit-length-test
      continue  # A layer without variables (activation, padding, ...).
    kind = re.sub(r'_\d+$', '', key.split('/')[-2])
    if 'name' not in group.attrs:
      raise errors.ConfigError(
          f'--input={path}: {key} does not record its layer name (written by '
          'an older Keras 3?); re-save it with a newer Keras, or in the '
          'legacy .h5 format')
    layer = _text(group.attrs['name'])
    names = _KERAS3_VARIABLES.get(kind)
    count = len(group)
    if (names is None or count > len(names) or
        (kind in _EXACT_COUNT and count != len(names))):
      raise errors.ConfigError(
          f'--input={path}: layer {layer} ({kind}) holds {count} variables; '
          f'this reader knows the variables of {sorted(_KERAS3_VARIABLES)} '
          '(BatchNormalization only with scale and center)')
    for i in range(count):
      if str(i) not in group:
        raise errors.ConfigError(f'--input={path}: {key}/{i} is missing')
      _add(tensors, f'{layer}/{names[i]}', group[str(i)][()], path)
  return tensors


def _read_h5(f, path) -> Dict[str, np.ndarray]:
  group = f
  if not _attribute_list(f, 'layer_names') and 'model_weights' in f:
    group = f['model_weights']  # A whole model saved by Keras 2.
  if _attribute_list(group, 'layer_names'):
    return _read_legacy(group, path)
  if 'layers' in f:
    return _read_keras3(f, path)
  raise errors.ConfigError(f'--input={path}: an HDF5 file but not Keras '
                           'weights (no layer_names attribute, no layers '
                           'group)')


def read(path: str) -> Dict[str, np.ndarray]:
  """A Keras weights file (see the module docstring) as {name: array}."""
  if not os.path.exists(path):
    raise errors.ConfigError(f'--input={path}: no such file')
  h5py = common.require('h5py', 'h5py', 'Reading Keras weights files')
  source = path
  if zipfile.is_zipfile(path):  # A `.keras` archive.
    with zipfile.ZipFile(path) as archive:
      if 'model.weights.h5' not in archive.namelist():
        raise errors.ConfigError(f'--input={path}: a zip without '
                                 'model.weights.h5, not a .keras file')
      source = io.BytesIO(archive.read('model.weights.h5'))
  try:
    with h5py.File(source, 'r') as f:
      tensors = _read_h5(f, path)
  except errors.ConfigError:
    raise
  except (OSError, KeyError, RuntimeError, ValueError) as e:
    raise errors.ConfigError(
        f'--input={path}: not a readable HDF5 file (truncated or another '
        f'format? {type(e).__name__}: {str(e)[:200]})') from None
  if not tensors:
    raise errors.ConfigError(f'--input={path}: holds no weights')
  return tensors


def model_tensors(model) -> Dict[str, np.ndarray]:
  """A built Keras model's variables, named as `read` names them."""
  keras = common.require('keras', 'keras', 'Reading a Keras model')
  tensors = {}
  for layer in model.layers:
    for variable in layer.weights:
      _add(tensors, _tensor_name(layer.name, variable.name),
           keras.ops.convert_to_numpy(variable), model.name)
  return tensors


def download(arch: str):
  """keras.applications' ImageNet weights for `arch` (needs internet)."""
  keras = common.require('keras', 'keras', '--source=keras without --input')
  model = getattr(keras.applications, arch)(weights='imagenet')
  return model_tensors(model), f'keras.applications.{arch}(weights="imagenet")'


def layout(array: np.ndarray, path: str, arch: str) -> np.ndarray:
  """Keras -> Flax: identity but for depthwise kernels and BGR first convs."""
  if path.endswith('depthwise/conv/kernel') and array.ndim == 4:
    array = array.transpose(0, 1, 3, 2)  # [kh, kw, C, 1] -> [kh, kw, 1, C].
  if arch in _BGR_INPUT and path == 'stem/conv/kernel':
    array = array[:, :, ::-1, :]  # Input channels BGR -> RGB.
  return array


_BN = {'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
       'moving_mean': ('batch_stats', 'mean'),
       'moving_variance': ('batch_stats', 'var')}


def conv_or_norm(base: str, kind: str, field: str):
  """A Conv2D ('conv') or BatchNormalization ('bn') variable of the
  ConvNormAct at `base`."""
  if kind == 'conv':
    if field in ('kernel', 'bias'):
      return 'params', f'{base}/conv/{field}'
    return common.BAD
  if field in _BN:
    return _BN[field][0], f'{base}/norm/{_BN[field][1]}'
  return common.BAD


def resnet_target(name: str, spec: Optional[common.Spec] = None):
  """keras.applications ResNet tensor name -> (collection, path) or BAD (the
  same for every depth: `spec` is ignored)."""
  del spec
  m = re.fullmatch(r'conv1_(conv|bn)/(\w+)', name)
  if m:
    return conv_or_norm('stem', *m.groups())
  m = re.fullmatch(r'conv(\d)_block(\d+)_(\d)_(conv|bn)/(\w+)', name)
  if m:
    stage, block, k, kind, field = m.groups()
    part = 'downsample' if k == '0' else f'conv{k}'
    return conv_or_norm(f'stage{stage}_block{int(block) - 1}/{part}', kind,
                        field)
  m = re.fullmatch(r'predictions/(kernel|bias)', name)
  if m:
    return 'params', f'classifier/{m.group(1)}'
  return common.BAD


_EFFICIENTNET_PARTS = {  # Block layer suffix -> (our module, kind).
    'expand_conv': ('expand', 'conv'), 'expand_bn': ('expand', 'bn'),
    'dwconv': ('depthwise', 'conv'), 'bn': ('depthwise', 'bn'),
    'project_conv': ('project', 'conv'), 'project_bn': ('project', 'bn')}


def efficientnet_target(name: str, spec: Optional[common.Spec] = None):
  """keras.applications EfficientNet tensor name -> (collection, path), None,
  a Constant (the Normalization layer) or BAD (the same for every variant:
  `spec` is ignored)."""
  del spec
  m = re.fullmatch(r'normalization(_\d+)?/(\w+)', name)
  if m:
    return _NORMALIZATION.get(m.group(2), common.BAD)
  m = re.fullmatch(r'(stem|top)_(conv|bn)/(\w+)', name)
  if m:
    base = 'stem' if m.group(1) == 'stem' else 'head'
    return conv_or_norm(base, m.group(2), m.group(3))
  m = re.fullmatch(r'block(\d)([a-z])_(\w+)/(\w+)', name)
  if m:
    stage, letter, part, field = m.groups()
    base = f'stage{stage}_block{ord(letter) - ord("a")}'
    if part == 'dwconv' and field == 'depthwise_kernel':  # Keras 2's name.
      field = 'kernel'
    if part in _EFFICIENTNET_PARTS:
      sub, kind = _EFFICIENTNET_PARTS[part]
      return conv_or_norm(f'{base}/{sub}', kind, field)
    if part in ('se_reduce', 'se_expand') and field in ('kernel', 'bias'):
      return 'params', f'{base}/se/{part[len("se_"):]}/{field}'
    return common.BAD
  m = re.fullmatch(r'predictions/(kernel|bias)', name)
  if m:
    return 'params', f'classifier/{m.group(1)}'
  return common.BAD


target = common.by_backbone(ARCHS, resnet=resnet_target,
                            efficientnet=efficientnet_target)
