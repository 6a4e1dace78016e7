"""Watching a deployed model: the signals, their reference, drift, canaries.

When training ends (`detector.train`) and when a model is exported
(`detector.export`), `reference.write_for_model` runs the model through
`detector.load` on the validation split and writes, beside it, what its
traffic should look like (`reference.path_for`):

  signals   per signal (`signals`), the binned distribution on the
            validation images: class frequencies, scores, detections per
            image, box sizes, image brightness;
  canary    a few validation images (PNG) and the model's outputs on them.

The server (`detector.serve`) keeps a sliding window of live traffic,
measured by the same `signals.measure`, reports the population stability
index of each signal against the reference (`drift`), and reruns the canary
images to check its outputs still equal the recorded ones (`canary`).
"""
