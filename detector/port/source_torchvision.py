"""torchvision ImageNet classifiers -> our backbones.

ResNets (`resnet18/34/50/101/152`, v1.5) map one to one (torchvision -> ours):
  conv1, bn1                          -> stem/{conv, norm}
  layer{s}.{j}.conv{k}, .bn{k}        -> stage{s+1}_block{j}/conv{k}/{conv, norm}
  layer{s}.{j}.downsample.{0, 1}      -> stage{s+1}_block{j}/downsample/{conv, norm}
  fc                                  -> classifier
EfficientNets (`efficientnet_b0..b7`; symmetric padding) likewise:
  features.0.{0, 1}                   -> stem/{conv, norm}
  features.{s}.{j}.block.{k}.{0, 1}   -> stage{s}_block{j}/{expand, depthwise,
                                         project}/{conv, norm}
  features.{s}.{j}.block.{k}.fc{1, 2} -> stage{s}_block{j}/se/{reduce, expand}
  features.8.{0, 1}                   -> head/{conv, norm}
  classifier.1                        -> classifier
where block k counts expand (absent in stage 1, whose expansion is 1),
depthwise, SE, project.
BatchNorm weight/bias/running_mean/running_var become scale/bias/mean/var;
`num_batches_tracked` carries nothing and is skipped.
"""

import re
from typing import Dict, Optional

import numpy as np

from detector.port import common
from detector.port import detectors

# IMAGENET1K_V1 weights: resize 256, centre crop 224, bilinear.
_RESNET_PREPROCESSING = common.preprocessing(224, 256)

ARCHS: Dict[str, common.Spec] = {
    f'resnet{d}': common.Spec('resnet', dict(depth=d), 1e-5,
                              _RESNET_PREPROCESSING)
    for d in (18, 34, 50, 101, 152)}

# torchvision/models/efficientnet.py (0.29): the DEFAULT weights' transforms
# (crop_size, resize_size, interpolation; ImageNet mean/std), and the BatchNorm
# eps: b0-b4 use nn.BatchNorm2d's default 1e-5 (weights trained in PyTorch by
# timm), b5-b7 pass eps=0.001 (weights ported from TensorFlow). b1's DEFAULT
# is IMAGENET1K_V2 (240 / 255 bilinear; V1 was 240 / 256 bicubic).
_EFFICIENTNET = {  # variant: (crop, resize, interpolation, eps)
    'b0': (224, 256, 'bicubic', 1e-5),
    'b1': (240, 255, 'bilinear', 1e-5),
    'b2': (288, 288, 'bicubic', 1e-5),
    'b3': (300, 320, 'bicubic', 1e-5),
    'b4': (380, 384, 'bicubic', 1e-5),
    'b5': (456, 456, 'bicubic', 1e-3),
    'b6': (528, 528, 'bicubic', 1e-3),
    'b7': (600, 600, 'bicubic', 1e-3),
}
ARCHS.update({
    f'efficientnet_{v}': common.Spec(
        'efficientnet', dict(variant=v, padding='symmetric'), eps,
        common.preprocessing(crop, resize, interpolation))
    for v, (crop, resize, interpolation, eps) in _EFFICIENTNET.items()})

read = common.read_torch


def download(arch: str):
  """torchvision's default weights for `arch` (needs internet): ImageNet's,
  or COCO's for a detector."""
  torchvision = common.require('torchvision', 'torchvision',
                               '--source=torchvision without --input')
  model = torchvision.models.get_model(arch, weights='DEFAULT')
  tensors = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  return tensors, f'torchvision.models.{arch}(weights="DEFAULT")'


# PyTorch module -> (our path, kind) for `common.torch_tensor`.
_RESNET_ENDS = {'conv1': ('stem', 'conv'), 'bn1': ('stem', 'norm'),
                'fc': ('classifier', 'linear')}
_EFFICIENTNET_ENDS = {'features.0.0': ('stem', 'conv'),
                      'features.0.1': ('stem', 'norm'),
                      'features.8.0': ('head', 'conv'),
                      'features.8.1': ('head', 'norm'),
                      'classifier.1': ('classifier', 'linear')}


