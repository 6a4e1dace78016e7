"""The notebooks of colabs/ run top to bottom, and are saved as they should be.

Each notebook is executed cell by cell by nbclient in an IPython kernel
(ipykernel) of this suite's Python, in a temporary working directory, with
DETECTOR_COLAB_SMOKE=1 (each notebook shrinks its sizes and steps when it is
set) and the repository on PYTHONPATH, as a clone without `pip install`
would have it. A cell that raises, kills the kernel or runs past
CELL_TIMEOUT_S fails the test with the cell's index, its first line and the
error. The kernel inherits the suite's environment: its
XLA flags (but see OPTIMISED_XLA) and compilation cache, and TFDS_DATA_DIR
pointing at the session's `shapes/tiny`, so that the notebooks do not
generate it again. Each test prints its time and its slowest cells (run
with -s to see them).

The static checks are cheap: every notebook is saved without outputs or
execution counts, imports `detector`, reads DETECTOR_COLAB_SMOKE, and
installs the package only in Colab, from the one REPO_URL of its first code
cell.
"""

import ast
import datetime
import os
import re
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbclient.exceptions import CellTimeoutError
from nbclient.exceptions import DeadKernelError
import pytest

import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, 'colabs')
NOTEBOOKS = ('quickstart', 'custom_dataset', 'cloud_tpu')
CELL_TIMEOUT_S = 600
# Notebooks run with XLA's backend optimisation on, unlike the rest of the
# suite (conftest.FAST_COMPILE_FLAGS): cloud_tpu's steps on 8 fake devices
# run several times slower unoptimised, which costs more than the faster
# compiles save (the notebook takes twice as long); the other two notebooks
# are faster with the suite's flags.
OPTIMISED_XLA = ('cloud_tpu',)
_ANSI = re.compile(r'\x1b\[[0-9;]*m')


def _read(name):
  return nbformat.read(os.path.join(COLABS, f'{name}.ipynb'), as_version=4)


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


def _python(source):
  """A code cell's source with IPython's `!shell` and `%magic` lines blanked,
  so that `ast` reads the rest."""
  return '\n'.join('' if line.lstrip().startswith(('!', '%')) else line
                   for line in source.splitlines())


def _kernel_manager(tmp_path):
  """A kernel manager for this interpreter's ipykernel only: a kernelspec
  written into tmp_path, so that no `python3` kernel installed elsewhere on
  the machine is picked instead."""
  from ipykernel import kernelspec  # pylint: disable=g-import-not-at-top
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
  from jupyter_client.manager import AsyncKernelManager  # pylint: disable=g-import-not-at-top
  kernels = tmp_path / 'kernels'
  if not (kernels / 'detector-test').exists():
    kernelspec.write_kernel_spec(str(kernels / 'detector-test'), overrides={
        'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
                 '{connection_file}'],
        'display_name': 'detector tests'})
  specs = KernelSpecManager(kernel_dirs=[str(kernels)],
                            ensure_native_kernel=False)
  return AsyncKernelManager(kernel_name='detector-test', kernel_spec_manager=specs)


def execute(nb, cwd, tmp_path, name='notebook', timeout=CELL_TIMEOUT_S):
  """Runs every cell of `nb` in a fresh kernel, working directory `cwd`.

  Raises:
    pytest.fail.Exception naming the failing cell (index among all cells and
    first source line) and the error: the exception and the end of its
    traceback, or the kernel's death or the cell's timeout.
  """
  running = []  # The index of each cell as its execution starts.
  client = NotebookClient(nb, km=_kernel_manager(tmp_path),
                          timeout=timeout,
                          resources={'metadata': {'path': str(cwd)}},
                          on_cell_execute=lambda cell, cell_index:
                          running.append(cell_index))
  try:
    client.execute()
  except CellExecutionError as e:
    for index, cell in enumerate(nb.cells):
      errors = [o for o in cell.get('outputs', []) if o.output_type == 'error']
      if errors:
        trace = _ANSI.sub('', '\n'.join(errors[0].traceback))[-3000:]
        _fail(nb, index, name, f'{errors[0].ename}: {errors[0].evalue}\n{trace}')
    pytest.fail(f'{name}: {e}', pytrace=False)  # No cell holds the error.
  except (CellTimeoutError, DeadKernelError) as e:
    _fail(nb, running[-1] if running else 0, name,
          f'{type(e).__name__}: {str(e)[:3000]}')


