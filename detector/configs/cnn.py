"""Small CNN + FPN + anchor-free centre head on the built-in `shapes` data (default job).

    .venv/bin/python main.py --config=configs/cnn.py --workdir=workdirs/cnn

About 9 minutes on a 2-core x86 CPU (the first run also generates `shapes`),
test AP@[.5:.95] 0.474, AP50 0.694, deterministic on a CPU (BENCHMARKS.md
has the measured figures).

The recipe (each choice measured; BENCHMARKS.md): train on 96x96 crops cut
from images scaled to fit the 128x128 evaluation size (times a 0.75-1.25
jitter), so objects are trained at the size they are scored at for the cost
of a 96 px input; average each test image with its mirror image
(`model.flip_test`); batch 16; the `centernet` head (one stride-4 level)
rather than `retinanet`, which `--config.model.head=retinanet
--config.num_train_steps=1250 --config.optimizer.warmup_steps=250` switches
to on the same time budget.

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
  return config.lock()