@common.torch_target(_RESNET_ENDS)
def resnet_target(name: str, spec: Optional[common.Spec] = None):
  """torchvision/timm ResNet tensor name -> (collection, path), None or BAD
  (the same for every depth: `spec` is ignored)."""
  del spec
  m = re.fullmatch(r'layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)', name)
  if m:
    stage, block, kind, k, field = m.groups()
    return common.conv_or_norm(f'stage{int(stage) + 1}_block{block}/conv{k}',
                               kind == 'conv', field)
  m = re.fullmatch(r'layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)', name)
  if m:
    stage, block, index, field = m.groups()
    return common.conv_or_norm(
        f'stage{int(stage) + 1}_block{block}/downsample', index == '0', field)
  return common.BAD


@common.torch_target(_EFFICIENTNET_ENDS)
def efficientnet_target(name: str, spec: Optional[common.Spec] = None):
  """torchvision EfficientNet tensor name -> (collection, path), None or BAD
  (block k counts from the stage's first part, so `spec` is not needed)."""
  del spec
  m = re.fullmatch(r'features\.([1-7])\.(\d+)\.block\.(\d)\.(0|1|fc1|fc2)\.(\w+)',
                   name)
  if m:
    stage, block, k, part, field = m.groups()
    parts = ('expand', 'depthwise', 'se', 'project')
    if stage == '1':  # Expansion 1: no expand conv.
      parts = parts[1:]
    if int(k) >= len(parts):
      return common.BAD
    base = f'stage{stage}_block{block}/{parts[int(k)]}'
    if (parts[int(k)] == 'se') != part.startswith('fc'):
      return common.BAD
    if part.startswith('fc'):
      return common.torch_tensor(
          f'{base}/{"reduce" if part == "fc1" else "expand"}', 'linear', field)
    return common.conv_or_norm(base, part == '0', field)
  return common.BAD


target = common.by_backbone(ARCHS, resnet=resnet_target,
                            efficientnet=efficientnet_target)


# Whole detectors: torchvision's COCO RetinaNet (`retinanet_resnet50_fpn`,
# COCO_V1 weights, 36.4 AP). Tensor names (torchvision -> ours):
#   backbone.body.*                      -> backbone/* (the ResNet50 above)
#   backbone.fpn.inner_blocks.{i}.0      -> neck/lateral{3+i}/conv
#     (the released file: inner_blocks.{i}, and head ...conv.{2 i})
#   backbone.fpn.layer_blocks.{i}.0      -> neck/output{3+i}/conv
#   backbone.fpn.extra_blocks.p{6,7}     -> neck/extra{6,7}/conv
#   head.classification_head.conv.{i}.0  -> head/cls_conv{i}/conv
#   head.classification_head.cls_logits  -> head/cls_out
#   head.regression_head.conv.{i}.0      -> head/box_conv{i}/conv
#   head.regression_head.bbox_reg        -> head/box_out (rows reordered)
# The backbone's BatchNorms are frozen (FrozenBatchNorm2d, eps 1e-5), P6 and
# P7 are padded symmetrically, anchors are torchvision's AnchorGenerator's
# (`anchor_style='torchvision'`), and its box deltas come as (dx, dy, dw, dh)
# per anchor: `layout` reorders the regression rows to our (dy, dx, dh, dw).
# Class logits are per anchor then class in both, as torchvision's 91 COCO
# classes (index = COCO category id, 0 its unused background). Decoding:
# torchvision keeps scores > 0.05, the top 1000 per level, NMS 0.5, 300
# detections; ours the top 1000 of all levels, which is the same set unless
# more than 1000 candidates pass the threshold.
# retinanet_resnet50_fpn_v2 does not fit these modules: its head has
# GroupNorm and its P6 reads C5, not P5.
def _retinanet_model():
  from detector.configs import resnet50  # pylint: disable=g-import-not-at-top
  model = resnet50.get_config().model.copy_and_resolve_references()
  with model.unlocked():
    model.num_classes = 91
    model.backbone_norm = 'frozen_batch_norm'
    model.fpn.update(dict(min_level=3, max_level=7, width=256,
                          use_norm=False, extra_padding='symmetric'))
    model.head = 'retinanet'
    model.retinanet.update(dict(
        min_level=3, max_level=7, width=256, num_convs=4, anchor_scale=4.0,
        num_scales=3, aspect_ratios=(0.5, 1.0, 2.0),
        anchor_style='torchvision', pre_nms_topk=1000,
        # torchvision trains with an L1 box loss: Huber(0.1) / 0.1 is L1
        # but within 0.1 of the target (Detectron2's smooth-L1, beta 0.1).
        box_loss='huber', huber_delta=0.1, box_loss_weight=10.0))
    model.score_threshold = 0.05
    model.nms_iou_threshold = 0.5
    model.max_detections = 300
    model.flip_test = False
  return model


