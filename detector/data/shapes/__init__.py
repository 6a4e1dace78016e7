"""`shapes`: the built-in offline detection dataset, as TFDS builders.

Importing this package registers the builders, after which

  builder = tfds.builder('shapes', data_dir=...)       # config 'default'
  builder = tfds.builder('shapes/tiny', data_dir=...)  # for tests and smoke runs
  builder.download_and_prepare()                       # renders; no network

generate the dataset locally. `shapes_objects` (and `shapes_objects/tiny`) is
the classification dataset of the scenes' object crops (see `ShapesObjects`).
Example `i` of split `s` is rendered from
`render.scene_rng(s, i) = np.random.default_rng([SPLIT_SEED[s], i])`, so it is
the same on every machine and does not depend on the other examples.

Modules: `geometry` (silhouettes, poses, coverage, masks), `paint` (random
draws, textures, background, camera finish), `render` (scene assembly),
`examples` (scenes as stored examples, PNG encoding), `parallel` (rendering in
worker processes). Importing the package does not import TensorFlow.

`shapes` features follow TFDS's `coco/2017`, so one input pipeline reads both:

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
from typing import Mapping

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from detector.data.shapes import examples
from detector.data.shapes import parallel
from detector.data.shapes import render

CLASS_NAMES = render.CLASS_NAMES
SPLIT_SEED = render.SPLIT_SEED
image_id = examples.image_id
make_example = examples.make_example
encode_png = examples.encode_png
object_crops = examples.object_crops
MIN_OBJECT_SIDE = examples.MIN_OBJECT_SIDE
MIN_VISIBLE_FILL = examples.MIN_VISIBLE_FILL
CROP_MARGIN = examples.CROP_MARGIN


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """A `shapes` config.

  Attributes:
    split_sizes: number of scenes of each of 'train', 'validation', 'test'.
  """
  split_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _configs(default, tiny, prefix=''):
  """A builder's 'default' config and its 'tiny' one for tests and smoke runs.

  Args:
    default: the default split sizes, {'train': n, 'validation': n, 'test': n}.
    tiny: the tiny config's split sizes.
    prefix: starts the configs' descriptions, which then count the scenes.
  """
  def scenes(sizes):
    return (f"{prefix}{sizes['train']} train, {sizes['validation']} validation"
            f" and {sizes['test']} test scenes")
  return [
      ShapesConfig(name='default', description=f'{scenes(default)}.',
                   split_sizes=default),
      ShapesConfig(name='tiny',
                   description=f'{scenes(tiny)}, for tests and smoke runs.',
                   split_sizes=tiny),
  ]


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
  BUILDER_CONFIGS = _configs({'train': 6000, 'validation': 500, 'test': 1000},
                             {'train': 64, 'validation': 16, 'test': 32})
  # `(split, index) -> [(key, example)]` of one scene (`parallel.generate`).
  _examples_of = staticmethod(examples.scene_examples)
  _in_workers = True  # Whether large splits are rendered by worker processes.
  _pool = None  # The `parallel.RenderPool` of the build under way.

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'Cluttered synthetic scenes of circles, triangles, squares, stars, '
            'crosses and crescents (filled or outlined, textured, rotated up '
            'to 20 degrees, partly occluded), over gradients with lines and '
            'distractor blobs, with COCO-style box annotations. Rendered '
            'deterministically offline by detector.data.shapes.render.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format='png'),
            'image/id': np.int64,
            'image/filename': tfds.features.Text(),
            'objects': tfds.features.Sequence({
                'id': np.int64,
                'area': np.int64,
                'bbox': tfds.features.BBoxFeature(),
                'label': tfds.features.ClassLabel(names=CLASS_NAMES),
                'is_crowd': np.bool_,
            }),
        }),
        homepage=None,
    )

  def download_and_prepare(self, *args, **kwargs):
    """As TFDS's; with `_in_workers`, the splits share one process pool."""
    if not self._in_workers:
      return super().download_and_prepare(*args, **kwargs)
    with parallel.RenderPool(parallel.default_workers()) as pool:
      self._pool = pool
      try:
        return super().download_and_prepare(*args, **kwargs)
      finally:
        self._pool = None

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is rendered locally; nothing to download.
    return {split: self._generate_examples(split, size)
            for split, size in self.builder_config.split_sizes.items()}

  def _generate_examples(self, split, size):
    """Yields `(key, example)` for the `size` scenes of `split`."""
    return parallel.generate(self._examples_of, split, size, self._pool)


class ShapesObjects(Shapes):
  """Crops of the `shapes` objects, labelled by class: the built-in offline
  image-classification dataset (`configs/classify.py`'s default). Splits are
  made as `Shapes` makes them, from the scenes of each split."""

  name = 'shapes_objects'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = _configs({'train': 1500, 'validation': 250, 'test': 500},
                             {'train': 24, 'validation': 8, 'test': 8},
                             prefix='The objects of ')
  _examples_of = staticmethod(examples.object_examples)
  # Its examples are cheap (small crops to encode): starting workers costs more
  # than they save.
  _in_workers = False

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
