"""Runs timm in its own process for test_port_resnet_sources.py.

torch (through triton) crashes when imported into a process that has already
loaded TensorFlow, as the test session has; so the originals run here:

  python tests/timm_reference.py ARCH SEED OUT_DIR CFG_ARCHS

writes OUT_DIR/state_dict.pth and OUT_DIR/state_dict.safetensors (the same
random weights and BatchNorm statistics), OUT_DIR/expected.npz: for inputs
x64 [2, 3, 64, 64] and x67 [2, 3, 67, 67] (seeded normal), C2..C5 as NHWC and
the logits; and OUT_DIR/pretrained_cfg.json: for each of the comma-separated
CFG_ARCHS, the default pretrained tag's configuration and the model's
BatchNorm epsilon, as the installed timm states them.
"""

import json
import os
import sys

import numpy as np
import safetensors.torch
import timm
import torch


def main(arch, seed, out_dir, cfg_archs):
  torch.manual_seed(seed)
  model = timm.create_model(arch, pretrained=False).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
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
      y = model.maxpool(model.act1(model.bn1(model.conv1(t))))
      for level, layer in zip((2, 3, 4, 5), (model.layer1, model.layer2,
                                             model.layer3, model.layer4)):
        y = layer(y)
        arrays[f'x{size}_C{level}'] = y.permute(0, 2, 3, 1).numpy()
      arrays[f'x{size}_logits'] = model(t).numpy()
  np.savez(os.path.join(out_dir, 'expected.npz'), **arrays)
  cfgs = {}
  for name in cfg_archs.split(','):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    epsilons = {m.eps for m in timm.create_model(name, pretrained=False).modules()
                if isinstance(m, torch.nn.BatchNorm2d)}
    cfgs[name] = dict(tag=cfg['tag'], input_size=list(cfg['input_size']),
                      crop_pct=cfg['crop_pct'], crop_mode=cfg['crop_mode'],
                      interpolation=cfg['interpolation'], mean=list(cfg['mean']),
                      std=list(cfg['std']), num_classes=cfg['num_classes'],
                      bn_epsilons=sorted(epsilons))
  with open(os.path.join(out_dir, 'pretrained_cfg.json'), 'w') as f:
    json.dump(cfgs, f)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
