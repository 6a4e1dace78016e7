"""`detector.load(...).predict(...)` and `python -m detector.predict`.

Against independent references: the written COCO results re-scored by
pycocotools equal what `--mode=evaluate` wrote for the same checkpoint;
images in other modes, orientations and sizes give the predictions of the
same pixels as plain RGB; a ported classifier gives `detector.imagenet`'s
top-5; bad inputs are named and the rest predicted.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import detector
from detector import errors
from detector.predict import images as images_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# With tests/test_export.py on one xdist worker: `trained_workdir` (a session
# fixture, per worker) is then trained once.
pytestmark = pytest.mark.xdist_group('trained_workdir')


def _predict_cli(*args):
  return subprocess.run([sys.executable, '-m', 'detector.predict', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def test_split(trained_workdir, tmp_path_factory):
  """The test split of the trained workdir's dataset as PNG files named by
  image id (as `shapes` names them)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from detector.data import loading  # pylint: disable=g-import-not-at-top
  predictor = detector.load(trained_workdir)
  builder = loading.get_builder(_config(predictor.info.config))
  folder = tmp_path_factory.mktemp('test_split')
  for ex in tfds.as_numpy(builder.as_dataset(split='test', shuffle_files=False)):
    Image.fromarray(ex['image']).save(folder / f'{int(ex["image/id"])}.png')
  return str(folder)


def _config(values):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(values)


