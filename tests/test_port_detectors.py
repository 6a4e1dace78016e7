"""Whole-detector ports (`python -m detector.port`), against the originals.

torchvision's `retinanet_resnet50_fpn` and effdet's `tf_efficientdet_d0`, `d1`,
`tf_efficientdet_lite0` and the PyTorch-trained `efficientdet_d0` are built with random weights and BatchNorm
statistics, saved in their own formats and run (head outputs, anchors and
their own post-processing) by tests/detector_reference.py in a process of
its own (torch cannot be imported beside TensorFlow). Converted here, our
model must give the same per-level outputs and the same detections; the
EfficientDet configs must have effdet's parameter counts; `config.init_from`
must load such a file whole, fitting or re-initialising the class layer.
"""

import json
import os
import subprocess
import sys

from absl.testing import absltest  # pylint: disable=unused-import
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from detector import checkpoints
from detector import errors
from detector import port
from detector.configs import efficientnet
from detector.models import detector as detector_lib
from detector.models.heads import retinanet
from detector.port import detectors
from detector.port import weights
from detector import train

HERE = os.path.dirname(__file__)
SIZE = 256
ARCHS = {'retinanet_resnet50_fpn': 'torchvision',
         'tf_efficientdet_d0': 'effdet', 'tf_efficientdet_d1': 'effdet',
         'tf_efficientdet_lite0': 'effdet', 'efficientdet_d0': 'effdet'}
EFFDET_COUNTED = ([f'tf_efficientdet_d{i}' for i in range(8)]
                  + [f'tf_efficientdet_lite{i}' for i in range(5)])


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('detector_reference'))
  script = os.path.join(HERE, 'detector_reference.py')
  env = dict(os.environ, HF_HUB_OFFLINE='1')
  subprocess.run([sys.executable, script, out, str(SIZE), *ARCHS], check=True,
                 env=env)
  subprocess.run([sys.executable, script, out, '0', 'counts',
                  *EFFDET_COUNTED], check=True, env=env)
  return out


@pytest.fixture(scope='module')
def converted(reference, tmp_path_factory):
  """{arch: converted file}; torchvision's through the command line."""
  out = tmp_path_factory.mktemp('converted')
  files = {}
  for arch, source in ARCHS.items():
    path = str(out / f'{arch}.npz')
    state_dict = os.path.join(reference, arch, 'state_dict.pth')
    if source == 'torchvision':
      subprocess.run([sys.executable, '-m', 'detector.port',
                      f'--source={source}', f'--arch={arch}',
                      f'--input={state_dict}', f'--output={path}'],
                     check=True, cwd=os.path.dirname(HERE))
    else:
      port.port(source, arch, path, state_dict)
    files[arch] = path
  return files


def _sides_at_least_one_pixel(boxes):
  return ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)