DETECTORS = {
    'retinanet_resnet50_fpn': detectors.DetectorSpec(
        _retinanet_model, detectors.coco_labels(0), list(range(91)),
        dict(image_size=800, mean=list(common.IMAGENET_MEAN),
             std=list(common.IMAGENET_STD)), 1e-5),
}

_FPN = {'inner_blocks': 'lateral', 'layer_blocks': 'output'}
_HEADS = {'classification_head': ('cls_conv', 'cls_out', 'cls_logits'),
          'regression_head': ('box_conv', 'box_out', 'bbox_reg')}


def _retinanet_target(name: str):
  """torchvision RetinaNet tensor name -> (collection, path), None or BAD."""
  if name.startswith('backbone.body.'):
    where = resnet_target(name[len('backbone.body.'):])
    return where if where in (None, common.BAD) else (
        where[0], f'backbone/{where[1]}')
  # Two layouts: torchvision >= 0.13 (Conv2dNormActivation: `.{i}.0.`) and
  # the released COCO_V1 file's (plain convs, and a head whose Sequential
  # interleaves ReLUs: conv.{2 i}), which torchvision renames when loading.
  m = (re.fullmatch(r'backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d)\.0\.(\w+)',
                    name)
       or re.fullmatch(r'backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d)\.'
                       r'(weight|bias)', name))
  if m:
    kind, i, field = m.groups()
    return common.torch_tensor(f'neck/{_FPN[kind]}{3 + int(i)}', 'conv', field)
  m = re.fullmatch(r'backbone\.fpn\.extra_blocks\.p([67])\.(\w+)', name)
  if m:
    return common.torch_tensor(f'neck/extra{m.group(1)}', 'conv', m.group(2))
  m = re.fullmatch(r'head\.(\w+)\.conv\.(\d)\.0\.(\w+)', name)
  if m and m.group(1) in _HEADS:
    return common.torch_tensor(f'head/{_HEADS[m.group(1)][0]}{m.group(2)}',
                               'conv', m.group(3))
  m = re.fullmatch(r'head\.(\w+)\.conv\.(\d)\.(weight|bias)', name)
  if m and m.group(1) in _HEADS and int(m.group(2)) % 2 == 0:
    return common.torch_tensor(
        f'head/{_HEADS[m.group(1)][0]}{int(m.group(2)) // 2}', 'conv',
        m.group(3))
  m = re.fullmatch(r'head\.(\w+)\.(\w+)\.(\w+)', name)
  if m and m.group(1) in _HEADS and m.group(2) == _HEADS[m.group(1)][2]:
    return common.torch_tensor(f'head/{_HEADS[m.group(1)][1]}', 'linear',
                               m.group(3))
  return common.BAD


def layout(array, path: str, arch: str):
  """`common.torch_layout`, and the regression rows in our delta order."""
  array = common.torch_layout(array, path, arch)
  if arch in DETECTORS and path.startswith('head/box_out/'):
    # Per anchor (dx, dy, dw, dh) -> (dy, dx, dh, dw): the last axis.
    order = np.arange(array.shape[-1]).reshape(-1, 4)[:, [1, 0, 3, 2]]
    array = array[..., order.reshape(-1)]
  return array


_backbone_target = target


def target(name: str, arch: str):  # pylint: disable=function-redefined
  if arch in DETECTORS:
    return _retinanet_target(name)
  return _backbone_target(name, arch)
