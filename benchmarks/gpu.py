"""Benchmark: detectors on one GPU against PyTorch on the same GPU, same run.

    python benchmarks/gpu.py [--cases=retinanet,d0] [--dtypes=float32,bfloat16]
        [--repeats=3] [--steps=5] [--smoke]

Needs no TensorFlow (the model, losses, train step and this script import
none), so it runs on a machine with jax[cuda], flax, optax, orbax, torch and
torchvision; ml_collections and clu are small wheels to bring along.
Cases:
  * `retinanet`: configs/resnet50.py:coco at 640 px (batch 16 training)
    against torchvision's RetinaNet-R50-FPN built the same way
    (`benchmarks/vs_torch.py` has the details);
  * `d0`: configs/efficientnet.py:d0_coco at 512 px (batch 16) against
    effdet's tf_efficientdet_d0 (DetBenchTrain / DetBenchPredict) when effdet
    is installed; otherwise JAX alone.
For each dtype (float32; bfloat16: the JAX model's compute dtype, PyTorch's
autocast): training images/s (one SGD step, both sides), inference latency
at batch 1 and 8 (post-processing included), the JAX compile time, and the
model FLOP utilisation: XLA's FLOP count of the compiled step / step time /
the GPU's peak (`--peak_tflops`, else a table of known GPUs: dense bf16, and
TF32 for float32, which both frameworks use for float32 convolutions).

`--smoke`: the same code at 128 px (P7 needs 2**7), batch 2, one timed call, on whatever
backend is there (the test suite runs it on the CPU so it cannot rot).
A benchmark, not a test: it prints the table and asserts nothing.
"""

import dataclasses
import json
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vs_torch  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS

CASES = ('retinanet', 'd0')
# Dense peak TFLOP/s per GPU kind: (bfloat16, TF32).
PEAK_TFLOPS = {'H100': (989.4, 494.7), 'H200': (989.4, 494.7),
               'A100': (312.0, 156.0), 'L4': (121.0, 60.0)}


def gpu_specs(smoke: bool):
  size = {'retinanet': 640, 'd0': 512}
  batch = 16
  if smoke:  # P7: sizes divisible by 2**7.
    size = {'retinanet': 128, 'd0': 128}
    batch = 2
  return {
      'retinanet': vs_torch.Spec('retinanet', 'resnet50:coco', batch,
                                 size['retinanet'], size['retinanet'], 91),
      'd0': vs_torch.Spec('d0', 'efficientnet:d0_coco', batch, size['d0'],
                          size['d0'], 90),
  }


def effdet_available():
  try:
    import effdet  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


class EffdetSide(vs_torch.TorchSide):
  """effdet's tf_efficientdet_d0 (random weights), trained and run through
  its own DetBenchTrain / DetBenchPredict (anchors, loss, NMS)."""

  def __init__(self, spec, jax_side, device):  # pylint: disable=super-init-not-called
    # pylint: disable=g-import-not-at-top
    import effdet
    import numpy as np
    import torch
    # pylint: enable=g-import-not-at-top
    self.torch, self.spec, self.device, self.kind = torch, spec, device, 'd0'
    torch.manual_seed(0)
    config = effdet.get_efficientdet_config('tf_efficientdet_d0')
    config.num_classes = spec.num_classes
    config.image_size = (spec.train_size, spec.train_size)
    model = effdet.EfficientDet(config, pretrained_backbone=False)
    self.params_count = sum(p.numel() for p in model.parameters())
    self.train_bench = effdet.DetBenchTrain(model).to(device)
    self.predict_bench = effdet.DetBenchPredict(model).to(device)
    self.train_module = self.train_bench
    self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    nb = jax_side.numpy_batch
    self.images = self._normalised(torch.from_numpy(nb['image']).to(device))
    boxes = np.where(nb['box_mask'][..., None], nb['boxes'], -1)
    labels = np.where(nb['box_mask'], nb['labels'], -1)
    self.targets = {'bbox': torch.from_numpy(boxes).float().to(device),
                    'cls': torch.from_numpy(labels).float().to(device)}
    self.infer_images = {
        b: self._normalised(torch.from_numpy(np.asarray(images)).to(device))
        for b, (_, images) in jax_side.infer.items()}

  def _loss_value(self):
    return self.train_bench(self.images, self.targets)['loss']

  def predict(self, b):
    self.predict_bench.eval()
    with self.torch.inference_mode(), self.autocast():
      out = self.predict_bench(self.infer_images[b])
      self._sync()
      out.cpu()


