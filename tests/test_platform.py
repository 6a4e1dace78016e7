"""The CPU-only XLA flag is added exactly when it is known to be safe."""

from detector import platform


def _env(**kw):
  return dict(kw)


def test_flag_appended_to_user_flags_on_cpu(monkeypatch):
  monkeypatch.setattr(platform, '_jaxlib_version', lambda: '0.10.2')
  monkeypatch.setattr(platform, '_backend_started', lambda: False)
  monkeypatch.setattr(platform.importlib.util, 'find_spec', lambda name: None)
  env = _env(XLA_FLAGS='--xla_force_host_platform_device_count=8')
  assert platform.configure_xla_cpu(env)
  assert env['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=8 '
                              + platform.CPU_FLAG)
  env = _env()
  assert platform.configure_xla_cpu(env) and env['XLA_FLAGS'] == platform.CPU_FLAG


def test_flag_not_applied_where_unsafe_or_unwanted(monkeypatch):
  monkeypatch.setattr(platform, '_jaxlib_version', lambda: '0.10.2')
  monkeypatch.setattr(platform, '_backend_started', lambda: False)
  monkeypatch.setattr(platform.importlib.util, 'find_spec', lambda name: None)
  user = '--xla_cpu_experimental_ynn_fusion_type=none'
  for env in (_env(XLA_FLAGS=user), _env(JAX_PLATFORMS='cuda'),
              _env(JAX_PLATFORMS='tpu,cpu'), _env(DETECTOR_XLA_CPU_TUNING='0')):
    before = dict(env)
    assert not platform.configure_xla_cpu(env)
    assert env == before
  # Another jaxlib: the flag may be unknown there and would abort XLA.
  monkeypatch.setattr(platform, '_jaxlib_version', lambda: '0.11.0')
  env = _env()
  assert not platform.configure_xla_cpu(env) and env == {}
  # An accelerator plugin installed and no JAX_PLATFORMS: JAX picks the GPU.
  monkeypatch.setattr(platform, '_jaxlib_version', lambda: '0.10.2')
  monkeypatch.setattr(platform.importlib.util, 'find_spec',
                      lambda name: object() if name == 'jax_cuda12_plugin' else None)
  env = _env()
  assert not platform.configure_xla_cpu(env) and env == {}
  # After JAX created its backend, changing XLA_FLAGS would do nothing.
  monkeypatch.setattr(platform.importlib.util, 'find_spec', lambda name: None)
  monkeypatch.setattr(platform, '_backend_started', lambda: True)
  env = _env()
  assert not platform.configure_xla_cpu(env) and env == {}
