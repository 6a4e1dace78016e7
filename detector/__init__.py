"""detector: object detection and image classification in JAX/Flax.

Importing the package applies one CPU-only XLA setting before JAX starts (see
`detector.platform`); import `detector` before `jax` to get it.
"""

from detector import platform as _platform

_platform.configure_xla_cpu()
