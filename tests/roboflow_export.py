"""Writes a COCO dataset laid out and shaped as Roboflow exports it.

  python tests/roboflow_export.py DIR [--train=N] [--valid=N] [--test=N] [--seed=S]

DIR/{train,valid,test}/ each get JPEG images named like Roboflow's
(`<name>_jpg.rf.<hash>.jpg`) beside `_annotations.coco.json`, with Roboflow's
habits: image ids from 0 in every split, a placeholder category 0 named after
the dataset (the supercategory of the real ones, which have ids 1..K and no
boxes of its own), `info` / `licenses` blocks, empty `segmentation` lists and
float `bbox` values. The scenes are `shapes` scenes drawn from seeds the
built-in dataset does not use, so the project has not seen these images.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
from PIL import Image

# Run as a script from anywhere: the repository root holds `detector`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from detector.data.shapes import render as shapes_render  # pylint: disable=g-import-not-at-top,wrong-import-position

SPLIT_SALT = {'train': 101, 'valid': 202, 'test': 303}


def write(root, counts, seed=7):
  """Writes the export; returns {split: path of its annotation file}."""
  categories = [{'id': 0, 'name': 'shapes-xyz', 'supercategory': 'none'}] + [
      {'id': k + 1, 'name': name, 'supercategory': 'shapes-xyz'}
      for k, name in enumerate(shapes_render.CLASS_NAMES)]
  paths = {}
  for split, n in counts.items():
    directory = os.path.join(root, split)
    os.makedirs(directory, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
      scene = shapes_render.render_scene(
          np.random.default_rng([seed, SPLIT_SALT[split], i]))
      h, w = scene['image'].shape[:2]
      digest = hashlib.md5(f'{seed} {split} {i}'.encode()).hexdigest()
      name = f'IMG_{i:04d}_jpg.rf.{digest}.jpg'
      Image.fromarray(scene['image']).save(os.path.join(directory, name),
                                           quality=95)
      images.append({'id': i, 'license': 1, 'file_name': name, 'height': h,
                     'width': w, 'date_captured': '2026-11-26T00:00:00+00:00'})
      for (y0, x0, y1, x1), label in zip(scene['boxes'], scene['labels']):
        annotations.append({
            'id': len(annotations), 'image_id': i,
            'category_id': int(label) + 1,
            'bbox': [round(float(x0), 3), round(float(y0), 3),
                     round(float(x1 - x0), 3), round(float(y1 - y0), 3)],
            'area': round(float((x1 - x0) * (y1 - y0)), 3),
            'segmentation': [], 'iscrowd': 0})
    paths[split] = os.path.join(directory, '_annotations.coco.json')
    with open(paths[split], 'w') as f:
      json.dump({
          'info': {'year': '2026', 'version': '1', 'description':
                   'Exported from roboflow.com', 'contributor': '', 'url': '',
                   'date_created': '2026-11-26T00:00:00+00:00'},
          'licenses': [{'id': 1, 'url': 'https://creativecommons.org/licenses/by/4.0/',
                        'name': 'CC BY 4.0'}],
          'categories': categories, 'images': images,
          'annotations': annotations}, f)
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('dir')
  parser.add_argument('--train', type=int, default=600)
  parser.add_argument('--valid', type=int, default=100)
  parser.add_argument('--test', type=int, default=200)
  parser.add_argument('--seed', type=int, default=7)
  args = parser.parse_args()
  paths = write(args.dir, {'train': args.train, 'valid': args.valid,
                           'test': args.test}, args.seed)
  for split, path in paths.items():
    print(split, path)


if __name__ == '__main__':
  main()
