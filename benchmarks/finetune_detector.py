"""Benchmark: fine-tuning from a whole 90-class detector vs from its backbone.

    .venv/bin/python benchmarks/finetune_detector.py --workdir=/tmp/finetune_det

What a user does with a published COCO detector, done offline (this machine
cannot download one): pretrain the default job's model (`configs/cnn.py`) on a
90-class task, convert it into a whole-detector file, then fine-tune on the
6-class `shapes` data twice with the same budget, seed and data order:
  `whole`:    `--config.init_from=FILE` (backbone, neck, head; the 90-class
              layer re-initialised for the 6 classes),
  `backbone`: the same file with `--config.init_from_scope=backbone`.
The 90 classes are shape x size: each `shapes` object labelled by its class
and which of 15 size bins (log-spaced box sides) it falls in, on scenes
rendered from other seeds than `shapes`' (`shapes` example indices from
1,000,000 on), written as a COCO folder and read with `coco_json:DIR`. A
benchmark, not a test: it prints figures and asserts nothing. Each run is an
ordinary `main.py` run under WORKDIR.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np

flags.DEFINE_string('workdir', '/tmp/finetune_detector', 'Where it all goes.')
flags.DEFINE_integer('pretrain_steps', 1500, 'Steps on the 90-class task.')
flags.DEFINE_integer('pretrain_images', 3000, 'Scenes rendered for it.')
flags.DEFINE_integer('steps', 300, 'Fine-tuning steps of each run.')
flags.DEFINE_integer('eval_every', 100, 'Validation AP every this many steps.')
flags.DEFINE_multi_string('override', [], 'More --config.KEY=VALUE for the '
                          'fine-tuning runs.')
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # The detector package of this checkout.
SIZE_BINS = 15
FIRST_INDEX = 1_000_000  # Scenes no `shapes` split uses.


def write_pretraining_data(root: str, images: int):
  """The 90-class COCO folder (train/ and valid/) under `root`."""
  from detector.data import shapes  # pylint: disable=g-import-not-at-top
  names = shapes.CLASS_NAMES
  edges = np.geomspace(8, 160, SIZE_BINS + 1)[1:-1]
  categories = [{'id': 1 + c * SIZE_BINS + b, 'name': f'{name} size{b}'}
                for c, name in enumerate(names) for b in range(SIZE_BINS)]
  counts = {'train': images, 'valid': max(images // 10, 50)}
  for folder, n in counts.items():
    directory = os.path.join(root, folder)
    os.makedirs(directory, exist_ok=True)
    records, annotations = [], []
    for i in range(n):
      split = 'train' if folder == 'train' else 'validation'
      example = shapes.make_example(split, FIRST_INDEX + i)
      file_name = f'{i:06d}.png'
      with open(os.path.join(directory, file_name), 'wb') as f:
        f.write(example['image'])
      import PIL.Image  # pylint: disable=g-import-not-at-top
      with PIL.Image.open(os.path.join(directory, file_name)) as image:
        width, height = image.size
      records.append({'id': i + 1, 'file_name': file_name, 'width': width,
                      'height': height})
      objects = example['objects']
      for box, label in zip(objects['bbox'], objects['label']):
        y0, x0, y1, x1 = box * np.array([height, width, height, width])
        side = np.sqrt((y1 - y0) * (x1 - x0))
        size_bin = int(np.searchsorted(edges, side))
        annotations.append({
            'id': len(annotations) + 1, 'image_id': i + 1,
            'category_id': 1 + int(label) * SIZE_BINS + size_bin,
            'bbox': [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            'area': float((x1 - x0) * (y1 - y0)), 'iscrowd': 0})
    with open(os.path.join(directory, 'annotations.json'), 'w') as f:
      json.dump({'images': records, 'annotations': annotations,
                 'categories': categories}, f)


def _run(args, workdir):
  start = time.time()
  subprocess.run([sys.executable, 'main.py', '--config=configs/cnn.py',
                  *args, f'--workdir={workdir}'], check=True, cwd=ROOT)
  return time.time() - start


def _metrics(workdir, split):
  with open(os.path.join(workdir, 'eval', f'metrics_{split}.json')) as f:
    return json.load(f)


def _history(workdir):
  path = os.path.join(workdir, 'eval', 'history_validation.jsonl')
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f]
  return rows + [_metrics(workdir, 'validation')]


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  data = os.path.join(FLAGS.workdir, 'shapes_by_size')
  if not os.path.exists(os.path.join(data, 'valid', 'annotations.json')):
    write_pretraining_data(data, FLAGS.pretrain_images)
  pretrained = os.path.join(FLAGS.workdir, 'pretrain')
  seconds = {}
  if not os.path.exists(os.path.join(pretrained, 'eval',
                                     'metrics_validation.json')):
    seconds['pretrain'] = _run(
        [f'--config.dataset=coco_json:{data}',
         f'--config.data_dir={os.path.join(FLAGS.workdir, "tfds")}',
         f'--config.num_train_steps={FLAGS.pretrain_steps}',
         '--config.test_split=', '--config.eval_report=False',
         '--config.monitoring_images=0'], pretrained)
  weights = os.path.join(FLAGS.workdir, 'pretrained_90.npz')
  subprocess.run([sys.executable, '-m', 'detector.port', '--source=workdir',
                  f'--input={pretrained}', f'--output={weights}'], check=True,
                 cwd=ROOT)
  common = [f'--config.init_from={weights}',
            f'--config.num_train_steps={FLAGS.steps}',
            f'--config.eval_every_steps={FLAGS.eval_every}',
            f'--config.checkpoint_every_steps={FLAGS.eval_every}',
            f'--config.optimizer.warmup_steps={max(1, FLAGS.steps // 10)}',
            '--config.eval_report=False', '--config.monitoring_images=0',
            *[f'--config.{o}' for o in FLAGS.override]]
  runs = {'whole': [], 'backbone': ['--config.init_from_scope=backbone']}
  for name, extra in runs.items():
    seconds[name] = _run(common + extra, os.path.join(FLAGS.workdir, name))
  pre = _metrics(pretrained, 'validation')
  print(f'\npretraining: 90 classes (shape x size), {FLAGS.pretrain_steps} '
        f'steps: validation AP {pre["AP"]:.3f}')
  print(f'fine-tuning on shapes (6 classes), {FLAGS.steps} steps; '
        'validation AP (AP50) by step:')
  curves = {name: _history(os.path.join(FLAGS.workdir, name)) for name in runs}
  print(f'{"step":>6}  {"whole detector":>16}  {"backbone only":>16}')
  for a, b in zip(curves['whole'], curves['backbone']):
    print(f'{a["step"]:>6}  {a["AP"]:>7.3f} ({a["AP50"]:.3f})  '
          f'{b["AP"]:>7.3f} ({b["AP50"]:.3f})')
  for name in runs:
    test = _metrics(os.path.join(FLAGS.workdir, name), 'test')
    print(f'{name}: test AP {test["AP"]:.3f} AP50 {test["AP50"]:.3f}; run '
          f'took {seconds[name]:.0f} s')


if __name__ == '__main__':
  app.run(main)
