"""XLA settings that depend on the platform, applied before JAX creates a backend.

On the CPU backend of jaxlib 0.10.2, XLA's YNNPACK fusion also takes over single
convolutions, and its convolution kernels (weight gradients above all) are slower
than Eigen's on x86 CPUs. `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`
keeps YNNPACK for reductions and elementwise fusions and hands convolutions back
to Eigen. Measured on a 2-core x86 machine: training 1.5-1.7x and inference
1.4-1.7x faster for the CNN detector and ResNet50, float32 results unchanged.

The flag is experimental: an unknown flag aborts the process, so it is applied
only when all of these hold, and otherwise nothing is touched:
  * the installed jaxlib is the pinned version it was measured on;
  * no accelerator plugin is installed and JAX_PLATFORMS does not ask for one;
  * the user has not already said anything about this flag in XLA_FLAGS
    (their XLA_FLAGS are kept; the flag is appended);
  * DETECTOR_XLA_CPU_TUNING is not "0";
  * no JAX backend has been created yet (later it would have no effect).
"""

import importlib.metadata
import importlib.util
import os
import sys

TUNED_JAXLIB_VERSION = '0.10.2'
CPU_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
_ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                        'jax_rocm7_plugin', 'libtpu')


def _jaxlib_version():
  try:
    return importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return None


def _backend_started():
  xb = sys.modules.get('jax._src.xla_bridge')
  return bool(xb is not None and getattr(xb, '_backends', None))


def cpu_tuning_applies(environ=os.environ):
  """Whether the CPU-only XLA flag may be added in this process."""
  if environ.get('DETECTOR_XLA_CPU_TUNING', '1') == '0':
    return False
  if _jaxlib_version() != TUNED_JAXLIB_VERSION:
    return False
  platforms = environ.get('JAX_PLATFORMS', '')
  if platforms and platforms.split(',')[0].strip() != 'cpu':
    return False
  if not platforms and any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS):
    return False
  if 'xla_cpu_experimental_ynn_fusion_type' in environ.get('XLA_FLAGS', ''):
    return False
  return not _backend_started()


def configure_xla_cpu(environ=os.environ):
  """Appends the CPU convolution flag to XLA_FLAGS where it is known to be safe."""
  if cpu_tuning_applies(environ):
    environ['XLA_FLAGS'] = (environ.get('XLA_FLAGS', '') + ' ' + CPU_FLAG).strip()
    return True
  return False
