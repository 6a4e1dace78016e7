"""The image classifier: a backbone with its classification head.

Every backbone (`cnn`, `resnet`, `efficientnet`) ends, with `num_classes`
set, in global average pooling and a dense layer named 'classifier' (for
EfficientNet after its 1x1 head conv and dropout, as the ImageNet models
are built), so a classifier and a detector share the backbone's parameter
names and `config.init_from` loads the same ported ImageNet weights into
either. The ImageNet classifier itself is loaded only when the class count
is the file's (1000); otherwise it starts fresh.

This module offers the task interface the trainer uses for detectors too:
`build(config.model, train)`, `loss(outputs, batch, config.model)` and
`predict(model, variables, images, config.model)`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from detector.models import detector as detector_lib


class Classifier(nn.Module):
  """images [B, H, W, 3] in [0, 255] -> {'logits': [B, num_classes] float32}."""
  backbone: nn.Module
  pixel_mean: Sequence[float] = detector_lib.IMAGENET_MEAN
  pixel_std: Sequence[float] = detector_lib.IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    x = images.astype(jnp.float32)
    x = (x - jnp.asarray(self.pixel_mean)) / jnp.asarray(self.pixel_std)
    return {'logits': self.backbone(x.astype(self.dtype))['logits']}


def build(config: ml_collections.ConfigDict, train: bool) -> Classifier:
  """The classifier described by `config.model` (`backbone` and its
  sub-config, `num_classes`, norms, `dtype`, pixel statistics)."""
  backbone = detector_lib.build_backbone(config, train,
                                         num_classes=config.num_classes)
  return Classifier(
      backbone=backbone,
      pixel_mean=tuple(config.pixel_mean or detector_lib.IMAGENET_MEAN),
      pixel_std=tuple(config.pixel_std or detector_lib.IMAGENET_STD),
      dtype=detector_lib.compute_dtype(config))


def loss(outputs, batch, config: ml_collections.ConfigDict):
  """Softmax cross-entropy with `config.label_smoothing`; also the batch's
  accuracy (a training metric, not a loss term)."""
  logits = outputs['logits']
  targets = optax.smooth_labels(
      jax.nn.one_hot(batch['label'], logits.shape[-1]), config.label_smoothing)
  cross_entropy = optax.softmax_cross_entropy(logits, targets).mean()
  accuracy = (jnp.argmax(logits, -1) == batch['label']).mean()
  return cross_entropy, {'cross_entropy': cross_entropy, 'accuracy': accuracy}


def predict(model: Classifier, variables, images,
            config: ml_collections.ConfigDict):
  """Images -> {'probabilities': [B, K]}; with `config.flip_test` the mean of
  the image's and its mirror image's probabilities."""
  probabilities = jax.nn.softmax(model.apply(variables, images)['logits'])
  if config.flip_test:
    flipped = model.apply(variables, images[:, :, ::-1])['logits']
    probabilities = (probabilities + jax.nn.softmax(flipped)) / 2
  return {'probabilities': probabilities}
