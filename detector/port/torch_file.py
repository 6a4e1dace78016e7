"""PyTorch checkpoints (`torch.save` files) read into numpy without torch.

Two formats, as `torch.load` reads them:
  zip (torch >= 1.6): `<archive>/data.pkl`, a pickle whose tensors refer by
    persistent id ('storage', storage type, key, location, numel) to the raw
    storage `<archive>/data/<key>`, in the byte order `<archive>/byteorder`
    names ('little' when absent);
  legacy (torch < 1.6): five pickles in a row (magic number, protocol 1001,
    system info, the object, the list of storage keys) and then, per key in
    that list, an int64 element count and the storage's bytes, little-endian.
The pickle is read by an unpickler that calls nothing the file names except
the few functions below that rebuild tensors and plain containers (the
globals `torch.load(..., weights_only=True)` allows for dense tensors);
any other global (a class of a pickled model, `os.system`, `builtins.eval`)
is refused with a ConfigError naming it, before anything runs. Own code, as
torch is no runtime requirement: tests/test_torch_file.py checks it reads
every dtype, view and state dict the port tests use bit for bit as torch.load.

A tensor becomes an np.ndarray of its dtype (bfloat16 and float8 as
ml_dtypes types) viewing its storage with its offset, shape and strides, as
torch's tensors share storages; an `nn.Parameter` becomes its array;
`torch.Size` a tuple, `torch.device` its string ('cuda:0'), a torch dtype
the numpy dtype. Everything else (dicts, OrderedDicts with their
`_metadata`, lists, tuples, numbers, strings, bytes, sets) comes back as
Python makes it.
"""

import collections
import io
import pickle
import sys
from typing import Any, BinaryIO, Callable, Dict, Optional

import ml_dtypes
import numpy as np

from detector import errors

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # First pickle of a legacy file.
LEGACY_PROTOCOL = 1001

# torch dtype name (`torch.<name>`, also the numpy name) -> numpy dtype.
DTYPES = {name: np.dtype(name) for name in (
    'float64', 'float32', 'float16', 'complex128', 'complex64', 'int64',
    'int32', 'int16', 'int8', 'uint64', 'uint32', 'uint16', 'uint8', 'bool')}
DTYPES.update({name: np.dtype(getattr(ml_dtypes, name)) for name in (
    'bfloat16', 'float8_e4m3fn', 'float8_e5m2', 'float8_e4m3fnuz',
    'float8_e5m2fnuz', 'float8_e8m0fnu')})

# torch's storage classes -> the dtype of their elements ('UntypedStorage':
# bytes, which `_rebuild_tensor_v3` views as its dtype argument).
STORAGE_TYPES = {
    'DoubleStorage': 'float64', 'FloatStorage': 'float32',
    'HalfStorage': 'float16', 'BFloat16Storage': 'bfloat16',
    'ComplexDoubleStorage': 'complex128', 'ComplexFloatStorage': 'complex64',
    'LongStorage': 'int64', 'IntStorage': 'int32', 'ShortStorage': 'int16',
    'CharStorage': 'int8', 'ByteStorage': 'uint8', 'BoolStorage': 'bool',
    'UntypedStorage': 'uint8'}


class _Invalid(Exception):
  """The file breaks the format; load() adds the file's name."""


class _StorageType:
  """torch.<name>Storage, as a persistent id names a storage's type."""

  def __init__(self, name: str):
    self.name, self.dtype = name, DTYPES[STORAGE_TYPES[name]]


class _Storage:
  """A storage's elements, a 1-D array (filled later in a legacy file)."""

  def __init__(self, array: np.ndarray):
    self.array = array


# torch.Tensor and nn.Parameter, as _rebuild_from_type_v2's `new_type`.
_TENSOR_TYPE = object()


def _ints(value, what: str) -> tuple:
  values = tuple(value) if isinstance(value, (tuple, list)) else None
  if values is None or not all(type(v) is int for v in values):  # pylint: disable=unidiomatic-typecheck
    raise _Invalid(f'a tensor {what} that is not a tuple of ints: {value!r}')
  return values


