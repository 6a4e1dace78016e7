"""`shapes` examples as the TFDS builder stores them, without TensorFlow.

`make_example(split, index)` renders one scene (`shapes_render`) and encodes it
as the builder's feature dict. `generate(split, size, workers)` yields a whole
split, rendered by `workers` processes: this process and `workers - 1`
subprocesses running this module (`python -m detector.data.shapes_examples
SPLIT FIRST STEP SIZE`), which pickle their examples to it through a pipe.
Plain subprocesses rather than `multiprocessing`: a 'spawn' or 'forkserver'
pool re-imports the caller's main script in every worker (breaking scripts
without a `__main__` guard), and 'fork' is unsafe beside the threads of
TensorFlow and JAX. A worker imports numpy and the renderer only, so it starts
in a fraction of a second. Examples depend on (split, index) alone, so the
result does not depend on the number of workers.
"""

import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

from detector.data import shapes_render

# image/id = offset of the split + index + 1: unique across splits (a split
# holds fewer than 10^6 examples) and never 0, which some tools treat as unset.
_SPLIT_ID_OFFSET = {'train': 0, 'validation': 1_000_000, 'test': 2_000_000}
# Object ids: image/id * _OBJECTS_PER_IMAGE_ID + k + 1 for the k-th object.
_OBJECTS_PER_IMAGE_ID = 100


def image_id(split, index):
  """The `image/id` of example `index` of `split`."""
  return _SPLIT_ID_OFFSET[split] + index + 1


def make_example(split, index):
  """Renders example `index` of `split` as a TFDS feature dict.

  Args:
    split: 'train', 'validation' or 'test'.
    index: example index within the split.

  Returns:
    A dict matching the builder's features: the image as PNG bytes, the other
    values as numpy values.
  """
  scene = shapes_render.render_scene(shapes_render.scene_rng(split, index))
  height, width = scene['image'].shape[:2]
  num = len(scene['labels'])
  example_id = image_id(split, index)
  # Pixel-edge boxes lie in [0, H] x [0, W], so the normalised ones lie in
  # [0, 1] exactly, as BBoxFeature requires.
  bbox = scene['boxes'] / np.array([height, width, height, width], np.float32)
  return {
      'image': encode_png(scene['image']),
      'image/id': example_id,
      'image/filename': f'{example_id:012d}.png',
      'objects': {
          'id': example_id * _OBJECTS_PER_IMAGE_ID + np.arange(1, num + 1),
          'area': np.rint(scene['areas']).astype(np.int64),
          'bbox': bbox.astype(np.float32),
          'label': scene['labels'],
          'is_crowd': np.zeros(num, bool),
      },
  }


def encode_png(image):
  """Encodes an RGB image as PNG bytes, fast.

  The Image feature would encode with `tf.io.encode_png` at zlib level 6,
  which on these noisy images takes most of the generation time. The per-pixel
  noise leaves zlib's string matching almost nothing to find: entropy coding
  alone ('Huffman only') of the 'Up'-filtered rows is ~7x faster, for files
  ~1% larger. Any PNG decoder reads the result; the bytes are deterministic
  for a given zlib.

  Args:
    image: uint8 [H, W, 3].

  Returns:
    The PNG file as bytes.
  """
  height, width, _ = image.shape
  rows = image.reshape(height, width * 3)
  # Each scanline is prefixed by its filter type, 2 ('Up': the byte-wise
  # difference, modulo 256, to the row above; zeros above the first row).
  filtered = np.empty((height, width * 3 + 1), np.uint8)
  filtered[:, 0] = 2
  filtered[0, 1:] = rows[0]
  np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
  compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
  data = compressor.compress(filtered.tobytes()) + compressor.flush()

  def chunk(kind, payload):
    return (struct.pack('>I', len(payload)) + kind + payload +
            struct.pack('>I', zlib.crc32(kind + payload)))

  # IHDR: size, bit depth 8, colour type 2 (RGB), default compression and
  # filter methods, no interlacing.
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
          chunk(b'IDAT', data) + chunk(b'IEND', b''))


def generate(split, size, workers=1):
  """Yields `(image/id, example)` for the `size` examples of `split`.

  With `workers` > 1, example i is rendered by process i % workers (0 is this
  one); examples come out in index order either way.
  """
  if workers <= 1 or size < 2:
    for index in range(size):
      yield image_id(split, index), make_example(split, index)
    return
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (package_root, env.get('PYTHONPATH')) if p)
  procs = []
  try:
    for first in range(1, workers):
      log = tempfile.TemporaryFile()
      proc = subprocess.Popen(
          [sys.executable, '-m', 'detector.data.shapes_examples', split,
           str(first), str(workers), str(size)],
          stdout=subprocess.PIPE, stderr=log, env=env)
      procs.append((proc, log))
    for start in range(0, size, workers):
      yield image_id(split, start), make_example(split, start)
      for offset, (proc, log) in enumerate(procs, start=1):
        if start + offset < size:
          try:
            key, example = pickle.load(proc.stdout)
          except EOFError:
            raise RuntimeError(_worker_failure(proc, log)) from None
          if key != image_id(split, start + offset):
            raise RuntimeError(f'shapes worker sent example {key}, expected '
                               f'{image_id(split, start + offset)}')
          yield key, example
    for proc, log in procs:
      if proc.wait() != 0:
        raise RuntimeError(_worker_failure(proc, log))
  finally:
    for proc, log in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      proc.stdout.close()
      log.close()


def _worker_failure(proc, log):
  code = proc.wait()
  log.seek(0)
  tail = log.read()[-2000:].decode(errors='replace')
  return (f'shapes rendering worker {proc.args[3:]} exited with status {code}:'
          f'\n{tail}')


def _worker(split, first, step, size):
  """Renders examples first, first + step, ... of `split` to stdout, pickled."""
  out = sys.stdout.buffer
  for index in range(first, size, step):
    pickle.dump((image_id(split, index), make_example(split, index)), out,
                protocol=pickle.HIGHEST_PROTOCOL)
  out.flush()


if __name__ == '__main__':
  _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
