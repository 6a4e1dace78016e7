"""detector: object detection and image classification in JAX/Flax.

Importing the package (or any of its modules) changes nothing outside it: no
environment variable, log filter or library registration. Programs apply
the process-wide settings they want through `detector.runtime`.

`detector.load(PATH)` opens a trained model for prediction (a training
workdir, a weights file, or an exported artefact): see `detector.predict`.
"""


def load(path, step=None, batch_size=8):
  """`detector.predict.load`: a Predictor for PATH."""
  from detector import predict  # pylint: disable=g-import-not-at-top
  return predict.load(path, step=step, batch_size=batch_size)