def _tensor(storage, offset, size, stride, metadata=None) -> np.ndarray:
  """The tensor as a strided view of `storage` (offset, stride in elements)."""
  if not isinstance(storage, _Storage):
    raise _Invalid(f'a tensor whose storage is a {type(storage).__name__}')
  (offset,), size = _ints((offset,), 'offset'), _ints(size, 'size')
  stride = _ints(stride, 'stride')
  array = storage.array
  if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
    raise _Invalid(f'a tensor of size {size}, stride {stride}, offset {offset}')
  if 0 in size:
    tensor = np.empty(size, array.dtype)
  else:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= array.size:
      raise _Invalid(f'a tensor (size {size}, stride {stride}, offset '
                     f'{offset}) reaching past its storage of {array.size}')
    tensor = np.ndarray(size, array.dtype, array.view(np.uint8),
                        offset * array.itemsize,
                        [s * array.itemsize for s in stride])
  flags = dict(metadata or {})
  if flags.pop('conj', False):  # torch's lazy conjugate / negative bits.
    tensor = np.conj(tensor)
  if flags.pop('neg', False):
    tensor = np.negative(tensor)
  if any(flags.values()):
    raise _Invalid(f'tensor metadata {metadata!r}')
  return tensor


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks
  return _tensor(storage, offset, size, stride, metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  """A tensor of `dtype` over an untyped (byte) storage."""
  del requires_grad, backward_hooks
  if not isinstance(dtype, np.dtype) or not isinstance(storage, _Storage):
    raise _Invalid(f'_rebuild_tensor_v3 with dtype {dtype!r}')
  if storage.array.nbytes % dtype.itemsize:
    raise _Invalid(f'a storage of {storage.array.nbytes} bytes read as {dtype}')
  return _tensor(_Storage(storage.array.view(dtype)), offset, size, stride,
                 metadata)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None,
                       state=None):
  del requires_grad, backward_hooks, state
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  """A tensor with Python attributes (`state`, dropped) or of a subclass."""
  del state
  if new_type is not _TENSOR_TYPE:
    raise _Invalid(f'a tensor of type {new_type!r}')
  return func(*args)


def _device(kind, index=None) -> str:
  return str(kind) if index is None else f'{kind}:{index}'


def _encode(text, encoding='utf-8'):
  """`_codecs.encode`, as protocol-2 pickles write bytes; latin-1 only."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    raise _Invalid(f'_codecs.encode({type(text).__name__}, {encoding!r})')
  return text.encode('latin1')


_GLOBALS: Dict[str, Any] = {
    'collections.OrderedDict': collections.OrderedDict,
    'collections.Counter': collections.Counter,
    'builtins.set': set, 'builtins.bytearray': bytearray,
    'builtins.complex': complex, '_codecs.encode': _encode,
    'torch._utils._rebuild_tensor': _tensor,
    'torch._utils._rebuild_tensor_v2': _rebuild_tensor_v2,
    'torch._utils._rebuild_tensor_v3': _rebuild_tensor_v3,
    'torch._utils._rebuild_parameter': _rebuild_parameter,
    'torch._utils._rebuild_parameter_with_state': _rebuild_parameter,
    'torch._tensor._rebuild_from_type_v2': _rebuild_from_type_v2,
    'torch.Tensor': _TENSOR_TYPE,
    'torch.nn.parameter.Parameter': _TENSOR_TYPE,
    'torch.Size': tuple, 'torch.device': _device,
}
_GLOBALS.update({f'torch.{name}': dtype for name, dtype in DTYPES.items()})
_GLOBALS.update({f'torch.{name}': _StorageType(name) for name in STORAGE_TYPES})
_GLOBALS['torch.storage.UntypedStorage'] = _GLOBALS['torch.UntypedStorage']


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Finds only `_GLOBALS`; sets state (BUILD) only on OrderedDicts (their
  `_metadata`); storages come from `storage(persistent id)`.

  The Python unpickler, as the C one's BUILD cannot be restricted (it sets
  attributes on whatever is on the stack, numpy's dtypes included).
  """
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file: BinaryIO, name: str,
               storage: Optional[Callable[[tuple], _Storage]] = None):
    super().__init__(file)
    self._name, self._storage = name, storage

  def find_class(self, module, name):
    if module == '__builtin__':  # Protocol 2's name for builtins.
      module = 'builtins'
    found = _GLOBALS.get(f'{module}.{name}')
    if found is None:
      raise errors.ConfigError(
          f'{self._name}: refused to load {module}.{name}, which the file '
          'asks for: a PyTorch file is read for its tensors and plain '
          'containers only (what torch.load(..., weights_only=True) allows), '
          'and no code in it runs')
    return found

  def persistent_load(self, pid):
    if self._storage is None:
      raise _Invalid('a storage where none belongs')
    if not isinstance(pid, tuple) or not pid or pid[0] != 'storage':
      raise _Invalid(f'persistent id {pid!r}')
    return self._storage(pid)

  def _build(self):
    state = self.stack.pop()
    target = self.stack[-1]
    if (type(target) is not collections.OrderedDict  # pylint: disable=unidiomatic-typecheck
        or not isinstance(state, dict)):
      raise _Invalid(f'a pickle that sets the state of a {type(target).__name__}')
    target.__dict__.update(state)

  dispatch[pickle.BUILD[0]] = _build


def _storage_type(storage_type) -> np.dtype:
  if not isinstance(storage_type, _StorageType):
    raise _Invalid(f'storage type {storage_type!r}')
  return storage_type.dtype


