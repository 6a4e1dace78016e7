"""Benchmark: this project (JAX) against PyTorch on the same model, batch and size.

    .venv/bin/python benchmarks/vs_torch.py [--cases=cnn,retinanet,resnet50,b0]
        [--repeats=5] [--steps=3]

Both frameworks run in this one process (no TensorFlow is imported, so torch
may sit beside JAX), interleaved: each repeat times every measurement on the
JAX side and then on the PyTorch side, and the table gives the median over
repeats of the per-call time, as images/s or milliseconds, and the ratio
JAX / PyTorch (> 1: JAX is faster).

Cases (the project's config against its PyTorch counterpart):
  * `cnn`: the default job's model (configs/cnn.py: small CNN + FPN +
    centre head), training batch 8 at 96 px, inference at 128 px, against
    `TorchCNNDetector` below, written for this benchmark with the same
    layers and parameter count (checked). Its training targets (Gaussian
    heatmaps, box weights) are computed once, as a PyTorch CenterNet's data
    loader does; the JAX step computes them inside the step.
  * `retinanet`: configs/resnet50.py:coco (torchvision's anchors and P6/P7,
    frozen BatchNorm, stem and res2 frozen) at batch 4, 256 px, 91 classes,
    against torchvision's RetinaNet-R50-FPN built the same way
    (FrozenBatchNorm2d, trainable layers 3, min_size = max_size = 256).
  * `resnet50`, `b0`: the ImageNet classifiers (configs/classify.py) at
    batch 8, 224 px, against torchvision's resnet50 / efficientnet_b0.

Measurements:
  * train: one SGD step (momentum 0.9, no weight decay) of the model's own
    loss on both sides: `optax.sgd` in a jitted step against
    `torch.optim.SGD` after `backward()`;
  * full step (JAX only): the project's `train.make_train_step` with the
    config's own optimizer, EMA, clipping and metrics;
  * infer b1 / b8: inference on a batch of 1 and of 8 images (uint8 in),
    post-processing included on both sides (score threshold, per-class NMS,
    100 detections; softmax for classifiers); no flip test;
  * compile: seconds to lower and compile each JAX function (the
    persistent compilation cache is not used here).
Parameter counts are printed for each pair (torchvision's frozen BatchNorm
scale and bias, buffers there, are counted as the parameters they are here).

A benchmark, not a test: it prints figures and asserts only that the twins
match. `benchmarks/gpu.py` runs the same cases on a GPU.
"""

import dataclasses
import json
import math
import os
import statistics
import sys
import time
from typing import Dict

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from detector import runtime  # pylint: disable=wrong-import-position

CASES = ('cnn', 'retinanet', 'resnet50', 'b0')
SHAPES_CLASSES = 6  # The `shapes` dataset's classes (circle ... star).

# Filled by the CPU program's main; gpu.py defines its own.
FLAGS = flags.FLAGS


@dataclasses.dataclass
class Spec:
  """One case: the project's config and the PyTorch counterpart's settings."""
  name: str
  config: str                 # detector/configs module[:arg].
  batch: int
  train_size: int
  infer_size: int
  num_classes: int
  dtype: str = 'float32'      # 'bfloat16': JAX compute dtype / torch autocast.


def cpu_specs():
  return {
      'cnn': Spec('cnn', 'cnn', 8, 96, 128, SHAPES_CLASSES),
      'retinanet': Spec('retinanet', 'resnet50:coco', 4, 256, 256, 91),
      'resnet50': Spec('resnet50', 'classify:resnet50', 8, 224, 224, 1000),
      'b0': Spec('b0', 'classify:b0', 8, 224, 224, 1000),
  }


# ----------------------------------------------------------------- JAX side


