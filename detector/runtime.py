"""Process-wide settings, applied by the programs that start a process.

Importing `detector` changes nothing outside it. Each entry point (main.py,
the command-line tools, the benchmarks, the tests' set-up) calls what it
needs, before the work starts:

  `configure_xla_cpu()`  appends the CPU backend's convolution flag to
      XLA_FLAGS (before JAX creates a backend);
  `quiet_library_logs()` keeps Orbax's and TFDS's per-call INFO lines and
      the tracebacks of a failed checkpoint write out of the log (the write
      error itself reaches the user as one line, `errors.CheckpointError`);
  `tensorflow_on_cpu()`  keeps TensorFlow, which only feeds data, off any
      GPU/TPU that JAX uses;
  `describe_program(name)` makes absl's `--help` show the flags and
      docstring of the module `name` when another script runs it (main.py,
      the installed console scripts);
  `run_program(name, main)` starts a program: the CPU flag, its `--help`,
      then absl's `app.run(main)`;
  `compilation_cache(path)` points JAX's persistent compilation cache at
      `config.compilation_cache_dir` (training and evaluation call it).

The CPU flag: on the CPU backend of jaxlib 0.10.2, XLA's YNNPACK fusion also
takes over single convolutions, whose kernels (weight gradients above all)
are slower there than Eigen's on x86 CPUs;
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` keeps
YNNPACK for reductions and elementwise fusions and hands convolutions back
to Eigen, with float32 results unchanged (speed-ups in BENCHMARKS.md). The
flag is experimental: an unknown flag aborts the process, so it is applied
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
import logging
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


def configure_xla_cpu(environ=os.environ) -> bool:
  """Appends the CPU convolution flag to XLA_FLAGS where it is known to be
  safe; returns whether it did."""
  if cpu_tuning_applies(environ):
    environ['XLA_FLAGS'] = (environ.get('XLA_FLAGS', '') + ' ' + CPU_FLAG).strip()
    return True
  return False


# LRU bound of the persistent compilation cache, whose entries are compressed
# executables (the `cnn:tiny` run's train step: 0.5 MB).
COMPILATION_CACHE_MAX_BYTES = 4 * 2**30


def compilation_cache(path) -> str | None:
  """Sends compiled programs to the persistent cache at `path` ('' or None:
  leaves JAX's own setting, off unless JAX_COMPILATION_CACHE_DIR is set).

  A later run of the same program (same shapes, config, JAX and XLA flags)
  loads the executable instead of compiling it again: a resumed run, a
  sweep's trials, `--mode=evaluate`. Programs that compile in under a second
  are not stored (JAX's threshold). The directory must be trusted: an
  executable in it is run as is. Returns the directory used, or None.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  current = jax.config.jax_compilation_cache_dir
  if current and os.path.abspath(current) != path:
    logging.getLogger('absl').info(
        'config.compilation_cache_dir=%s not used: this process already '
        'caches compilations in %s (JAX_COMPILATION_CACHE_DIR)', path, current)
    return current
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  if jax.config.jax_compilation_cache_max_size == -1:
    # JAX bounds the cache under a file lock; without the package every
    # read would fail, so the cache would go unused.
    if importlib.util.find_spec('filelock') is None:
      logging.getLogger('absl').warning(
          'The compilation cache in %s is unbounded: install filelock '
          '(requirements.txt) to bound it', path)
    else:
      jax.config.update('jax_compilation_cache_max_size',
                        COMPILATION_CACHE_MAX_BYTES)
  return path


def tensorflow_on_cpu():
  """Hides GPUs and TPUs from TensorFlow: it only feeds data, JAX computes."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


class _LibraryChatter(logging.Filter):
  """Drops the INFO lines Orbax and TFDS write for every save and read."""
  _SOURCES = ('/orbax/', '/tensorflow_datasets/', '/jax/_src/distributed')

  def filter(self, record):
    return (record.levelno >= logging.WARNING
            or not any(s in record.pathname for s in self._SOURCES))


def _through_orbax(record) -> bool:
  if os.sep + 'orbax' + os.sep in record.pathname:
    return True
  tb = record.exc_info[2] if isinstance(record.exc_info, tuple) else None
  while tb is not None:
    if os.sep + 'orbax' + os.sep in tb.tb_frame.f_code.co_filename:
      return True
    tb = tb.tb_next
  return False


class _OrbaxTracebacks(logging.Filter):
  """Keeps the error lines of Orbax's writes, without their tracebacks.

  Orbax logs a failed write with the tracebacks of three of its threads, and
  asyncio logs the abandoned writes' errors at exit; the error itself reaches
  the user as one line (`detector.checkpoints` raises CheckpointError)."""

  def filter(self, record):
    if record.exc_info and _through_orbax(record):
      record.exc_info = None
      record.exc_text = None
    return True


class _ClosedLoopCallbacks:
  """An unraisable-exception hook that drops the callbacks of the event loop
  Orbax closes after a failed write: TensorStore still writing the other
  arrays then reports RuntimeError('Event loop is closed') for each."""

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError)
            and str(error) == 'Event loop is closed'):
      self.previous(unraisable)


def quiet_library_logs():
  """Installs the log filters and the unraisable hook above (idempotent)."""
  absl_logger = logging.getLogger('absl')
  if not any(isinstance(f, _LibraryChatter) for f in absl_logger.filters):
    absl_logger.addFilter(_LibraryChatter())
  for name in ('absl', 'asyncio'):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _OrbaxTracebacks) for f in logger.filters):
      logger.addFilter(_OrbaxTracebacks())
  if not isinstance(sys.unraisablehook, _ClosedLoopCallbacks):
    sys.unraisablehook = _ClosedLoopCallbacks(sys.unraisablehook)


def describe_program(module_name: str):
  """Points absl's `--help` at the program module `module_name`.

  absl prints the docstring of `__main__` and the flags defined by the
  module named sys.argv[0]; when a thin script (main.py, a console script)
  runs the program, both are the script's, so its flags would not show.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  program, script = sys.modules[module_name], sys.modules['__main__']
  if script is program:
    return
  if not script.__doc__:
    script.__doc__ = program.__doc__
  for flag in flags.FLAGS.get_key_flags_for_module(program):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run_program(module_name: str, main, xla_cpu: bool = True, **run_kwargs):
  """Runs `main` as the program of module `module_name` under absl, after
  the CPU flag (`xla_cpu`; before JAX creates its backend) and
  `describe_program`."""
  from absl import app  # pylint: disable=g-import-not-at-top
  if xla_cpu:
    configure_xla_cpu()
  describe_program(module_name)
  app.run(main, **run_kwargs)


def _innermost_message(error):
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  return str(error.args[0]) if error.args else str(error)


def parse_config_flags(argv):
  """absl flag parsing for programs with a config flag: a bad `--config.key`
  is reported in one line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f'error: {e}\nPass --help to list the flags.') from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an unknown key or a value of the wrong
    # type in a --config.key=value override; the config is locked, so a
    # misspelt key never silently adds a field.
    raise SystemExit('error: bad --config override: '
                     f'{_innermost_message(e)}') from None
