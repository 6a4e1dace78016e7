"""ResNet50-FPN RetinaNet (Lin et al., 2017): `shapes` demo, COCO and VOC recipes.

    .venv/bin/python main.py --config=configs/resnet50.py --workdir=workdirs/r50
    .venv/bin/python main.py --config=configs/resnet50.py:coco \
        --workdir=workdirs/r50_coco --config.init_from=resnet50.npz
    .venv/bin/python main.py --config=configs/resnet50.py:voc \
        --workdir=workdirs/r50_voc --config.init_from=resnet50.npz

The argument picks the job: none (the default) is the offline demo on the
built-in `shapes` data, which stays the default so that the command above
runs anywhere in minutes with nothing to download; `coco` and `voc` are the
published training recipes (table below) on TFDS `coco/2017` and Pascal VOC
07+12 (prepared with TFDS beforehand); `tiny` is a seconds-long smoke run.

The model is the standard one: ResNet50 v1.5 (torchvision layout), FPN on
C3-C5 with P6/P7 (256 channels), RetinaNet subnets of four 3x3 convs, 9
anchors per position (3 scales x 3 ratios, anchor scale 4), sigmoid focal
loss; GIoU box loss on `shapes`, L1 in the recipes. Other depths:
`--config.model.resnet.depth=101` (18, 34, 50, 101, 152); the Keras "caffe"
variant: `.stride_in_1x1=True` and `.conv_bias=True`.

The `shapes` defaults are sized for it (256 px: objects of 16-128 px fit the
P3-P7 anchors). On a 2-core CPU a step at these sizes takes seconds; for a
quick look use smaller images and fewer steps (measured figures in
BENCHMARKS.md):
    --config.image_size="(128, 128)" --config.eval_image_size="(128, 128)"
    --config.batch_size=8 --config.num_train_steps=300

ImageNet weights (from torchvision, timm or Keras), converted once:
    .venv/bin/python -m detector.port --source=torchvision --arch=resnet50 \
        --output=resnet50.npz   # add --input=FILE to convert a local file
then `--config.init_from=resnet50.npz` (the recipes leave it to the command
line). Pixel statistics and BatchNorm epsilon come from the file; a
mismatching depth or variant is refused.

Recipes
-------
`:coco` is RetinaNet R50-FPN 1x as Detectron2 trains it (37.4 AP): 90k
steps of 16 images (~12 epochs), lr 0.01, x0.1 at 60k and 80k.
torchvision's reference run (36.4 AP) has the same batch, learning rate,
warm-up and decay factor on a longer schedule (26 epochs = ~192k steps,
decayed at epochs 16 and 22). `:voc` is the same model with mmdetection's
VOC 07+12 schedule (Detectron2 and torchvision publish no RetinaNet VOC
recipe): 12 epochs of VOC07+12 trainval (16551 images), decayed after 9,
scored on VOC2007 test. Batch 16 throughout; with batch B scale
`optimizer.learning_rate` by B / 16 and the step counts by 16 / B. Sources:
  [D2]  facebookresearch/detectron2 (02b5c4e) configs/Base-RetinaNet.yaml and
        configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml (its _BASE_).
  [D2d] the same, detectron2/config/defaults.py (what the yaml leaves).
  [D2z] the same, MODEL_ZOO.md, RetinaNet table, R50 1x (model 190397773).
  [TV]  pytorch/vision references/detection/README.md ("RetinaNet": --epochs
        26 --lr-steps 16 22 --lr 0.01, 8 GPUs x --batch-size 2), train.py
        (momentum 0.9, weight decay 1e-4), engine.py (warm-up 1/1000 over
        1000 iterations), torchvision/models/detection/retinanet.py.
  [MM]  open-mmlab/mmdetection configs/pascal_voc/retinanet_r50_fpn_1x_voc0712.py
        (lr 0.01, step at epoch 3, 4 epochs of the 3x repeated set),
        configs/_base_/datasets/voc0712.py (VOC2007 + VOC2012 trainval,
        RepeatDataset times=3, Resize (1000, 600), RandomFlip 0.5, 2 images
        x 8 GPUs, VOC2007 test), configs/_base_/models/retinanet_r50_fpn.py,
        configs/pascal_voc/README.md.

Where this differs from the published runs (besides what the table says):
  * Images: one fixed square canvas. Training and evaluation resize each
    image so its longer side fits `eval_image_size` (here 1024 for COCO: a
    640x480 image scales 1.6x, as Detectron2's shorter side 800 scales it
    1.67x; 896 for VOC: a 500x333 image scales 1.79x, mmdetection's (1000,
    600) 1.8x) and pad it; Detectron2 pads each batch to its largest image.
    Detectron2's train sizes (shorter side 640-800 from 800) become a scale
    jitter of 0.8-1.0 of the evaluation scale; a crop is never needed.
  * Box loss: both Detectron2 (SMOOTH_L1_LOSS_BETA 0.0 in Base-RetinaNet.yaml,
    since its commit b0e2687 "use L1 loss in RetinaNet", which raised R50 1x
    from 36.5 to 37.4 AP) and mmdetection (L1Loss) train with L1 on the
    deltas; torchvision too (_box_loss "l1"). This project's losses are GIoU
    and `huber` (detector/ops/losses.huber_loss, optax's convention:
    0.5 x^2 for |x| <= delta, else delta (|x| - delta / 2)), which is delta
    times Detectron2's smooth-L1 of beta = delta. So `huber_delta` 0.001 with
    `box_loss_weight` 1 / 0.001 = 1000 is smooth-L1 with beta 0.001: L1 minus
    0.0005 wherever |x| > 0.001, the same gradient there. (Detectron2's
    default beta 0.1 would be `huber_delta` 0.1 and `box_loss_weight` 10.)
  * The loss normaliser is the batch's positive anchor count (Detectron2: an
    EMA of it, momentum 0.9). Weight decay skips biases (Detectron2, torchvision
    and mmdetection decay them too; BatchNorm is frozen here anyway).
  * Anchors and P6/P7 padding are torchvision's (`anchor_style`
    'torchvision': centres on the cell corners, offset 0 as Detectron2's
    too, integer sizes, ratio-major; symmetric padding), so that
    torchvision's converted COCO checkpoint (`python -m detector.port
    --source=torchvision --arch=retinanet_resnet50_fpn`) evaluates and
    fine-tunes in this recipe as it was trained. Detectron2's sizes are not
    rounded (32, 40.3, 50.8) and its order is size-major.
  * P6 is computed from P5 (torchvision's v1 RetinaNet); Detectron2 and
    mmdetection compute it from C5.
  * `pre_nms_topk` 1000 candidates over all levels; the published models keep
    the top 1000 of each level (after the 0.05 score threshold, which few
    levels exceed).
  * mmdetection's VOC model keeps BatchNorm statistics fixed but trains its
    scale and bias outside the frozen stages (norm_eval=True,
    requires_grad=True); here the backbone's BatchNorm is frozen whole, as
    in Detectron2 and torchvision.
  * VOC's published mAP is the VOC07 11-point AP at IoU 0.5; ours is COCO's
    101-point AP50 on the same images (difficult boxes ignored in both).

| recipe | key | value | published | source |
|---|---|---|---|---|
| coco | `dataset` | 'coco/2017' | coco_2017_train / coco_2017_val | [D2] DATASETS |
| coco | `train_split` | 'train' | train2017 | [D2] DATASETS.TRAIN |
| coco | `eval_split` | 'validation' | val2017 | [D2] DATASETS.TEST |
| coco | `test_split` | 'validation' | val2017 (test-dev has no labels) | [D2] DATASETS.TEST |
| coco | `extra_train_datasets` | () | - | [D2] DATASETS.TRAIN |
| coco | `image_size` | (1024, 1024) | shorter side 640-800, longer <= 1333 | [D2] INPUT.MIN_SIZE_TRAIN, [D2d] MAX_SIZE_TRAIN |
| coco | `eval_image_size` | (1024, 1024) | shorter side 800, longer <= 1333 | [D2d] INPUT.MIN_SIZE_TEST, MAX_SIZE_TEST |
| coco | `input.augmentations` | ('hflip', 'scale_jitter') | flip, multi-scale | [D2d] INPUT.RANDOM_FLIP 'horizontal' |
| coco | `input.scale_jitter` | (0.8, 1.0) | 640/800 .. 800/800 | [D2] INPUT.MIN_SIZE_TRAIN |
| coco | `input.max_boxes` | 100 | every box | - |
| coco | `batch_size` | 16 | 16 | [D2] SOLVER.IMS_PER_BATCH; [TV] 8 x 2 |
| coco | `num_train_steps` | 90000 | 90000 | [D2] SOLVER.MAX_ITER |
| coco | `optimizer.decay_steps` | (60000, 80000) | (60000, 80000) | [D2] SOLVER.STEPS |
| coco | `optimizer.warmup_steps` | 1000 | 1000 | [D2d] SOLVER.WARMUP_ITERS; [TV] engine.py |
| coco | `optimizer.warmup_init_factor` | 0.001 | 1 / 1000 | [D2d] SOLVER.WARMUP_FACTOR; [TV] engine.py |
| voc | `dataset` | 'voc/2007' | VOC2007 (+ VOC2012) | [MM] voc0712.py |
| voc | `extra_train_datasets` | ('voc/2012',) | VOC2012 trainval | [MM] voc0712.py |
| voc | `train_split` | 'train+validation' | trainval | [MM] voc0712.py ann_file |
| voc | `eval_split` | 'test' | VOC2007 test | [MM] voc0712.py val_dataloader |
| voc | `test_split` | 'test' | VOC2007 test | [MM] voc0712.py test_dataloader |
| voc | `image_size` | (896, 896) | Resize (1000, 600), keep ratio | [MM] voc0712.py |
| voc | `eval_image_size` | (896, 896) | Resize (1000, 600), keep ratio | [MM] voc0712.py |
| voc | `input.augmentations` | ('hflip',) | RandomFlip 0.5, one scale | [MM] voc0712.py |
| voc | `input.max_boxes` | 100 | every box | - |
| voc | `batch_size` | 16 | 2 x 8 GPUs | [MM] voc0712.py, auto_scale_lr base 16 |
| voc | `num_train_steps` | 12414 | 12 epochs x 16551 / 16 (4 of 3 repeats) | [MM] max_epochs 4, times=3 |
| voc | `optimizer.decay_steps` | (9310,) | after epoch 3 of 4 (= 9 of 12) | [MM] step=[3] |
| voc | `optimizer.warmup_steps` | 0 | none (no schedule base in the config) | [MM] lr_config / param_scheduler |
| all | `num_epochs` | None | - (steps given) | - |
| all | `init_from` | '' | ImageNet R-50 (pass --config.init_from) | [D2] MODEL.WEIGHTS; [MM] pretrained |
| all | `ema_decay` | 0.0 | none | [D2d] (no EMA) |
| all | `optimizer.name` | 'sgd' | SGD | [D2] build_optimizer; [TV] train.py; [MM] |
| all | `optimizer.learning_rate` | 0.01 | 0.01 at batch 16 | [D2] SOLVER.BASE_LR; [TV] --lr; [MM] lr |
| all | `optimizer.momentum` | 0.9 | 0.9 | [D2d] SOLVER.MOMENTUM; [TV]; [MM] |
| all | `optimizer.nesterov` | False | False | [D2d] SOLVER.NESTEROV |
| all | `optimizer.weight_decay` | 0.0001 | 1e-4 | [D2d] SOLVER.WEIGHT_DECAY; [TV]; [MM] |
| all | `optimizer.schedule` | 'step' | multi-step | [D2d] LR_SCHEDULER_NAME WarmupMultiStepLR |
| all | `optimizer.decay_factor` | 0.1 | 0.1 | [D2d] SOLVER.GAMMA; [TV] --lr-gamma; [MM] |
| all | `optimizer.grad_clip_norm` | 0.0 | off | [D2d] CLIP_GRADIENTS.ENABLED False; [MM] grad_clip=None |
| all | `optimizer.freeze_at` | 2 | stem + res2 | [D2d] BACKBONE.FREEZE_AT 2; [TV] trainable layers 3; [MM] frozen_stages=1 |
| all | `optimizer.backbone_lr_mult` | 1.0 | 1 | [D2d] (one lr) |
| all | `model.backbone` | 'resnet' | ResNet | [D2] |
| all | `model.resnet.depth` | 50 | 50 | [D2] RESNETS.DEPTH |
| all | `model.resnet.stride_in_1x1` | False | False (torchvision, mmdetection); D2's MSRA R-50: True | [TV]; [MM] style='pytorch'; [D2d] STRIDE_IN_1X1 |
| all | `model.backbone_norm` | 'frozen_batch_norm' | FrozenBN | [D2d] RESNETS.NORM; [TV] FrozenBatchNorm2d |
| all | `model.neck` | 'fpn' | FPN | [D2] |
| all | `model.fpn.min_level` | 3 | P3 (res3) | [D2] FPN.IN_FEATURES |
| all | `model.fpn.max_level` | 7 | P7 | [D2] LastLevelP6P7 |
| all | `model.fpn.width` | 256 | 256 | [D2d] FPN.OUT_CHANNELS |
| all | `model.fpn.use_norm` | False | no norm | [D2d] FPN.NORM '' |
| all | `model.fpn.extra_padding` | 'symmetric' | P6/P7: 3x3 stride 2, padding 1 | [TV] LastLevelP6P7; [D2] LastLevelP6P7 |
| all | `model.head` | 'retinanet' | RetinaNet | [D2] META_ARCHITECTURE |
| all | `model.retinanet.min_level` | 3 | p3 | [D2d] RETINANET.IN_FEATURES |
| all | `model.retinanet.max_level` | 7 | p7 | [D2d] RETINANET.IN_FEATURES |
| all | `model.retinanet.width` | 256 | 256 | [D2d] (FPN width) |
| all | `model.retinanet.num_convs` | 4 | 4 | [D2d] RETINANET.NUM_CONVS |
| all | `model.retinanet.use_norm` | False | no norm | [D2d] RETINANET.NORM '' |
| all | `model.retinanet.anchor_scale` | 4.0 | sizes 32-512 at strides 8-128 | [D2] ANCHOR_GENERATOR.SIZES |
| all | `model.retinanet.num_scales` | 3 | x 2^0, 2^(1/3), 2^(2/3) | [D2] ANCHOR_GENERATOR.SIZES |
| all | `model.retinanet.aspect_ratios` | (0.5, 1.0, 2.0) | 0.5, 1, 2 | [D2d] ANCHOR_GENERATOR.ASPECT_RATIOS |
| all | `model.retinanet.anchor_style` | 'torchvision' | centres at cell corners (offset 0) | [D2d] ANCHOR_GENERATOR.OFFSET 0.0; [TV] AnchorGenerator |
| all | `model.retinanet.prior_prob` | 0.01 | 0.01 | [D2d] RETINANET.PRIOR_PROB |
| all | `model.retinanet.positive_iou` | 0.5 | 0.5 (+ low-quality matches) | [D2] RETINANET.IOU_THRESHOLDS; [MM] pos_iou_thr |
| all | `model.retinanet.negative_iou` | 0.4 | 0.4 | [D2] RETINANET.IOU_THRESHOLDS; [MM] neg_iou_thr |
| all | `model.retinanet.focal_alpha` | 0.25 | 0.25 | [D2d] RETINANET.FOCAL_LOSS_ALPHA |
| all | `model.retinanet.focal_gamma` | 2.0 | 2.0 | [D2d] RETINANET.FOCAL_LOSS_GAMMA |
| all | `model.retinanet.box_loss` | 'huber' | L1 (smooth-L1 beta 0) | [D2] SMOOTH_L1_LOSS_BETA 0.0; [MM] L1Loss |
| all | `model.retinanet.huber_delta` | 0.001 | beta 0 (see above) | [D2] SMOOTH_L1_LOSS_BETA |
| all | `model.retinanet.box_loss_weight` | 1000.0 | 1 (of L1) = 1 / huber_delta here | [D2] retinanet.py losses() (unweighted); [MM] loss_weight=1.0 |
| all | `model.retinanet.pre_nms_topk` | 1000 | 1000 per level | [D2d] RETINANET.TOPK_CANDIDATES_TEST; [MM] nms_pre |
| all | `model.score_threshold` | 0.05 | 0.05 | [D2d] RETINANET.SCORE_THRESH_TEST; [MM] score_thr |
| all | `model.nms_iou_threshold` | 0.5 | 0.5 | [D2d] RETINANET.NMS_THRESH_TEST |
| all | `model.max_detections` | 100 | 100 | [D2d] TEST.DETECTIONS_PER_IMAGE |
| all | `model.flip_test` | False | no test-time flip | [D2d] TEST.AUG.ENABLED False |

Published results (COCO box AP on val2017; VOC2007 test mAP at IoU 0.5):

| recipe | published | source |
|---|---|---|
| coco | 37.4 | [D2z] retinanet_R_50_FPN_1x box AP |
| coco | 36.4 | [TV] RetinaNet_ResNet50_FPN_Weights.COCO_V1 box_map |
| voc | 79.2 | [MM] pascal_voc/README.md, Retinanet R-50 1x (model of 2022-03-20; 77.3 for the model of 2020-06-17) |
"""