def _fail(nb, index, name, what):
  source = nb.cells[index].source.strip()
  first = source.splitlines()[0] if source else ''
  pytest.fail(f'{name}: cell {index} ({first!r}) failed: {what}', pytrace=False)


def _slowest(nb, n=4):
  """(seconds, index) of the n longest cells, from nbclient's timestamps."""
  times = []
  for index, cell in enumerate(nb.cells):
    timing = cell.get('metadata', {}).get('execution', {})
    if 'iopub.execute_input' in timing and 'shell.execute_reply' in timing:
      times.append(((datetime.datetime.fromisoformat(timing['shell.execute_reply'])
                     - datetime.datetime.fromisoformat(timing['iopub.execute_input'])
                     ).total_seconds(), index))
  return sorted(times, reverse=True)[:n]


@pytest.fixture
def smoke_env(monkeypatch, tiny_data_dir):
  monkeypatch.setenv('DETECTOR_COLAB_SMOKE', '1')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  monkeypatch.setenv('TFDS_DATA_DIR', tiny_data_dir)


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, smoke_env, tmp_path, monkeypatch):
  del smoke_env
  if name in OPTIMISED_XLA:
    monkeypatch.setenv('XLA_FLAGS', ' '.join(
        os.environ.get('XLA_FLAGS', '').replace(
            conftest.FAST_COMPILE_FLAGS, '').split()))
  nb = _read(name)
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  start = time.perf_counter()
  execute(nb, cwd, tmp_path, f'{name}.ipynb')
  print(f'{name}.ipynb ran in {time.perf_counter() - start:.1f} s; the slowest '
        'cells: ' + ', '.join(f'{i} {t:.1f} s' for t, i in _slowest(nb)))
  # Every code cell ran (none skipped by an early exit of the kernel).
  assert all(c.execution_count for c in _code_cells(nb)), name


@pytest.mark.parametrize('failure, message', [
    ('raise ValueError("boom")', 'ValueError: boom'),
    ('import os\nos._exit(1)', 'DeadKernelError'),
    ('import time\ntime.sleep(60)', 'CellTimeoutError'),
])
def test_a_failing_cell_is_named(failure, message, tmp_path):
  nb = nbformat.v4.new_notebook()
  nb.cells = [nbformat.v4.new_code_cell('x = 1'),
              nbformat.v4.new_markdown_cell('text'),
              nbformat.v4.new_code_cell(f'y = x + 1  # fine\n{failure}'),
              nbformat.v4.new_code_cell('z = 3')]
  with pytest.raises(pytest.fail.Exception) as caught:
    execute(nb, tmp_path, tmp_path, 'broken.ipynb', timeout=5)
  assert str(caught.value).startswith(
      "broken.ipynb: cell 2 ('y = x + 1  # fine') failed: " + message), caught.value
  assert nb.cells[3].execution_count is None  # Execution stopped there.


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_saved_clean(name):
  """No outputs, no execution counts; imports `detector`; reads the smoke
  variable; installs only in Colab, from REPO_URL, in its first code cell."""
  nb = _read(name)
  nbformat.validate(nb)
  cells = _code_cells(nb)
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == 'code'
           and (c.outputs or c.execution_count is not None)]
  assert not dirty, f'{name}.ipynb: cells {dirty} were saved with outputs'
  imported = set()
  for cell in cells:
    for node in ast.walk(ast.parse(_python(cell.source))):
      if isinstance(node, ast.Import):
        imported.update(a.name.split('.')[0] for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module:
        imported.add(node.module.split('.')[0])
  assert 'detector' in imported, f'{name}.ipynb never imports detector'
  assert any("os.environ.get('DETECTOR_COLAB_SMOKE')" in c.source
             for c in cells), name
  first = cells[0].source
  assert re.search(r"^REPO_URL = '", first, re.M), first
  assert "if 'google.colab' in sys.modules:" in first, first
  install = [line.strip() for line in first.splitlines()
             if line.lstrip().startswith('!pip install')]
  assert install and all('{REPO_URL}' in line for line in install), first
  assert all(line.startswith((' ', '\t')) for line in first.splitlines()
             if line.lstrip().startswith('!')), 'pip runs outside the Colab branch'
  for cell in cells[1:]:
    assert 'pip install' not in _python(cell.source), name
