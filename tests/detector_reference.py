"""Runs the original detectors (torchvision's RetinaNet, effdet's EfficientDets)
in their own process for tests/test_port_detectors.py (torch cannot be
imported beside TensorFlow, which the test session holds):

  python tests/detector_reference.py OUT_DIR SIZE ARCH [ARCH ...]
  python tests/detector_reference.py OUT_DIR 0 counts ARCH [ARCH ...]

For each ARCH (`retinanet_resnet50_fpn`, or an effdet name such as
`tf_efficientdet_d0`), built with random weights, random BatchNorm statistics
and affine parameters, writes to OUT_DIR/ARCH/:
  state_dict.pth  the model's state dict, as the source saves it (for the
                  RetinaNet also state_dict_v1_names.pth, with the names of
                  torchvision's released COCO file);
  expected.npz    images [2, SIZE, SIZE, 3] (0-255 floats, seeded), per level
                  l the raw head outputs cls{l} and box{l} [2, h, w, A * K]
                  (NHWC, the source's channel order; effdet's also from
                  the model in float64, cls{l}_float64), and each image's
                  detections after the source's own post-processing:
                  det{i}_boxes [n, 4] (x1, y1, x2, y2 pixels), det{i}_scores,
                  det{i}_labels (the source's: COCO category ids); the
                  anchors the source decodes against (anchors_xyxy from
                  torchvision's AnchorGenerator, anchors_yxyx effdet's,
                  anchors_published_yxyx effdet's at the published size).
  settings.json   the post-processing settings used.
With `counts`, OUT_DIR/counts.json holds effdet's parameter count of each
ARCH.
"""

import json
import os
import sys
import warnings

import numpy as np
import torch

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _randomise(model, seed):
  """He-normal convs over their own fan-in, random biases and BatchNorm
  statistics (then `_calibrate` the prediction convs)."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(m.weight, mode='fan_in')
        if m.bias is not None:
          m.bias.uniform_(-0.2, 0.2)
      norm = (isinstance(m, torch.nn.BatchNorm2d)
              or type(m).__name__ == 'FrozenBatchNorm2d')
      if norm:
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)


def _calibrate(conv, outputs, std, mean):
  """Rescales a prediction conv so that its outputs (`outputs()`, a list of
  NCHW tensors) have standard deviation `std` around `mean` in every
  channel: random deep features are large and mostly positive, and scores
  saturated at 1.0 or set by one class's offset would tie everywhere."""
  def per_channel():
    return torch.cat([o.transpose(0, 1).flatten(1) for o in outputs()], 1)
  with torch.no_grad():
    scale = std / float(per_channel().std(1).mean())
    conv.weight.mul_(scale)
    conv.bias.mul_(scale)
    conv.bias.add_(mean - per_channel().mean(1))


def _images(size):
  rng = np.random.default_rng(size)
  return rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)


def _normalised(images):
  x = (images / 255.0 - MEAN) / STD
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _nhwc(t):
  return t.permute(0, 2, 3, 1).numpy()


def retinanet(out_dir, size):
  import torchvision  # pylint: disable=g-import-not-at-top
  from torchvision.models.detection import transform  # pylint: disable=g-import-not-at-top
  model = torchvision.models.detection.retinanet_resnet50_fpn(
      weights=None, weights_backbone=None, num_classes=91)
  head = model.head
  _randomise(model, 0)
  model.eval()
  images = _images(size)
  c, b = head.classification_head, head.regression_head
  with torch.no_grad():
    features = list(model.backbone(_normalised(images)).values())
  _calibrate(c.cls_logits, lambda: [c.cls_logits(c.conv(f)) for f in features],
             1.0, -6.0)
  _calibrate(b.bbox_reg, lambda: [b.bbox_reg(b.conv(f)) for f in features],
             0.3, 0.0)
  # Inputs as they are: no resizing (min = max = SIZE), the same
  # normalisation as the converted model's.
  model.transform = transform.GeneralizedRCNNTransform(
      size, size, list(MEAN), list(STD))
  settings = dict(score_thresh=0.3, nms_thresh=0.5, detections_per_img=300,
                  topk_candidates=1000)
  for key, value in settings.items():
    setattr(model, key, value)
  arrays = {'images': images}
  with torch.no_grad():
    for level, f in zip(range(3, 8), features):
      arrays[f'cls{level}'] = _nhwc(c.cls_logits(c.conv(f)))
      arrays[f'box{level}'] = _nhwc(b.bbox_reg(b.conv(f)))
    batch = [torch.from_numpy(im.transpose(2, 0, 1).copy() / 255.0)
             for im in images]
    image_list, _ = model.transform(batch)
    arrays['anchors_xyxy'] = model.anchor_generator(
        image_list, list(model.backbone(image_list.tensors).values()))[0].numpy()
    for i, det in enumerate(model(batch)):
      arrays[f'det{i}_boxes'] = det['boxes'].numpy()
      arrays[f'det{i}_scores'] = det['scores'].numpy()
      arrays[f'det{i}_labels'] = det['labels'].numpy()
  return model, arrays, settings