def _iou(a, b):
  """IoU of boxes [n, 4] and [n, 4] (same layout), elementwise."""
  lo = np.maximum(a[:, :2], b[:, :2])
  hi = np.minimum(a[:, 2:], b[:, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
  area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)
  return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize('arch', list(ARCHS))
def test_converted_detector_equals_the_original(reference, converted, arch):
  variables, meta = weights.load(converted[arch])
  model_config = detectors.model_config(meta)
  expected = np.load(os.path.join(reference, arch, 'expected.npz'))
  with open(os.path.join(reference, arch, 'settings.json')) as f:
    settings = json.load(f)
  if arch.startswith('retinanet'):  # The reference's threshold, as a user sets it.
    model_config.score_threshold = settings['score_thresh']
  model_config.lock()
  model = detector_lib.build(model_config, train=False)
  images = jnp.asarray(expected['images'])
  outputs = jax.jit(model.apply)(variables, images)

  # Head outputs, level by level: ours are concatenated in anchor order.
  k = model_config.num_classes
  start, score_tolerance = 0, 1e-4
  for level in range(3, 8):
    theirs_cls = expected[f'cls{level}'].reshape(2, -1, k)
    theirs_box = expected[f'box{level}'].reshape(2, -1, 4)
    if arch.startswith('retinanet'):  # torchvision: (dx, dy, dw, dh).
      theirs_box = theirs_box[..., [1, 0, 3, 2]]
    n = theirs_cls.shape[1]
    for name, theirs in (('cls', theirs_cls), ('box', theirs_box)):
      ours = np.asarray(outputs['cls_logits' if name == 'cls' else
                                'box_deltas'][:, start:start + n])
      tolerance = 1e-4 * np.abs(theirs).max()
      exact = f'{name}{level}_float64'
      if exact in expected.files:
        # Lite's unweighted sums grow the activations of a random model
        # until float32 itself strays 1.4e-4 x max from the exact value
        # (the original in float64): hold ours to what float32 allows.
        exact = expected[exact].reshape(theirs.shape)
        tolerance = max(tolerance, 2 * np.abs(theirs - exact).max())
        if name == 'cls':  # A sigmoid's slope is at most 1/4.
          score_tolerance = max(score_tolerance, tolerance / 4)
      assert np.abs(ours - theirs).max() <= tolerance, (arch, name, level)
    start += n
  assert start == outputs['cls_logits'].shape[1]

  # Detections after each side's own post-processing. Both originals keep
  # boxes clipped to nothing (zero area) when their score is high enough;
  # ours leave them out. Boxes under a pixel high or wide (at the border,
  # where float rounding decides whether they are empty) are compared on
  # neither side; where the original filled its max_detections with some,
  # ours has the next ones instead.
  dets = jax.jit(lambda v, x: detector_lib.predict(model, v, x, model_config))(
      variables, images)
  label_offset = 1 if 'efficientdet' in arch else 0  # effdet: category ids.
  for i in range(2):
    boxes = expected[f'det{i}_boxes']
    kept = _sides_at_least_one_pixel(boxes)
    theirs = {'boxes': boxes[kept], 'scores': expected[f'det{i}_scores'][kept],
              'labels': expected[f'det{i}_labels'][kept]}
    valid = np.array(dets['valid'][i])
    ours_boxes = np.asarray(dets['boxes'][i])[valid][:, [1, 0, 3, 2]]
    valid[valid] &= _sides_at_least_one_pixel(ours_boxes)
    ours_boxes = np.asarray(dets['boxes'][i])[valid][:, [1, 0, 3, 2]]
    ours_scores = np.asarray(dets['scores'][i])[valid]
    ours_labels = np.asarray(dets['classes'][i])[valid] + label_offset
    assert len(theirs['scores']) >= 20, (arch, i)  # A comparison of substance.
    full = len(boxes) == model_config.max_detections
    if not full:
      assert len(ours_scores) == len(theirs['scores']), (arch, i)
    unmatched = list(range(len(ours_scores)))
    for box, score, label in zip(theirs['boxes'], theirs['scores'],
                                 theirs['labels']):
      match = [j for j in unmatched if ours_labels[j] == label
               and abs(ours_scores[j] - score) <= score_tolerance
               and _iou(ours_boxes[j:j + 1], box[None])[0] >= 0.99]
      assert match, (arch, i, box, score, label)
      unmatched.remove(match[0])
    assert all(ours_scores[j] <= theirs['scores'].min() + score_tolerance
               for j in unmatched), (arch, i)


@pytest.mark.parametrize('arch', list(ARCHS))
def test_anchors_are_the_originals(reference, converted, arch):
  _, meta = weights.load(converted[arch])
  model_config = detectors.model_config(meta)
  options = detector_lib.head_options(model_config)[1]
  ours = options.anchors((SIZE, SIZE))
  expected = np.load(os.path.join(reference, arch, 'expected.npz'))
  if arch.startswith('retinanet'):
    theirs = expected['anchors_xyxy'][:, [1, 0, 3, 2]]
  else:
    theirs = expected['anchors_yxyx']
    size = meta['preprocessing']['image_size']
    np.testing.assert_allclose(options.anchors((size, size)),
                               expected['anchors_published_yxyx'], rtol=0,
                               atol=1e-4)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


def test_parameter_counts_equal_effdet(reference):
  with open(os.path.join(reference, 'counts.json')) as f:
    counts = json.load(f)
  assert counts['tf_efficientdet_d0'] == 3_880_067  # The paper's 3.9 M.
  for arch in EFFDET_COUNTED:
    name = arch.split('_')[-1]
    config = efficientnet.get_config(name).unlock()
    config.model.num_classes = 90
    model = detector_lib.build(config.model, train=False)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, SIZE, SIZE, 3)))
    ours = sum(int(np.prod(x.shape))
               for x in jax.tree_util.tree_leaves(shapes['params']))
    assert ours == counts[arch], arch


