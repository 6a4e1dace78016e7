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
import os
from typing import Mapping

from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

from detector.data import shapes_examples
from detector.data import shapes_render

CLASS_NAMES = shapes_render.CLASS_NAMES
SPLIT_SEED = shapes_render.SPLIT_SEED

# TensorFlow-free parts, re-exported: what an example holds, and its id.
image_id = shapes_examples.image_id
make_example = shapes_examples.make_example
encode_png = shapes_examples.encode_png

# Rendering is spread over worker processes for splits at least this large.
_PARALLEL_MIN_EXAMPLES = 256


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
    workers = 1
    if size >= _PARALLEL_MIN_EXAMPLES:
      # sched_getaffinity respects CPU limits; macOS lacks it.
      cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
               else os.cpu_count() or 1)
      workers = min(cores, 8)
    return shapes_examples.generate(split, size, workers)
