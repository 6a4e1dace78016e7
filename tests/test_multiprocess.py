"""Two processes on this machine (coordinator on 127.0.0.1, CPU collectives
over gloo, 2 fake devices each) train exactly as one process with 4
devices, and their checkpoint resumes in one process."""

import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, 'tests', 'multiprocess_worker.py')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +  # The suite's compile flags.
                      f' --xla_force_host_platform_device_count={devices}').strip()
  return env


def test_two_processes_equal_one_and_their_checkpoint_resumes(tmp_path):
  address = f'127.0.0.1:{_free_port()}'
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  procs = [subprocess.Popen(
      [sys.executable, WORKER, '2', str(i), address, two,
       str(tmp_path / 'two.npz')], env=_env(2), cwd=ROOT,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  proc = subprocess.run(
      [sys.executable, WORKER, '1', '0', '-', one, str(tmp_path / 'one.npz'),
       two], env=_env(4), cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  a, b = np.load(tmp_path / 'two.npz'), np.load(tmp_path / 'one.npz')
  assert int(a['device_count']) == int(b['device_count']) == 4
  # The same global batch on 4 devices: the same losses, 2 processes or 1.
  np.testing.assert_allclose(a['losses'], b['losses'], rtol=1e-5)
  assert not np.allclose(a['losses'][0], a['losses'][1])  # It trains.
  # Parameters to float rounding: gloo sums the gradients in another order,
  # and AdamW's normalised update turns a tiny gradient's rounding into a
  # step of up to ~1e-4 of the largest value after 3 steps.
  params = sorted(k for k in a if k.startswith('param_'))
  for key in params:
    scale = max(np.abs(b[key]).max(), 1e-6)
    assert np.abs(a[key] - b[key]).max() <= 1e-4 * scale, key
  # The 2-process checkpoint restores in 1 process: its final parameters.
  assert int(b['restored_step']) == 3
  for key in params:
    np.testing.assert_array_equal(b['restored_' + key[len('param_'):]], a[key])
