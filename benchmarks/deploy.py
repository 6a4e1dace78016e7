"""Benchmark: every export format against JAX, on this machine, in one run.

    .venv/bin/python benchmarks/deploy.py --detector=workdirs/cnn \\
        --classifier=workdirs/lite0 --imagenet=lite0.npz \\
        [--out=/tmp/deploy] [--repeats=50]

For each model it exports every format of `detector.export` into `--out`,
then measures through each format's own runtime (JAX itself, TensorFlow,
LiteRT, onnxruntime, `jax.export`): the conversion time, the artefact's
size, batch-1 latency (p50 and p90 of `--repeats` calls after a warm-up),
throughput at the largest batch the format takes (up to 8), and a quality
figure of predictions made through that format: the test split's COCO AP
for a detector workdir, its accuracy for a classifier workdir, and for an
ImageNet weights file (`--imagenet`) on how many of scikit-image's four
photos its top-1 class is JAX's. Inputs are preprocessed once beforehand:
the figures are the model's, not the image decoding's. A benchmark, not a
test: it prints a table and asserts nothing.

The models come from the README's commands: the default job for the
detector; the weights file from
    .venv/bin/python -m detector.port --source=efficientnet_lite \\
        --arch=efficientnet-lite0 --output=lite0.npz
and the classifier fine-tuned from it on `shapes_objects`:
    .venv/bin/python main.py --config=configs/classify.py:lite0 \\
        --workdir=workdirs/lite0 --config.init_from=lite0.npz \\
        --config.image_size="(128, 128)" --config.eval_image_size="(128, 128)" \\
        --config.num_train_steps=300 --config.optimizer.warmup_steps=30 \\
        --config.input.eval_crop_fraction=1.0 \\
        --config.input.crop_scale="(0.5, 1.0)"
`tflite_int8` of the weights file calibrates on scikit-image's other photos.
"""

import contextlib
import io
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from detector import runtime  # pylint: disable=wrong-import-position

flags.DEFINE_string('detector', None, 'A trained detection workdir.')
flags.DEFINE_string('classifier', None, 'A trained classification workdir.')
flags.DEFINE_string('imagenet', None, 'An ImageNet weights file '
                    '(python -m detector.port).')
flags.DEFINE_string('out', '/tmp/deploy', 'Where the artefacts are written.')
flags.DEFINE_integer('repeats', 50, 'Timed batch-1 calls per format.')
flags.DEFINE_integer('calibration_images', 200, 'For tflite_int8.')
flags.DEFINE_list('formats', [], 'Formats to measure (default: all).')
FLAGS = flags.FLAGS

ARTEFACT_NAMES = {'saved_model': 'saved_model', 'tflite': 'model.tflite',
                  'tflite_fp16': 'model_fp16.tflite',
                  'tflite_int8': 'model_int8.tflite', 'onnx': 'model.onnx',
                  'stablehlo': 'model.stablehlo'}


def _size_mb(path):
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(path) for f in files) / 2**20
  return os.path.getsize(path) / 2**20


def _test_split(info):
  """(image id, uint8 image, label) of the workdir's test split."""
  # pylint: disable=g-import-not-at-top
  import ml_collections
  import tensorflow_datasets as tfds
  from detector.data import loading
  config = ml_collections.ConfigDict(info.config)
  builder = loading.get_builder(config)
  ds = builder.as_dataset(split=config.test_split, shuffle_files=False)
  label_key = config.get('label_key', 'label')
  for i, ex in enumerate(tfds.as_numpy(ds)):
    yield (int(ex['image/id']) if 'image/id' in ex else i, ex['image'],
           ex.get(label_key))