def jax_config(spec: Spec):
  """The project's config of `spec`, at its batch and sizes, no init_from."""
  import importlib  # pylint: disable=g-import-not-at-top
  module, _, arg = spec.config.partition(':')
  config = importlib.import_module(f'detector.configs.{module}').get_config(
      arg or None)
  with config.unlocked():
    config.batch_size = spec.batch
    config.image_size = (spec.train_size, spec.train_size)
    config.eval_image_size = (spec.infer_size, spec.infer_size)
    config.init_from = ''
    config.model.flip_test = False
    config.model.dtype = spec.dtype
  return config


def synthetic_batch(spec: Spec, size: int, batch: int, detection: bool,
                    max_boxes: int = 16, seed: int = 0):
  """numpy uint8 images and labels or padded boxes (yxyx pixels), fixed seed."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = {'image': rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)}
  if not detection:
    out['label'] = rng.integers(0, spec.num_classes, (batch,)).astype(np.int32)
    return out
  k = max_boxes
  wh = rng.uniform(size / 16, size / 3, (batch, k, 2))
  yx = rng.uniform(0, 1, (batch, k, 2)) * (size - wh)
  out['boxes'] = np.concatenate([yx, yx + wh], -1).astype(np.float32)
  # Classes from 1: torchvision's detectors keep 0 for the background.
  out['labels'] = rng.integers(1, spec.num_classes, (batch, k)).astype(np.int32)
  out['box_mask'] = np.zeros((batch, k), bool)
  out['box_mask'][:, :4] = True  # 4 objects an image.
  return out


class JaxSide:
  """The project's model of a spec: plain SGD step, full step, inference."""

  def __init__(self, spec: Spec, parts=('train', 'full step', 'infer')):
    # pylint: disable=g-import-not-at-top
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from detector import train
    from detector.train import optim
    # pylint: enable=g-import-not-at-top
    self.spec = spec
    config = jax_config(spec)
    self.detection = config.task == 'detection'
    names = [f'c{i}' for i in range(spec.num_classes)]
    # The recipe's own run length (its schedule's decay steps lie inside).
    total_steps = max(10_000, config.num_train_steps or 0)
    s = train.build_setup(config, names, total_steps,
                          devices=jax.devices()[:1])
    self.setup, self.config = s, config
    self.compile_s, self.flops = {}, {}
    state = s.init_fn(jax.random.PRNGKey(0))
    self.params_count = sum(int(np.prod(x.shape))
                            for x in jax.tree.leaves(state.params))
    keys = s.task.batch_keys
    numpy_batch = synthetic_batch(spec, spec.train_size, spec.batch,
                                  self.detection,
                                  config.input.get('max_boxes', 16))
    self.numpy_batch = numpy_batch
    batch = {k: jnp.asarray(numpy_batch[k]) for k in keys}
    self.batch = batch

    # The plain step: the model's loss, its gradient and SGD, nothing else.
    model, labels = s.train_model, s.labels
    loss_fn = s.task.loss_fn(model, s.model_config)
    tx = optax.sgd(0.01, momentum=0.9)

    def plain_step(params, batch_stats, opt_state, batch):
      def objective(p):
        if labels is not None:  # Frozen layers, as the trainer freezes them.
          p = jax.tree_util.tree_map(
              lambda v, l: jax.lax.stop_gradient(v) if l == optim.FROZEN else v,
              p, labels)
        out, updates = model.apply(
            {'params': p, 'batch_stats': batch_stats}, batch['image'],
            mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(1)})
        return loss_fn(out, batch)[0], updates['batch_stats']
      (loss, batch_stats), grads = jax.value_and_grad(
          objective, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    self.plain_fn = plain_step
    plain = jax.tree_util.tree_map(jnp.copy, (state.params, state.batch_stats))
    self.plain_state = plain + (tx.init(plain[0]),)
    if 'train' in parts:
      self.plain = self._compile('train', jax.jit(plain_step,
                                                  donate_argnums=(0, 1, 2)),
                                 *self.plain_state, batch)
    self._jax = jax
    if 'full step' in parts:
      self.full = self._compile('full step', train.make_train_step(s),
                                state, batch)
    self.state = state
    if 'infer' not in parts:
      return
    # Copies: the steps donate (and so delete) the arrays they are given.
    self.variables = jax.tree_util.tree_map(jnp.copy, {
        'params': state.params, 'batch_stats': state.batch_stats})
    predict = jax.jit(lambda v, images: s.task.predict(
        s.eval_model, v, images, s.model_config))
    self.infer = {}
    for b in (1, 8):
      images = jnp.asarray(synthetic_batch(spec, spec.infer_size, b,
                                           False)['image'])
      self.infer[b] = (self._compile(f'infer b{b}', predict, self.variables,
                                     images), images)

  def _compile(self, name, fn, *args):
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    self.compile_s[name] = time.perf_counter() - start
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # Older JAX: one dict per computation.
      cost = cost[0] if cost else {}
    self.flops[name] = float((cost or {}).get('flops', 0.0))
    return compiled

  def train_step(self):
    *self.plain_state, loss = self.plain(*self.plain_state, self.batch)
    self._jax.block_until_ready(loss)

  def full_step(self):
    self.state, metrics = self.full(self.state, self.batch)
    self._jax.block_until_ready(metrics)

  def predict(self, b):
    fn, images = self.infer[b]
    # The images are on the device already; the results come back to numpy,
    # as a caller reads them.
    self._jax.device_get(fn(self.variables, images))


# ------------------------------------------------------------- PyTorch side


def torch_modules():
  """The PyTorch twin of the default job's model, defined when torch is
  imported (torch is a benchmark/test dependency only)."""
  # pylint: disable=g-import-not-at-top
  import torch
  from torch import nn
  import torch.nn.functional as F
  import torchvision
  # pylint: enable=g-import-not-at-top

  class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, act=True, zero_scale=False):
      layers = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False),
                nn.BatchNorm2d(cout, momentum=0.1)]
      if zero_scale:
        nn.init.zeros_(layers[1].weight)
      if act:
        layers.append(nn.ReLU(inplace=True))
      super().__init__(*layers)

  class BasicBlock(nn.Module):
    def __init__(self, width):
      super().__init__()
      self.conv1 = ConvBN(width, width)
      self.conv2 = ConvBN(width, width, act=False, zero_scale=True)

    def forward(self, x):
      return F.relu(x + self.conv2(self.conv1(x)))

  class TorchCNNDetector(nn.Module):
    """configs/cnn.py's model: residual CNN (levels 2-5), FPN with norm
    (width 64), CenterNet head on level 2 (one shared 3x3 conv, 1x1
    outputs). Stride-2 convs pad one pixel each side where the JAX model
    pads SAME (0 before, 1 after): the same cost."""

    def __init__(self, num_classes, stem=24, widths=(32, 64, 128, 192),
                 depths=(1, 2, 2, 1), fpn=64, head=64, box_scale=16.0):
      super().__init__()
      self.box_scale = box_scale
      self.stem = ConvBN(3, stem, stride=2)
      stages, cin = [], stem
      for width, depth in zip(widths, depths):
        stages.append(nn.Sequential(ConvBN(cin, width, stride=2),
                                    *[BasicBlock(width) for _ in range(depth)]))
        cin = width
      self.stages = nn.ModuleList(stages)
      self.lateral = nn.ModuleList(ConvBN(w, fpn, k=1, act=False)
                                   for w in widths)
      self.output = nn.ModuleList(ConvBN(fpn, fpn, act=False) for _ in widths)
      self.tower = ConvBN(fpn, head)
      self.heatmap = nn.Conv2d(head, num_classes, 1)
      self.box = nn.Conv2d(head, 4, 1)
      nn.init.normal_(self.heatmap.weight, std=0.01)
      nn.init.constant_(self.heatmap.bias, -math.log(99.0))
      nn.init.normal_(self.box.weight, std=0.01)
      nn.init.zeros_(self.box.bias)
      self.register_buffer('mean', 255 * torch.tensor(
          [0.485, 0.456, 0.406]).view(1, 3, 1, 1))
      self.register_buffer('std', 255 * torch.tensor(
          [0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images):
      """uint8 NHWC -> (heatmap logits [B, C, h, w], tlbr [B, 4, h, w])."""
      x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
      x = self.stem(x)
      feats = []
      for stage in self.stages:
        x = stage(x)
        feats.append(x)
      inner = None
      outs = [None] * len(feats)
      for i in range(len(feats) - 1, -1, -1):
        lat = self.lateral[i](feats[i])
        inner = lat if inner is None else lat + F.interpolate(
            inner, scale_factor=2, mode='nearest')
        # The JAX model computes every level's output conv in training (its
        # BatchNorm statistics are state), the head reads level 2 only.
        if self.training or i == 0:
          outs[i] = self.output[i](inner)
      y = self.tower(outs[0])
      return self.heatmap(y), F.softplus(self.box(y)) * self.box_scale

  def cell_boxes(tlbr, stride):
    """[B, 4, h, w] distances -> [B, h, w, 4] xyxy boxes."""
    _, _, h, w = tlbr.shape
    ys = (torch.arange(h, dtype=torch.float32, device=tlbr.device) + .5) * stride
    xs = (torch.arange(w, dtype=torch.float32, device=tlbr.device) + .5) * stride
    cy, cx = ys.view(1, h, 1), xs.view(1, 1, w)
    return torch.stack([cx - tlbr[:, 1], cy - tlbr[:, 0],
                        cx + tlbr[:, 3], cy + tlbr[:, 2]], -1)

  def centernet_loss(outputs, targets, box_weight):
    """CenterNet's penalty-reduced focal loss + weighted GIoU (as the JAX
    head's loss), on precomputed targets."""
    logits, tlbr = outputs
    heat = targets['heatmap']            # [B, C, h, w]
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    pos = -torch.exp(2 * log_not_p) * log_p
    neg = -(1 - heat) ** 4 * torch.exp(2 * log_p) * log_not_p
    heat_loss = torch.where(heat >= 1 - 1e-4, pos, neg).sum()
    boxes = cell_boxes(tlbr, 4)
    giou = torchvision.ops.generalized_box_iou_loss(
        boxes.reshape(-1, 4), targets['boxes'].reshape(-1, 4), reduction='none')
    box_loss = (giou * targets['weights'].reshape(-1)).sum()
    return (heat_loss + box_weight * box_loss) / targets['count']

  def centernet_predict(outputs, topk=100, threshold=0.05, iou=0.5, keep=100):
    logits, tlbr = outputs
    heat = torch.sigmoid(logits)
    b, c, h, w = heat.shape
    peaks = F.max_pool2d(heat, 3, 1, 1)
    heat = torch.where(heat == peaks, heat, torch.zeros_like(heat))
    scores, idx = heat.permute(0, 2, 3, 1).reshape(b, -1).topk(topk)
    cell, classes = idx // c, idx % c
    boxes = cell_boxes(tlbr, 4).reshape(b, h * w, 4)
    boxes = torch.gather(boxes, 1, cell[..., None].expand(-1, -1, 4))
    size = torch.tensor([w * 4, h * 4, w * 4, h * 4], device=boxes.device)
    boxes = torch.minimum(boxes.clamp(min=0), size)
    results = []
    for i in range(b):
      ok = (scores[i] >= threshold) & (torchvision.ops.box_area(boxes[i]) > 0)
      bx, sc, cl = boxes[i][ok], scores[i][ok], classes[i][ok]
      kept = torchvision.ops.batched_nms(bx, sc, cl, iou)[:keep]
      results.append({'boxes': bx[kept], 'scores': sc[kept],
                      'labels': cl[kept]})
    return results

  return dict(TorchCNNDetector=TorchCNNDetector, centernet_loss=centernet_loss,
              centernet_predict=centernet_predict)


def torch_model(spec: Spec, device):
  """PyTorch's model of `spec` (random weights, nothing downloaded)."""
  # pylint: disable=g-import-not-at-top
  import torchvision
  from torchvision.models.detection import backbone_utils
  from torchvision.models.detection import retinanet
  from torchvision.ops import feature_pyramid_network as fpn_lib
  from torchvision.ops import misc
  # pylint: enable=g-import-not-at-top
  if spec.name.startswith('cnn'):
    model = torch_modules()['TorchCNNDetector'](spec.num_classes)
  elif spec.name.startswith('retinanet'):
    body = torchvision.models.resnet50(norm_layer=misc.FrozenBatchNorm2d)
    backbone = backbone_utils._resnet_fpn_extractor(  # pylint: disable=protected-access
        body, 3, returned_layers=[2, 3, 4],
        extra_blocks=fpn_lib.LastLevelP6P7(256, 256))
    model = retinanet.RetinaNet(
        backbone, spec.num_classes, min_size=spec.infer_size,
        max_size=spec.infer_size, detections_per_img=100)
  elif spec.name.startswith('resnet50'):
    model = torchvision.models.resnet50(num_classes=spec.num_classes)
  elif spec.name.startswith('b0'):
    model = torchvision.models.efficientnet_b0(num_classes=spec.num_classes)
  else:
    raise ValueError(f'unknown case {spec.name!r}')
  return model.to(device)


def torch_params(model):
  """Trainable and frozen parameters, FrozenBatchNorm2d's affine included."""
  from torchvision.ops import misc  # pylint: disable=g-import-not-at-top
  count = sum(p.numel() for p in model.parameters())
  for m in model.modules():
    if isinstance(m, misc.FrozenBatchNorm2d):
      count += m.weight.numel() + m.bias.numel()
  return count


class TorchSide:
  """PyTorch's counterpart of a JaxSide: SGD step and inference."""

  def __init__(self, spec: Spec, jax_side: JaxSide, device='cpu'):
    # pylint: disable=g-import-not-at-top
    import numpy as np
    import torch
    # pylint: enable=g-import-not-at-top
    self.torch, self.spec, self.device = torch, spec, device
    torch.manual_seed(0)
    self.model = torch_model(spec, device)
    self.params_count = torch_params(self.model)
    self.optimizer = torch.optim.SGD(
        [p for p in self.model.parameters() if p.requires_grad], lr=0.01,
        momentum=0.9)
    self.train_module = self.model  # What train() is called on.
    nb = jax_side.numpy_batch
    images = torch.from_numpy(nb['image']).to(device)
    kind = spec.name.split('@')[0]
    if kind == 'cnn':
      helpers = torch_modules()
      self._loss = helpers['centernet_loss']
      self._post = helpers['centernet_predict']
      self.train_inputs = (images,)
      self.targets = self._cnn_targets(jax_side)
      self.box_weight = jax_side.setup.model_config.centernet.box_loss_weight
    elif kind == 'retinanet':
      float_images = [im.permute(2, 0, 1).float() / 255 for im in images]
      targets = []
      for i in range(len(float_images)):
        mask = nb['box_mask'][i]
        yxyx = torch.from_numpy(nb['boxes'][i][mask])
        targets.append({'boxes': yxyx[:, [1, 0, 3, 2]].to(device),
                        'labels': torch.from_numpy(
                            nb['labels'][i][mask]).long().to(device)})
      self.train_inputs = (float_images, targets)
    else:
      self.train_inputs = (images,)
      self.labels = torch.from_numpy(nb['label']).long().to(device)
    self.infer_images = {b: torch.from_numpy(np.array(images)).to(device)
                         for b, (_, images) in jax_side.infer.items()}
    self.kind = kind

  def _cnn_targets(self, jax_side):
    """The JAX head's own targets for the batch, as PyTorch tensors."""
    # pylint: disable=g-import-not-at-top
    import jax
    import numpy as np
    from detector.models.heads import centernet
    # pylint: enable=g-import-not-at-top
    torch = self.torch
    nb, o = jax_side.numpy_batch, jax_side.setup.model_config.centernet
    h = w = self.spec.train_size // 2 ** o.level
    heat, boxes, weights = jax.vmap(
        lambda b, l, m: centernet.targets_one_image(
            b, l, m, self.spec.num_classes, (h, w), 2 ** o.level,
            alpha=o.gaussian_alpha))(nb['boxes'], nb['labels'], nb['box_mask'])
    heat, boxes, weights = (np.asarray(x) for x in (heat, boxes, weights))
    dev = self.device
    return {'heatmap': torch.from_numpy(heat).permute(0, 3, 1, 2).to(dev),
            'boxes': torch.from_numpy(boxes[..., [1, 0, 3, 2]]).to(dev),
            'weights': torch.from_numpy(weights).to(dev),
            'count': float(max(nb['box_mask'].sum(), 1))}

  def _sync(self):
    if self.device != 'cpu':
      self.torch.cuda.synchronize()

  def _loss_value(self):
    torch = self.torch
    if self.kind == 'cnn':
      return self._loss(self.model(*self.train_inputs), self.targets,
                        self.box_weight)
    if self.kind == 'retinanet':
      losses = self.model(*self.train_inputs)
      return sum(losses.values())
    images = self._normalised(self.train_inputs[0])
    return torch.nn.functional.cross_entropy(self.model(images), self.labels)

  def _normalised(self, images):
    torch = self.torch
    mean = torch.tensor([0.485, 0.456, 0.406], device=images.device) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=images.device) * 255
    return ((images.float() - mean) / std).permute(0, 3, 1, 2)

  def autocast(self):
    """bfloat16 autocast for spec.dtype 'bfloat16', else nothing."""
    return self.torch.autocast(self.device.split(':')[0],
                               dtype=self.torch.bfloat16,
                               enabled=self.spec.dtype == 'bfloat16')

  def train_step(self):
    self.train_module.train()
    with self.autocast():
      loss = self._loss_value()
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    float(loss.detach())
    self._sync()

  def predict(self, b):
    torch = self.torch
    self.model.eval()
    images = self.infer_images[b]
    with torch.inference_mode(), self.autocast():
      if self.kind == 'cnn':
        out = self._post(self.model(images))
      elif self.kind == 'retinanet':
        out = self.model([im.permute(2, 0, 1).float() / 255 for im in images])
      else:
        out = torch.softmax(self.model(self._normalised(images)).float(), -1)
      self._sync()
      # Results to host memory, as the JAX side's device_get.
      if isinstance(out, list):
        [{k: v.cpu() for k, v in d.items()} for d in out]  # pylint: disable=expression-not-assigned
      else:
        out.cpu()


# --------------------------------------------------------------- measuring


def measure(sides: Dict[str, object], metrics, repeats: int, steps: int,
            warmup: int = 1):
  """{metric: {side: median seconds per call}}, the sides interleaved.

  `metrics` maps a metric name to a function(side) -> callable or None (the
  side does not have it). Each repeat runs `steps` calls of every metric on
  every side in turn, after `warmup` untimed calls.
  """
  calls = {m: {n: get(s) for n, s in sides.items()}
           for m, get in metrics.items()}
  for per_side in calls.values():
    for fn in per_side.values():
      for _ in range(warmup if fn else 0):
        fn()
  times = {m: {n: [] for n, fn in per.items() if fn} for m, per in calls.items()}
  for _ in range(repeats):
    for m, per_side in calls.items():
      for n, fn in per_side.items():
        if fn is None:
          continue
        start = time.perf_counter()
        for _ in range(steps):
          fn()
        times[m][n].append((time.perf_counter() - start) / steps)
  return {m: {n: statistics.median(v) for n, v in per.items()}
          for m, per in times.items()}


METRICS = {
    'train': lambda s: s.train_step,
    'full step': lambda s: getattr(s, 'full_step', None),
    'infer b1': lambda s: (lambda: s.predict(1)),
    'infer b8': lambda s: (lambda: s.predict(8)),
}


def run_case(spec: Spec, repeats: int, steps: int, device='cpu',
             parts=('train', 'full step', 'infer'), torch_side=None):
  """Builds both sides of `spec`, checks the twin, measures; a result dict.

  `parts` are JaxSide's; `torch_side(spec, jax_side, device)` builds the
  PyTorch side (default TorchSide) or returns None for JAX alone.
  """
  jax_side = JaxSide(spec, parts)
  sides = {'jax': jax_side}
  torch_model_side = (torch_side or TorchSide)(spec, jax_side, device)
  if torch_model_side is not None:
    sides['torch'] = torch_model_side
  params_torch = getattr(torch_model_side, 'params_count', None)
  if spec.name.startswith('cnn') and jax_side.params_count != params_torch:
    raise AssertionError(
        f'the PyTorch twin has {params_torch} parameters, the JAX '
        f'model {jax_side.params_count}')
  metrics = {k: v for k, v in METRICS.items()
             if k != 'full step' or 'full step' in parts}
  times = measure(sides, metrics, repeats, steps)
  return dict(case=spec.name, batch=spec.batch, train_size=spec.train_size,
              infer_size=spec.infer_size, dtype=spec.dtype,
              params_jax=jax_side.params_count, params_torch=params_torch,
              compile_s={k: round(v, 1) for k, v in jax_side.compile_s.items()},
              flops=jax_side.flops, times=times)


def table(results):
  """Markdown table: images/s for training, ms for inference, ratios."""
  lines = ['| case | measurement | JAX | PyTorch | JAX / PyTorch |',
           '|---|---|---|---|---|']
  for r in results:
    for metric, per in r['times'].items():
      j, t = per.get('jax'), per.get('torch')
      if metric in ('train', 'full step'):
        fmt = lambda s: f'{r["batch"] / s:.2f} img/s'
        ratio = f'{t / j:.2f}x' if t else ''
      else:
        fmt = lambda s: f'{1000 * s:.1f} ms'
        ratio = f'{t / j:.2f}x' if t else ''
      name = f'{r["case"]} ({r["dtype"]})' if r['dtype'] != 'float32' else r['case']
      lines.append(f'| {name} | {metric} | {fmt(j)} | '
                   f'{fmt(t) if t else "-"} | {ratio} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  specs = cpu_specs()
  unknown = set(FLAGS.cases) - set(specs)
  if unknown:
    raise app.UsageError(f'--cases: unknown {sorted(unknown)}; '
                         f'expected some of {list(specs)}')
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  print(f'JAX {jax.__version__} on {jax.devices()[0].device_kind}, '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; torch '
        f'{torch.__version__} with {torch.get_num_threads()} threads',
        flush=True)
  results = []
  for name in FLAGS.cases:
    start = time.perf_counter()
    result = run_case(specs[name], FLAGS.repeats, FLAGS.steps)
    result['wall_s'] = round(time.perf_counter() - start, 1)
    print('RESULT', json.dumps(result), flush=True)
    results.append(result)
  print()
  print(table(results))
  print()
  for r in results:
    print(f'{r["case"]}: parameters JAX {r["params_jax"]:,} / PyTorch '
          f'{r["params_torch"]:,}; JAX compile (s): '
          + ', '.join(f'{k} {v}' for k, v in r['compile_s'].items()))


if __name__ == '__main__':
  flags.DEFINE_list('cases', list(CASES), f'Cases to run, of {CASES}.')
  flags.DEFINE_integer('repeats', 5, 'Timed repeats (interleaved); the '
                       'median is reported.')
  flags.DEFINE_integer('steps', 3, 'Calls per repeat.')
  runtime.configure_xla_cpu()
  app.run(main)