def test_metadata_names_the_classes_and_the_model(converted):
  meta = weights.load_metadata(converted['retinanet_resnet50_fpn'])
  assert meta['kind'] == 'detector' and meta['num_classes'] == 91
  assert meta['labels'][1] == 'person' and meta['label_ids'][1] == 1
  assert meta['labels'][12] == 'N/A'  # COCO never used category id 12.
  assert meta['model']['retinanet']['anchor_style'] == 'torchvision'
  meta = weights.load_metadata(converted['tf_efficientdet_d0'])
  assert meta['num_classes'] == 90 and len(meta['labels']) == 90
  assert meta['labels'][0] == 'person' and meta['label_ids'][0] == 1
  assert meta['labels'][89] == 'toothbrush' and meta['label_ids'][89] == 90
  assert meta['model']['efficientdet']['aspect_ratios'] == [
      [1.0, 1.0], [0.7, 1.4], [1.4, 0.7]]


def test_a_file_of_another_arch_fails_naming_why(reference, tmp_path):
  state_dict = os.path.join(reference, 'tf_efficientdet_d0', 'state_dict.pth')
  with pytest.raises(errors.ConfigError, match='is --arch right'):
    port.port('effdet', 'tf_efficientdet_lite0', str(tmp_path / 'x.npz'),
              state_dict)


def test_torchvision_released_names_convert_alike(reference, converted,
                                                  tmp_path):
  """torchvision's released COCO file predates its Conv2dNormActivation
  names (torchvision renames them when loading): the same tensors under
  those names convert to the same file."""
  path = str(tmp_path / 'v1.npz')
  port.port('torchvision', 'retinanet_resnet50_fpn', path, os.path.join(
      reference, 'retinanet_resnet50_fpn', 'state_dict_v1_names.pth'))
  old = weights.flatten(weights.load(path)[0])
  new = weights.flatten(weights.load(converted['retinanet_resnet50_fpn'])[0])
  assert set(old) == set(new)
  for p, value in new.items():
    np.testing.assert_array_equal(old[p], value, err_msg=p)


def test_flip_test_refuses_torchvision_anchors():
  head = retinanet.Head(num_classes=2, options=retinanet.Options(
      anchor_style='torchvision'))
  with pytest.raises(errors.ConfigError, match='flip_test=False'):
    head.merge_flipped({}, {}, (64, 64))


def _lite0_state(class_names, **overrides):
  """A fresh train state of configs/efficientnet.py:lite0 for `class_names`,
  with init_from resolved as the trainer resolves it."""
  config = efficientnet.get_config('lite0').unlock()
  config.image_size = config.eval_image_size = (128, 128)
  config.ema_decay = 0.999
  for key, value in overrides.items():
    config[key] = value
  s = train.build_setup(config.lock(), class_names, total_steps=10)
  return s, s.init_fn(jax.random.PRNGKey(0))


def _flat(state):
  return weights.flatten({'params': state.params,
                          'batch_stats': state.batch_stats})


