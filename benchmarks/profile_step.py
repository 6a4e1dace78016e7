"""Benchmark: where a train step's time goes, operation by operation.

    .venv/bin/python benchmarks/profile_step.py [--case=resnet50] [--top=10]
        [--steps=3] [--dump=DIR]

Profiles the plain SGD train step of a `benchmarks/vs_torch.py` case (the
same model, batch and size) on this machine's default JAX backend:
  1. the step's wall time (median of `--steps` steps), and the forward pass
     alone, the gradient without the convolution kernels' gradients, and the
     whole gradient, each compiled on its own: what the backward pass and
     its weight gradients cost;
  2. a JAX profiler trace of `--steps` steps: the time of each XLA
     operation (thunk) that runs synchronously, per step;
  3. each convolution of the optimised program replayed on its own at the
     same shapes, window and padding (XLA's CPU convolutions finish
     asynchronously on the thread pool, so the trace shows only their
     launch): its median time;
and prints the `--top` operations by time and the time per category
(forward / input-gradient / weight-gradient convolutions, transposes and
copies, fusions, dots). The operations overlap on the thread pool, so their
sum exceeds the wall time; the split by category is what to act on.
`--dump=DIR` also writes the optimised HLO there.
A benchmark, not a test: it prints figures and asserts nothing.
"""

import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vs_torch  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS

_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>\w+\[[\d,]*\])\S* '
    r'(?P<op>[\w\-]+)\((?P<args>[^)]*)\)(?P<rest>.*)$')
_WINDOW = re.compile(r'window=\{([^}]*)\}')


def parse_hlo(text):
  """{name: dict(shape, op, args, rest)} of every instruction in the text."""
  out = {}
  for line in text.splitlines():
    m = _INSTRUCTION.match(line)
    if m:
      args = [a.strip().lstrip('%') for a in m['args'].split(',') if a.strip()]
      out[m['name']] = dict(shape=m['shape'], op=m['op'], args=args,
                            rest=m['rest'])
  return out


def _dims(shape):
  inside = shape[shape.index('[') + 1:-1]
  return tuple(int(d) for d in inside.split(',') if d)


def _dtype(shape):
  return {'f32': 'float32', 'bf16': 'bfloat16', 'f16': 'float16'}.get(
      shape.split('[')[0], 'float32')


def _window(rest):
  """(strides, pads, lhs_dilation, rhs_dilation, window size) of an HLO conv."""
  m = _WINDOW.search(rest)
  fields = dict(f.split('=') for f in (m.group(1).split() if m else []))
  size = tuple(int(v) for v in fields.get('size', '1x1').split('x'))
  n = len(size)
  parse = lambda key: tuple(int(v) for v in fields[key].split('x')) \
      if key in fields else (1,) * n
  pads = [(0, 0)] * n
  if 'pad' in fields:
    pads = [tuple(int(v) for v in p.split('_')) for p in fields['pad'].split('x')]
  return parse('stride'), pads, parse('lhs_dilate'), parse('rhs_dilate'), size


