"""The detector assembly (backbone -> neck -> head) and its post-processing.

`build(config.model, train)` makes the linen module; parameters do not depend
on `train`, only whether BatchNorm uses batch statistics. Images enter as
uint8 (or float) RGB [B, H, W, 3] in [0, 255]; the module normalises them, so
callers never handle float images and the host-to-device copy stays small.
"""

import math
from typing import Any, Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from detector import errors
from detector import models
from detector.models import layers
from detector.ops import boxes as box_ops
from detector.ops import nms as nms_ops

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class Detector(nn.Module):
  """images [B, H, W, 3] in [0, 255] -> the head's dict of named outputs."""
  backbone: nn.Module
  neck: nn.Module
  head: nn.Module
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(self.pixel_mean)) / jnp.asarray(self.pixel_std)
    features = self.backbone(x.astype(self.dtype))
    features = self.neck(features)
    return self.head(features)

  @property
  def required_stride(self) -> int:
    """Input sizes must be multiples of this: 2**(the deepest level any part
    makes or reads)."""
    return 2 ** max(max(self.backbone.levels), self.neck.max_level,
                    max(self.head.options.levels))


def compute_dtype(config: ml_collections.ConfigDict):
  if config.dtype not in DTYPES:
    raise errors.ConfigError(f'config.model.dtype={config.dtype!r}: expected '
                             f'one of {sorted(DTYPES)}')
  return DTYPES[config.dtype]


def _norm(config: ml_collections.ConfigDict, key: str, train: bool, dtype):
  kind = config[key] or config.norm  # backbone_norm '' means norm.
  if kind not in layers.NORM_KINDS:
    hint = (": 'batch_norm' is cross-replica already (under jax.jit its "
            "statistics span the global batch)" if kind == 'sync_batch_norm'
            else '')
    raise errors.ConfigError(f'config.model.{key}={kind!r}: expected one of '
                             f'{layers.NORM_KINDS}{hint}')
  epsilon = config.norm_epsilon if config.norm_epsilon is not None else 1e-5
  if key == 'backbone_norm' and config.get('backbone_norm_epsilon') is not None:
    epsilon = config.backbone_norm_epsilon
  return layers.make_norm(kind, train=train, dtype=dtype,
                          momentum=config.norm_momentum, epsilon=epsilon)


def _with_depthwise(cls, kwargs, config):
  """Adds `depthwise_impl` for modules that have depthwise convs."""
  if 'depthwise_impl' in cls.__dataclass_fields__:
    if config.depthwise_impl not in layers.DEPTHWISE_IMPLS:
      raise errors.ConfigError(
          f'config.model.depthwise_impl={config.depthwise_impl!r}: expected '
          f'one of {layers.DEPTHWISE_IMPLS}')
    kwargs['depthwise_impl'] = config.depthwise_impl
  return kwargs


def build_backbone(config: ml_collections.ConfigDict, train: bool,
                   num_classes: int = 0) -> nn.Module:
  """The backbone alone, as `build` makes it (norm: `backbone_norm` or `norm`);
  `num_classes` > 0 adds its classifier (global pooling, dense 'logits')."""
  dtype = compute_dtype(config)
  cls = models.backbone_class(config.backbone)
  kwargs = _with_depthwise(cls, config[config.backbone].to_dict(), config)
  if num_classes:
    kwargs['num_classes'] = num_classes
  if 'deterministic' in cls.__dataclass_fields__:  # Dropout / stochastic depth.
    kwargs['deterministic'] = not train
  return cls(norm=_norm(config, 'backbone_norm', train, dtype), dtype=dtype,
             **kwargs)


def head_options(config: ml_collections.ConfigDict):
  """(the head's module, its checked Options) from `config.head` and the
  sub-config of that name."""
  head = models.head_module(config.head)
  values = config[config.head].to_dict() if config.head in config else {}
  try:
    return head, head.Options(**values)
  except TypeError as e:  # An unknown key.
    raise errors.ConfigError(
        f'config.model.{config.head}: {e}; its options are '
        f'{sorted(head.Options.__dataclass_fields__)}') from None


