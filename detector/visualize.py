"""Drawing boxes on images for TensorBoard summaries (numpy; PNG files via PIL)."""

import numpy as np

GROUND_TRUTH_COLOUR = (0, 220, 0)
PREDICTION_COLOUR = (255, 40, 40)


def draw_boxes(image, boxes, colour, thickness=1):
  """Draws box outlines on a copy of `image`.

  Args:
    image: uint8 [H, W, 3].
    boxes: [N, 4] `[ymin, xmin, ymax, xmax]` in pixels of `image`
      (pixel-edge coordinates: the box covers rows ymin..ymax-1).
    colour: RGB triple.
    thickness: line width in pixels, drawn inside the box.

  Returns:
    uint8 [H, W, 3].
  """
  out = np.array(image, dtype=np.uint8, copy=True)
  h, w = out.shape[:2]
  for ymin, xmin, ymax, xmax in np.asarray(boxes, np.float64).reshape(-1, 4):
    y0, x0 = int(np.clip(np.floor(ymin), 0, h - 1)), int(np.clip(np.floor(xmin), 0, w - 1))
    y1, x1 = int(np.clip(np.ceil(ymax) - 1, 0, h - 1)), int(np.clip(np.ceil(xmax) - 1, 0, w - 1))
    if y1 < y0 or x1 < x0:
      continue
    t = thickness
    out[y0:min(y0 + t, y1 + 1), x0:x1 + 1] = colour
    out[max(y1 - t + 1, y0):y1 + 1, x0:x1 + 1] = colour
    out[y0:y1 + 1, x0:min(x0 + t, x1 + 1)] = colour
    out[y0:y1 + 1, max(x1 - t + 1, x0):x1 + 1] = colour
  return out


def detections_figure(image, gt_boxes, pred_boxes, upscale=2):
  """Ground truth (green) and predictions (red) on one image, enlarged."""
  image = np.repeat(np.repeat(np.asarray(image, np.uint8), upscale, 0), upscale, 1)
  image = draw_boxes(image, np.asarray(gt_boxes) * upscale, GROUND_TRUTH_COLOUR)
  return draw_boxes(image, np.asarray(pred_boxes) * upscale, PREDICTION_COLOUR)


def save_png(image, path):
  """Writes a uint8 [H, W, 3] image as PNG."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.asarray(image, np.uint8)).save(path)
