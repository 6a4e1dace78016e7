"""The settings configs share; each config changes what differs.

`detection_config()` returns an unlocked ConfigDict: the data, input
pipeline, heads, optimizer and loop settings of the default job
(`configs/cnn.py`), without a backbone. A config file sets
`config.model.backbone` and the sub-config of the same name, changes what it
needs and returns `config.lock()`. `classification_config()` is the same
for image classification (`configs/classify.py`); both share the data,
norm, optimizer and loop settings defined once below.
"""

import dataclasses

import ml_collections

from detector.models.heads import centernet
from detector.models.heads import retinanet


def detection_config() -> ml_collections.ConfigDict:
  """The shared defaults (unlocked; `model.backbone` still to be set)."""
  config = ml_collections.ConfigDict()
  config.task = 'detection'
  config.seed = 0
  # Training sees random (height, width) crops of image_size, cut from images
  # resized to fit eval_image_size (times the scale jitter), so objects have
  # the size at which they are evaluated while a step costs what a smaller
  # input costs. Evaluation runs on whole images resized and padded to
  # eval_image_size. Set both equal to train on whole images.
  config.image_size = (96, 96)
  config.eval_image_size = (128, 128)

  # The dataset spec: a TFDS name ('shapes', 'shapes/tiny', 'coco/2017',
  # 'voc/2007', ...) or a folder, 'coco_json:DIR', 'voc:DIR' or 'yolo:DIR'
  # (converted once into TFDS under data_dir; see detector/data/datasets.py).
  _data(config, 'shapes')
  config.input.max_boxes = 16         # Ground truth padded/cut to this many boxes.
  # Box-aware training augmentations, applied in this order: 'mosaic' (with
  # probability mosaic_prob, four images in the quadrants around a random
  # centre, each flipped and scaled on its own), 'hflip', 'scale_jitter'
  # (random scale in scale_jitter, times the fit to eval_image_size, then a
  # random image_size crop), 'color_jitter' (brightness, contrast,
  # saturation). Boxes cut by a crop or a quadrant keep their visible part if
  # it is at least min_visible_fraction of the box, else are dropped.
  config.input.augmentations = ('hflip', 'scale_jitter')
  config.input.scale_jitter = (0.75, 1.25)  # Scale multiplier range.
  config.input.color_jitter = ml_collections.ConfigDict(dict(
      brightness=0.1, contrast=0.1, saturation=0.1))
  config.input.mosaic_prob = 0.5
  config.input.min_visible_fraction = 0.3   # Boxes cut more than this by a crop are dropped.
  _input_loading(config)

  _model(config)
  config.model.neck = 'fpn'
  config.model.fpn = ml_collections.ConfigDict(dict(
      min_level=2, max_level=5, width=64, use_norm=True,
      extra_padding='same'))
  config.model.head = 'centernet'     # 'centernet' or 'retinanet'.
  # Each head's options and their defaults are its module's `Options`
  # (detector/models/heads/<head>.py, with a comment per option).
  config.model.centernet = options(centernet.Options())
  config.model.retinanet = options(retinanet.Options())
  config.model.score_threshold = 0.05  # Detections below are not kept.
  config.model.nms_iou_threshold = 0.5
  config.model.max_detections = 100
  config.model.flip_test = True       # Also run mirrored images at evaluation, average.

  _optimizer_and_loop(config)
  config.num_train_steps = 2300       # Or set num_epochs (> 0), which wins.
  config.num_images_to_draw = 6       # Validation images drawn in TensorBoard.
  config.prf_score_threshold = 0.3    # Precision/recall/F1 operating point.
  return config


