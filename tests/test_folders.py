"""Folder datasets: COCO JSON, Pascal VOC and YOLO folders with known content
and every defect the data-quality report names; the exact counts it gives,
the boxes that reach the TFDS dataset and the input pipeline, the category
ids written back, the conversion cache, and the errors for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from detector import errors
from detector.data import datasets
from detector.data import formats
from detector.data import detection
from detector.data import loading
from detector.data.formats import voc

RED, BLUE = (230, 20, 20), (20, 20, 230)


def _image(path, width, height, boxes=(), fmt=None, exif_orientation=None):
  """A grey noisy image with each (x0, y0, x1, y1, colour) box filled."""
  rng = np.random.default_rng(width * 1000 + height)
  pixels = rng.integers(100, 140, (height, width, 3)).astype(np.uint8)
  for x0, y0, x1, y1, colour in boxes:
    pixels[max(y0, 0):y1, max(x0, 0):x1] = colour
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(pixels)
  if exif_orientation:
    exif = Image.Exif()
    exif[0x0112] = exif_orientation
    image.save(path, format=fmt or 'JPEG', exif=exif, quality=95)
  else:
    image.save(path, format=fmt)
  return pixels


def _write_json(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(data, f)


CATEGORIES = [{'id': 0, 'name': 'animals', 'supercategory': 'none'},
              {'id': 3, 'name': 'cat', 'supercategory': 'animals'},
              {'id': 7, 'name': 'dog', 'supercategory': 'animals'}]


def _ann(i, image_id, cat, bbox, crowd=0):
  return {'id': i, 'image_id': image_id, 'category_id': cat, 'bbox': bbox,
          'area': abs(bbox[2] * bbox[3]), 'iscrowd': crowd}


def make_coco_folder(root):
  """Roboflow-style export: a placeholder supercategory (id 0), ids 3 and 7,
  and every defect; the expected outcome is in test_coco_json_report."""
  train = os.path.join(root, 'train')
  _image(os.path.join(train, 'a.jpg'), 64, 48, [(4, 4, 24, 14, RED),
                                                (50, 30, 64, 48, BLUE)])
  with open(os.path.join(train, 'broken.jpg'), 'wb') as f:
    f.write(b'\xff\xd8\xff not really a jpeg')
  _image(os.path.join(train, 'empty.png'), 40, 40)
  _image(os.path.join(train, 'dup.png'), 32, 32, [(1, 1, 9, 9, RED)])
  _write_json(os.path.join(train, '_annotations.coco.json'), {
      'categories': CATEGORIES,
      'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 64, 'height': 48},
                 {'id': 2, 'file_name': 'missing.jpg', 'width': 10, 'height': 10},
                 {'id': 3, 'file_name': 'broken.jpg', 'width': 10, 'height': 10},
                 {'id': 4, 'file_name': 'empty.png', 'width': 40, 'height': 40},
                 {'id': 5, 'file_name': 'dup.png', 'width': 32, 'height': 32}],
      'annotations': [
          _ann(1, 1, 3, [4, 4, 20, 10]),        # Kept.
          _ann(2, 1, 7, [50, 30, 30, 30]),      # Clipped to [50, 30, 14, 18].
          _ann(3, 1, 3, [70, 10, 5, 5]),        # Outside: dropped.
          _ann(4, 1, 7, [10, 10, 0, 5]),        # Zero width: dropped.
          _ann(5, 1, 3, [30, 20, -5, 5]),       # Inverted: dropped.
          _ann(6, 2, 3, [1, 1, 2, 2]),          # Missing image: dropped.
          _ann(7, 2, 7, [1, 1, 3, 3]),          # Missing image: dropped.
          _ann(8, 3, 3, [1, 1, 2, 2]),          # Unreadable image: dropped.
          _ann(9, 5, 3, [1, 1, 8, 8]),          # Kept.
      ]})
  valid = os.path.join(root, 'valid')
  _image(os.path.join(valid, 'images', 'v.png'), 64, 64, [(8, 8, 24, 24, BLUE)])
  _write_json(os.path.join(valid, 'annotations.json'), {
      'categories': CATEGORIES,
      'images': [{'id': 10, 'file_name': 'v.png', 'width': 64, 'height': 64}],
      'annotations': [_ann(10, 10, 7, [8, 8, 16, 16])]})
  test = os.path.join(root, 'test')
  _image(os.path.join(test, 't.png'), 32, 32, [(1, 1, 9, 9, RED)])  # = dup.png
  _image(os.path.join(test, 'u.png'), 50, 40, [(5, 5, 25, 25, BLUE)])
  _write_json(os.path.join(test, '_annotations.coco.json'), {
      'categories': CATEGORIES,
      'images': [{'id': 20, 'file_name': 't.png', 'width': 32, 'height': 32},
                 {'id': 21, 'file_name': 'u.png', 'width': 50, 'height': 40}],
      'annotations': [_ann(11, 20, 3, [1, 1, 8, 8]),
                      _ann(12, 21, 7, [5, 5, 20, 20]),
                      _ann(13, 21, 3, [0, 0, 10, 10], crowd=1)]})
  return root


@pytest.fixture
def coco_folder(tmp_path):
  return make_coco_folder(str(tmp_path / 'exported'))


def _convert(spec, data_dir):
  kind, root = formats.parse_spec(spec)
  return datasets.convert(kind, root, str(data_dir), verbose=False)


def test_coco_json_report(coco_folder, tmp_path):
  directory, report = _convert(f'coco_json:{coco_folder}', tmp_path / 'data')
  assert report['classes'] == ['cat', 'dog'] and report['category_ids'] == [3, 7]
  assert report['totals'] == dict(
      images_read=8, images_kept=6, images_skipped=2, boxes_read=13,
      boxes_kept=7, boxes_dropped=6, boxes_clipped=1)
  counts = {k: v['count'] for k, v in report['problems'].items()}
  assert counts == dict(missing_image=1, unreadable_image=1, box_clipped=1,
                        box_outside_image=1, box_degenerate=2,
                        duplicate_across_splits=1, unused_category=1)
  problems = report['problems']
  train = os.path.join(coco_folder, 'train')
  assert list(problems['missing_image']['files']) == [os.path.join(train, 'missing.jpg')]
  assert list(problems['unreadable_image']['files']) == [os.path.join(train, 'broken.jpg')]
  assert [k.split(' (')[0] for k in problems['box_degenerate']['files']] == [
      '_annotations.coco.json annotation 4', '_annotations.coco.json annotation 5']
  assert list(problems['unused_category']['files']) == ["category 0 'animals'"]
  (dup,) = problems['duplicate_across_splits']['files']
  assert 'dup.png (train)' in dup and 't.png (test)' in dup
  splits = report['splits']
  assert {s: v['images'] for s, v in splits.items()} == {
      'train': 3, 'validation': 1, 'test': 2}
  assert splits['train']['boxes_per_class'] == {'cat': 2, 'dog': 1}
  assert splits['train']['images_per_class'] == {'cat': 2, 'dog': 1}
  assert splits['train']['images_without_boxes'] == 1
  assert splits['test']['boxes_per_class'] == {'cat': 1, 'dog': 1}
  assert splits['test']['crowd_boxes'] == 1 and splits['train']['crowd_boxes'] == 0
  for plot in report['plots']:
    assert os.path.getsize(plot) > 1000 and plot.startswith(directory)
  with open(os.path.join(directory, 'report.json')) as f:
    assert json.load(f) == report


def test_coco_json_boxes_and_ids_reach_the_dataset_and_pipeline(coco_folder, tmp_path):
  spec = f'coco_json:{coco_folder}'
  builder = datasets.get_builder(spec, str(tmp_path / 'data'), verbose=False)
  names = detection.class_names(builder)
  ids = detection.category_ids(builder, names)
  assert names == ['cat', 'dog'] and ids == [3, 7]
  gt = detection.groundtruth_coco(builder, 'train', names, ids)
  assert sorted(im['id'] for im in gt['images']) == [1, 4, 5]
  got = sorted((a['image_id'], a['category_id'], tuple(np.round(a['bbox'], 3)))
               for a in gt['annotations'])
  assert got == [(1, 3, (4.0, 4.0, 20.0, 10.0)), (1, 7, (50.0, 30.0, 14.0, 18.0)),
                 (5, 3, (1.0, 1.0, 8.0, 8.0))]
  test_gt = detection.groundtruth_coco(builder, 'test', names, ids)
  assert sorted((a['category_id'], a['iscrowd']) for a in test_gt['annotations']) == [
      (3, 0), (3, 1), (7, 0)]
  # Through the evaluation pipeline: each box, in input pixels / scale, is
  # where its colour was painted.
  from detector.configs import cnn  # pylint: disable=g-import-not-at-top
  config = cnn.get_config('tiny')
  config.dataset = spec
  config.data_dir = str(tmp_path / 'data')
  batches = list(detection.eval_batches(config, builder, 'train', batch_size=4))
  seen = 0
  for batch in batches:
    for i in np.flatnonzero(batch['example_mask']):
      boxes = batch['boxes'][i][batch['box_mask'][i]] / batch['scale'][i]
      image = batch['image'][i]
      for (y0, x0, y1, x1), label in zip(boxes, batch['labels'][i][batch['box_mask'][i]]):
        s = batch['scale'][i]
        inner = image[int(np.ceil(y0 * s)) + 1:int(y1 * s) - 1,
                      int(np.ceil(x0 * s)) + 1:int(x1 * s) - 1].reshape(-1, 3)
        colour = RED if label == 0 else BLUE
        assert len(inner) and np.abs(inner.mean(0) - colour).max() < 40, (
            batch['image_id'][i], label)
        seen += 1
  assert seen == 3


def test_evaluation_writes_the_datasets_own_ids(coco_folder, tmp_path):
  from detector.train import evaluate  # pylint: disable=g-import-not-at-top
  out = {'valid': np.array([[True, True]]), 'boxes': np.array([[[4, 4, 14, 24], [0, 0, 9, 9]]], np.float32),
         'classes': np.array([[0, 1]]), 'scores': np.array([[0.9, 0.8]])}
  meta = {'example_mask': np.array([True]), 'orig_size': np.array([[48, 64]]),
          'scale': np.array([1.0]), 'image_id': np.array([1])}
  dets = evaluate.to_coco_detections(out, meta, [3, 7])
  assert [d['category_id'] for d in dets] == [3, 7]
  assert [d['image_id'] for d in dets] == [1, 1]


def test_conversion_is_cached_and_redone_when_the_folder_changes(coco_folder, tmp_path):
  data = tmp_path / 'data'
  first, _ = _convert(f'coco_json:{coco_folder}', data)
  stamp = os.path.getmtime(os.path.join(first, 'report.json'))
  again, _ = _convert(f'coco_json:{coco_folder}', data)
  assert again == first and os.path.getmtime(os.path.join(first, 'report.json')) == stamp
  path = os.path.join(coco_folder, 'valid', 'annotations.json')
  with open(path) as f:
    d = json.load(f)
  d['annotations'].append(_ann(99, 10, 3, [30, 30, 10, 10]))
  _write_json(path, d)
  changed, report = _convert(f'coco_json:{coco_folder}', data)
  assert changed != first and not os.path.exists(first)
  assert report['splits']['validation']['boxes'] == 2


def make_voc_folder(root):
  _image(os.path.join(root, 'JPEGImages', 'img1.jpg'), 60, 40)
  xml = """<annotation><filename>{f}</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}
  </annotation>"""
  obj = ('<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin>'
         '<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>')
  os.makedirs(os.path.join(root, 'Annotations'))
  with open(os.path.join(root, 'Annotations', 'img1.xml'), 'w') as f:
    f.write(xml.format(f='img1.jpg', w=60, h=40, objects=''.join([
        obj.format(n='bird', d=0, x0=1, y0=1, x1=10, y1=10),     # [0, 0, 10, 10]
        obj.format(n='person', d=1, x0=21, y0=5, x1=30, y1=20),  # Difficult.
        obj.format(n='bird', d=0, x0=41, y0=11, x1=70, y1=30),   # Clipped.
        obj.format(n='person', d=0, x0=30, y0=5, x1=25, y1=9)])))  # Inverted.
  with open(os.path.join(root, 'Annotations', 'img2.xml'), 'w') as f:
    f.write(xml.format(f='img2.jpg', w=20, h=20, objects=obj.format(
        n='bird', d=0, x0=1, y0=1, x1=5, y1=5)))
  os.makedirs(os.path.join(root, 'ImageSets', 'Main'))
  for split, stems in (('train', ['img1']), ('val', ['img2'])):
    with open(os.path.join(root, 'ImageSets', 'Main', f'{split}.txt'), 'w') as f:
      f.write('\n'.join(stems) + '\n')
  return root


def test_voc_folder(tmp_path):
  root = make_voc_folder(str(tmp_path / 'voc'))
  builder = datasets.get_builder(f'voc:{root}', str(tmp_path / 'data'), verbose=False)
  names = detection.class_names(builder)
  assert names == list(voc.VOC_CLASSES)  # Every name is a VOC class.
  _, report = _convert(f'voc:{root}', tmp_path / 'data')
  assert report['totals'] == dict(
      images_read=2, images_kept=1, images_skipped=1, boxes_read=5,
      boxes_kept=3, boxes_dropped=2, boxes_clipped=1)
  assert {k: v['count'] for k, v in report['problems'].items()} == dict(
      missing_image=1, box_clipped=1, box_degenerate=1, empty_split=1)
  assert list(report['problems']['empty_split']['files']) == [
      'validation (1 images listed)']
  assert sorted(builder.info.splits) == ['train']
  gt = detection.groundtruth_coco(builder, 'train', names,
                                 detection.category_ids(builder, names))
  got = sorted((a['category_id'], a['iscrowd'], tuple(np.round(a['bbox'], 3)))
               for a in gt['annotations'])
  bird, person = names.index('bird') + 1, names.index('person') + 1
  assert got == sorted([(bird, 0, (0.0, 0.0, 10.0, 10.0)),
                        (person, 1, (20.0, 4.0, 10.0, 16.0)),
                        (bird, 0, (40.0, 10.0, 20.0, 20.0))])


def make_yolo_folder(root):
  with open(os.path.join(_mkdir(root), 'data.yaml'), 'w') as f:
    f.write('nc: 2\nnames: {0: red, 1: blue}\n')
  _image(os.path.join(root, 'images', 'train', 'a.png'), 40, 20)
  _image(os.path.join(root, 'images', 'train', 'b.png'), 30, 30)
  _image(os.path.join(root, 'images', 'val', 'd.jpg'), 20, 20)
  labels = {'train/a.txt': '0 0.5 0.5 0.5 0.5\n'       # [10, 5, 30, 15]
                           '1 0.1 0.5 0.4 0.2\n'       # [-4, 8, 12, 12] clipped
                           '1 0.5 0.0 1.0 0.0 1.0 1.0\n',  # polygon [20, 0, 40, 20]
            'train/c.txt': '0 0.5 0.5 0.1 0.1\n',      # No image c.*.
            'val/d.txt': '0 0.5 0.5 0 0.2\n'}          # Zero width.
  for name, text in labels.items():
    path = os.path.join(root, 'labels', name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text)
  return root


def _mkdir(path):
  os.makedirs(path, exist_ok=True)
  return path


def test_yolo_folder(tmp_path):
  root = make_yolo_folder(str(tmp_path / 'yolo'))
  directory, report = _convert(f'yolo:{root}', tmp_path / 'data')
  assert report['classes'] == ['red', 'blue'] and report['category_ids'] == [0, 1]
  # c.txt's box counts as read and dropped: its image does not exist.
  assert report['totals'] == dict(
      images_read=3, images_kept=3, images_skipped=0, boxes_read=5,
      boxes_kept=3, boxes_dropped=2, boxes_clipped=1)
  assert {k: v['count'] for k, v in report['problems'].items()} == dict(
      label_without_image=1, box_clipped=1, box_degenerate=1)
  assert report['splits']['train']['images_without_boxes'] == 1
  builder = tfds.builder_from_directory(report['dataset_dir'])
  assert str(builder.data_dir).startswith(directory)
  gt = detection.groundtruth_coco(builder, 'train', report['classes'], [0, 1])
  got = sorted((a['category_id'], tuple(np.round(a['bbox'], 3))) for a in gt['annotations'])
  assert got == [(0, (10.0, 5.0, 20.0, 10.0)), (1, (0.0, 8.0, 12.0, 4.0)),
                 (1, (20.0, 0.0, 20.0, 20.0))]


def test_exif_rotated_photo_is_turned_upright(tmp_path):
  root = str(tmp_path / 'exif')
  # Stored 40 wide x 20 high; orientation 6 shows it 20 wide x 40 high, as
  # the labelling tool showed it (the box is in that frame).
  _image(os.path.join(root, 'train', 'p.jpg'), 40, 20, exif_orientation=6)
  _write_json(os.path.join(root, 'train', '_annotations.coco.json'), {
      'categories': [{'id': 1, 'name': 'x'}],
      'images': [{'id': 1, 'file_name': 'p.jpg', 'width': 20, 'height': 40}],
      'annotations': [_ann(1, 1, 1, [2, 30, 10, 5])]})
  _, report = _convert(f'coco_json:{root}', tmp_path / 'data')
  assert {k: v['count'] for k, v in report['problems'].items()} == {'exif_rotated': 1}
  assert report['totals']['boxes_kept'] == 1
  builder = tfds.builder_from_directory(report['dataset_dir'])
  (ex,) = tfds.as_numpy(builder.as_dataset(split='train'))
  assert ex['image'].shape == (40, 20, 3)


@pytest.mark.parametrize('case', ['invalid_json', 'unknown_category', 'no_splits',
                                  'unknown_image', 'no_categories'])
def test_bad_coco_folders_fail_naming_the_file(coco_folder, tmp_path, case):
  train = os.path.join(coco_folder, 'train', '_annotations.coco.json')
  with open(train) as f:
    d = json.load(f)
  if case == 'invalid_json':
    with open(train, 'w') as f:
      f.write('{"images": [')
    match = rf'{train}: not valid JSON'
  elif case == 'unknown_category':
    d['annotations'][3]['category_id'] = 9
    _write_json(train, d)
    match = rf'{train}: annotations\[3\]: category_id 9 is not in "categories"'
  elif case == 'unknown_image':
    d['annotations'][0]['image_id'] = 77
    _write_json(train, d)
    match = rf'{train}: annotations\[0\]: image_id 77 is not in "images"'
  elif case == 'no_categories':
    for path in (train, os.path.join(coco_folder, 'valid', 'annotations.json'),
                 os.path.join(coco_folder, 'test', '_annotations.coco.json')):
      with open(path) as f:
        data = json.load(f)
      del data['categories']
      _write_json(path, data)
    match = 'no "categories"; a COCO file must name its classes'
  else:
    coco_folder = str(tmp_path / 'empty')
    os.makedirs(os.path.join(coco_folder, 'photos'))
    match = 'no split folders'
  with pytest.raises(formats.DataError, match=match):
    _convert(f'coco_json:{coco_folder}', tmp_path / 'data')


def test_bad_voc_and_yolo_folders_fail_naming_the_file(tmp_path):
  voc_root = make_voc_folder(str(tmp_path / 'voc'))
  path = os.path.join(voc_root, 'Annotations', 'img2.xml')
  with open(path, 'w') as f:
    f.write('<annotation><object>')
  with pytest.raises(formats.DataError, match=rf'{path}: not valid XML'):
    _convert(f'voc:{voc_root}', tmp_path / 'data')
  yolo = make_yolo_folder(str(tmp_path / 'yolo'))
  label = os.path.join(yolo, 'labels', 'train', 'a.txt')
  with open(label, 'a') as f:
    f.write('5 0.5 0.5 0.1 0.1\n')
  with pytest.raises(formats.DataError, match=rf'{label}:4: class 5 is not in data.yaml'):
    _convert(f'yolo:{yolo}', tmp_path / 'data')
  with open(label, 'w') as f:
    f.write('0 0.5 0.5\n')
  with pytest.raises(formats.DataError, match=rf'{label}:1: .* is not "class cx cy w h"'):
    _convert(f'yolo:{yolo}', tmp_path / 'data')
  with open(os.path.join(yolo, 'data.yaml'), 'w') as f:
    f.write('names: [a, b\n')
  with pytest.raises(formats.DataError, match='data.yaml: not valid YAML'):
    _convert(f'yolo:{yolo}', tmp_path / 'data')


def test_bad_specs_and_missing_splits(tmp_path):
  with pytest.raises(errors.ConfigError, match=r"expected coco_json:DIR"):
    formats.parse_spec('coco_json:')
  with pytest.raises(errors.ConfigError, match='nothere is not a folder'):
    formats.parse_spec(f'voc:{tmp_path}/nothere')
  with pytest.raises(errors.ConfigError, match='neither a known TFDS dataset'):
    datasets.get_builder('no_such_dataset_xyz', str(tmp_path))
  yolo = make_yolo_folder(str(tmp_path / 'yolo'))
  builder = datasets.get_builder(f'yolo:{yolo}', str(tmp_path / 'data'), verbose=False)
  with pytest.raises(errors.ConfigError, match=r"split 'test' is not in .*yolo.*it has \['train', 'validation'\]"):
    loading.split_size(builder, 'test', f'yolo:{yolo}')


def test_report_command(coco_folder, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, '-m', 'detector.data.report', *a],
                                  capture_output=True, text=True, check=False)
  result = run(f'coco_json:{coco_folder}', f'--data_dir={tmp_path / "data"}')
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert 'images: 8 read, 6 kept, 2 skipped; boxes: 13 read, 7 kept (1 clipped), 6 dropped' in out
  assert 'missing_image: 1' in out and 'missing.jpg' in out
  assert 'duplicate_across_splits: 1' in out
  result = run(f'coco_json:{coco_folder}', f'--data_dir={tmp_path / "data"}', '--json')
  report = json.loads(result.stdout)
  with open(report['report']) as f:
    assert json.load(f) == report
  result = run(f'coco_json:{tmp_path}/nothere', f'--data_dir={tmp_path / "data"}')
  assert result.returncode == 2 and 'nothere is not a folder' in result.stderr


def test_unseen_roboflow_export_trains_and_rescores_with_pycocotools(tmp_path):
  """`main.py --config.dataset=coco_json:DIR` on an export the project has
  never seen; W/eval/ re-scored by pycocotools, against the written ground
  truth and against the export's own test annotations (its own image and
  category ids: Roboflow's start at 0 and have a placeholder category)."""
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  import roboflow_export  # pylint: disable=g-import-not-at-top
  export = str(tmp_path / 'export')
  paths = roboflow_export.write(export, {'train': 24, 'valid': 8, 'test': 8})
  workdir = str(tmp_path / 'w')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/cnn.py:tiny',
       f'--config.dataset=coco_json:{export}',
       f'--config.data_dir={tmp_path / "data"}', f'--workdir={workdir}'],
      cwd=root, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Data-quality report for coco_json:' in result.stdout + result.stderr
  eval_dir = os.path.join(workdir, 'eval')
  with open(os.path.join(eval_dir, 'metrics_test.json')) as f:
    written = json.load(f)
  with open(os.path.join(eval_dir, 'detections_test.json')) as f:
    detections = json.load(f)
  assert detections and {d['category_id'] for d in detections} <= set(range(1, 7))
  with open(paths['test']) as f:
    assert {d['image_id'] for d in detections} <= {im['id'] for im in json.load(f)['images']}
  # The export numbers its annotations from 0, and pycocotools counts a match
  # with annotation id 0 as no match (its match table holds ids, 0 = none):
  # score the export's own file with ids shifted by one, nothing else changed.
  with open(paths['test']) as f:
    own = json.load(f)
  for a in own['annotations']:
    a['id'] += 1
  own_path = str(tmp_path / 'own_test.json')
  with open(own_path, 'w') as f:
    json.dump(own, f)
  for gt_path in (os.path.join(eval_dir, 'groundtruth_test.json'), own_path):
    gt = COCO(gt_path)
    ev = COCOeval(gt, gt.loadRes(detections), 'bbox')
    if gt_path == own_path:  # The placeholder category has no boxes.
      ev.params.catIds = list(range(1, 7))
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    np.testing.assert_allclose(ev.stats[:3], [written['AP'], written['AP50'],
                                              written['AP75']], atol=1e-4)