def _torchvision_v1_names(state_dict):
  """The names of torchvision's released COCO_V1 RetinaNet file (before
  0.13's Conv2dNormActivation), which torchvision renames when loading."""
  import re  # pylint: disable=g-import-not-at-top
  renamed = {}
  for key, value in state_dict.items():
    key = re.sub(r'(fpn\.(?:inner|layer)_blocks\.\d)\.0\.', r'\1.', key)
    key = re.sub(r'(head\.\w+\.conv\.)(\d)\.0\.',
                 lambda m: f'{m.group(1)}{2 * int(m.group(2))}.', key)
    renamed[key] = value
  return renamed


def effdet_model(out_dir, size, arch):
  del out_dir
  import effdet  # pylint: disable=g-import-not-at-top
  config = effdet.get_efficientdet_config(arch)
  config.image_size = (size, size)  # effdet sizes its resampling for it.
  model = effdet.EfficientDet(config, pretrained_backbone=False)
  _randomise(model, 1)
  model.eval()
  lite = 'lite' in arch
  mean, std = (np.full(3, 0.5, np.float32),) * 2 if lite else (MEAN, STD)
  images = _images(size)
  arrays = {'images': images}
  x = torch.from_numpy(((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy())
  _calibrate(model.class_net.predict.conv_pw, lambda: model(x)[0], 1.0, -6.0)
  _calibrate(model.box_net.predict.conv_pw, lambda: model(x)[1], 0.3, 0.0)
  bench = effdet.DetBenchPredict(model)
  bench.eval()
  arrays['anchors_yxyx'] = bench.anchors.boxes.numpy()
  # At the published size too (Lite0's 320 px does not divide by 128).
  arrays['anchors_published_yxyx'] = effdet.anchors.Anchors.from_config(
      effdet.get_efficientdet_config(arch)).boxes.numpy()
  with torch.no_grad():
    cls, box = model(x)
    for level, (c, b) in enumerate(zip(cls, box), start=3):
      arrays[f'cls{level}'] = _nhwc(c)
      arrays[f'box{level}'] = _nhwc(b)
    det = bench(x, img_info={'img_scale': torch.ones(2),
                             'img_size': torch.tensor([[size, size]] * 2)})
    # The same model in float64: how far float32 itself is from exact.
    cls64, box64 = model.double()(x.double())
    for level, (c, b) in enumerate(zip(cls64, box64), start=3):
      arrays[f'cls{level}_float64'] = _nhwc(c)
      arrays[f'box{level}_float64'] = _nhwc(b)
    model.float()
  for i, d in enumerate(det.numpy()):
    d = d[d[:, 4] > 0]  # effdet pads with zero rows.
    arrays[f'det{i}_boxes'] = d[:, :4]
    arrays[f'det{i}_scores'] = d[:, 4]
    arrays[f'det{i}_labels'] = d[:, 5].astype(np.int64)
  settings = dict(max_detection_points=model.config.max_detection_points,
                  max_det_per_image=model.config.max_det_per_image,
                  nms=0.5, params=sum(p.numel() for p in model.parameters()))
  return model, arrays, settings


def counts(out_dir, names):
  """counts.json: {arch: effdet's parameter count} (built on the meta
  device: no memory, no init)."""
  import effdet  # pylint: disable=g-import-not-at-top
  out = {}
  for arch in names:
    with torch.device('meta'):
      model = effdet.EfficientDet(effdet.get_efficientdet_config(arch),
                                  pretrained_backbone=False)
    out[arch] = sum(p.numel() for p in model.parameters())
  with open(os.path.join(out_dir, 'counts.json'), 'w') as f:
    json.dump(out, f)


def main(out_dir, size, archs):
  warnings.filterwarnings('ignore')
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  if archs[0] == 'counts':
    counts(out_dir, archs[1:])
    return
  for arch in archs:
    if arch == 'retinanet_resnet50_fpn':
      model, arrays, settings = retinanet(out_dir, size)
    else:
      model, arrays, settings = effdet_model(out_dir, size, arch)
    where = os.path.join(out_dir, arch)
    os.makedirs(where, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(where, 'state_dict.pth'))
    if arch == 'retinanet_resnet50_fpn':
      old = _torchvision_v1_names(model.state_dict())
      # torchvision itself loads these names (its version hook renames them).
      import torchvision  # pylint: disable=g-import-not-at-top
      torchvision.models.detection.retinanet_resnet50_fpn(
          weights=None, weights_backbone=None, num_classes=91
      ).load_state_dict(old, strict=True)
      torch.save(old, os.path.join(where, 'state_dict_v1_names.pth'))
    np.savez(os.path.join(where, 'expected.npz'), **arrays)
    with open(os.path.join(where, 'settings.json'), 'w') as f:
      json.dump(settings, f)


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
