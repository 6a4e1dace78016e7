"""effdet (Ross Wightman's efficientdet-pytorch, 0.4.1) COCO detectors -> ours.

Architectures (effdet's names): `tf_efficientdet_d0` ... `d7` and
`tf_efficientdet_lite0` ... `lite4`, the official TensorFlow checkpoints
ported by effdet (TF 'same' padding, BatchNorm eps 1e-3, a bias before every
BatchNorm), and `efficientdet_d0`, `efficientdet_d1`, trained in PyTorch
(symmetric padding, no such biases, the backbone's BatchNorm eps 1e-5). They
become `configs/efficientnet.py`'s `d<phi>`, `lite<n>` and `b<phi>` models
with effdet's 90 COCO classes (class k is category id k + 1).

Tensor names (effdet -> ours), for BiFPN levels lo..hi (3..7, n = 5):
  backbone.<timm EfficientNet>            -> backbone/... (`source_timm`)
  fpn.resample.{k}.conv.{conv, bn}        -> neck/resample{lo + k}/{conv, norm}
  fpn.cell.{c}.fnode.{j}                  -> neck/layer{c}/<node j>, node j
    being top_down{hi - 1 - j} for j < n - 1, else bottom_up{lo + 1 + j - (n - 1)}
    .combine.edge_weights                 -> .../fuse/weights
    .combine.resample.{o}.conv.{conv, bn} -> .../resample{i}/{conv, norm}, i
        the place of input o in the node's inputs (effdet names it by o,
        the input's index among the levels and earlier nodes)
    .after_combine.conv.conv_dw           -> .../depthwise
    .after_combine.conv.{conv_pw, bn}     -> .../pointwise/{conv, norm}
  {class, box}_net.conv_rep.{i}.conv_{dw, pw} -> head/{class, box}_conv{i}/
                                             {depthwise, pointwise}
  {class, box}_net.bn_rep.{i}.{l}.bn      -> head/{class, box}_norm{i}_level{lo + l}
  {class, box}_net.predict.conv_{dw, pw}  -> head/{class, box}_predict/...
Anchors ((1, 1), (1.4, 0.7), (0.7, 1.4) as (x, y) multipliers, centres at
half-stride offsets, scale-major), box coding (dy, dx, dh, dw without
weights) and the class layout (anchor-major) are the same on both sides, so
nothing is reordered. effdet decodes the top 5000 (anchor, class) scores, NMS
0.5, 100 detections, no score threshold: the metadata's model does the same.
"""

import re
from typing import Dict

from detector.configs import common as configs_common
from detector.port import common
from detector.port import detectors
from detector.port import source_timm

LEVELS = (3, 7)
_IMAGENET = dict(mean=list(common.IMAGENET_MEAN), std=list(common.IMAGENET_STD))
_HALF = dict(mean=[127.5] * 3, std=[127.5] * 3)  # Lite: (x - 0.5) / 0.5.


def _model(name: str):
  def make():
    from detector.configs import efficientnet  # pylint: disable=g-import-not-at-top
    config = configs_common.detection_config()
    efficientnet.set_model(config, name)
    model = config.model
    model.num_classes = 90
    model.efficientdet.pre_nms_topk = 5000
    model.score_threshold = 0.0
    model.nms_iou_threshold = 0.5
    model.max_detections = 100
    model.flip_test = False
    if name.startswith('b'):  # timm's efficientnet_b*: PyTorch's BatchNorm.
      model.backbone_norm_epsilon = 1e-5
    return model
  return make


def _spec(name: str, image_size: int, stats):
  return detectors.DetectorSpec(
      _model(name), detectors.coco_labels(1), list(range(1, 91)),
      dict(image_size=image_size, **stats), 1e-3)


_SIZES = (512, 640, 768, 896, 1024, 1280, 1280, 1536)
_LITE_SIZES = (320, 384, 448, 512, 640)
DETECTORS: Dict[str, detectors.DetectorSpec] = {
    **{f'tf_efficientdet_d{i}': _spec(f'd{i}', s, _IMAGENET)
       for i, s in enumerate(_SIZES)},
    **{f'tf_efficientdet_lite{i}': _spec(f'lite{i}', s, _HALF)
       for i, s in enumerate(_LITE_SIZES)},
    'efficientdet_d0': _spec('b0', 512, _IMAGENET),
    'efficientdet_d1': _spec('b1', 640, _IMAGENET),
}

read = common.read_torch