def build(config: ml_collections.ConfigDict, train: bool) -> Detector:
  """Builds the detector described by `config.model` (a locked ConfigDict).

  Reads `backbone`, `neck`, `head` (names) and the sub-configs of the same
  names (the backbone's and neck's keyword arguments, the head's Options),
  plus `norm` (neck and head; the backbone uses `backbone_norm` when set),
  `norm_epsilon`, `norm_momentum`, `depthwise_impl`, `dtype`, `num_classes`
  and `pixel_mean` / `pixel_std` (empty: ImageNet's).

  Raises:
    errors.ConfigError: an unknown part or option, or a head reading levels
      the neck does not make.
  """
  dtype = compute_dtype(config)
  norm = _norm(config, 'norm', train, dtype)
  backbone = build_backbone(config, train)
  neck_cls = models.neck_class(config.neck)
  neck_kwargs = _with_depthwise(neck_cls, config[config.neck].to_dict(), config)
  neck_norm = norm if neck_kwargs.pop('use_norm', False) else None
  neck = neck_cls(norm=neck_norm, dtype=dtype, **neck_kwargs)
  head_lib, options = head_options(config)
  made = range(neck.min_level, neck.max_level + 1)
  if not set(options.levels) <= set(made):
    raise errors.ConfigError(
        f'config.model.{config.head} reads levels {list(options.levels)} but '
        f'the {config.neck} neck makes {list(made)}: change the head\'s levels '
        f'or config.model.{config.neck}.min_level / max_level')
  head = head_lib.Head(num_classes=config.num_classes, options=options,
                       norm=norm, dtype=dtype,
                       **_with_depthwise(head_lib.Head, {}, config))
  return Detector(backbone=backbone, neck=neck, head=head,
                  pixel_mean=tuple(config.pixel_mean or IMAGENET_MEAN),
                  pixel_std=tuple(config.pixel_std or IMAGENET_STD), dtype=dtype)


def backbone_levels(config: ml_collections.ConfigDict) -> Dict[str, int]:
  """{top-level backbone module name: log2 of its output stride}.

  Found by tracing the backbone's shapes (no compute), so it holds for any
  backbone: the stem of a ResNet is level 1, its `stage3_*` blocks level 3.
  `optimizer.freeze_at` freezes the modules at or below a level.
  """
  backbone = build_backbone(config, train=False)
  size = 2 ** 7
  x = jnp.zeros((1, size, size, 3), compute_dtype(config))

  def trace():
    _, variables = backbone.init_with_output(
        jax.random.PRNGKey(0), x,
        capture_intermediates=lambda m, method: (len(m.path) == 1
                                                 and method == '__call__'))
    return variables['intermediates']
  levels = {}
  for name, outputs in jax.eval_shape(trace).items():
    shape = jax.tree_util.tree_leaves(outputs)[0].shape
    if len(shape) == 4:  # Feature maps; the classifier's logits have no level.
      levels[name] = int(round(math.log2(size / shape[1])))
  return levels


def candidates(decoded, config: ml_collections.ConfigDict, image_size):
  """`postprocess` before its NMS: (boxes clipped to the input, [B, N]
  bool: valid, at least `score_threshold` and of non-zero area)."""
  boxes = box_ops.clip(decoded['boxes'], image_size[0], image_size[1])
  keep = decoded['valid'] & (decoded['scores'] >= config.score_threshold)
  keep &= box_ops.area(boxes) > 0
  return boxes, keep


def postprocess(decoded, config: ml_collections.ConfigDict, image_size):
  """Score threshold + per-class NMS with a fixed-size output.

  Args:
    decoded: a head's `decode` output: `boxes` [B, N, 4] yxyx input pixels,
      `scores` [B, N], `classes` [B, N], `valid` [B, N].
    config: `config.model` (uses `score_threshold`, `nms_iou_threshold`,
      `max_detections`).
    image_size: (H, W) of the padded input; boxes are clipped to it.

  Returns:
    dict of `boxes` [B, D, 4] yxyx input pixels, `scores` [B, D],
    `classes` [B, D] int32 and `valid` [B, D] bool, D = max_detections,
    sorted by descending score; invalid slots have score 0.
  """
  boxes, keep = candidates(decoded, config, image_size)
  scores = jnp.where(keep, decoded['scores'], -jnp.inf)

  def one(b, s, c):
    return nms_ops.batched_nms(b, s, c, config.nms_iou_threshold,
                               config.max_detections)
  idx, valid = jax.vmap(one)(boxes, scores, decoded['classes'])
  take = lambda x: jnp.take_along_axis(x, idx, axis=1)
  return {
      'boxes': jnp.where(valid[..., None],
                         jnp.take_along_axis(boxes, idx[..., None], axis=1), 0.),
      'scores': jnp.where(valid, take(decoded['scores']), 0.),
      'classes': jnp.where(valid, take(decoded['classes']), 0),
      'valid': valid,
  }


def predict(model: Detector, variables, images, config: ml_collections.ConfigDict):
  """Images -> final detections (see `postprocess`); jit-compatible.

  With `config.flip_test` the mirror images are run too and the head merges
  both outputs before decoding (twice the cost of a forward pass).
  """
  image_size = images.shape[1:3]
  outputs = network(model, variables, images, config)
  return postprocess(model.head.decode(outputs, image_size), config, image_size)


def network(model: Detector, variables, images,
            config: ml_collections.ConfigDict):
  """The head's outputs, merged with the mirror images' under
  `config.flip_test` (`predict` before decoding)."""
  outputs = model.apply(variables, images)
  if config.flip_test:
    flipped = model.apply(variables, images[:, :, ::-1])
    outputs = model.head.merge_flipped(outputs, flipped, images.shape[1:3])
  return outputs


def loss(model: Detector, outputs, batch):
  """The head's loss of `outputs` for `batch` (see detector.models.heads)."""
  return model.head.loss(outputs, batch)