def classification_config() -> ml_collections.ConfigDict:
  """The classification defaults (unlocked; `model.backbone` still to be
  set): `shapes_objects`, 64 px, Inception crops and flips, label smoothing."""
  config = ml_collections.ConfigDict()
  config.task = 'classification'
  config.seed = 0
  config.image_size = (64, 64)        # Training crops are resized to this.
  config.eval_image_size = (64, 64)   # The centre crop evaluated.
  # A TFDS classification dataset ('shapes_objects', 'imagenette',
  # 'oxford_iiit_pet', 'tf_flowers', 'cats_vs_dogs', ...) or 'folder:DIR'
  # (class sub-folders; see detector/data/formats/class_folder.py). Splits
  # take TFDS's slicing syntax: 'train[:80%]'.
  _data(config, 'shapes_objects')
  config.label_key = 'label'          # The ClassLabel feature to predict.
  # folder:DIR without train/valid/test sub-folders: (train, validation,
  # test) fractions, each file's split a hash of its path.
  config.folder_split = (0.8, 0.1, 0.1)
  # 'random_resized_crop' (area crop_scale x the image, aspect ratio in
  # crop_aspect_ratio, resized to image_size), 'hflip', 'color_jitter'.
  config.input.augmentations = ('random_resized_crop', 'hflip')
  config.input.crop_scale = (0.08, 1.0)
  config.input.crop_aspect_ratio = (3 / 4, 4 / 3)
  config.input.color_jitter = ml_collections.ConfigDict(dict(
      brightness=0.1, contrast=0.1, saturation=0.1))
  # Evaluation resizes to cover eval_image_size / this, then crops the centre.
  config.input.eval_crop_fraction = 0.875
  _input_loading(config)

  _model(config)
  config.model.label_smoothing = 0.1
  config.model.flip_test = False      # Also average the mirror image's probabilities.

  _optimizer_and_loop(config)
  config.num_train_steps = 1000       # Or set num_epochs (> 0), which wins.
  return config


def _data(config, dataset):
  config.dataset = dataset
  # TFDS data dir; None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.train_split = 'train'
  # More dataset specs whose train_split joins the training stream (same
  # classes); evaluation reads `dataset` only. VOC 07+12: dataset='voc/2007',
  # extra_train_datasets=('voc/2012',), train_split='train+validation'.
  config.extra_train_datasets = ()
  config.eval_split = 'validation'   # Evaluated during and after training ('' skips).
  config.test_split = 'test'         # Written to workdir/eval/*_test.json ('' skips).
  # After training or --mode=evaluate, eval/report_<split>.html for each
  # split scored (python -m detector.report writes it on demand).
  config.eval_report = True
  # Images of eval_split that the monitoring reference (drift and canary of
  # `python -m detector.serve`) is made of when training ends; 0 skips it.
  config.monitoring_images = 1000
  config.input = ml_collections.ConfigDict()


def _input_loading(config):
  config.input.shuffle_buffer = 10_000
  config.input.cache = True           # Keep decoded training images in memory.
  config.input.prefetch = 2           # Batches prepared ahead on the host.
  config.input.num_threads = 2        # tf.data worker threads (they share the CPU with XLA).


def _model(config):
  """Settings of every model: classes, backbone, norms, dtype, pixel stats."""
  config.model = ml_collections.ConfigDict()
  config.model.num_classes = -1       # -1: from the dataset's metadata.
  # Each config sets `backbone` and a sub-config of that name (its module's
  # keyword arguments): config.model.backbone = 'cnn'; config.model.cnn = ...
  config.model.backbone = ''
  # batch_norm | frozen_batch_norm. Under jax.jit on the global batch,
  # batch_norm's statistics span every device (cross-replica BatchNorm).
  config.model.norm = 'batch_norm'
  config.model.backbone_norm = ''     # The backbone's, when not `norm` ('' = norm).
  config.model.norm_momentum = 0.9
  # None: the epsilon `init_from`'s weights were trained with, else 1e-5.
  config.model.norm_epsilon = ml_collections.FieldReference(None, field_type=float)
  # The backbone's, when it differs (None: norm_epsilon).
  config.model.backbone_norm_epsilon = ml_collections.FieldReference(
      None, field_type=float)
  config.model.dtype = 'float32'      # Compute dtype; parameters stay float32.
  # Depthwise convs (EfficientNet, BiFPN): 'auto' (shifted multiply-adds on
  # the CPU backend, where XLA's grouped conv is slow; the library conv
  # elsewhere), 'taps' or 'conv'. Same parameters and results.
  config.model.depthwise_impl = 'auto'
  # RGB, 0-255 units. Empty: what `init_from`'s weights were trained with,
  # else ImageNet's (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375).
  config.model.pixel_mean = ()
  config.model.pixel_std = ()


