r"""Prints a dataset's data-quality report, before any training.

  python -m detector.data.report coco_json:DIR [--data_dir=DIR] [--rebuild]
  python -m detector.data.report shapes/tiny [--data_dir=DIR]

For a folder spec (`coco_json:DIR`, `voc:DIR`, `yolo:DIR`, `folder:DIR`) this converts the
folder as training would (or reuses the up-to-date conversion) and prints the
report written beside it: images and boxes per class and split, box size and
aspect-ratio quantiles (plots in PNG beside it), and every problem with its
files and counts (see `detector.data.quality`). For a TFDS name it prints the
same statistics of the prepared dataset, and boxes of zero area (for a
classification dataset, images per class and image sizes). The whole
report also goes to stdout as JSON with --json. Exit status: 0, or 2 when the
dataset cannot be read (the message names the file and what was expected).
"""

import json
import sys

from absl import app
from absl import flags
import numpy as np

from detector import errors
from detector import runtime
from detector.data import datasets
from detector.data import formats
from detector.data import quality

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (also where '
                                'folder conversions are cached).')
_REBUILD = flags.DEFINE_bool('rebuild', False, 'Convert a folder again even '
                             'if an up-to-date conversion exists.')
_JSON = flags.DEFINE_bool('json', False, 'Print the report as JSON.')


def tfds_report(spec, data_dir):
  """Statistics of a prepared TFDS detection dataset."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = datasets.get_builder(spec, data_dir)
  builder.download_and_prepare()
  if 'objects' not in builder.info.features:
    return _tfds_classification_report(spec, builder)
  names = list(builder.info.features['objects']['label'].names)
  source = formats.Source('tfds', spec, names, [], {})
  examples, problems = {}, quality.Report()
  for split in builder.info.splits:
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: dict(ex, image=tf.shape(ex['image'])[:2]))
    exs = []
    for ex in tfds.as_numpy(ds):
      h, w = (int(v) for v in ex['image'])
      b = ex['objects']['bbox'].astype(np.float64) * [h, w, h, w]
      xyxy = b[:, [1, 0, 3, 2]]
      ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
      for i in np.flatnonzero(~ok):
        problems.add('box_degenerate', f'{split} image/id {ex["image/id"]} box {i}')
      exs.append(quality.Example(
          split=split, image_id=int(ex['image/id']), filename='', encoded=b'',
          height=h, width=w, boxes=xyxy[ok],
          labels=ex['objects']['label'][ok].astype(np.int64),
          crowd=np.zeros(int(ok.sum()), bool), sha1=''))
      problems.totals['images_read'] += 1
      problems.totals['images_kept'] += 1
      problems.totals['boxes_read'] += len(ok)
      problems.totals['boxes_kept'] += int(ok.sum())
      problems.totals['boxes_dropped'] += int((~ok).sum())
    examples[split] = exs
  return quality.build_report(spec, source, examples, problems)


def _tfds_classification_report(spec, builder, label_key='label'):
  """Statistics of a prepared TFDS classification dataset: images per class
  and split, image size quantiles."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from detector.data import classification  # pylint: disable=g-import-not-at-top
  names = classification.class_names(builder, label_key, spec)
  source = formats.Source('folder', spec, names, list(range(len(names))), {})
  examples, problems = {}, quality.Report()
  for split in builder.info.splits:
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: {'size': tf.shape(ex['image'])[:2],
                            'label': ex[label_key]})
    examples[split] = [quality.Example(
        split=split, image_id=0, filename='', encoded=b'', height=int(ex['size'][0]),
        width=int(ex['size'][1]), boxes=np.zeros((0, 4)),
        labels=np.zeros(0, np.int64), crowd=np.zeros(0, bool), sha1='',
        label=int(ex['label'])) for ex in tfds.as_numpy(ds)]
    problems.totals['images_read'] += len(examples[split])
    problems.totals['images_kept'] += len(examples[split])
  return quality.build_report(spec, source, examples, problems)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: python -m detector.data.report SPEC '
                         '[--data_dir=DIR] [--rebuild] [--json]')
  spec = argv[1]
  try:
    parsed = formats.parse_spec(spec)
    if parsed:
      _, report = datasets.convert(*parsed, datasets.data_dir(_DATA_DIR.value),
                                   verbose=False, force=_REBUILD.value)
    else:
      report = tfds_report(spec, _DATA_DIR.value)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(report, indent=1) if _JSON.value
        else quality.format_report(report, max_files=20))
  return 0


def run():
  """The program: `python -m detector.data.report` and `detector-data-report`."""
  runtime.run_program(__name__, lambda argv: sys.exit(main(argv)),
                      xla_cpu=False)


if __name__ == '__main__':
  run()