def _to_native(raw: np.ndarray, dtype: np.dtype, byteorder: str) -> np.ndarray:
  """Bytes `raw` (uint8) in `byteorder` -> elements of `dtype`, in place."""
  unit = dtype.itemsize // 2 if dtype.kind == 'c' else dtype.itemsize
  if byteorder != sys.byteorder and unit > 1:  # Complex: each part swaps.
    raw.view(f'u{unit}').byteswap(inplace=True)
  return raw.view(dtype)


def _load_zip(file: BinaryIO, name: str):
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(file) as archive:
    pickles = [n for n in archive.namelist()
               if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pickles) != 1:
      raise errors.ConfigError(
          f'{name}: not a PyTorch state dict: a zip file without a single '
          '<archive>/data.pkl (not written by torch.save)')
    prefix = pickles[0][:-len('data.pkl')]
    records = set(archive.namelist())
    byteorder = 'little'
    if f'{prefix}byteorder' in records:
      byteorder = archive.read(f'{prefix}byteorder').decode('ascii', 'replace')
    if byteorder not in ('little', 'big'):
      raise _Invalid(f'byteorder {byteorder!r}')
    storages = {}

    def storage(pid):
      if len(pid) != 5:
        raise _Invalid(f'persistent id {pid!r}')
      _, storage_type, key, _, numel = pid
      dtype = _storage_type(storage_type)
      if key not in storages:
        record = f'{prefix}data/{key}'
        if record not in records:
          raise _Invalid(f'no record {record} for a tensor')
        raw = np.empty(archive.getinfo(record).file_size, np.uint8)
        with archive.open(record) as f:
          f.readinto(memoryview(raw))
        if raw.size != numel * dtype.itemsize:
          raise _Invalid(f'{record} holds {raw.size} bytes, not {numel} x '
                         f'{dtype} ({numel * dtype.itemsize} bytes)')
        storages[key] = _Storage(_to_native(raw, dtype, byteorder))
      if storages[key].array.dtype != dtype:
        raise _Invalid(f'storage {key} read as {storages[key].array.dtype} '
                       f'and as {dtype}')
      return storages[key]

    data = io.BytesIO(archive.read(pickles[0]))
    return _Unpickler(data, name, storage).load()


def _load_legacy(file: BinaryIO, name: str):
  """The rest of a legacy file, after its magic number.

  The storages' bytes follow the object's pickle, so it is read twice: once
  to learn the storages, and again once they hold their data (a conjugated
  tensor, say, is computed as it is rebuilt).
  """
  if _Unpickler(file, name).load() != LEGACY_PROTOCOL:
    raise _Invalid('a legacy file of an unknown protocol version')
  _Unpickler(file, name).load()  # System info: the data are little-endian.
  roots, views = {}, {}

  def storage(pid):
    if len(pid) != 6:
      raise _Invalid(f'persistent id {pid!r}')
    _, storage_type, key, _, numel, view = pid
    dtype = _storage_type(storage_type)
    if key not in roots:
      roots[key] = _Storage(np.zeros(numel, dtype))
    if roots[key].array.dtype != dtype:
      raise _Invalid(f'storage {key} read as {roots[key].array.dtype} and as '
                     f'{dtype}')
    if view is None:
      return roots[key]
    view_key, offset, view_numel = view
    if view_key not in views:
      views[view_key] = _Storage(roots[key].array[offset:offset + view_numel])
    return views[view_key]

  start = file.tell()
  _Unpickler(file, name, storage).load()
  keys = _Unpickler(file, name).load()
  if not isinstance(keys, list) or set(keys) != set(roots):
    raise _Invalid('the storage keys do not match the tensors')
  for key in keys:
    array = roots[key].array
    numel = np.frombuffer(file.read(8), '<i8')
    raw = np.empty(array.nbytes, np.uint8)
    if numel.size != 1 or numel[0] != array.size or file.readinto(raw) != raw.size:
      raise _Invalid(f'storage {key} is truncated or of the wrong size')
    array[...] = _to_native(raw, array.dtype, 'little')
  file.seek(start)
  return _Unpickler(file, name, storage).load()


def load(path: str, name: Optional[str] = None) -> Any:
  """The object `torch.save` wrote to `path`, tensors as numpy arrays.

  `name` (default `path`) is how error messages name the file. Raises
  ConfigError naming the file if it is neither format, is damaged, or asks
  for a global this reader refuses (naming that global).
  """
  name = name or path
  try:
    with open(path, 'rb') as f:
      head = f.read(4)
      f.seek(0)
      if head == b'PK\x03\x04':
        return _load_zip(f, name)
      try:
        magic = _Unpickler(f, name).load()
      except errors.ConfigError:
        raise
      except Exception:  # pylint: disable=broad-except
        magic = None
      if magic != MAGIC_NUMBER:
        raise errors.ConfigError(
            f"{name}: not a PyTorch state dict (neither torch.save's zip "
            'format nor its legacy format)')
      return _load_legacy(f, name)
  except errors.ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(
        f'{name}: not a readable PyTorch state dict (damaged or truncated? '
        f'{type(e).__name__}: {str(e)[:200]})') from None
