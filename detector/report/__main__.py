r"""Writes a trained model's evaluation report (see `detector.report`).

  python -m detector.report --workdir=DIR [--split=test] [--max_images=12]

The split must have been evaluated (training does it; `main.py
--mode=evaluate` does it again). Exit status 0, or 2 with a one-line error
naming the missing or unreadable file.
"""

import sys

from absl import flags

from detector import errors
from detector import runtime

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training workdir.')
_SPLIT = flags.DEFINE_string('split', 'test', 'The evaluated split.')
_MAX_IMAGES = flags.DEFINE_integer('max_images', 12, 'Images with the most '
                                   'errors drawn.')
_TENSORBOARD = flags.DEFINE_bool('tensorboard', True, 'Also write the figures '
                                 'into the workdir\'s TensorBoard events.')


def main(argv):
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    return 2
  if not _WORKDIR.value:
    print('error: --workdir is required', file=sys.stderr)
    return 2
  from detector import report  # pylint: disable=g-import-not-at-top
  writer = None
  try:
    if _TENSORBOARD.value:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      writer = metric_writers.create_default_writer(_WORKDIR.value)
    out = report.write(_WORKDIR.value, _SPLIT.value, writer=writer,
                       max_images=_MAX_IMAGES.value)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  finally:
    if writer is not None:
      writer.close()
  print(out['html'])
  return 0


def run():
  """The program: `python -m detector.report` and `detector-report`."""
  runtime.run_program(__name__, lambda argv: sys.exit(main(argv)))


if __name__ == '__main__':
  run()
