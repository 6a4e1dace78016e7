"""`shapes`: the built-in offline detection dataset, as a TFDS builder.

Importing this module registers the builder, after which

  builder = tfds.builder('shapes', data_dir=...)       # config 'default'
  builder = tfds.builder('shapes/tiny', data_dir=...)  # for tests and smoke runs
  builder.download_and_prepare()                       # renders; no network

generate the dataset locally from `detector.data.shapes_render`.
`shapes_objects` (and `shapes_objects/tiny`), registered here too, is the
classification dataset of the scenes' object crops (see `ShapesObjects`). Example `i` of
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


# ---------------------------------------------------------------------------
# `shapes_objects`: the same scenes as an image-classification dataset.
# ---------------------------------------------------------------------------

# An object becomes an example when its box is at least this many pixels on
# its shorter side and its visible silhouette covers this much of its box
# (occluded objects would make ambiguous crops).
MIN_OBJECT_SIDE = 16
MIN_VISIBLE_FILL = 0.3
CROP_MARGIN = 0.2   # Context around the box, a fraction of its size per side.


def object_crops(split, index):
  """[(crop uint8 [h, w, 3], label, object number)] of scene `index`."""
  scene = shapes_render.render_scene(shapes_render.scene_rng(split, index))
  image = scene['image']
  height, width = image.shape[:2]
  crops = []
  for k, (box, label, area) in enumerate(zip(scene['boxes'], scene['labels'],
                                             scene['areas'])):
    ymin, xmin, ymax, xmax = box
    h, w = ymax - ymin, xmax - xmin
    if min(h, w) < MIN_OBJECT_SIDE or area < MIN_VISIBLE_FILL * h * w:
      continue
    y0 = int(max(0, ymin - CROP_MARGIN * h))
    x0 = int(max(0, xmin - CROP_MARGIN * w))
    y1 = int(min(height, round(ymax + CROP_MARGIN * h)))
    x1 = int(min(width, round(xmax + CROP_MARGIN * w)))
    crops.append((image[y0:y1, x0:x1], int(label), k))
  return crops


class ShapesObjects(Shapes):
  """Crops of the `shapes` objects, labelled by class: the built-in offline
  image-classification dataset (`configs/classify.py`'s default). Splits are
  made as `Shapes` makes them, from the scenes of each split."""

  name = 'shapes_objects'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      ShapesConfig(
          name='default',
          description='The objects of 1500 train, 250 validation and 500 '
          'test scenes of `shapes`.',
          split_sizes={'train': 1500, 'validation': 250, 'test': 500}),
      ShapesConfig(
          name='tiny',
          description='The objects of 24 train, 8 validation and 8 test '
          'scenes, for tests and smoke runs.',
          split_sizes={'train': 24, 'validation': 8, 'test': 8}),
  ]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'Each object of a `shapes` scene at least '
            f'{MIN_OBJECT_SIDE} px on its shorter side and at least '
            f'{MIN_VISIBLE_FILL:.0%} visible, cropped with a '
            f'{CROP_MARGIN:.0%} margin of context (other objects may show '
            'in it), labelled with its class.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format='png'),
            'image/filename': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=('image', 'label'),
        homepage=None,
    )

  def _generate_examples(self, split, size):
    for index in range(size):
      scene_id = image_id(split, index)
      for crop, label, k in object_crops(split, index):
        name = f'{scene_id:012d}_{k}.png'
        yield name, {'image': encode_png(crop), 'image/filename': name,
                     'label': label}
