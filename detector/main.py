"""Trains or evaluates a model described by a config file.

    python main.py --config=configs/cnn.py --workdir=workdirs/cnn
    python main.py --config=configs/cnn.py --workdir=workdirs/cnn \\
        --config.batch_size=32 --config.model.head=retinanet
    python main.py --config=configs/cnn.py --workdir=workdirs/cnn \\
        --mode=evaluate

(`detector-train` is the same program, installed with the package.) Several
processes (README "Several hosts"): the same command in each, with
`--distributed` on a cluster JAX detects (Cloud TPU VM, SLURM, Open MPI), or
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from detector import distributed
from detector import errors
from detector import runtime
from detector import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py[:arg]).',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and eval/.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'],
                  'train (resumes from workdir, evaluates at the end) or '
                  'evaluate (scores the latest checkpoint).')
flags.DEFINE_bool('distributed', False, 'Initialise JAX\'s distributed runtime '
                  'from what the cluster set (Cloud TPU VM pod slices, SLURM, '
                  'Open MPI, Kubernetes).')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0\'s '
                    'coordinator, for an explicit multi-process run.')
flags.DEFINE_integer('num_processes', None, 'Processes in the run (explicit).')
flags.DEFINE_integer('process_id', None, 'This process\'s index, 0..N-1 '
                     '(explicit).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  runtime.tensorflow_on_cpu()
  runtime.quiet_library_logs()
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                           FLAGS.process_id, auto=FLAGS.distributed)
    logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
                 jax.process_count(), jax.local_devices())
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    else:
      train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
  except (errors.ConfigError, errors.TrainingDivergedError,
          errors.CheckpointError) as e:
    # A user's mistake or a full disk: one clear line, no traceback.
    logging.error('%s', e)
    raise SystemExit(f'error: {e}') from None


def run():
  """The program: `python main.py ...` and the `detector-train` script."""
  runtime.run_program(__name__, main,
                      flags_parser=runtime.parse_config_flags)


if __name__ == '__main__':
  run()
