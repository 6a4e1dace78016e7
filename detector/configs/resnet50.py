"""ResNet50-FPN RetinaNet (Lin et al., 2017) on the built-in `shapes` data.

    .venv/bin/python main.py --config=configs/resnet50.py --workdir=workdirs/r50

The model is the standard one: ResNet50 v1.5 (torchvision layout), FPN on
C3-C5 with P6/P7 (256 channels), RetinaNet subnets of four 3x3 convs, 9
anchors per position (3 scales x 3 ratios, anchor scale 4), sigmoid focal
loss, GIoU box loss. Other depths: `--config.model.resnet.depth=101` (18, 34,
50, 101, 152); the Keras "caffe" variant: `.stride_in_1x1=True` and
`.conv_bias=True`.

Defaults sized for `shapes` (256 px: objects of 16-128 px fit the P3-P7
anchors). On a 2-core CPU a step at these sizes takes seconds; for a quick
look use smaller images and fewer steps (measured figures in BENCHMARKS.md):
    --config.image_size="(128, 128)" --config.eval_image_size="(128, 128)"
    --config.batch_size=8 --config.num_train_steps=300

ImageNet weights (from torchvision, timm or Keras), converted once:
    .venv/bin/python -m detector.port --source=torchvision --arch=resnet50 \
        --output=resnet50.npz   # add --input=FILE to convert a local file
then `--config.init_from=resnet50.npz`. Pixel statistics and BatchNorm
epsilon come from the file; a mismatching depth or variant is refused.

Settings for real data (COCO, prepared with TFDS; the usual Detectron2-style
schedule):
    --config.dataset=coco/2017 --config.eval_split=validation
    --config.test_split=validation
    --config.image_size="(640, 640)" --config.eval_image_size="(640, 640)"
    --config.input.max_boxes=100 --config.init_from=resnet50.npz
    --config.model.backbone_norm=frozen_batch_norm --config.optimizer.freeze_at=2
    --config.optimizer.name=sgd --config.optimizer.learning_rate=0.01
    --config.optimizer.weight_decay=1e-4 --config.optimizer.warmup_steps=1000
    --config.batch_size=16 --config.num_train_steps=90000
    --config.model.score_threshold=0.05 --config.model.flip_test=False
(16 images per step; with batch B scale the learning rate by B / 16.)
"""

import ml_collections

from detector.configs import common


def get_config(arg=None):
  """Returns the locked config; `arg` 'tiny' gives a seconds-long smoke run."""
  if arg not in (None, '', 'tiny'):
    raise ValueError(f'configs/resnet50.py takes no argument or "tiny", got {arg!r}')
  config = common.detection_config()
  config.image_size = (256, 256)
  config.eval_image_size = (256, 256)
  config.model.backbone = 'resnet'
  config.model.resnet = ml_collections.ConfigDict(dict(
      depth=50, stride_in_1x1=False, conv_bias=False))
  config.model.neck = 'fpn'
  config.model.fpn = ml_collections.ConfigDict(dict(
      min_level=3, max_level=7, width=256, use_norm=False))
  config.model.head = 'retinanet'
  config.model.retinanet.update(dict(
      min_level=3, max_level=7, width=256, num_convs=4, anchor_scale=4.0))
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 500
  config.num_train_steps = 6000
  config.batch_size = 16
  config.eval_batch_size = 16
  if arg == 'tiny':
    common.make_tiny_detection(config, image_size=64)
    config.model.resnet.depth = 18
    config.model.fpn.update(dict(max_level=5, width=16))
    config.model.retinanet.update(dict(max_level=5, width=16, num_convs=1,
                                       pre_nms_topk=200))
  return config.lock()