def _photos(names):
  """(name, uint8 image, None) of scikit-image's photos `names`."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  for name in names:
    image = getattr(skimage.data, name)()
    yield name, image[0] if name == 'stereo_motorcycle' else image, None


PHOTOS = ('chelsea', 'coffee', 'rocket', 'stereo_motorcycle')
CALIBRATION = ('astronaut', 'hubble_deep_field', 'immunohistochemistry',
               'retina', 'camera', 'clock', 'grass', 'gravel', 'brick',
               'colorwheel', 'logo')


def _quality(predictor, examples, reference=None):
  """COCO AP of a detector or accuracy of a classifier on `examples`; for a
  weights file (`reference`: JAX's top-1 classes), agreement with JAX."""
  # pylint: disable=g-import-not-at-top
  import ml_collections
  from detector.data import detection
  from detector.data import loading
  from detector.evaluation import coco
  from detector.predict import writers
  named = [(str(i), image) for i, image, _ in examples]
  results = predictor.predict_images(named)
  if reference is not None:
    return float(sum(r.class_ids[0] == w for r, w in zip(results, reference)))
  if predictor.info.task != 'detection':
    labels = np.array([label for _, _, label in examples])
    return float(np.mean([r.class_ids[0] for r in results] == labels))
  dets = [d for (i, _, _), r in zip(examples, results)
          for d in writers.coco_results(r, i)]
  config = ml_collections.ConfigDict(predictor.info.config)
  gt = detection.groundtruth_coco(
      loading.get_builder(config), config.test_split,
      list(predictor.info.class_names), list(predictor.info.category_ids))
  with contextlib.redirect_stdout(io.StringIO()):
    return coco.evaluate_coco(gt, dets)['AP']


def _timings(predictor, image):
  """(p50, p90 batch-1 latency in ms, images/s at the largest batch <= 8,
  that batch)."""
  backend = predictor.backend
  one = predictor._prepare(image).image[None]  # pylint: disable=protected-access
  backend.run(one)
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    backend.run(one)
    times.append(time.perf_counter() - start)
  sizes = backend.batch_sizes
  batch = 8 if sizes is None else max(s for s in sizes if s <= 8)
  many = np.repeat(one, batch, axis=0)
  backend.run(many)
  start = time.perf_counter()
  rounds = max(5, FLAGS.repeats // 2)
  for _ in range(rounds):
    backend.run(many)
  rate = batch * rounds / (time.perf_counter() - start)
  return (float(np.percentile(times, 50)) * 1e3,
          float(np.percentile(times, 90)) * 1e3, rate, batch)


def _variables_mb(backend):
  """The JAX model's size: its variables in float32, as the exports hold
  them before quantisation."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(x.nbytes for x in jax.tree_util.tree_leaves(
      backend.variables)) / 2**20


def _inputs(model, reference, folder):
  """(examples to time and score, export options, JAX's top-1 classes or
  None) for `model`."""
  if reference.info.step is not None:  # A workdir: its own test split.
    return (list(_test_split(reference.info)),
            {'calibration_images': FLAGS.calibration_images}, None)
  calibration = os.path.join(folder, 'calibration')
  os.makedirs(calibration, exist_ok=True)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for name, image, _ in _photos(CALIBRATION):
    Image.fromarray(image).save(os.path.join(calibration, name + '.png'))
  examples = list(_photos(PHOTOS))
  top1 = [r.class_ids[0] for r in reference.predict_images(
      [(n, image) for n, image, _ in examples])]
  return examples, {'calibration_dir': calibration}, top1


def _measure(model, name):
  """Rows (format, export s, MB, p50, p90, images/s and batch, quality)."""
  # pylint: disable=g-import-not-at-top
  import detector
  from detector import export
  reference = detector.load(model)
  folder = os.path.join(FLAGS.out, name)
  os.makedirs(folder, exist_ok=True)
  examples, options, top1 = _inputs(model, reference, folder)
  rows = [('jax', 0.0, _variables_mb(reference.backend), reference)]
  for fmt in FLAGS.formats or list(ARTEFACT_NAMES):
    path = os.path.join(folder, ARTEFACT_NAMES[fmt])
    start = time.perf_counter()
    export.export(model, fmt, path, **options)
    rows.append((fmt, time.perf_counter() - start, _size_mb(path),
                 detector.load(path)))
    print(f'{name}: exported {fmt}', file=sys.stderr, flush=True)
  table = []
  for fmt, convert_s, size, predictor in rows:
    p50, p90, rate, batch = _timings(predictor, examples[0][1])
    table.append((fmt, convert_s, size, p50, p90, rate, batch,
                  _quality(predictor, examples, top1)))
    print(f'{name}: measured {fmt}', file=sys.stderr, flush=True)
  return reference.info, len(examples), top1 is not None, table


def _print(name, model, info, n, agreement, table):
  if agreement:
    metric, how = 'top-1 = JAX', f'of {n} photos'
  elif info.task == 'detection':
    metric, how = 'AP', f'on {n} test images'
  else:
    metric, how = 'accuracy', f'on {n} test images'
  step = 'a weights file' if info.step is None else f'step {info.step}'
  print(f'\n{name}: {model} ({info.input_size[0]}x{info.input_size[1]}, '
        f'{step}), {metric} {how}')
  print(f'| format | export s | size MB | batch-1 p50 ms | p90 ms | '
        f'images/s (batch) | {metric} |')
  print('|---|---|---|---|---|---|---|')
  for fmt, convert_s, size, p50, p90, rate, batch, quality in table:
    value = f'{quality:.0f}/{n}' if agreement else f'{quality:.4f}'
    print(f'| {fmt} | {convert_s:.1f} | {size:.2f} | {p50:.2f} | {p90:.2f} '
          f'| {rate:.1f} ({batch}) | {value} |')


def main(argv):
  del argv
  runtime.tensorflow_on_cpu()
  runtime.quiet_library_logs()
  import jax  # pylint: disable=g-import-not-at-top
  models = [(m, n) for m, n in ((FLAGS.detector, 'detector'),
                                (FLAGS.classifier, 'classifier'),
                                (FLAGS.imagenet, 'imagenet')) if m]
  if not models:
    raise app.UsageError('--detector, --classifier and/or --imagenet')
  print(f'\n{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, '
        f'{FLAGS.repeats} timed batch-1 calls per format')
  for model, name in models:
    _print(name, model, *_measure(model, name))


if __name__ == '__main__':
  runtime.configure_xla_cpu()  # Before JAX starts, as main.py does.
  app.run(main)
