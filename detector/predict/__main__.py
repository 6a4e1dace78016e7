r"""`python -m detector.predict --model=PATH --output=OUT INPUT...`

Predicts on image files, folders (recursively) and video files (every
`--video_every`-th frame, decoded by PyAV) with any model `detector.load`
opens (a workdir, a weights file, an exported artefact), and writes to OUT:

  predictions.jsonl   one line per image or frame: source, height, width and
                      the detections (class_id, class_name, category_id,
                      score, box_xyxy in the image's pixels) or the top-k
                      classes (`--format=jsonl`, the default);
  detections.json     a COCO results file (`--format=coco`): image_id, the
                      dataset's category_id, bbox [x, y, w, h], score; an
                      image's id is its file name's stem when that is an
                      integer (COCO's and shapes' files), else its position
                      in the input; images.json lists every id's source;
  drawn/              with `--draw`, each image with its boxes and labels.

An input that cannot be read (missing, empty, corrupt, too many pixels) is
reported on stderr by name and the others go on; the exit status is then 1.
A progress bar shows images/s, and a summary line ends the run.
"""

import os
import sys
import time

from absl import app
from absl import flags

from detector import errors
from detector import runtime

flags.DEFINE_string('model', None, 'A training workdir, a weights file or an '
                    'exported artefact.')
flags.DEFINE_string('output', None, 'The directory to write into.')
flags.DEFINE_enum('format', 'jsonl', ['jsonl', 'coco'], 'What to write.')
flags.DEFINE_bool('draw', False, 'Also write the images with boxes drawn.')
flags.DEFINE_float('score_threshold', 0.0, 'Keep detections scoring at least '
                   'this (on top of the model\'s own threshold).')
flags.DEFINE_integer('max_detections', None, 'Keep at most this many per image.')
flags.DEFINE_integer('top_k', 5, 'Classes per image, for a classifier.')
flags.DEFINE_integer('batch_size', 8, 'Images per model call.')
flags.DEFINE_integer('step', None, 'A workdir\'s checkpoint step (default: '
                     'the latest).')
flags.DEFINE_integer('video_every', 1, 'Predict on every N-th video frame.')
flags.mark_flags_as_required(['model', 'output'])
FLAGS = flags.FLAGS


def _inputs(paths, failures):
  """(name, uint8 image) of every image and frame; failures are collected."""
  # pylint: disable=g-import-not-at-top
  from detector.predict import images as images_lib
  for kind, path in images_lib.expand(paths):
    if kind == 'missing':
      failures.append(f'{path}: no such file or directory')
    elif kind == 'video':
      try:
        for index, frame in images_lib.video_frames(path, FLAGS.video_every):
          yield f'{path}#frame={index}', frame
      except images_lib.ImageError as e:
        failures.append(str(e))
    else:
      try:
        yield path, images_lib.read(path)
      except images_lib.ImageError as e:
        failures.append(str(e))


def _batches(items, size):
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Give one or more images, folders or videos after '
                         'the flags.')
  runtime.tensorflow_on_cpu()
  runtime.quiet_library_logs()
  # pylint: disable=g-import-not-at-top
  import tqdm
  import detector.predict as predict_lib
  from detector.predict import writers
  try:
    predictor = predict_lib.load(FLAGS.model, step=FLAGS.step,
                                 batch_size=FLAGS.batch_size)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  os.makedirs(FLAGS.output, exist_ok=True)
  failures = []
  try:
    out = writers.Writer(FLAGS.output, FLAGS.format, predictor.info,
                         FLAGS.draw)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  start = time.perf_counter()
  count = shown = 0
  with out, tqdm.tqdm(unit='image', file=sys.stderr, dynamic_ncols=True) as bar:
    for batch in _batches(_inputs(paths, failures), FLAGS.batch_size):
      for (_, image), result in zip(batch, predictor.predict_images(
          batch, FLAGS.score_threshold, FLAGS.max_detections, FLAGS.top_k)):
        out.write(result, image)
      count += len(batch)
      bar.update(len(batch))
      for message in failures[shown:]:
        bar.write(f'error: {message}', file=sys.stderr)
      shown = len(failures)
  seconds = time.perf_counter() - start
  for message in failures[shown:]:
    print(f'error: {message}', file=sys.stderr)
  print(f'predicted {count} images in {seconds:.1f} s '
        f'({count / max(seconds, 1e-9):.1f} images/s) with '
        f'{predictor.info.format} model {FLAGS.model}; {len(failures)} '
        f'failed; wrote {", ".join(out.files)}', flush=True)
  sys.exit(1 if failures else 0)


def run():
  """The program: `python -m detector.predict` and `detector-predict`."""
  runtime.run_program(__name__, main)


if __name__ == '__main__':
  run()
