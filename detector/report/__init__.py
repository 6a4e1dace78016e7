"""The evaluation report: where a trained model fails, as one HTML page.

    python -m detector.report --workdir=DIR [--split=test]

reads what evaluation wrote in DIR/eval (`metrics_<split>.json` and, for a
detector, `groundtruth_` and `detections_<split>.json`; for a classifier,
`predictions_<split>.json`) and writes

  DIR/eval/report_<split>.html   the page
  DIR/eval/report_<split>/*.png  its figures
  DIR/eval/report_<split>.json   its numbers (detectors)

and adds the F1-optimal score thresholds to `metrics_<split>.json`
("f1_optimal"). Training writes it for each evaluated split when
`config.eval_report` is on. A detector's report: precision-recall curves per
class at IoU 0.5 and 0.75 with the operating point, F1 against score
threshold, the confusion matrix with a background class, TIDE's error
breakdown, AP by object size and aspect ratio, and the images with the most
errors drawn. A classifier's: the confusion matrix, P/R/F1 per class and the
most confused class pairs with example images.
"""

import json
import os
from typing import Callable, Dict, Iterable, Optional

from absl import logging
import numpy as np

from detector import errors

ImageReader = Callable[[Iterable[int]], Dict[int, np.ndarray]]


def _read_json(path: str):
  if not os.path.isfile(path):
    raise errors.ConfigError(
        f'{path} is missing: evaluate first (main.py --mode=evaluate '
        '--workdir=...)')
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise errors.ConfigError(f'{path}: not valid JSON ({e})') from e


def split_reader(config, split: str, task: str) -> ImageReader:
  """Reads chosen images of `split` of the config's dataset: by image id
  (as in the COCO files) for a detector, by position for a classifier."""
  def read(wanted: Iterable[int]) -> Dict[int, np.ndarray]:
    # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds
    from detector.data import detection
    from detector.data import loading
    # pylint: enable=g-import-not-at-top
    wanted = set(int(i) for i in wanted)
    builder = loading.get_builder(config)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if task == 'detection':
      ds = ds.map(lambda ex: {'key': detection.image_id(ex),
                              'image': ex['image']})
    else:
      ds = ds.enumerate().map(lambda i, ex: {'key': i, 'image': ex['image']})
    found = {}
    for ex in tfds.as_numpy(ds):
      key = int(ex['key'])
      if key in wanted:
        image = ex['image']
        found[key] = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image
        if len(found) == len(wanted):
          break
    return found
  return read


def write(workdir: str, split: str = 'test', config=None, writer=None,
          step: Optional[int] = None, max_images: int = 12,
          images: Optional[ImageReader] = None) -> dict:
  """Writes the report of `split` from DIR/eval (see the module docstring).

  Args:
    workdir: the training workdir.
    split: the evaluated split.
    config: the run's config (for the dataset's images); default, the one
      saved with the workdir's latest checkpoint.
    writer: a CLU metric writer: the figures also go to TensorBoard.
    step: the step the figures are written at (default: the metrics').
    max_images: images with the most errors drawn.
    images: reads images by id (see `split_reader`); default from `config`.

  Returns:
    {'html': path of the page, 'figures': {name: PNG path}}.

  Raises:
    errors.ConfigError: the evaluation files are missing or unreadable.
  """
  # pylint: disable=g-import-not-at-top
  from detector.report import classification
  from detector.report import detection
  from detector.report import page
  # pylint: enable=g-import-not-at-top
  out_dir = os.path.join(workdir, 'eval')
  metrics_path = os.path.join(out_dir, f'metrics_{split}.json')
  metrics = _read_json(metrics_path)
  task = 'classification' if 'accuracy' in metrics else 'detection'
  if images is None:
    try:
      if config is None:
        from detector.predict import jax_backend  # pylint: disable=g-import-not-at-top
        config = jax_backend.workdir_config(workdir)
      images = split_reader(config, split, task)
    except errors.ConfigError as e:
      logging.warning('Report of %s: no images drawn (%s)', split, e)
  step = metrics.get('step') if step is None else step
  title = f'Evaluation report: {split} split'
  count = metrics.get('num_images', metrics.get('num_examples', '?'))
  subtitle = (f'{os.path.abspath(workdir)}, step {step}, dataset '
              f'{metrics.get("dataset", "?")}, {count} images')

  def guarded(reader):
    if reader is None:
      return None
    def read(wanted):
      try:
        return reader(wanted)
      except Exception as e:  # pylint: disable=broad-except
        # The numbers stand without the pictures: say why, keep the report.
        logging.warning('Report of %s: images not read (%s: %s)', split,
                        type(e).__name__, e)
        return {}
    return read

  if task == 'detection':
    groundtruth = _read_json(os.path.join(out_dir, f'groundtruth_{split}.json'))
    detections = _read_json(os.path.join(out_dir, f'detections_{split}.json'))
    threshold = float(metrics['prf']['score_threshold'])
    analysis = detection.analyse(groundtruth, detections, threshold)
    names = [str(c.get('name', c['id'])) for c in
             sorted(groundtruth['categories'], key=lambda c: c['id'])]
    worst = detection.worst_images(groundtruth, detections, analysis,
                                   max_images)
    blocks = detection.sections(analysis, metrics, names, guarded(images),
                                worst)
    numbers = detection.summary(analysis)
    with open(os.path.join(out_dir, f'report_{split}.json'), 'w') as f:
      json.dump(numbers, f, indent=1)
    metrics['f1_optimal'] = numbers['f1_optimal']
    with open(metrics_path, 'w') as f:
      f.write(json.dumps(metrics))
    scalars = {f'{split}/tide_dAP50_{k}': v
               for k, v in numbers['errors']['delta_ap50'].items()}
  else:
    predictions = _read_json(os.path.join(out_dir,
                                          f'predictions_{split}.json'))
    blocks = classification.sections(metrics, predictions, guarded(images))
    scalars = {}
  result = page.write(os.path.join(out_dir, f'report_{split}.html'), title,
                      subtitle, blocks)
  if writer is not None and step is not None:
    figures_by_name = {b[1]: b[3] for b in blocks if b[0] == 'figure'}
    writer.write_images(step, {f'{split}/report/{name}': pixels[None]
                               for name, pixels in figures_by_name.items()})
    if scalars:
      writer.write_scalars(step, scalars)
  logging.info('Wrote the %s report: %s', split, result['html'])
  return result
