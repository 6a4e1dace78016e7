"""Runs timm in its own process for the port tests.

torch (through triton) crashes when imported into a process that has already
loaded TensorFlow, as the test session has; so the originals run here:

  python tests/timm_reference.py ARCH[,ARCH...] SEED OUT_DIR CFG_ARCHS

For each ARCH (a ResNet or an EfficientNet) writes state_dict.pth and
state_dict.safetensors (the same random weights and BatchNorm statistics;
EfficientNets' convs also re-drawn, see `_randomise`) and expected.npz: for
inputs x64 [2, 3, 64, 64] and x67 [2, 3, 67, 67] (seeded normal), C2..C5 as
NHWC and the logits, in eval mode. With one ARCH the files go into OUT_DIR,
with several into OUT_DIR/<arch>/. OUT_DIR/pretrained_cfg.json gets, for
each of the comma-separated CFG_ARCHS (none if empty), the default pretrained
tag's configuration, the model's BatchNorm epsilons and its conv classes
(Conv2dSame: TF SAME padding), as the installed timm states them.
"""

import json
import os
import sys

import numpy as np
import safetensors.torch
import timm
import torch


def _randomise(model, convs):
  """Random BatchNorm statistics and affine parameters; with `convs`, also
  He-normal conv weights over each filter's own fan-in and random conv biases
  (EfficientNet's default init shrinks the signal through the blocks in eval
  mode until the logits hardly depend on the input, which would make the
  comparison weak)."""
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


def _features(model, arch, t):
  """[C2, C3, C4, C5] of a timm ResNet or EfficientNet."""
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


def reference(arch, seed, out_dir):
  torch.manual_seed(seed)
  model = timm.create_model(arch, pretrained=False).eval()
  _randomise(model, convs='efficientnet' in arch)
  state = model.state_dict()
  torch.save(state, os.path.join(out_dir, 'state_dict.pth'))
  safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()},
                              os.path.join(out_dir, 'state_dict.safetensors'))
  arrays = {}
  for size in (64, 67):
    x = np.random.default_rng(size).normal(size=(2, 3, size, size)).astype(np.float32)
    arrays[f'x{size}'] = x
    with torch.no_grad():
      t = torch.from_numpy(x)
      for level, y in zip((2, 3, 4, 5), _features(model, arch, t)):
        arrays[f'x{size}_C{level}'] = y.permute(0, 2, 3, 1).numpy()
      arrays[f'x{size}_logits'] = model(t).numpy()
  np.savez(os.path.join(out_dir, 'expected.npz'), **arrays)


def pretrained_cfgs(cfg_archs, out_dir):
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


def main(archs, seed, out_dir, cfg_archs):
  archs = archs.split(',')
  for arch in archs:
    directory = out_dir if len(archs) == 1 else os.path.join(out_dir, arch)
    os.makedirs(directory, exist_ok=True)
    reference(arch, seed, directory)
  pretrained_cfgs([a for a in cfg_archs.split(',') if a], out_dir)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
