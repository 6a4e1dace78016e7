"""`saved_model`: a TensorFlow SavedModel directory.

Its signature `serving_default` takes `images`, uint8 [B, H, W, 3] at the
model's input size (any B), and returns the TF Object Detection API's
outputs (`detection_boxes` normalised [ymin, xmin, ymax, xmax],
`detection_scores`, `detection_classes` = class index + 1,
`num_detections`) or a classifier's `probabilities`
(`detector.predict.base`). The graph is `tf_serving.ServingModule`: the
network as one XlaCallModule op compiled for CPU and CUDA, decoding and NMS
as TensorFlow ops. The metadata (`ModelInfo`) is the asset
`assets/detector.json`.
"""

import os
import tempfile

import numpy as np

from detector import errors
from detector.export import common
from detector.predict import base

SIGNATURE = 'serving_default'
METADATA = 'detector.json'
PLATFORMS = ('cpu', 'cuda')


def export(backend, output: str, **unused) -> str:
  """Writes the SavedModel directory `output`; returns its path."""
  del unused
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from detector.export import tf_serving
  module = tf_serving.ServingModule(backend, 'saved_model',
                                    platforms=PLATFORMS)
  with tempfile.TemporaryDirectory() as tmp:
    file = os.path.join(tmp, METADATA)
    with open(file, 'w') as f:
      f.write(common.with_format(backend.info, 'saved_model').to_json())
    module.metadata = tf.saved_model.Asset(file)  # Copied into assets/.
    tf.saved_model.save(module, output,
                        signatures={SIGNATURE: module.serve})
  return output


class Backend(base.Backend):
  """A loaded SavedModel; any batch size."""

  def __init__(self, path: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    file = os.path.join(path, 'assets', METADATA)
    if not os.path.isfile(file):
      raise errors.ConfigError(f'{path}: a SavedModel without {file}; not '
                               'written by detector.export')
    with open(file) as f:
      self.info = base.ModelInfo.from_json(f.read(), source=path,
                                           format='saved_model')
    loaded = tf.saved_model.load(path)
    if SIGNATURE not in loaded.signatures:
      raise errors.ConfigError(f'{path}: no {SIGNATURE!r} signature (has '
                               f'{sorted(loaded.signatures)})')
    self._loaded = loaded  # The signature needs the object alive.
    self._fn = loaded.signatures[SIGNATURE]
    self._keys = (base.DETECTION_OUTPUTS if self.info.task == 'detection'
                  else base.CLASSIFICATION_OUTPUTS)

  def run(self, images):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    out = self._fn(images=tf.constant(np.asarray(images, np.uint8)))
    return {k: out[k].numpy() for k in self._keys}


def load(path: str) -> Backend:
  return Backend(path)