def _coco_ap(groundtruth_file, detections):
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(groundtruth_file)
    evaluator = COCOeval(gt, gt.loadRes(detections), 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats


def test_coco_output_rescores_as_evaluate(trained_workdir, test_split, tmp_path):
  out = tmp_path / 'out'
  proc = _predict_cli(f'--model={trained_workdir}', f'--output={out}',
                      '--format=coco', test_split)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'predicted 32 images' in proc.stdout
  with open(out / 'detections.json') as f:
    ours = json.load(f)
  eval_dir = os.path.join(trained_workdir, 'eval')
  with open(os.path.join(eval_dir, 'detections_test.json')) as f:
    theirs = json.load(f)
  gt_file = os.path.join(eval_dir, 'groundtruth_test.json')
  assert len(ours) > 100  # The model detects: the comparison means something.
  np.testing.assert_allclose(_coco_ap(gt_file, ours), _coco_ap(gt_file, theirs),
                             rtol=0, atol=1e-6)
  with open(out / 'images.json') as f:
    assert len(json.load(f)) == 32


def _mixed_images(folder, rng):
  """20 images of mixed sizes, modes and formats."""
  base = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
  rgb = Image.fromarray(base)
  made = {
      'rgb.png': rgb, 'grey.png': rgb.convert('L'), 'grey_alpha.png':
      rgb.convert('LA'), 'palette.png': rgb.convert('P'), 'rgba.png':
      rgb.convert('RGBA'), 'cmyk.jpg': rgb.convert('CMYK'), 'small.png':
      rgb.resize((17, 23)), 'wide.png': rgb.resize((400, 60)), 'tall.bmp':
      rgb.resize((40, 300)), 'gif.gif': rgb.convert('P'), 'webp.webp': rgb,
      'tiff.tif': rgb, 'photo.jpg': rgb,
      'grey16.png': Image.fromarray((rng.integers(0, 65536, (50, 70))
                                     ).astype(np.uint16)),
  }
  for i in range(6):
    made[f'sub/scene{i}.png'] = Image.fromarray(
        rng.integers(0, 256, (rng.integers(40, 200), rng.integers(40, 200), 3),
                     dtype=np.uint8))
  for name, image in made.items():
    os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
    image.save(os.path.join(folder, name))
  return sorted(made)


def test_folder_of_mixed_images_and_bad_files(trained_workdir, tmp_path):
  folder = tmp_path / 'in'
  names = _mixed_images(str(folder), np.random.default_rng(0))
  assert len(names) == 20
  (folder / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff not really a jpeg')
  (folder / 'empty.png').write_bytes(b'')
  out = tmp_path / 'out'
  proc = _predict_cli(f'--model={trained_workdir}', f'--output={out}', '--draw',
                      str(folder))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'corrupt.jpg: cannot read the image' in proc.stderr
  assert 'empty.png: the file is empty' in proc.stderr
  assert 'predicted 20 images' in proc.stdout and '2 failed' in proc.stdout
  assert 'Traceback' not in proc.stderr
  with open(out / 'predictions.jsonl') as f:
    lines = [json.loads(line) for line in f]
  assert sorted(os.path.relpath(l['source'], folder) for l in lines) == names
  for line in lines:
    for d in line['detections']:
      x0, y0, x1, y1 = d['box_xyxy']
      # (Rounded to 0.01 px: a sliver at the edge may round to zero width.)
      assert 0 <= x0 <= x1 <= line['width'] and 0 <= y0 <= y1 <= line['height']
  assert len(os.listdir(out / 'drawn')) == 20


def _same(a, b):
  assert len(a.scores) == len(b.scores) > 0
  np.testing.assert_array_equal(a.class_ids, b.class_ids)
  np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
  np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_modes_and_orientation_give_the_predictions_of_the_same_pixels(
    trained_workdir, tmp_path):
  predictor = detector.load(trained_workdir)
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
  grey = rgb[..., 0]
  got = predictor.predict([rgb, Image.fromarray(rgb).convert('RGBA'), grey,
                           np.repeat(grey[..., None], 3, -1),
                           grey.astype(np.uint16) * 257])
  _same(got[0], got[1])   # RGBA: the alpha is dropped.
  _same(got[2], got[3])   # Grey: replicated to RGB.
  _same(got[2], got[4])   # 16-bit: scaled to 8 bits.
  # A photograph stored sideways with EXIF orientation 6 is turned upright.
  sideways = Image.fromarray(np.rot90(rgb, 1))
  exif = sideways.getexif()
  exif[0x0112] = 6
  path = str(tmp_path / 'sideways.jpg')
  sideways.save(path, exif=exif, quality=100)
  upright = images_lib.read(path)
  assert upright.shape == rgb.shape
  [from_file, from_array] = predictor.predict([path, upright])
  assert from_file.image_size == (90, 120)
  _same(from_file, from_array)


def test_mixed_sizes_compile_once_per_batch_size(trained_workdir):
  predictor = detector.load(trained_workdir, batch_size=4)
  rng = np.random.default_rng(2)
  inputs = [rng.integers(0, 256, (40 + 13 * i, 200 - 11 * i, 3), np.uint8)
            for i in range(9)]
  results = predictor.predict(inputs)
  assert [r.image_size for r in results] == [x.shape[:2] for x in inputs]
  # Batches of 4, 4 and 1 images: two programs, whatever the 9 sizes.
  assert predictor.backend._jitted._cache_size() == 2  # pylint: disable=protected-access
  # One image alone gives what it gave in a batch.
  _same(predictor.predict(inputs[4])[0], results[4])


def test_video_frames(trained_workdir, tmp_path):
  import av  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'clip.mp4')
  with av.open(path, 'w') as container:
    stream = container.add_stream('mpeg4', rate=5)
    stream.width, stream.height, stream.pix_fmt = 96, 64, 'yuv420p'
    for i in range(6):
      frame = np.full((64, 96, 3), 40 * i, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, 'rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  out = tmp_path / 'out'
  proc = _predict_cli(f'--model={trained_workdir}', f'--output={out}',
                      '--video_every=2', path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / 'predictions.jsonl') as f:
    sources = [json.loads(line)['source'] for line in f]
  assert sources == [f'{path}#frame={i}' for i in (0, 2, 4)]


def test_bad_models_are_named(tmp_path, trained_workdir):
  with pytest.raises(errors.ConfigError, match='no such file'):
    detector.load(str(tmp_path / 'nothing'))
  (tmp_path / 'model.bin').write_bytes(b'x')
  with pytest.raises(errors.ConfigError, match='model.bin: not a model'):
    detector.load(str(tmp_path / 'model.bin'))
  with pytest.raises(errors.ConfigError, match='no classes.json'):
    detector.load(str(tmp_path))
  with pytest.raises(errors.ConfigError, match=r'no checkpoint step 7 .*steps: '
                     r'\[300\]'):
    detector.load(trained_workdir, step=7)
  proc = _predict_cli(f'--model={tmp_path / "model.bin"}',
                      f'--output={tmp_path / "out"}', str(tmp_path))
  last = proc.stderr.strip().splitlines()[-1]  # TensorFlow logs before it.
  assert proc.returncode == 2 and last.startswith('error: '), proc.stderr
  assert 'model.bin: not a model' in last and 'Traceback' not in proc.stderr


def test_weights_file_classifies_as_the_imagenet_tool(tmp_path):
  """A ported ImageNet weights file through detector.load: the top-5 of
  `detector.imagenet` (same crop; the normalisation moves inside)."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from detector import imagenet  # pylint: disable=g-import-not-at-top
  weights = str(tmp_path / 'lite0.npz')
  proc = subprocess.run(
      [sys.executable, '-m', 'detector.port', '--source=efficientnet_lite',
       '--arch=efficientnet-lite0', f'--output={weights}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
  results = detector.load(weights).predict(photos)
  tool = imagenet.Classifier(weights, 'efficientnet-lite0')
  prep = tool.metadata['preprocessing']
  expected = tool.top5(np.stack([imagenet.preprocess(Image.fromarray(p), prep)
                                 for p in photos]))
  for got, want in zip(results, expected):
    assert list(got.class_ids) == [w['index'] for w in want]
    assert got.class_names == [w['label'] for w in want]
    np.testing.assert_allclose(got.probabilities,
                               [w['probability'] for w in want], atol=1e-4)
