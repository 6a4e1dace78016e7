"""A model as one TensorFlow function: the graph of the SavedModel and TFLite
exports.

`serve(images)`: uint8 [B, H, W, 3] at the model's input size -> the outputs
of `detector.predict.base` (a dict). Inside: the JAX network through jax2tf
(one `XlaCallModule` op; the weights are tf.Variables, frozen by the TFLite
converter) and, for a detector, the decoding and NMS as TensorFlow ops
(`tf_postprocess`). A classifier goes through jax2tf whole (softmax and flip
test included). The JAX functions are `detector.export.network`'s.
"""

import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from detector.export import network as network_lib
from detector.export import tf_postprocess


class ServingModule(tf.Module):
  """The weights and `serve`, a tf.function of fixed input signature."""

  def __init__(self, backend, fmt: str, batch_size=None,
               runtime: str = 'tensorflow', platforms=('cpu',)):
    """
    Args:
      backend: a JaxBackend.
      fmt: the export format (error messages name it).
      batch_size: None for any batch (SavedModel), else a fixed batch.
      runtime: 'tensorflow' or 'tflite', whose NMS kernel will run the graph.
      platforms: what the XlaCallModule is compiled for (jax2tf).

    Raises:
      errors.ConfigError: a detector whose head the graph cannot decode.
    """
    super().__init__(name='detector')
    info = backend.info
    self.variables_tree = tf.nest.map_structure(
        lambda x: tf.Variable(np.asarray(x), trainable=False),
        network_lib.variables_of(backend))
    parts = (network_lib.detection(backend, fmt)
             if info.task == 'detection' else None)
    converted = jax2tf.convert(
        parts.network if parts else network_lib.whole(backend, fmt),
        polymorphic_shapes=None if batch_size else [None, '(b, ...)'],
        with_gradient=False, native_serialization_platforms=platforms)

    def serve(images):
      outputs = converted(self.variables_tree, images)
      if parts is None:
        return {'probabilities': outputs['probabilities']}
      boxes, scores, classes = tf_postprocess.decode(
          parts.head, parts.options, outputs, parts.input_size)
      return tf_postprocess.postprocess(boxes, scores, classes,
                                        parts.model_config, parts.input_size,
                                        runtime)

    h, w = info.input_size
    self.serve = tf.function(
        serve, autograph=False,
        input_signature=[tf.TensorSpec([batch_size, h, w, 3], tf.uint8,
                                       name='images')])
