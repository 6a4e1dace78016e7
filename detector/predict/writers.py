"""What `python -m detector.predict` writes: JSON lines, a COCO results
file, and drawn images."""

import json
import os
import re

import numpy as np
from PIL import Image
from PIL import ImageDraw

from detector import errors
from detector import visualize

PREDICTIONS = 'predictions.jsonl'
COCO_RESULTS = 'detections.json'
COCO_IMAGES = 'images.json'
DRAWN = 'drawn'


class Writer:
  """Writes each result as it comes; the COCO file when closed."""

  def __init__(self, directory, fmt, info, draw=False):
    if fmt == 'coco' and info.task != 'detection':
      raise errors.ConfigError('--format=coco writes detections; this model '
                               'is a classifier (use --format=jsonl)')
    self.directory, self.fmt, self.info, self.draw = directory, fmt, info, draw
    self.files = []
    self._lines = None
    self._coco, self._ids, self._used = [], {}, set()
    self._drawn = set()

  def __enter__(self):
    if self.fmt == 'jsonl':
      self._lines = open(self._path(PREDICTIONS), 'w')  # pylint: disable=consider-using-with
    if self.draw:
      os.makedirs(os.path.join(self.directory, DRAWN), exist_ok=True)
      self.files.append(os.path.join(self.directory, DRAWN))
    return self

  def _path(self, name):
    path = os.path.join(self.directory, name)
    self.files.append(path)
    return path

  def write(self, result, image):
    if self._lines is not None:
      self._lines.write(json.dumps(result.to_json()) + '\n')
    if self.fmt == 'coco':
      self._coco.extend(coco_results(result, self._image_id(result.source)))
    if self.draw:
      self._draw(result, image)

  def _image_id(self, source):
    """The file name's stem when it is an integer and unused, else the next
    free position."""
    stem = os.path.splitext(os.path.basename(source))[0]
    image_id = int(stem) if stem.isdigit() else len(self._ids) + 1
    while image_id in self._used:
      image_id += 1
    self._used.add(image_id)
    self._ids[image_id] = source
    return image_id

  def _draw(self, result, image):
    name = re.sub(r'[^\w.-]+', '_', os.path.basename(result.source))
    stem, n = os.path.splitext(name)[0], 1
    while (stem if n == 1 else f'{stem}_{n}') in self._drawn:
      n += 1
    stem = stem if n == 1 else f'{stem}_{n}'
    self._drawn.add(stem)
    draw_result(result, image).save(
        os.path.join(self.directory, DRAWN, f'{stem}.png'))

  def __exit__(self, *exc):
    if self._lines is not None:
      self._lines.close()
    if self.fmt == 'coco':
      with open(self._path(COCO_RESULTS), 'w') as f:
        f.write(json.dumps(self._coco))
      with open(self._path(COCO_IMAGES), 'w') as f:
        json.dump({str(k): v for k, v in self._ids.items()}, f, indent=1)


def coco_results(result, image_id):
  """COCO result dicts of one image's Detections: bbox `[x, y, w, h]` in the
  image's pixels, the dataset's category ids; zero-area boxes left out, and
  rounded as `--mode=evaluate` writes them."""
  out = []
  boxes = np.asarray(result.boxes, np.float64)  # As train.evaluate: float64.
  for (x0, y0, x1, y1), score, category in zip(boxes, result.scores,
                                                result.category_ids):
    w, h = x1 - x0, y1 - y0
    if w <= 0 or h <= 0:
      continue
    out.append({'image_id': int(image_id), 'category_id': int(category),
                'bbox': [round(float(v), 3) for v in (x0, y0, w, h)],
                'score': round(float(score), 5)})
  return out


def draw_result(result, image) -> Image.Image:
  """The image with its detections drawn and labelled (or its top class
  written in the corner, for a classifier)."""
  canvas = Image.fromarray(np.asarray(image, np.uint8))
  pen = ImageDraw.Draw(canvas)
  if not hasattr(result, 'boxes'):
    if result.class_names:
      pen.text((2, 2), f'{result.class_names[0]} '
               f'{float(result.probabilities[0]):.2f}',
               fill=visualize.PREDICTION_COLOUR)
    return canvas
  for (x0, y0, x1, y1), name, score in zip(result.boxes, result.class_names,
                                           result.scores):
    pen.rectangle([float(x0), float(y0), float(x1), float(y1)],
                  outline=visualize.PREDICTION_COLOUR, width=2)
    pen.text((float(x0) + 2, float(y0) + 1), f'{name} {float(score):.2f}',
             fill=visualize.PREDICTION_COLOUR)
  return canvas
