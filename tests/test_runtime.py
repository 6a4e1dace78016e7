"""Importing detector changes nothing outside it, and the CPU-only XLA flag
is added (by the programs that ask for it) exactly when it is known to be
safe."""

import json
import os
import subprocess
import sys

from detector import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Imported before the snapshot: what they do on import is theirs.
LIBRARIES = ('tensorflow', 'tensorflow_datasets', 'clu.metric_writers',
             'clu.metrics', 'clu.parameter_overview', 'clu.periodic_actions',
             'flax.linen', 'optax', 'ml_collections', 'matplotlib.pyplot',
             'pycocotools.cocoeval', 'faster_coco_eval', 'h5py',
             'safetensors.numpy', 'PIL.Image', 'yaml', 'etils.epath')
# Programs: they define absl flags when imported, as absl programs do.
PROGRAMS = ('detector.main', 'detector.imagenet', 'detector.data.report',
            'detector.port.__main__', 'detector.predict.__main__',
            'detector.export.__main__', 'detector.monitoring.__main__',
            'detector.serve.__main__')

_PROBE = r'''
import importlib, json, logging, os, pkgutil, sys
import jax
import orbax.checkpoint as ocp

def snapshot():
  return {
      'environ': dict(os.environ),
      'unraisablehook': repr(sys.unraisablehook),
      'filters': {name: [type(f).__name__ for f in logging.getLogger(name).filters]
                  for name in ('', 'absl', 'asyncio', 'jax', 'orbax')},
      'array_handler': repr(vars(ocp.type_handlers.get_type_handler(jax.Array))),
  }

# The libraries detector uses, first: some set variables of their own when
# imported (TensorFlow sets TF2_BEHAVIOR, KMP_* and others).
for library in LIBRARIES:
  importlib.import_module(library)
before = snapshot()
import detector
names = sorted(m.name for m in pkgutil.walk_packages(detector.__path__, 'detector.')
               if m.name not in PROGRAMS)
for name in names:
  importlib.import_module(name)
after = snapshot()
print(json.dumps({'modules': names, 'before': before, 'after': after}))
'''


