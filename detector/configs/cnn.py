"""Small CNN + FPN + anchor-free centre head on the built-in `shapes` data (default job).

    .venv/bin/python main.py --config=configs/cnn.py --workdir=workdirs/cnn

About 9-10 minutes on a 2-core x86 CPU (the first run also generates
`shapes`), test AP@[.5:.95] 0.528, AP50 0.744, deterministic on a CPU
(BENCHMARKS.md has the measured figures).

The recipe (each choice measured; BENCHMARKS.md): train on 96x96 crops cut
from images scaled to fit the 128x128 evaluation size (times a 0.9-1.1
jitter), so objects are trained at the size they are scored at for the cost
of a 96 px input; average each test image with its mirror image
(`model.flip_test`); the `centernet` head (one stride-4 level); batch 8 for
4600 steps with the learning rate, weight decay, warm-up and box loss weight
of the best trial of `python -m detector.tune` over configs/spaces/cnn.py.
`--config.model.head=retinanet --config.batch_size=16
--config.num_train_steps=1250 --config.optimizer.warmup_steps=250
--config.optimizer.learning_rate=3e-3 --config.optimizer.weight_decay=5e-4
--config.input.scale_jitter="(0.75, 1.25)"` is the RetinaNet recipe measured
on the same time budget before the sweep.

`--config=configs/cnn.py:tiny` is a seconds-long smoke run (tests use it).
"""

import ml_collections

from detector.configs import common


def get_config(arg=None):
  """Returns the locked experiment config.

  Args:
    arg: None for the default job, or 'tiny' for a seconds-long smoke run on
      `shapes/tiny` with a small model (used by the tests):
      `--config=configs/cnn.py:tiny`.
  """
  if arg not in (None, '', 'tiny'):
    raise ValueError(f'configs/cnn.py takes no argument or "tiny", got {arg!r}')
  config = common.detection_config()
  config.model.backbone = 'cnn'
  config.model.cnn = ml_collections.ConfigDict(dict(
      stem_width=24, widths=(32, 64, 128, 192), depths=(1, 2, 2, 1)))
  if arg == 'tiny':
    common.make_tiny_detection(config, image_size=64)
    config.model.cnn.stem_width = 8
    config.model.cnn.widths = (8, 16, 16, 16)
    config.model.cnn.depths = (1, 1, 1, 1)
    config.model.fpn.width = 16
    config.model.centernet.width = 16
    config.model.retinanet.width = 16
    config.model.retinanet.min_level = 3
    config.model.retinanet.pre_nms_topk = 200
  else:
    _tuned(config)
  return config.lock()


def _tuned(config):
  """The best trial of the first sweep (trial 13, BENCHMARKS.md "Issue 15"),
  at the default job's 36,800 training images: batch 8 for 4600 steps,
  warm-up scaled with the steps. Values as the sweep drew them, so that the
  job reproduces the measured run exactly."""
  config.batch_size = 8
  config.num_train_steps = 4600
  config.optimizer.warmup_steps = 681
  config.optimizer.learning_rate = 0.007380300607371013
  config.optimizer.weight_decay = 0.0041228754731976874
  config.model.centernet.box_loss_weight = 7.025304047818031
  config.input.scale_jitter = (0.9, 1.1)
