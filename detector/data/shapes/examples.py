"""`shapes` scenes as the examples the TFDS builders store.

`scene_examples` gives the `shapes` example of a scene, `object_examples` the
`shapes_objects` examples of its object crops; both are functions of
(split, index) alone and are what worker processes run (`parallel`).
"""

import io
import zlib

import numpy as np
from PIL import Image

from detector.data.shapes import render

# image/id = offset of the split + index + 1: unique across splits (a split
# holds fewer than 10^6 examples) and never 0, which some tools treat as unset.
_SPLIT_ID_OFFSET = {'train': 0, 'validation': 1_000_000, 'test': 2_000_000}
# Object ids: image/id * _OBJECTS_PER_IMAGE_ID + k + 1 for the k-th object.
_OBJECTS_PER_IMAGE_ID = 100

# An object becomes a `shapes_objects` example when its box is at least this
# many pixels on its shorter side and its visible silhouette covers this much
# of its box (occluded objects would make ambiguous crops).
MIN_OBJECT_SIDE = 16
MIN_VISIBLE_FILL = 0.3
CROP_MARGIN = 0.2   # Context around the box, a fraction of its size per side.


def image_id(split, index):
  """The `image/id` of example `index` of `split`."""
  return _SPLIT_ID_OFFSET[split] + index + 1


def make_example(split, index):
  """Renders example `index` of `split` as a `shapes` feature dict.

  Args:
    split: 'train', 'validation' or 'test'.
    index: example index within the split.

  Returns:
    A dict matching the builder's features: the image as PNG bytes, the other
    values as numpy values.
  """
  scene = render.render_scene(render.scene_rng(split, index))
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


def scene_examples(split, index):
  """`[(key, example)]`: the `shapes` example of scene `index`, keyed by id."""
  return [(image_id(split, index), make_example(split, index))]


def encode_png(image):
  """Encodes an RGB image as PNG bytes.

  Args:
    image: uint8 [H, W, 3].

  Returns:
    The PNG file as bytes, lossless.
  """
  buffer = io.BytesIO()
  # Per-pixel noise leaves zlib's string matching nothing to find: entropy
  # coding alone is the fastest setting that still compresses.
  Image.fromarray(image).save(buffer, format='PNG', compress_level=1,
                              compress_type=zlib.Z_HUFFMAN_ONLY)
  return buffer.getvalue()


def object_crops(split, index):
  """The objects of scene `index` of `split` that make `shapes_objects` examples.

  Returns:
    `[(crop, label, k)]`: uint8 [h, w, 3] crop of the object's box grown by
    `CROP_MARGIN` per side (clipped to the image), its class index and its
    number `k` in the scene.
  """
  scene = render.render_scene(render.scene_rng(split, index))
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


def object_examples(split, index):
  """`[(key, example)]`: the `shapes_objects` examples of scene `index`.

  The key and `image/filename` is '<scene image/id as 12 digits>_<k>.png'.
  """
  scene_id = image_id(split, index)
  pairs = []
  for crop, label, k in object_crops(split, index):
    name = f'{scene_id:012d}_{k}.png'
    pairs.append((name, {'image': encode_png(crop), 'image/filename': name,
                         'label': label}))
  return pairs
