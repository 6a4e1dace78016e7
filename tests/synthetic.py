"""Random detection batches for tests that need a step's input, not a dataset.

Importable in-process (pytest puts tests/ on sys.path) and from the
subprocess scripts of the multi-device tests (which add tests/ themselves).
"""

import numpy as np


def detection_batch(config, rng, corner_max=40.0, size=(6.0, 24.0)):
  """A global batch of `config`'s shapes: random uint8 images and up to
  `config.input.max_boxes` random boxes per image (top-left corners in
  [0, corner_max), sides in `size`, each box kept with probability 1/2).

  Args:
    config: a detection config (batch_size, image_size, input.max_boxes).
    rng: a numpy Generator, or a seed for one.
    corner_max: corners lie below this, in pixels; boxes reach at most
      corner_max + size[1], which must fit config.image_size.
    size: (min, max) box side in pixels.

  Returns:
    {'image' uint8 [B, H, W, 3], 'boxes' float32 [B, K, 4] yxyx pixels,
     'labels' int32 [B, K] in [0, 6), 'box_mask' bool [B, K]}.
  """
  rng = np.random.default_rng(rng)
  b, (h, w), k = config.batch_size, config.image_size, config.input.max_boxes
  yx = rng.uniform(0, corner_max, (b, k, 2))
  sides = rng.uniform(*size, (b, k, 2))
  return {'image': rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8),
          'boxes': np.concatenate([yx, yx + sides], -1).astype(np.float32),
          'labels': rng.integers(0, 6, (b, k)).astype(np.int32),
          'box_mask': rng.random((b, k)) < 0.5}
