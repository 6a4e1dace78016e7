"""`python -m detector.port`: see `detector.port`."""

import sys

from absl import flags

from detector import errors
from detector import port
from detector import runtime

flags.DEFINE_string('source', None, 'Where the weights come from: one of '
                    f'{sorted(port.SOURCES)}, or workdir (a detector this '
                    'project trained: --input=WORKDIR).')
flags.DEFINE_string('arch', None, 'Architecture in the source\'s naming, e.g. resnet50.')
flags.DEFINE_string('input', None, 'Local checkpoint file (else the source '
                    'library downloads its default weights).')
flags.DEFINE_string('output', None, 'The weights file to write (.npz).')
flags.mark_flags_as_required(['source', 'output'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  try:
    if FLAGS.source != 'workdir' and not FLAGS.arch:
      raise errors.ConfigError(f'--source={FLAGS.source} needs --arch')
    metadata = port.port(FLAGS.source, FLAGS.arch, FLAGS.output, FLAGS.input)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'wrote {FLAGS.output}: {metadata["arch"]} from {metadata["origin"]}')


def run():
  """The program: `python -m detector.port` and `detector-port`."""
  runtime.run_program(__name__, main, xla_cpu=False)


if __name__ == '__main__':
  run()