def test_init_from_a_detector_reinitialises_only_the_class_layer(converted):
  path = converted['tf_efficientdet_lite0']
  file_variables = weights.flatten(weights.load(path)[0])
  names = ['circle', 'square', 'triangle', 'star', 'cross', 'crescent']
  s, fresh = _lite0_state(names, init_from=path)
  assert s.model_config.norm_epsilon == 1e-3  # From the file.
  state = checkpoints.load_detector(fresh, path, names, s.model_config.head)
  class_layer = 'head/class_predict/pointwise/'
  flat, fresh_flat = _flat(state), _flat(fresh)
  assert set(file_variables) - set(flat) == {
      f'params/{class_layer}kernel', f'params/{class_layer}bias'} - set(flat)
  for p, value in flat.items():
    if class_layer in p:  # 9 anchors x 6 classes, as initialised.
      assert value.shape[-1] == 54
      np.testing.assert_array_equal(value, fresh_flat[p])
    else:  # Bit for bit the file's.
      np.testing.assert_array_equal(value, file_variables[p], err_msg=p)
  ema = weights.flatten(dict(state.ema))
  np.testing.assert_array_equal(
      ema['params/backbone/stem/conv/kernel'],
      file_variables['params/backbone/stem/conv/kernel'])


def test_init_from_a_detector_with_its_classes_drops_nothing(converted):
  path = converted['tf_efficientdet_lite0']
  file_variables = weights.flatten(weights.load(path)[0])
  labels = weights.load_metadata(path)['labels']
  s, fresh = _lite0_state(labels, init_from=path)
  flat = _flat(checkpoints.load_detector(fresh, path, labels,
                                         s.model_config.head))
  assert set(flat) == set(file_variables)
  for p, value in flat.items():
    np.testing.assert_array_equal(value, file_variables[p], err_msg=p)


def test_init_from_a_detector_takes_named_classes(converted):
  """A dataset whose classes are among the file's (COCO's 80 of 90, here
  three in another order and spelling) gets their outputs."""
  path = converted['tf_efficientdet_lite0']
  file_variables = weights.flatten(weights.load(path)[0])
  labels = weights.load_metadata(path)['labels']
  names = ['dog', 'Traffic_Light', 'person']
  s, fresh = _lite0_state(names, init_from=path)
  flat = _flat(checkpoints.load_detector(fresh, path, names,
                                         s.model_config.head))
  picks = [labels.index('dog'), labels.index('traffic light'), 0]
  for field in ('kernel', 'bias'):
    p = f'params/head/class_predict/pointwise/{field}'
    theirs = file_variables[p]
    theirs = theirs.reshape(theirs.shape[:-1] + (9, 90))[..., picks]
    np.testing.assert_array_equal(flat[p], theirs.reshape(flat[p].shape))


def test_init_from_a_detector_of_another_architecture_names_the_key(converted):
  config = efficientnet.get_config('d0').unlock()
  config.init_from = converted['tf_efficientdet_lite0']
  model_config = config.model.copy_and_resolve_references()
  with pytest.raises(errors.ConfigError, match=r'model\.efficientnet\.variant'
                     r'|model\.bifpn\.'):
    checkpoints.resolve_init_from(config, model_config)


def test_backbone_scope_and_classifiers_take_only_the_backbone(converted):
  path = converted['tf_efficientdet_lite0']
  file_variables = weights.flatten(weights.load(path)[0])
  names = ['a', 'b']
  _, fresh = _lite0_state(names, init_from=path, init_from_scope='backbone')
  state = checkpoints.load_backbone(fresh, path)
  flat, fresh_flat = _flat(state), _flat(fresh)
  for p, value in flat.items():
    expected = file_variables[p] if '/backbone/' in f'/{p}' else fresh_flat[p]
    np.testing.assert_array_equal(value, expected, err_msg=p)


def test_detector_load_predicts_with_coco_names(converted):
  import detector  # pylint: disable=g-import-not-at-top
  predictor = detector.load(converted['tf_efficientdet_lite0'])
  image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), np.uint8)
  result = predictor.predict([image])[0]
  assert predictor.info.input_size == (320, 320)  # Lite0's, not 128's multiple.
  assert predictor.info.class_names[0] == 'person'
  assert 0 < len(result.scores) <= 100  # effdet's 100, no threshold.
  assert set(result.category_ids) <= set(range(1, 91))
  assert result.class_names[0] == weights.load_metadata(
      converted['tf_efficientdet_lite0'])['labels'][result.class_ids[0]]
