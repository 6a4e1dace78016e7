"""Benchmark: the detection service under load from loopback, in one run.

    .venv/bin/python benchmarks/serve.py --model=workdirs/cnn \\
        [--images=DIR] [--clients=1,4,16] [--requests=400] [--max_batch=8]

Starts `python -m detector.serve` on a free port, waits until it is ready,
then for each client count sends `--requests` POSTs of the images of
`--images` (default: 32 scenes of the `shapes` test split, rendered here)
from that many threads, each with its own keep-alive connection, and prints
requests/s, p50 and p99 latency seen by the clients, the mean batch size the
server ran (from its /metrics) and any non-200 answers. A benchmark, not a
test: it prints a table and asserts nothing.
"""

import concurrent.futures
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Sequence

import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_server(model: str, port: int, *flags, log=None, env=None
                 ) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, '-m', 'detector.serve', f'--model={model}',
       f'--port={port}', *flags], cwd=ROOT, stdout=log, stderr=log, env=env)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300):
  """Polls /readyz until 200; raises if the server exits or times out."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      raise RuntimeError(f'the server exited with {process.returncode}')
    try:
      if requests.get(f'{url}/readyz', timeout=2).status_code == 200:
        return
    except requests.ConnectionError:
      pass
    time.sleep(0.25)
  raise TimeoutError(f'{url} not ready after {timeout} s')


def png_bytes(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def shapes_images(split: str, count: int) -> List[bytes]:
  """PNGs of the first `count` scenes of a `shapes` split, as the dataset
  renders them."""
  from detector.data.shapes import render  # pylint: disable=g-import-not-at-top
  return [png_bytes(render.render_scene(render.scene_rng(split, i))['image'])
          for i in range(count)]


def load(url: str, images: Sequence[bytes], clients: int, total: int,
         path: str = '/v1/detect') -> Dict:
  """Sends `total` POSTs of `images` (round robin) from `clients` threads.

  Returns:
    {'seconds', 'latencies' (s, per request), 'statuses' (per request),
     'bodies' (the JSON of each 200)} in request order.
  """
  local = threading.local()  # One keep-alive connection per client thread.

  def one(i):
    session = getattr(local, 'session', None)
    if session is None:
      session = local.session = requests.Session()
    start = time.perf_counter()
    r = session.post(f'{url}{path}', data=images[i % len(images)],
                     headers={'Content-Type': 'image/png'}, timeout=120)
    seconds = time.perf_counter() - start
    return r.status_code, seconds, (r.json() if r.status_code == 200 else
                                    r.text)

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    results = list(pool.map(one, range(total)))
  return {'seconds': time.perf_counter() - start,
          'statuses': [r[0] for r in results],
          'latencies': [r[1] for r in results],
          'bodies': [r[2] for r in results]}


def metric(url: str, name: str) -> float:
  """The sum of every sample of metric `name` on the server's /metrics."""
  text = requests.get(f'{url}/metrics', timeout=10).text
  return sum(float(v) for v in re.findall(
      rf'^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$', text, re.M))


def main(argv):
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', required=True)
  parser.add_argument('--images', default='')
  parser.add_argument('--clients', default='1,4,16')
  parser.add_argument('--requests', type=int, default=400)
  parser.add_argument('--max_batch', type=int, default=8)
  args = parser.parse_args(argv)
  if args.images:
    names = sorted(os.listdir(args.images))
    images = [open(os.path.join(args.images, n), 'rb').read() for n in names]
  else:
    images = shapes_images('test', 32)
  port = free_port()
  url = f'http://127.0.0.1:{port}'
  with open(os.devnull, 'w') as quiet:
    server = start_server(args.model, port, f'--max_batch={args.max_batch}',
                          log=quiet)
    try:
      started = time.perf_counter()
      wait_ready(url, server)
      print(f'server ready in {time.perf_counter() - started:.1f} s; '
            f'{len(images)} images, {args.requests} requests per row')
      load(url, images, 4, 40)  # Warm the connections and threads.
      print('| clients | requests/s | p50 ms | p99 ms | mean batch | non-200 |')
      print('|---:|---:|---:|---:|---:|---:|')
      for clients in [int(c) for c in args.clients.split(',')]:
        batches = metric(url, 'detector_batch_size_count')
        imgs = metric(url, 'detector_batch_size_sum')
        out = load(url, images, clients, args.requests)
        mean_batch = ((metric(url, 'detector_batch_size_sum') - imgs)
                      / max(metric(url, 'detector_batch_size_count')
                            - batches, 1))
        lat = np.asarray(out['latencies']) * 1000
        bad = sum(s != 200 for s in out['statuses'])
        print(f'| {clients} | {args.requests / out["seconds"]:.1f} | '
              f'{np.percentile(lat, 50):.1f} | {np.percentile(lat, 99):.1f} | '
              f'{mean_batch:.2f} | {bad} |', flush=True)
    finally:
      server.terminate()
      server.wait(60)


if __name__ == '__main__':
  main(sys.argv[1:])
