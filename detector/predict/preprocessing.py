"""The host's side of a model: an image to the model's input, and the
model's boxes back to the image's pixels.

Detectors and trained classifiers use the evaluation pipeline's own
TensorFlow ops (`detector.data.preprocess.resize_and_pad`,
`detector.data.classification.center_crop`), so a prediction equals what
`--mode=evaluate` scores; an ImageNet weights file uses the crop it was
trained with (`detector.imagenet.crop`).
"""

import dataclasses
import functools
from typing import Callable

import numpy as np

from detector.predict import base


@dataclasses.dataclass
class Prepared:
  """An image at the model's input size and how to map boxes back."""
  image: np.ndarray      # uint8 [H, W, 3] at the model's input size.
  scale: float = 1.0     # Input pixels per image pixel (fit_and_pad).
  height: int = 0        # The image's own size, boxes are clipped to it.
  width: int = 0

  def to_image(self, boxes: np.ndarray) -> np.ndarray:
    """[N, 4] yxyx in input pixels -> [N, 4] xyxy in the image's pixels,
    clipped to it (images are placed at the top-left: no offset)."""
    boxes = np.asarray(boxes, np.float32) / np.float32(self.scale)
    ymin, xmin, ymax, xmax = (boxes[:, i] for i in range(4))
    out = np.stack([xmin, ymin, xmax, ymax], axis=-1)
    return np.clip(out, 0.0, np.float32([self.width, self.height] * 2))


def for_model(info: base.ModelInfo) -> Callable[[np.ndarray], Prepared]:
  """The preprocessing `info.preprocessing` names, for uint8 [h, w, 3]."""
  kind = info.preprocessing['kind']
  if kind == 'fit_and_pad':
    return functools.partial(_fit_and_pad, _tf_fit_and_pad(info.input_size))
  if kind == 'center_crop':
    return functools.partial(_center_crop, _tf_center_crop(
        info.input_size, info.preprocessing['crop_fraction']))
  if kind == 'resize_and_crop':
    prep = dict(info.preprocessing, image_size=info.input_size[0])
    return functools.partial(_resize_and_crop, prep)
  raise ValueError(f'preprocessing {kind!r}: expected one of '
                   f'{base.PREPROCESSING_KINDS}')


@functools.lru_cache(maxsize=8)
def _tf_fit_and_pad(size):
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from detector.data import preprocess

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def fn(image):
    resized, _, info = preprocess.resize_and_pad(
        image, tf.zeros([0, 4], tf.float32), size)
    return preprocess.to_uint8(resized), info['scale']
  return fn


@functools.lru_cache(maxsize=8)
def _tf_center_crop(size, fraction):
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from detector.data import classification
  from detector.data import preprocess

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def fn(image):
    return preprocess.to_uint8(classification.center_crop(image, size,
                                                          fraction))
  return fn


def _fit_and_pad(fn, image) -> Prepared:
  resized, scale = fn(image)
  return Prepared(np.asarray(resized), float(scale), image.shape[0],
                  image.shape[1])


def _center_crop(fn, image) -> Prepared:
  return Prepared(np.asarray(fn(image)), 1.0, image.shape[0], image.shape[1])


def _resize_and_crop(prep, image) -> Prepared:
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  from detector import imagenet
  cropped = imagenet.crop(Image.fromarray(image), prep)
  return Prepared(np.asarray(cropped, np.uint8), 1.0, image.shape[0],
                  image.shape[1])
