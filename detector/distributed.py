"""Several processes, one program: `jax.distributed.initialize` from flags.

JAX's distributed runtime does the work; this module only decides how to
call it, before anything touches a device:

  * `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`:
    explicit, for GPU clusters without a scheduler JAX knows, and for local
    testing (several processes on one machine, CPU collectives over gloo);
  * `--distributed`: JAX's own detection (Cloud TPU VM pod slices, SLURM,
    Open MPI, Kubernetes), reading what the scheduler set;
  * neither: one process, nothing initialised.

Every process then runs the same command: each reads its own slice of the
data (`tfds.even_splits`), the jitted step's collectives span all devices,
Orbax writes and restores checkpoints collectively, and only process 0
writes logs, metrics and evaluation files.
"""

from typing import Optional

from absl import logging
import jax

from detector import errors


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               auto: bool = False) -> bool:
  """Initialises JAX's distributed runtime when asked to; returns whether."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise errors.ConfigError(
          '--coordinator_address, --num_processes and --process_id go '
          f'together; got {coordinator_address!r}, {num_processes!r}, '
          f'{process_id!r} (or use --distributed on a cluster JAX detects)')
    if not 0 <= process_id < num_processes:
      raise errors.ConfigError(f'--process_id={process_id} must be in '
                               f'[0, --num_processes={num_processes})')
  elif not auto:
    return False
  # Cross-process collectives of the CPU backend (a no-op for GPU and TPU,
  # which bring their own).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if auto and not any(v is not None for v in explicit):
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  logging.info('JAX distributed: process %d of %d, %d local / %d global '
               'devices.', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