import ml_collections

from detector.configs import common

RECIPES = ('coco', 'voc')


def get_config(arg=None):
  """Returns the locked config: no argument for the `shapes` demo (the
  default), 'coco' or 'voc' for a published recipe, 'tiny' for a smoke run."""
  if arg not in (None, '', 'tiny') + RECIPES:
    raise ValueError(f'configs/resnet50.py takes no argument, "tiny", '
                     f'"coco" or "voc", got {arg!r}')
  config = common.detection_config()
  config.image_size = (256, 256)
  config.eval_image_size = (256, 256)
  config.model.backbone = 'resnet'
  config.model.resnet = ml_collections.ConfigDict(dict(
      depth=50, stride_in_1x1=False, conv_bias=False))
  config.model.neck = 'fpn'
  config.model.fpn = ml_collections.ConfigDict(dict(
      min_level=3, max_level=7, width=256, use_norm=False,
      extra_padding='same'))
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
  elif arg in RECIPES:
    _retinanet_1x(config)
    if arg == 'coco':
      _coco(config)
    else:
      _voc(config)
  return config.lock()


def _retinanet_1x(config):
  """What both recipes share: Detectron2's RetinaNet R50-FPN model, loss,
  decoding and SGD settings (the table in the module docstring)."""
  config.model.backbone_norm = 'frozen_batch_norm'
  config.model.fpn.extra_padding = 'symmetric'
  config.model.retinanet.update(dict(
      anchor_style='torchvision',
      # L1 on the deltas, as smooth-L1 of beta huber_delta (see the module
      # docstring): huber(x, d) / d = smooth_l1(x, beta=d).
      box_loss='huber', huber_delta=0.001, box_loss_weight=1000.0,
      prior_prob=0.01, positive_iou=0.5, negative_iou=0.4,
      focal_alpha=0.25, focal_gamma=2.0, pre_nms_topk=1000))
  config.model.score_threshold = 0.05
  config.model.nms_iou_threshold = 0.5
  config.model.max_detections = 100
  config.model.flip_test = False
  config.input.max_boxes = 100
  opt = config.optimizer
  opt.name = 'sgd'
  opt.learning_rate = 0.01
  opt.momentum = 0.9
  opt.nesterov = False
  opt.weight_decay = 1e-4
  opt.schedule = 'step'
  opt.decay_factor = 0.1
  opt.grad_clip_norm = 0.0
  opt.freeze_at = 2
  opt.backbone_lr_mult = 1.0
  config.ema_decay = 0.0
  config.batch_size = 16
  config.init_from = ''  # The ImageNet file: --config.init_from=resnet50.npz.