def download(arch: str):
  """effdet's COCO weights for `arch` (needs internet and effdet)."""
  effdet = common.require('effdet', 'effdet', '--source=effdet without --input')
  model = effdet.create_model(arch, pretrained=True)
  tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  return tensors, f'effdet.create_model("{arch}", pretrained=True)'


def _backbone_arch(arch: str) -> str:
  """The timm classifier whose names effdet's backbone has."""
  if arch.startswith('tf_efficientdet_lite'):
    return f'tf_efficientnet_lite{arch[-1]}'
  if arch.startswith('tf_efficientdet_d'):
    return f'tf_efficientnet_b{min(int(arch[-1]), 6)}'
  return f'efficientnet_b{arch[-1]}'


def node_names(lo: int = LEVELS[0], hi: int = LEVELS[1]):
  """Our names of a BiFPN layer's nodes, in effdet's order."""
  return ([f'top_down{l}' for l in range(hi - 1, lo - 1, -1)]
          + [f'bottom_up{l}' for l in range(lo + 1, hi + 1)])


def node_inputs(lo: int = LEVELS[0], hi: int = LEVELS[1]):
  """Each node's inputs as effdet numbers them (levels 0..n-1, then node j
  as n + j), in the order our nodes take them (`bifpn.BiFPNLayer`)."""
  n = hi - lo + 1
  td = lambda l: hi - lo if l == hi else n + (hi - 1 - l)  # td_hi = p_hi.
  out = lambda l: td(lo) if l == lo else n + (n - 1) + (l - lo - 1)
  inputs = [(l - lo, td(l + 1)) for l in range(hi - 1, lo - 1, -1)]
  inputs += [(l - lo, td(l), out(l - 1)) if l < hi else (l - lo, out(l - 1))
             for l in range(lo + 1, hi + 1)]
  return inputs


_NODES, _INPUTS = node_names(), node_inputs()


def target(name: str, arch: str):
  """effdet tensor name -> (collection, path), None or BAD."""
  if name.endswith('num_batches_tracked'):
    return None
  if name.startswith('backbone.'):
    timm_arch = _backbone_arch(arch)
    where = source_timm.target(name[len('backbone.'):], timm_arch)
    return where if where in (None, common.BAD) else (
        where[0], f'backbone/{where[1]}')
  m = re.fullmatch(r'fpn\.resample\.(\d)\.conv\.(conv|bn)\.(\w+)', name)
  if m:
    k, part, field = m.groups()
    return common.conv_or_norm(f'neck/resample{LEVELS[0] + int(k)}',
                               part == 'conv', field)
  m = re.fullmatch(r'fpn\.cell\.(\d+)\.fnode\.(\d+)\.(.+)', name)
  if m:
    return _node_target(int(m.group(1)), int(m.group(2)), m.group(3))
  m = re.fullmatch(r'(class|box)_net\.(conv_rep\.(\d+)|predict)\.conv_(dw|pw)'
                   r'\.(\w+)', name)
  if m:
    net, _, i, part, field = m.groups()
    base = f'head/{net}_conv{i}' if i is not None else f'head/{net}_predict'
    if part == 'dw':
      return ('params', f'{base}/depthwise/kernel') if field == 'weight' else common.BAD
    return common.torch_tensor(f'{base}/pointwise', 'linear', field)
  m = re.fullmatch(r'(class|box)_net\.bn_rep\.(\d+)\.(\d+)\.bn\.(\w+)', name)
  if m:
    net, i, level, field = m.groups()
    return common.torch_tensor(
        f'head/{net}_norm{i}_level{LEVELS[0] + int(level)}', 'batch_norm', field)
  return common.BAD


def _node_target(cell: int, j: int, rest: str):
  if j >= len(_NODES):
    return common.BAD
  base = f'neck/layer{cell}/{_NODES[j]}'
  if rest == 'combine.edge_weights':
    return 'params', f'{base}/fuse/weights'
  m = re.fullmatch(r'combine\.resample\.(\d+)\.conv\.(conv|bn)\.(\w+)', rest)
  if m:
    offset, part, field = int(m.group(1)), m.group(2), m.group(3)
    if offset not in _INPUTS[j]:
      return common.BAD
    return common.conv_or_norm(f'{base}/resample{_INPUTS[j].index(offset)}',
                               part == 'conv', field)
  if rest == 'after_combine.conv.conv_dw.weight':
    return 'params', f'{base}/depthwise/kernel'
  m = re.fullmatch(r'after_combine\.conv\.(conv_pw|bn)\.(\w+)', rest)
  if m:
    return common.conv_or_norm(f'{base}/pointwise', m.group(1) == 'conv_pw',
                               m.group(2))
  return common.BAD
