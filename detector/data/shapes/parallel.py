"""A split's examples in index order, rendered by worker processes if large.

`generate(examples_of, split, size, pool)` yields what `examples_of(split, i)`
returns for i = 0 .. size - 1, in that order. Examples depend on (split, i)
alone, so the result does not depend on the pool or its number of workers.

The pool is the standard library's, with 'spawn' workers: 'fork' is unsafe
beside the threads of TensorFlow and JAX. A spawned worker imports the
parent's main script again (whose top-level code must sit under
`if __name__ == '__main__':`), then this package; until one has, the parent
renders examples itself.
"""

import collections
import concurrent.futures
from concurrent.futures import process as futures_process
import multiprocessing
import os

# Splits of fewer examples are rendered in this process: starting workers
# would cost more than it saves.
PARALLEL_MIN_EXAMPLES = 256
_CHUNK = 8  # Examples per task: spreads a task's messaging over several.
_TASKS_PER_WORKER = 4  # In flight: keeps workers busy, bounds memory.


def default_workers():
  """Worker processes for this machine: the cores it may use, at most 8."""
  # sched_getaffinity respects CPU limits; macOS lacks it.
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
           else os.cpu_count() or 1)
  return min(cores, 8)


def generate(examples_of, split, size, pool=None):
  """The `(key, example)` pairs of examples 0 .. size - 1 of `split`, lazily.

  Args:
    examples_of: a module-level function (workers receive it by name),
      `(split, index) -> [(key, example), ...]`.
    split: the split's name, passed to `examples_of`.
    size: number of examples.
    pool: a `RenderPool` for splits of at least `PARALLEL_MIN_EXAMPLES`
      examples, or None to render in this process.

  Returns:
    An iterator over the pairs, in index order.

  Raises:
    RuntimeError: from the iterator, naming the split and examples, if a
      worker fails or dies.
  """
  if pool is None or pool.workers < 2 or size < PARALLEL_MIN_EXAMPLES:
    return (pair for index in range(size)
            for pair in examples_of(split, index))
  return pool.generate(examples_of, split, size)


class RenderPool:
  """Up to `workers` worker processes, started on first use.

  One pool serves every split of a build, so that workers start once. Use it
  as a context manager (or call `close`).
  """

  def __init__(self, workers):
    self.workers = workers
    self._executor = None
    self._starts = []  # A no-op task per worker: done once one can work.
    self._running = False

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def close(self):
    """Stops the workers, dropping work not yet done."""
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None
      self._starts, self._running = [], False

  def wait(self):
    """Starts the workers if needed; returns once one can take tasks."""
    if not self._ready():
      concurrent.futures.wait(self._starts,
                              return_when=concurrent.futures.FIRST_COMPLETED)
      self._ready()

  def generate(self, examples_of, split, size):
    """Yields the pairs of examples 0 .. size - 1 of `split` (see `generate`)."""
    index = 0
    pending = collections.deque()  # (start, stop, future), in index order.
    while index < size or pending:
      if not self._ready():
        yield from examples_of(split, index)
        index += 1
        continue
      while index < size and len(pending) < self.workers * _TASKS_PER_WORKER:
        stop = min(index + _CHUNK, size)
        pending.append((index, stop, self._executor.submit(
            _render_range, examples_of, split, index, stop)))
        index = stop
      start, stop, future = pending.popleft()
      try:
        pairs = future.result()
      except futures_process.BrokenProcessPool as e:
        raise RuntimeError(
            'shapes: a worker process died (killed, or out of memory?) before '
            f'{split} examples {start}-{stop - 1} were rendered') from e
      except Exception as e:  # pylint: disable=broad-except
        raise RuntimeError(
            f'shapes: rendering {split} examples {start}-{stop - 1} failed in '
            f'a worker process: {e!r}') from e
      yield from pairs

  def _ready(self):
    """Whether a worker can take tasks; starts the workers on first call."""
    if self._running:
      return True
    if self._executor is None:
      self._executor = concurrent.futures.ProcessPoolExecutor(
          self.workers, mp_context=multiprocessing.get_context('spawn'))
      self._starts = [self._executor.submit(_started)
                      for _ in range(self.workers)]
    started = [future for future in self._starts if future.done()]
    if started:
      try:
        started[0].result()
      except Exception as e:  # pylint: disable=broad-except
        raise RuntimeError(
            f'shapes: the rendering worker processes failed to start ({e!r}). '
            'A spawned worker imports the main script again: keep its '
            "top-level code under `if __name__ == '__main__':`.") from e
      self._running = True
    return self._running


def _started():
  """The no-op task that tells a worker has started."""


def _render_range(examples_of, split, start, stop):
  """The task of a worker: the pairs of examples start .. stop - 1, a list."""
  return [pair for index in range(start, stop)
          for pair in examples_of(split, index)]