def _coco(config):
  """Detectron2's COCO 1x schedule at 1024 px (see the module docstring)."""
  config.dataset = 'coco/2017'
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.test_split = 'validation'  # COCO's test-dev has no public labels.
  config.image_size = (1024, 1024)
  config.eval_image_size = (1024, 1024)
  config.input.augmentations = ('hflip', 'scale_jitter')
  config.input.scale_jitter = (0.8, 1.0)
  config.num_train_steps = 90000
  config.optimizer.warmup_steps = 1000
  config.optimizer.warmup_init_factor = 0.001
  config.optimizer.decay_steps = (60000, 80000)


def _voc(config):
  """mmdetection's VOC 07+12 schedule: 12 epochs of 16551 images at batch 16
  (ceil(12 x 16551 / 16) steps), the learning rate x0.1 after epoch 9."""
  config.dataset = 'voc/2007'
  config.extra_train_datasets = ('voc/2012',)
  config.train_split = 'train+validation'
  config.eval_split = 'test'
  config.test_split = 'test'
  config.image_size = (896, 896)
  config.eval_image_size = (896, 896)
  config.input.augmentations = ('hflip',)
  config.num_train_steps = 12414
  config.optimizer.warmup_steps = 0
  config.optimizer.decay_steps = (9310,)