def test_importing_every_module_changes_nothing_outside(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
      [sys.executable, '-c',
       f'PROGRAMS = {PROGRAMS!r}\nLIBRARIES = {LIBRARIES!r}\n' + _PROBE],
      cwd=str(tmp_path), env=dict(env, PYTHONPATH=ROOT), capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(result['modules']) > 40, result['modules']
  assert {'detector.train.loop', 'detector.data.detection',
          'detector.evaluation.coco'} <= set(result['modules'])
  assert result['after'] == result['before']
  # The issue's own check, verbatim.
  proc = subprocess.run(
      [sys.executable, '-c',
       "import detector, os; print(os.environ.get('XLA_FLAGS'))"],
      cwd=str(tmp_path), env=dict(env, PYTHONPATH=ROOT), capture_output=True,
      text=True, timeout=120)
  assert proc.stdout.strip() == 'None', proc.stdout + proc.stderr


def test_the_program_applies_the_flag_before_jax_starts(tmp_path):
  """main.py's `run` sets the flag (where it applies) before the backend."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  code = ('from detector import main\n'
          'import os, sys\n'
          'sys.argv = ["main.py", "--helpfull"]\n'
          'try:\n  main.run()\nexcept SystemExit:\n  pass\n'
          'print("FLAGS", os.environ.get("XLA_FLAGS"))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path),
                        env=dict(env, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'),
                        capture_output=True, text=True, timeout=300)
  line = [l for l in proc.stdout.splitlines() if l.startswith('FLAGS')][-1]
  expected = runtime.CPU_FLAG if runtime._jaxlib_version() == runtime.TUNED_JAXLIB_VERSION else 'None'  # pylint: disable=protected-access
  assert line.split()[1] == expected, proc.stdout[-2000:] + proc.stderr[-2000:]


def _env(**kw):
  return dict(kw)


def _safe(monkeypatch):
  monkeypatch.setattr(runtime, '_jaxlib_version', lambda: '0.10.2')
  monkeypatch.setattr(runtime, '_backend_started', lambda: False)
  monkeypatch.setattr(runtime.importlib.util, 'find_spec', lambda name: None)


def test_flag_appended_to_user_flags_on_cpu(monkeypatch):
  _safe(monkeypatch)
  env = _env(XLA_FLAGS='--xla_force_host_platform_device_count=8')
  assert runtime.configure_xla_cpu(env)
  assert env['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=8 '
                              + runtime.CPU_FLAG)
  env = _env()
  assert runtime.configure_xla_cpu(env) and env['XLA_FLAGS'] == runtime.CPU_FLAG


def test_flag_not_applied_where_unsafe_or_unwanted(monkeypatch):
  _safe(monkeypatch)
  user = '--xla_cpu_experimental_ynn_fusion_type=none'
  for env in (_env(XLA_FLAGS=user), _env(JAX_PLATFORMS='cuda'),
              _env(JAX_PLATFORMS='tpu,cpu'), _env(DETECTOR_XLA_CPU_TUNING='0')):
    before = dict(env)
    assert not runtime.configure_xla_cpu(env)
    assert env == before
  # Another jaxlib: the flag may be unknown there and would abort XLA.
  monkeypatch.setattr(runtime, '_jaxlib_version', lambda: '0.11.0')
  env = _env()
  assert not runtime.configure_xla_cpu(env) and env == {}
  # An accelerator plugin installed and no JAX_PLATFORMS: JAX picks the GPU.
  monkeypatch.setattr(runtime, '_jaxlib_version', lambda: '0.10.2')
  monkeypatch.setattr(runtime.importlib.util, 'find_spec',
                      lambda name: object() if name == 'jax_cuda12_plugin' else None)
  env = _env()
  assert not runtime.configure_xla_cpu(env) and env == {}
  # After JAX created its backend, changing XLA_FLAGS would do nothing.
  monkeypatch.setattr(runtime.importlib.util, 'find_spec', lambda name: None)
  monkeypatch.setattr(runtime, '_backend_started', lambda: True)
  env = _env()
  assert not runtime.configure_xla_cpu(env) and env == {}


_CACHE_PROBE = r'''
import json, sys, time
import jax, jax.numpy as jnp
from detector import runtime
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event)
    if event == '/jax/compilation_cache/cache_hits' else None)
used = runtime.compilation_cache(sys.argv[1])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
x = jnp.arange(12.0).reshape(3, 4)
y = jax.jit(lambda a: jnp.tanh(a @ a.T).sum(0))(x)
print(json.dumps({'used': used, 'hits': len(hits), 'y': y.tolist(),
                  'max_size': jax.config.jax_compilation_cache_max_size}))
'''


def _cache_probe(path, env=None):
  environ = {k: v for k, v in os.environ.items()
             if k != 'JAX_COMPILATION_CACHE_DIR'}
  environ.update(env or {})
  out = subprocess.run([sys.executable, '-c', _CACHE_PROBE, path], cwd=ROOT,
                       env=environ, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_compilation_cache_stores_and_reloads_a_program(tmp_path):
  """config.compilation_cache_dir: the first process compiles and writes the
  executable, a second one loads it (a cache hit) and computes the same."""
  cache = tmp_path / 'cache'
  first = _cache_probe(str(cache))
  assert first['used'] == str(cache) and first['hits'] == 0
  assert first['max_size'] == runtime.COMPILATION_CACHE_MAX_BYTES
  assert any(cache.iterdir()), 'nothing written to the cache'
  second = _cache_probe(str(cache))
  assert second['hits'] >= 1
  assert second['y'] == first['y']


def test_compilation_cache_off_or_already_chosen(tmp_path):
  """'' leaves JAX's setting alone; a cache JAX was given by its own
  variable is kept (the config's directory then stays empty)."""
  assert _cache_probe('')['used'] is None
  own, configured = tmp_path / 'own', tmp_path / 'configured'
  out = _cache_probe(str(configured), {'JAX_COMPILATION_CACHE_DIR': str(own)})
  assert out['used'] == str(own)
  assert any(own.iterdir()) and not configured.exists()
