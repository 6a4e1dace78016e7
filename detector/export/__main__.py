"""`python -m detector.export --model=PATH --format=FORMAT --output=OUT`:
see `detector.export`."""

import sys

from absl import flags

from detector import errors
from detector import export
from detector import runtime

flags.DEFINE_string('model', None, 'A training workdir or a weights file '
                    '(python -m detector.port).')
flags.DEFINE_enum('format', None, sorted(export.FORMATS), 'The artefact.')
flags.DEFINE_string('output', None, 'The artefact to write (a directory for '
                    'saved_model).')
flags.DEFINE_integer('step', None, 'A workdir\'s checkpoint step (default: '
                     'the latest).')
flags.DEFINE_integer('calibration_images', 200, 'tflite_int8: images that '
                     'calibrate the quantisation.')
flags.DEFINE_string('calibration_dir', '', 'tflite_int8: a folder of images '
                    'to calibrate with (default: the training split of the '
                    'workdir\'s dataset; needed for a weights file).')
flags.DEFINE_integer('monitoring_images', 1000, 'Validation images that the '
                     'monitoring reference beside the artefact is made of '
                     '(detector.serve; 0 skips it).')
flags.mark_flags_as_required(['model', 'format', 'output'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  runtime.tensorflow_on_cpu()
  runtime.quiet_library_logs()
  try:
    path = export.export(FLAGS.model, FLAGS.format, FLAGS.output,
                         step=FLAGS.step,
                         calibration_images=FLAGS.calibration_images,
                         calibration_dir=FLAGS.calibration_dir,
                         monitoring_images=FLAGS.monitoring_images)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'wrote {path} ({FLAGS.format})')


def run():
  """The program: `python -m detector.export` and `detector-export`."""
  runtime.run_program(__name__, main)


if __name__ == '__main__':
  run()
