"""Benchmark: train step images/s on 1 and 8 devices, and checkpoint blocking.

    .venv/bin/python benchmarks/train_throughput.py [--config=cnn] [--tiny]
        [--steps=15] [--saves=5] [--sharding=data,fsdp]

`--config` is a module in configs/ (`cnn`, `resnet50`, `efficientnet:lite0`,
`configs/cnn.py:tiny`, ...); `--tiny` is the same as the `:tiny` argument.
Everything is measured in one invocation, so the figures can be compared
with each other (not with another machine's). Each device count runs in its
own subprocess, 1 device included, with
`--xla_force_host_platform_device_count=N` appended to XLA_FLAGS (which keep
the CPU flag this program applies, as main.py does). Each subprocess prints:
  * step: the jitted train step (`train.make_train_step`) on one prepared
    synthetic batch (no input pipeline) of the config's global batch size
    (`--batch_size` to change it), the same on every device count:
    milliseconds per step and images/s, after `--warmup` untimed steps, over
    `--steps` steps ended by `jax.block_until_ready`;
  * checkpoints: `--saves` calls of `checkpoints.save(..., force=True)` into
    a temporary directory (removed afterwards), each after
    `--steps_between_saves` train steps and a read of the loss (as the
    trainer's finiteness check does). Saving is asynchronous: the figure is
    the time the loop is blocked in the call (copying the state off the
    devices, waiting for the previous save), mean / max / first, next to the
    step time measured meanwhile (the background write shares the CPU); then
    the final `checkpoints.wait(mngr)` and the size of one checkpoint on
    disk.

On a CPU the 8 "devices" are 8 XLA host devices sharing the same cores
(2 on the reference machine): the 8-device figures measure what sharding
costs (collectives, per-device overhead, smaller per-device convolutions),
not a speed-up. `--sharding=data,fsdp` runs the multi-device case once per
value of `config.sharding` (the config must have that key).
A benchmark, not a test: it prints figures and asserts nothing.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from detector import runtime  # pylint: disable=wrong-import-position

flags.DEFINE_string('config', 'cnn', 'A config of detector/configs/, with an '
                    'optional ":arg" (cnn, resnet50, cnn:tiny, '
                    'configs/efficientnet.py:lite0).')
flags.DEFINE_bool('tiny', False, 'Pass "tiny" to the config (= ":tiny").')
flags.DEFINE_integer('batch_size', None, 'Global batch size; default: the '
                     "config's. Must be a multiple of every device count.")
flags.DEFINE_list('devices', ['1', '8'], 'Device counts, one subprocess each.')
flags.DEFINE_list('sharding', [], "config.sharding values for the multi-device "
                  "runs (e.g. data,fsdp); default: the config's.")
flags.DEFINE_integer('steps', 15, 'Timed train steps.')
flags.DEFINE_integer('warmup', 3, 'Untimed train steps first (compilation).')
flags.DEFINE_integer('saves', 5, 'Checkpoint saves timed.')
flags.DEFINE_integer('steps_between_saves', 5, 'Train steps before each save (a '
                     'save waits for the previous one to finish writing).')
flags.DEFINE_integer('worker', 0, 'Internal: the device count of this '
                     'subprocess (0: the parent, which starts them).')
FLAGS = flags.FLAGS

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
RESULT = 'RESULT '


def _load_config():
  """The config named by --config / --tiny, with --batch_size applied."""
  spec = FLAGS.config
  name, _, arg = spec.partition(':')
  name = os.path.splitext(os.path.basename(name))[0]
  if FLAGS.tiny:
    if arg not in ('', 'tiny'):
      raise app.UsageError(f'--tiny with --config={spec}: one argument only')
    arg = 'tiny'
  config = importlib.import_module(f'detector.configs.{name}').get_config(
      arg or None)
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  # The weights' values do not matter here; a missing file would.
  config.init_from = ''
  return config, f'{name}:{arg}' if arg else name


def _synthetic_batch(config, num_classes, keys):
  """A numpy batch of the train step's keys and shapes, fixed seed."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  b, (h, w) = config.batch_size, config.image_size
  batch = {'image': rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)}
  if 'label' in keys:
    batch['label'] = rng.integers(0, num_classes, (b,)).astype(np.int32)
  else:
    k = config.input.max_boxes
    size = rng.uniform(min(h, w) / 16, min(h, w) / 4, (b, k, 2))
    yx = rng.uniform(0, 1, (b, k, 2)) * (np.array([h, w]) - size)
    batch['boxes'] = np.concatenate([yx, yx + size], -1).astype(np.float32)
    batch['labels'] = rng.integers(0, num_classes, (b, k)).astype(np.int32)
    batch['box_mask'] = rng.random((b, k)) < 0.5
    batch['box_mask'][:, 0] = True
  return batch


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def _worker(n):
  """Measures on this process's n devices; prints one RESULT json line."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from detector import checkpoints
  from detector import tasks
  from detector import train
  from detector.data import shapes
  # pylint: enable=g-import-not-at-top
  config, _ = _load_config()
  if FLAGS.sharding:
    if 'sharding' not in config:
      raise app.UsageError('--sharding: this config has no config.sharding')
    config.sharding = FLAGS.sharding[0]
  if jax.device_count() != n:
    raise RuntimeError(f'asked for {n} devices, JAX has {jax.devices()}')
  num_classes = config.model.num_classes
  if num_classes <= 0:  # From the dataset: `shapes` has these.
    num_classes = len(shapes.CLASS_NAMES)
  names = [f'c{i}' for i in range(num_classes)]
  keys = tasks.get(config).batch_keys
  s = train.build_setup(config, names, 10_000, devices=jax.devices()[:n])
  step = train.make_train_step(s)
  sharding = jax.sharding.NamedSharding(s.mesh,
                                        jax.sharding.PartitionSpec('data'))
  batch = train.device_batch(_synthetic_batch(config, num_classes, keys),
                             sharding, keys)
  state = s.init_fn(jax.random.PRNGKey(0))
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  device_bytes = sum(x.addressable_shards[0].data.nbytes
                     for x in jax.tree.leaves(state))
  done = 0

  start = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  first = time.perf_counter() - start
  done += 1
  for _ in range(FLAGS.warmup - 1):
    state, metrics = step(state, batch)
    done += 1
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / FLAGS.steps
  done += FLAGS.steps

  workdir = tempfile.mkdtemp(prefix='train_throughput_')
  try:
    mngr = checkpoints.manager(workdir, config.keep_checkpoints, 1)
    blocked = []
    start = time.perf_counter()
    for _ in range(FLAGS.saves):
      for _ in range(FLAGS.steps_between_saves):
        state, metrics = step(state, batch)
        done += 1
      float(metrics['loss'])  # The trainer checks the loss before a save.
      meta = {'step': done, 'config': config.to_json_best_effort()}
      t = time.perf_counter()
      checkpoints.save(mngr, done, state, meta, force=True)
      blocked.append(time.perf_counter() - t)
    jax.block_until_ready((state, metrics))
    loop = time.perf_counter() - start
    t = time.perf_counter()
    checkpoints.wait(mngr)
    wait = time.perf_counter() - t
    ckpt_bytes = _dir_bytes(os.path.join(workdir, 'checkpoints', str(done)))
    mngr.close()
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  between = FLAGS.saves * FLAGS.steps_between_saves
  result = dict(
      devices=n, device_kind=jax.devices()[0].device_kind,
      sharding=config.get('sharding', 'data'), batch=config.batch_size,
      image_size=list(config.image_size), params=params,
      state_bytes=state_bytes, device_bytes=device_bytes,
      first_step_s=first, step_s=step_s,
      compiled=step._cache_size(),  # pylint: disable=protected-access
      blocked=blocked,
      step_during_saves_s=(loop - sum(blocked)) / between if between else None,
      wait_s=wait, ckpt_bytes=ckpt_bytes)
  print(RESULT + json.dumps(result), flush=True)


def _run_worker(n, sharding):
  """Runs this script as a worker on n host devices; its result dict."""
  env = dict(os.environ)
  kept = [f for f in env.get('XLA_FLAGS', '').split()
          if not f.startswith(DEVICE_COUNT_FLAG)]
  env['XLA_FLAGS'] = ' '.join(kept + [f'{DEVICE_COUNT_FLAG}={n}'])
  env['JAX_PLATFORMS'] = 'cpu'
  cmd = [sys.executable, os.path.abspath(__file__), f'--worker={n}',
         f'--config={FLAGS.config}', f'--tiny={FLAGS.tiny}',
         f'--steps={FLAGS.steps}', f'--warmup={FLAGS.warmup}',
         f'--saves={FLAGS.saves}',
         f'--steps_between_saves={FLAGS.steps_between_saves}']
  if FLAGS.batch_size:
    cmd.append(f'--batch_size={FLAGS.batch_size}')
  if sharding:
    cmd.append(f'--sharding={sharding}')
  print(f'{n} device(s){", " + sharding if sharding else ""}: running...',
        flush=True)
  start = time.perf_counter()
  proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stdout + proc.stderr)
    raise RuntimeError(f'the {n}-device worker failed (exit {proc.returncode})')
  result = json.loads(lines[-1][len(RESULT):])
  result['wall_s'] = time.perf_counter() - start
  return result


def main(argv):
  del argv
  if FLAGS.worker:
    _worker(FLAGS.worker)
    return
  config, name = _load_config()
  counts = [int(c) for c in FLAGS.devices]
  bad = [c for c in counts if c < 1 or config.batch_size % c]
  if bad:
    raise app.UsageError(f'batch size {config.batch_size} is not a multiple '
                         f'of device count(s) {bad}; set --batch_size')
  if FLAGS.sharding and 'sharding' not in config:
    raise app.UsageError(f'--sharding: config {name} has no config.sharding '
                         '(not added yet?)')
  start = time.perf_counter()
  rows = []
  for n in counts:
    # With one device every sharding is the same: run it once.
    for sharding in (FLAGS.sharding[:1] if n == 1 else FLAGS.sharding) or ['']:
      rows.append(_run_worker(n, sharding))
  total = time.perf_counter() - start

  r0 = rows[0]
  tuned = runtime.CPU_FLAG in os.environ.get('XLA_FLAGS', '')
  h, w = r0['image_size']
  print(f'\n{name}: batch {r0["batch"]}, {h}x{w}, {r0["params"]:,} parameters, '
        f'train state {r0["state_bytes"] / 2**20:.1f} MiB; '
        f'{r0["device_kind"]}, {os.cpu_count()} CPUs shared by all devices; '
        f'XLA CPU flag {"on" if tuned else "off"}')
  print(f'\ntrain step ({FLAGS.warmup} untimed + {FLAGS.steps} timed steps, '
        'one prepared batch)')
  print(f'{"devices":>7} {"sharding":>8} {"1st step s":>10} {"step ms":>8} '
        f'{"images/s":>9} {"vs 1st row":>10} {"state MiB/dev":>13}')
  for r in rows:
    print(f'{r["devices"]:7d} {r["sharding"]:>8} {r["first_step_s"]:10.1f} '
          f'{r["step_s"] * 1e3:8.1f} {r["batch"] / r["step_s"]:9.1f} '
          f'{r0["step_s"] / r["step_s"]:10.2f} '
          f'{r["device_bytes"] / 2**20:13.1f}')
  print(f'\ncheckpoints ({FLAGS.saves} async saves, each after '
        f'{FLAGS.steps_between_saves} steps; seconds blocked in save())')
  print(f'{"devices":>7} {"sharding":>8} {"mean":>6} {"max":>6} {"first":>6} '
        f'{"mean/step":>9} {"step ms":>8} {"final wait":>10} {"size MiB":>8}')
  for r in rows:
    b = r['blocked']
    mean = sum(b) / len(b) if b else 0.0
    during = r['step_during_saves_s']
    print(f'{r["devices"]:7d} {r["sharding"]:>8} {mean:6.3f} '
          f'{max(b, default=0.0):6.3f} {b[0] if b else 0.0:6.3f} '
          f'{mean / r["step_s"]:9.2f} '
          f'{during * 1e3 if during else float("nan"):8.1f} '
          f'{r["wait_s"]:10.3f} {r["ckpt_bytes"] / 2**20:8.2f}')
  print('(mean/step: blocked time per save over the plain step time; step ms: '
        'a step while saves run in the background)')
  for r in rows:
    if r['compiled'] != 1:
      print(f'warning: the {r["devices"]}-device step was compiled '
            f'{r["compiled"]} times')
  print(f'\nwall: {total:.0f} s (' + ', '.join(
      f'{r["devices"]} dev{" " + r["sharding"] if FLAGS.sharding else ""} '
      f'{r["wall_s"]:.0f} s' for r in rows) + ')')


if __name__ == '__main__':
  runtime.configure_xla_cpu()  # Before JAX starts, as main.py does.
  app.run(main)