def peak_flops(device_kind: str, dtype: str):
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops * 1e12
  for name, (bf16, tf32) in PEAK_TFLOPS.items():
    if name in device_kind:
      return (bf16 if dtype == 'bfloat16' else tf32) * 1e12
  return None


def torch_counterpart(spec, jax_side, device):
  """torchvision's RetinaNet, effdet's D0 where effdet is installed, or None."""
  if spec.name.startswith('retinanet'):
    return vs_torch.TorchSide(spec, jax_side, device)
  return EffdetSide(spec, jax_side, device) if effdet_available() else None


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import jax
  import torch
  # pylint: enable=g-import-not-at-top
  unknown = set(FLAGS.cases) - set(CASES)
  if unknown or set(FLAGS.dtypes) - {'float32', 'bfloat16'}:
    raise app.UsageError(f'--cases of {CASES}, --dtypes of float32, bfloat16')
  if FLAGS.smoke:
    FLAGS.repeats = FLAGS.steps = 1
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  kind = jax.devices()[0].device_kind
  print(f'JAX {jax.__version__} on {jax.devices()[0].platform} ({kind}); '
        f'torch {torch.__version__} on {device}'
        + (f' ({torch.cuda.get_device_name()})' if device == 'cuda' else '')
        + (f'; effdet {"present" if effdet_available() else "absent"}'),
        flush=True)
  specs = gpu_specs(FLAGS.smoke)
  results = []
  for name in FLAGS.cases:
    for dtype in FLAGS.dtypes:
      spec = dataclasses.replace(specs[name], dtype=dtype)
      start = time.perf_counter()
      result = vs_torch.run_case(spec, FLAGS.repeats, FLAGS.steps, device,
                                 parts=('train', 'infer'),
                                 torch_side=torch_counterpart)
      result['wall_s'] = round(time.perf_counter() - start, 1)
      peak = peak_flops(kind, dtype)
      step_s = result['times']['train']['jax']
      result['mfu'] = (result['flops']['train'] / step_s / peak
                       if peak and result['flops']['train'] else None)
      print('RESULT', json.dumps(result), flush=True)
      results.append(result)
  print()
  print(vs_torch.table(results))
  print()
  for r in results:
    mfu = f'{100 * r["mfu"]:.1f}%' if r['mfu'] is not None else 'n/a (peak unknown)'
    print(f'{r["case"]} {r["dtype"]}: JAX train step '
          f'{r["flops"]["train"] / 1e9:.0f} GFLOP, MFU {mfu}; parameters JAX '
          f'{r["params_jax"]:,} / PyTorch {r["params_torch"] or "-"}; compile '
          '(s): ' + ', '.join(f'{k} {v}' for k, v in r['compile_s'].items()))


if __name__ == '__main__':
  flags.DEFINE_list('cases', list(CASES), f'Of {CASES}.')
  flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes.')
  flags.DEFINE_integer('repeats', 3, 'Timed repeats (interleaved).')
  flags.DEFINE_integer('steps', 5, 'Calls per repeat.')
  flags.DEFINE_bool('smoke', False, '128 px, batch 2, one call: a check that '
                    'the script runs, not a measurement.')
  flags.DEFINE_float('peak_tflops', None, 'Peak TFLOP/s of the GPU for the '
                     'dtype run (default: the table in this file).')
  vs_torch.runtime.configure_xla_cpu()  # Only where the backend is a CPU.
  app.run(main)
