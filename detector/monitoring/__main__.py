r"""`python -m detector.monitoring --model=PATH [--images=DIR | --split=S]`

Writes the monitoring reference of a model (`detector.monitoring.reference`)
that the server (`python -m detector.serve`) watches its traffic against.
Training and `detector.export` write it already; this is for a model made
before, or for a reference of other images than the validation split.
"""

from absl import app
from absl import flags

from detector import errors
from detector import runtime

flags.DEFINE_string('model', None, 'A training workdir, a weights file or an '
                    'exported artefact.')
flags.DEFINE_string('images', '', 'A folder of images to use instead of the '
                    'validation split (needed for a weights file).')
flags.DEFINE_string('split', None, 'The split of the training data (default: '
                    'the run\'s eval_split).')
flags.DEFINE_integer('max_images', 1000, 'Use at most this many images.')
flags.mark_flags_as_required(['model'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  runtime.tensorflow_on_cpu()
  runtime.quiet_library_logs()
  from detector.monitoring import reference  # pylint: disable=g-import-not-at-top
  try:
    path = reference.write_for_model(FLAGS.model, FLAGS.images, FLAGS.split,
                                     FLAGS.max_images)
  except errors.ConfigError as e:
    raise SystemExit(f'error: {e}') from None
  print(path)


def run():
  """The program: `python -m detector.monitoring` and `detector-monitoring`."""
  runtime.run_program(__name__, main)


if __name__ == '__main__':
  run()
