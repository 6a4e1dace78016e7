"""Image classification on any backbone: `configs/classify.py:BACKBONE[:tiny]`.

    .venv/bin/python main.py --config=configs/classify.py --workdir=workdirs/classify

BACKBONE is `cnn` (the default: the small CNN of configs/cnn.py), `resnet18`
.. `resnet152`, `b0` .. `b7` or `lite0` .. `lite4` (EfficientNet). The
backbone ends in global average pooling and a dense classifier (EfficientNet
after its 1x1 head conv and dropout, as the ImageNet models); `:tiny` is a
seconds-long smoke run on `shapes_objects/tiny` (tests use it).

The dataset is `config.dataset`: the built-in `shapes_objects` (crops of the
`shapes` objects, generated offline), a TFDS classification dataset, or
`folder:DIR` with one sub-folder per class (README: "Image classification").
For example, fine-tuning ImageNet weights on Oxford pets (prepared TFDS
data; the EfficientNet-Lite0 weights converted by `python -m detector.port`):

    .venv/bin/python main.py --config=configs/classify.py:lite0 \\
        --workdir=workdirs/pets --config.dataset=oxford_iiit_pet \\
        --config.eval_split=test --config.test_split=test \\
        --config.image_size="(224, 224)" --config.eval_image_size="(224, 224)" \\
        --config.init_from=lite0.npz --config.optimizer.learning_rate=1e-3 \\
        --config.num_epochs=10

and a dataset with only a train split is divided with TFDS slicing:
`--config.train_split="train[:80%]" --config.eval_split="train[80%:90%]"
--config.test_split="train[90%:]"` (tf_flowers, cats_vs_dogs).
"""

import ml_collections

from detector.configs import common

RESNET_DEPTHS = (18, 34, 50, 101, 152)
EFFICIENTNETS = tuple(f'b{i}' for i in range(8)) + tuple(f'lite{i}' for i in range(5))
BACKBONES = (('cnn',) + tuple(f'resnet{d}' for d in RESNET_DEPTHS)
             + EFFICIENTNETS)


def get_config(arg=None):
  """Returns the locked config for `arg` = BACKBONE[:tiny] (default 'cnn')."""
  backbone, _, tiny = (arg or 'cnn').partition(':')
  if backbone == 'tiny' and not tiny:
    backbone, tiny = 'cnn', 'tiny'
  if backbone not in BACKBONES or tiny not in ('', 'tiny'):
    raise ValueError(f'configs/classify.py takes one of {", ".join(BACKBONES)}'
                     f', optionally followed by ":tiny"; got {arg!r}')
  config = common.classification_config()
  if backbone == 'cnn':
    config.model.backbone = 'cnn'
    config.model.cnn = ml_collections.ConfigDict(dict(
        stem_width=24, widths=(32, 64, 128, 192), depths=(1, 2, 2, 1)))
    # The objects fill most of a `shapes_objects` crop: keep most of it.
    config.input.crop_scale = (0.5, 1.0)
    config.input.eval_crop_fraction = 1.0
  elif backbone.startswith('resnet'):
    config.model.backbone = 'resnet'
    config.model.resnet = ml_collections.ConfigDict(dict(
        depth=int(backbone[len('resnet'):]), stride_in_1x1=False,
        conv_bias=False))
    config.image_size = config.eval_image_size = (224, 224)
    config.optimizer.learning_rate = 1e-3
  else:
    config.model.backbone = 'efficientnet'
    config.model.efficientnet = ml_collections.ConfigDict(dict(
        variant=backbone,
        padding='same' if backbone.startswith('lite') else 'symmetric',
        drop_connect_rate=0.2))
    # Before the classifier; None: the variant's (0.2 for b0 .. 0.5 for b7).
    config.model.efficientnet.dropout_rate = ml_collections.FieldReference(
        None, field_type=float)
    config.model.norm_momentum = 0.99
    config.image_size = config.eval_image_size = (224, 224)
    config.optimizer.learning_rate = 1e-3
  if tiny:
    common.make_tiny(config, image_size=32, dataset='shapes_objects/tiny')
    if backbone == 'cnn':
      config.model.cnn.update(dict(stem_width=8, widths=(8, 16, 16, 16),
                                   depths=(1, 1, 1, 1)))
    elif backbone.startswith('resnet'):
      config.model.resnet.depth = 18
  return config.lock()
