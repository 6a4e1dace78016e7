"""Classifies images with a converted ImageNet weights file.

    python -m detector.imagenet --weights=resnet50.npz --arch=resnet50 cat.jpg ...

prints one JSON line per image:
  {"image": "cat.jpg", "top5": [{"index": 281, "label": "tabby", "probability": 0.61}, ...]}

Preprocessing is the one the weights were trained with, read from the file's
metadata (see `detector.port.weights`): resize the shorter side to `resize`
pixels with `interpolation` (PIL, which filters when it shrinks, as
torchvision's PIL path does), centre-crop `image_size`, then subtract `mean`
and divide by `std` (RGB, 0-255 units). An image that cannot be read is
reported on stderr by name and the others are still classified; the exit
status is then 1.
"""

import json
import sys
from typing import Any, Dict, List

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from detector import errors
from detector import port
from detector import runtime
from detector.port import weights as weights_lib

flags.DEFINE_string('weights', None, 'A file written by `python -m detector.port`.')
flags.DEFINE_string('arch', None, 'The architecture the file holds (checked '
                    'against its metadata), e.g. resnet50.')
flags.DEFINE_integer('batch_size', 8, 'Images per forward pass.')
flags.mark_flags_as_required(['weights', 'arch'])
FLAGS = flags.FLAGS

_INTERPOLATION = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
                  'nearest': Image.NEAREST}


def crop(image: Image.Image, prep: Dict[str, Any]) -> Image.Image:
  """The centre crop the weights were trained on: the shorter side resized to
  `prep['resize']` with `prep['interpolation']`, then `image_size` cut out
  (RGB)."""
  image = image.convert('RGB')
  if prep['interpolation'] not in _INTERPOLATION:
    raise errors.ConfigError(f'interpolation {prep["interpolation"]!r} in the '
                             f'weights metadata: expected one of {sorted(_INTERPOLATION)}')
  w, h = image.size
  short, long = min(w, h), max(w, h)
  # As torchvision's Resize(int): the shorter side becomes exactly `resize`,
  # the longer one int(resize * long / short).
  new_long = int(prep['resize'] * long / short)
  size = (prep['resize'], new_long) if w <= h else (new_long, prep['resize'])
  image = image.resize(size, _INTERPOLATION[prep['interpolation']])
  size = prep['image_size']
  w, h = image.size
  # torchvision's CenterCrop offsets: round((size - crop) / 2).
  left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def preprocess(image: Image.Image, prep: Dict[str, Any]) -> np.ndarray:
  """A PIL image -> [S, S, 3] float32: `crop`, then normalised as `prep`
  says."""
  x = np.asarray(crop(image, prep), np.float32)
  return (x - np.asarray(prep['mean'], np.float32)) / np.asarray(prep['std'], np.float32)


class Classifier:
  """A converted weights file, ready to classify preprocessed batches."""

  def __init__(self, path: str, arch: str):
    self.variables, self.metadata = weights_lib.load(path)
    if self.metadata.get('arch') != arch:
      raise errors.ConfigError(
          f'--arch={arch} but {path} holds {self.metadata.get("arch")!r} '
          f'(converted from {self.metadata.get("source")})')
    self.labels = self.metadata.get('labels') or port.imagenet_labels()
    model = port.model_for(self.metadata)
    self._logits = jax.jit(lambda v, x: model.apply(v, x)['logits'])

  def logits(self, batch: np.ndarray) -> np.ndarray:
    return np.asarray(self._logits(self.variables, jnp.asarray(batch)))

  def top5(self, batch: np.ndarray) -> List[List[Dict[str, Any]]]:
    logits = self.logits(batch)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1))
    out = []
    for p in probs:
      best = np.argsort(-p, kind='stable')[:5]
      out.append([{'index': int(i), 'label': self.labels[i],
                   'probability': round(float(p[i]), 6)} for i in best])
    return out


def _read(path: str, prep) -> np.ndarray:
  try:
    with Image.open(path) as image:
      return preprocess(image, prep)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise errors.ConfigError(f'{path}: cannot read the image ({e})') from None


def main(argv):
  images = argv[1:]
  if not images:
    raise app.UsageError('Give one or more image files after the flags.')
  try:
    classifier = Classifier(FLAGS.weights, FLAGS.arch)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  prep = classifier.metadata['preprocessing']
  failed = False
  for start in range(0, len(images), FLAGS.batch_size):
    chunk, arrays = [], []
    for path in images[start:start + FLAGS.batch_size]:
      try:
        arrays.append(_read(path, prep))
        chunk.append(path)
      except errors.ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        failed = True
    if not arrays:
      continue
    # Pad to a fixed batch so that one compiled program serves every chunk.
    batch = np.zeros((FLAGS.batch_size,) + arrays[0].shape, np.float32)
    batch[:len(arrays)] = np.stack(arrays)
    for path, top5 in zip(chunk, classifier.top5(batch)):
      print(json.dumps({'image': path, 'top5': top5}), flush=True)
  sys.exit(1 if failed else 0)


def run():
  """The program: `python -m detector.imagenet` and `detector-imagenet`."""
  runtime.run_program(__name__, main)


if __name__ == '__main__':
  run()
