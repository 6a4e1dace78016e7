"""Runs torchvision in its own process for test_port.py.

torch (through triton) crashes when imported into a process that has already
loaded TensorFlow, as the test session has; so the originals run here:

  python tests/torch_reference.py ARCH SEED OUT_DIR

writes OUT_DIR/state_dict.pth (random weights and BatchNorm statistics),
OUT_DIR/model.pth (the whole pickled module) and OUT_DIR/expected.npz: for
inputs x64 [2, 3, 64, 64] and x67 [2, 3, 67, 67] (seeded normal), C2..C5 as
NHWC and the logits.
"""

import os
import sys

import numpy as np
import torch
import torchvision


def main(arch, seed, out_dir):
  torch.manual_seed(seed)
  model = torchvision.models.get_model(arch, weights=None).eval()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  torch.save(model.state_dict(), os.path.join(out_dir, 'state_dict.pth'))
  torch.save(model, os.path.join(out_dir, 'model.pth'))
  arrays = {}
  for size in (64, 67):
    x = np.random.default_rng(size).normal(size=(2, 3, size, size)).astype(np.float32)
    arrays[f'x{size}'] = x
    with torch.no_grad():
      t = torch.from_numpy(x)
      y = model.maxpool(model.relu(model.bn1(model.conv1(t))))
      for level, layer in zip((2, 3, 4, 5), (model.layer1, model.layer2,
                                             model.layer3, model.layer4)):
        y = layer(y)
        arrays[f'x{size}_C{level}'] = y.permute(0, 2, 3, 1).numpy()
      arrays[f'x{size}_logits'] = model(t).numpy()
  np.savez(os.path.join(out_dir, 'expected.npz'), **arrays)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
