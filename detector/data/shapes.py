"""`shapes`: the built-in offline detection dataset, as a TFDS builder.

Importing this module registers the builder, after which

  builder = tfds.builder('shapes', data_dir=...)       # config 'default'
  builder = tfds.builder('shapes/tiny', data_dir=...)  # for tests and smoke runs
  builder.download_and_prepare()                       # renders; no network

generate the dataset locally from `detector.data.shapes_render`. Example `i` of
split `s` is `render_scene(np.random.default_rng([SPLIT_SEED[s], i]))`, so it
is the same on every machine and does not depend on the other examples.

Features follow TFDS's `coco/2017`, so one input pipeline reads both:

  image:          uint8 [H, W, 3], PNG-encoded, H and W in [112, 160].
  image/id:       int64, unique across splits.
  image/filename: text, '<image/id as 12 digits>.png'.
  objects:        a sequence of N objects (N in [0, 10]), each with
    id:       int64, unique across the dataset.
    area:     int64, pixels of the object's silhouette mask (rounded).
    bbox:     float32 [4] `tfds.features.BBox`: normalised
              [ymin, xmin, ymax, xmax] in [0, 1], i.e. the pixel-edge box
              divided by (H, W, H, W).
    label:    `ClassLabel` over `CLASS_NAMES`; read the names from
              `info.features['objects']['label'].names`.
    is_crowd: bool, always False.
"""

import dataclasses
import struct
from typing import Mapping
import zlib

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from detector.data import shapes_render

CLASS_NAMES = shapes_render.CLASS_NAMES
SPLIT_SEED = shapes_render.SPLIT_SEED

# image/id = offset of the split + index + 1: unique across splits (a split
# holds fewer than 10^6 examples) and never 0, which some tools treat as unset.
_SPLIT_ID_OFFSET = {'train': 0, 'validation': 1_000_000, 'test': 2_000_000}
# Object ids: image/id * _OBJECTS_PER_IMAGE_ID + k + 1 for the k-th object.
_OBJECTS_PER_IMAGE_ID = 100


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """A `shapes` config.

  Attributes:
    split_sizes: number of examples of each of 'train', 'validation', 'test'.
  """
  split_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Synthetic cluttered scenes of six silhouette classes, rendered offline."""

  name = 'shapes'
  # TFDS derives `code_path` through the `importlib_resources` backport, which
  # it uses but does not install on Python >= 3.9, so preparing any builder
  # outside the TFDS package fails (tensorflow/datasets#11212). It only serves
  # to find a (here absent) checksums file next to the builder's source, so
  # name the source directly.
  code_path = epath.Path(__file__)
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: 6 classes, 112-160 px images, 0-10 objects.',
  }
  BUILDER_CONFIGS = [
      ShapesConfig(
          name='default',
          description='6000 train, 500 validation and 1000 test scenes.',
          split_sizes={'train': 6000, 'validation': 500, 'test': 1000}),
      ShapesConfig(
          name='tiny',
          description='64 train, 16 validation and 32 test scenes, for tests '
          'and smoke runs.',
          split_sizes={'train': 64, 'validation': 16, 'test': 32}),
  ]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'Cluttered synthetic scenes of circles, triangles, squares, stars, '
            'crosses and crescents (filled or outlined, textured, rotated up '
            'to 20 degrees, partly occluded), over gradients with lines and '
            'distractor blobs, with COCO-style box annotations. Rendered '
            'deterministically offline by detector.data.shapes_render.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format='png'),
            'image/id': tf.int64,
            'image/filename': tfds.features.Text(),
            'objects': tfds.features.Sequence({
                'id': tf.int64,
                'area': tf.int64,
                'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(names=CLASS_NAMES),
                'is_crowd': tf.bool,
            }),
        }),
        homepage=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is rendered locally; nothing to download.
    return {split: self._generate_examples(split, size)
            for split, size in self.builder_config.split_sizes.items()}

  def _generate_examples(self, split, size):
    """Yields `(key, example)` for the `size` examples of `split`."""
    # Rendered in this process: a 'spawn' worker pool halves the time on two
    # cores but re-runs the caller's main script in every worker, which breaks
    # scripts without a `__main__` guard; 'fork' is unsafe next to the
    # threads of TensorFlow and JAX.
    for index in range(size):
      yield image_id(split, index), make_example(split, index)


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