def replay_convolution(inst, shapes, repeats=5):
  """Median seconds of one HLO convolution (b01f_01io->b01f) run alone."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  # pylint: enable=g-import-not-at-top
  if 'dim_labels=b01f_01io->b01f' not in inst['rest']:
    return None
  lhs, rhs = (shapes[a] for a in inst['args'][:2])
  strides, pads, lhs_dil, rhs_dil, _ = _window(inst['rest'])
  groups = re.search(r'feature_group_count=(\d+)', inst['rest'])
  groups = int(groups.group(1)) if groups else 1
  x = jnp.ones(_dims(lhs), _dtype(lhs))
  w = jnp.ones(_dims(rhs), _dtype(rhs))
  fn = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, strides, pads, lhs_dil, rhs_dil, ('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups)).lower(x, w).compile()
  fn(x, w).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(x, w).block_until_ready()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def category(name, inst, shapes, batch):
  """What an operation of the train step is, from its HLO and metadata."""
  op, rest = inst['op'], inst['rest']
  backward = 'transpose(jvp(' in rest
  if op == 'convolution':
    # The weight gradient runs as a convolution whose input is the
    # activation with batch and channels swapped: its feature dim is the batch.
    lhs = shapes.get(inst['args'][0])
    lhs_features = _dims(lhs)[-1] if lhs else None
    if lhs_features == batch and (backward or 'jvp(' not in rest):
      return 'conv weight-grad'
    return 'conv input-grad' if backward else 'conv forward'
  if 'transpose' in name or name.startswith('copy'):
    return 'transpose/copy'
  if name.startswith('dot') or ('ynn_fusion' in name and 'dot' in rest):
    return 'dot (1x1 conv)'
  if 'fusion' in name:
    return 'fusion'
  return 'other'


def trace_thunks(fn, args, steps):
  """{operation name: seconds per step} of the synchronous XLA thunks."""
  import jax  # pylint: disable=g-import-not-at-top
  out = fn(*args)
  jax.block_until_ready(out)
  trace_dir = tempfile.mkdtemp(prefix='profile_step_')
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      out = fn(*args)
      jax.block_until_ready(out)
  path = glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'),
                   recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  totals = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if 'XLAEigen' not in line.name:
        continue
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'Slinky', 'end: ')):
          totals[event.name] += event.duration_ns / 1e9 / steps
  return totals


def _median_call(fn, args, steps):
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def step_parts(side, steps):
  """Seconds of the forward pass, of the gradient without the kernels'
  gradients, and of the whole gradient (no optimizer), each jitted alone."""
  # pylint: disable=g-import-not-at-top
  import jax
  # pylint: enable=g-import-not-at-top
  s = side.setup
  model = s.train_model
  loss_fn = s.task.loss_fn(model, s.model_config)
  params, batch_stats = side.plain_state[0], side.plain_state[1]

  def objective(p, skip_kernels):
    if skip_kernels:
      p = jax.tree_util.tree_map_with_path(
          lambda path, v: jax.lax.stop_gradient(v)
          if v.ndim == 4 and 'kernel' in jax.tree_util.keystr(path) else v, p)
    out, _ = model.apply({'params': p, 'batch_stats': batch_stats},
                         side.batch['image'], mutable=['batch_stats'],
                         rngs={'dropout': jax.random.PRNGKey(1)})
    return loss_fn(out, side.batch)[0]

  fns = {'forward': jax.jit(lambda p: objective(p, False)),
         'gradient without kernels': jax.jit(
             jax.grad(lambda p: objective(p, True))),
         'gradient': jax.jit(jax.grad(lambda p: objective(p, False)))}
  return {name: _median_call(fn, (params,), steps) for name, fn in fns.items()}


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  spec = vs_torch.cpu_specs()[FLAGS.case]
  side = vs_torch.JaxSide(spec, parts=())
  args = (*side.plain_state, side.batch)
  # Compiled without donation, so that the same arguments serve every call.
  fn = jax.jit(side.plain_fn).lower(*args).compile()
  step = lambda *a: fn(*a)[3]
  if FLAGS.dump:
    os.makedirs(FLAGS.dump, exist_ok=True)
    with open(os.path.join(FLAGS.dump, f'{FLAGS.case}_train_step.hlo'), 'w') as f:
      f.write(fn.as_text())
  wall = _median_call(step, args, FLAGS.steps)
  parts = step_parts(side, FLAGS.steps)
  thunks = trace_thunks(step, args, FLAGS.steps)
  instructions = parse_hlo(fn.as_text())
  shapes = {n: i['shape'] for n, i in instructions.items()}
  rows = []
  replayed = {}
  for name, inst in instructions.items():
    if inst['op'] != 'convolution':
      continue
    key = (inst['rest'].split(', metadata')[0],
           tuple(shapes.get(a) for a in inst['args'][:2]))
    if key not in replayed:
      replayed[key] = replay_convolution(inst, shapes)
    seconds = replayed[key]
    if seconds is not None:
      rows.append((seconds, name, category(name, inst, shapes, spec.batch),
                   inst['shape'], 'replayed'))
  for name, seconds in thunks.items():
    inst = instructions.get(name)
    if inst is None or inst['op'] == 'convolution':
      continue
    rows.append((seconds, name, category(name, inst, shapes, spec.batch),
                 inst['shape'], 'traced'))
  rows.sort(reverse=True)
  print(f'\n{spec.name}: batch {spec.batch}, {spec.train_size} px, '
        f'{jax.devices()[0].device_kind}, XLA_FLAGS='
        f'{os.environ.get("XLA_FLAGS", "")!r}')
  print(f'train step (SGD): {wall * 1000:.0f} ms; ' + ', '.join(
      f'{k}: {v * 1000:.0f} ms' for k, v in parts.items()))
  print(f'\n| # | operation | category | output | ms / step | % of step | how |')
  print('|---|---|---|---|---|---|---|')
  for i, (seconds, name, cat, shape, how) in enumerate(rows[:FLAGS.top], 1):
    print(f'| {i} | {name} | {cat} | {shape} | {seconds * 1000:.1f} | '
          f'{100 * seconds / wall:.1f} | {how} |')
  by_category = collections.Counter()
  counts = collections.Counter()
  for seconds, _, cat, _, _ in rows:
    by_category[cat] += seconds
    counts[cat] += 1
  print('\n| category | operations | ms / step | % of step |')
  print('|---|---|---|---|')
  for cat, seconds in by_category.most_common():
    print(f'| {cat} | {counts[cat]} | {seconds * 1000:.0f} | '
          f'{100 * seconds / wall:.0f} |')


if __name__ == '__main__':
  flags.DEFINE_enum('case', 'resnet50', list(vs_torch.CASES),
                    'A case of benchmarks/vs_torch.py.')
  flags.DEFINE_integer('top', 10, 'Operations listed.')
  flags.DEFINE_integer('steps', 3, 'Steps timed and traced.')
  flags.DEFINE_string('dump', '', 'Also write the optimised HLO here.')
  vs_torch.runtime.configure_xla_cpu()
  app.run(main)
