"""The benchmarks against PyTorch run (so they cannot rot), without TensorFlow.

Each runs in a fresh process with TensorFlow and TFDS made unimportable, as
on a GPU machine that has neither (torch may not share a process with
TensorFlow anyway). The figures are not checked: a timing is no test.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WITHOUT_TENSORFLOW = r'''
import runpy, sys
for name in ('tensorflow', 'tensorflow_datasets'):
  sys.modules[name] = None  # An import of them raises ImportError.
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name='__main__')
'''


def _run(script, *args):
  out = subprocess.run(
      [sys.executable, '-c', _WITHOUT_TENSORFLOW,
       os.path.join(ROOT, 'benchmarks', script), *args],
      cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  results = [json.loads(line[len('RESULT '):])
             for line in out.stdout.splitlines() if line.startswith('RESULT ')]
  return results, out.stdout


def test_gpu_script_smoke_runs_both_frameworks_and_dtypes():
  """RetinaNet in float32 against torchvision, D0 in bfloat16 (JAX's compute
  dtype, PyTorch's autocast) against effdet: every code path of the script,
  half its runs (each compiles three programs on the CPU)."""
  results, stdout = _run('gpu.py', '--smoke', '--cases=retinanet',
                         '--dtypes=float32')
  more, more_stdout = _run('gpu.py', '--smoke', '--cases=d0',
                           '--dtypes=bfloat16')
  results += more
  assert [(r['case'], r['dtype']) for r in results] == [
      ('retinanet', 'float32'), ('d0', 'bfloat16')]
  for r in results:
    assert set(r['times']) == {'train', 'infer b1', 'infer b8'}
    # Both sides measured: torchvision's RetinaNet, effdet's D0.
    assert all(set(t) == {'jax', 'torch'} for t in r['times'].values()), r
    assert r['flops']['train'] > 0
    # The same architecture on both sides (torchvision's frozen BatchNorm
    # affine buffers counted as the parameters they are here).
    assert r['params_jax'] == r['params_torch'], r
  assert '| retinanet | train |' in stdout
  assert '| d0 (bfloat16) | infer b8 |' in more_stdout


def test_vs_torch_cnn_twin_matches_and_runs():
  """The default job's model and its PyTorch twin: the same parameter
  count (the script stops otherwise) and every measurement on both sides."""
  results, stdout = _run('vs_torch.py', '--cases=cnn', '--repeats=1',
                         '--steps=1')
  (r,) = results
  assert r['params_jax'] == r['params_torch'] > 1_000_000
  assert set(r['times']['train']) == {'jax', 'torch'}
  assert set(r['times']['full step']) == {'jax'}
  assert '| cnn | infer b8 |' in stdout