def _optimizer_and_loop(config):
  """Optimizer, init_from, EMA, batch and loop settings (both tasks)."""
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adamw'     # 'adamw' or 'sgd' (momentum).
  config.optimizer.learning_rate = 3e-3  # Peak, reached after warm-up.
  config.optimizer.warmup_steps = 400
  # Warm-up starts at peak * this (linear to the peak): 0.001 is Detectron2's
  # WARMUP_FACTOR, 0.1 EfficientDet's lr_warmup_init / learning_rate.
  config.optimizer.warmup_init_factor = 0.0
  # After warm-up: 'cosine' (to peak * end_learning_rate_factor at the last
  # step) or 'step' (peak * decay_factor once each of decay_steps, absolute
  # step numbers, has run: Detectron2's STEPS and GAMMA).
  config.optimizer.schedule = 'cosine'
  config.optimizer.end_learning_rate_factor = 0.01  # Cosine decays to peak * this.
  config.optimizer.decay_steps = ()   # 'step': e.g. (60000, 80000); < the run's steps.
  config.optimizer.decay_factor = 0.1  # 'step': multiplier at each decay step.
  config.optimizer.weight_decay = 5e-4   # Not applied to norm scales and biases.
  config.optimizer.momentum = 0.9      # SGD momentum.
  config.optimizer.nesterov = True
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.grad_clip_norm = 10.0  # Global-norm clipping; 0 disables.
  config.optimizer.freeze_at = 0       # Freeze backbone levels <= this (1: stem).
  config.optimizer.backbone_lr_mult = 1.0  # Backbone learning rate = peak * this.

  # A file from `python -m detector.port` (ImageNet weights) for the backbone;
  # used when the workdir has no checkpoint yet. '' starts from scratch.
  config.init_from = ''
  # What of an init_from file holding a whole detector is loaded: 'all'
  # (backbone, neck and head; the class layer fitted to the dataset's
  # classes by name, else re-initialised) or 'backbone'.
  config.init_from_scope = 'all'

  config.ema_decay = 0.999            # EMA of the weights used for evaluation; 0: off.
  config.batch_size = 16              # Global, over all devices and processes.
  # Gradient accumulation: each step runs its batch_size examples as this
  # many micro-batches in turn and sums their gradients, one update of the
  # whole batch with the activation memory of a micro-batch. It equals the
  # whole batch up to float rounding where BatchNorm does not normalise over
  # the batch (norm='frozen_batch_norm'): BatchNorm sees each micro-batch.
  config.grad_accum_steps = 1
  # How the train state lies on the device mesh (axis 'data'): 'data' keeps
  # parameters and optimizer state whole on every device (data parallel);
  # 'fsdp' shards each of their arrays of at least fsdp_min_size elements
  # over the devices along its largest evenly dividing dimension (fully
  # sharded data parallel: per-device state memory / number of devices, for
  # backbones too big to replicate). Both compute the same steps.
  config.sharding = 'data'
  config.fsdp_min_size = 2 ** 14
  config.num_epochs = ml_collections.FieldReference(None, field_type=float)
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  # Also score the eval split every this many steps (0: only at the end); the
  # AP (or accuracy) curve goes to TensorBoard and
  # workdir/eval/history_<split>.jsonl.
  config.eval_every_steps = 0
  config.keep_checkpoints = 3
  config.eval_batch_size = 64
  # Steps to trace with the JAX profiler (e.g. (100, 101, 102)): the trace
  # of the first to the last goes to workdir/profile/ (TensorBoard's Profile
  # tab, or Perfetto). () traces nothing.
  config.profile_steps = ()
  # JAX's persistent compilation cache: a rerun of the same program (a
  # resumed run, a sweep trial, --mode=evaluate) loads its compiled steps
  # instead of compiling them again (seconds for the default job, minutes
  # for the larger EfficientDets on a CPU). '' turns it off. Bounded to
  # 4 GiB, least recently used first out; trust whoever can write there.
  config.compilation_cache_dir = '~/.cache/detector/jax'


def options(options) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dataclasses.asdict(options))


def make_tiny(config: ml_collections.ConfigDict, image_size: int,
              dataset: str):
  """The run-level settings of a config's `:tiny` smoke variant (seconds long,
  on `dataset`); each config shrinks its own model besides."""
  config.dataset = dataset
  config.image_size = (image_size, image_size)
  config.eval_image_size = (image_size, image_size)
  config.input.shuffle_buffer = 64
  config.optimizer.warmup_steps = 2
  config.ema_decay = 0.0  # Six steps are too few for an average to mean much.
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 6
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.eval_report = False  # Seconds of figures would double a smoke run.


def make_tiny_detection(config: ml_collections.ConfigDict, image_size: int):
  """`make_tiny` on `shapes/tiny` with the detection evaluation settings."""
  make_tiny(config, image_size, 'shapes/tiny')
  # After six steps scores sit near the 0.01 prior: keep them, so that the
  # evaluation files of a smoke run are not empty.
  config.model.score_threshold = 0.001
  config.num_images_to_draw = 2
