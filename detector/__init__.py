"""detector: object detection and image classification in JAX/Flax.

Importing the package (or any of its modules) changes nothing outside it: no
environment variable, log filter or library registration. Programs apply
the process-wide settings they want through `detector.runtime`.
"""
