"""Dynamic batching: requests gathered into one model call, on one thread.

Requests submit jobs from any thread; one worker thread takes the first
waiting job, waits up to `max_wait_s` for more (or until `max_batch` have
arrived), and runs them together. The model is only ever called from that
thread, so it never runs twice at once on a device, and under concurrency
the batches fill up, which is where throughput comes from.
"""

import collections
import concurrent.futures
import logging
import threading
import time
from typing import Any, Callable, List, Optional, Sequence


class QueueFull(Exception):
  """The bounded queue holds `max_queue` jobs already."""


class Stopped(Exception):
  """The batcher no longer takes jobs (the server is stopping)."""


class Job:
  """One item of work; `future` gets `run`'s result for it."""

  def __init__(self, item: Any):
    self.item = item
    self.future = concurrent.futures.Future()
    self.queued_at = time.perf_counter()
    self.started_at: Optional[float] = None  # When its batch began.
    self.batch_size = 0
    self.batch_seconds = 0.0


class Batcher:
  """Runs `run(items) -> results` (same length, same order) on batches.

  Args:
    run: the batch function; an exception fails every job of the batch.
    max_batch: the most jobs per call.
    max_wait_s: how long the first job of a batch waits for company.
    max_queue: the most jobs waiting; `submit` raises QueueFull beyond.
    on_batch: called (on the worker) with each batch's jobs once done.
    coming: how many more jobs are on their way (requests being decoded);
      a batch stops waiting as soon as none is, so a lone request does not
      wait `max_wait_s` for company that cannot come.
  """

  def __init__(self, run: Callable[[Sequence[Any]], List[Any]],
               max_batch: int = 8, max_wait_s: float = 0.005,
               max_queue: int = 64,
               on_batch: Optional[Callable[[List[Job]], None]] = None,
               coming: Callable[[], int] = lambda: 1):
    self._run = run
    self.max_batch = max(1, max_batch)
    self.max_wait_s = max(0.0, max_wait_s)
    self.max_queue = max(1, max_queue)
    self._on_batch = on_batch
    self._coming = coming
    self._queue = collections.deque()
    self._cv = threading.Condition()
    self._stopping = False
    self._thread = threading.Thread(target=self._loop, name='batcher',
                                    daemon=True)
    self._thread.start()

  def depth(self) -> int:
    return len(self._queue)

  def submit(self, item: Any, bounded: bool = True) -> Job:
    """Queues `item`; `bounded=False` (the server's own checks) ignores
    `max_queue`."""
    job = Job(item)
    with self._cv:
      if self._stopping:
        raise Stopped()
      if bounded and len(self._queue) >= self.max_queue:
        raise QueueFull()
      self._queue.append(job)
      self._cv.notify()
    return job

  def stop(self, timeout: Optional[float] = None):
    """Runs what is queued, then ends the worker."""
    with self._cv:
      self._stopping = True
      self._cv.notify()
    self._thread.join(timeout)

  def _take(self) -> Optional[List[Job]]:
    """The next batch; None once stopping with nothing left."""
    with self._cv:
      while not self._queue and not self._stopping:
        self._cv.wait()
      if not self._queue:
        return None
      deadline = self._queue[0].queued_at + self.max_wait_s
      while (len(self._queue) < self.max_batch and not self._stopping
             and self._coming() > 0):
        left = deadline - time.perf_counter()
        if left <= 0:
          break
        # Woken by a submit, or after at most 1 ms to look at `coming`.
        self._cv.wait(min(left, 0.001))
      return [self._queue.popleft()
              for _ in range(min(self.max_batch, len(self._queue)))]

  def _loop(self):
    while True:
      jobs = self._take()
      if jobs is None:
        return
      # A job whose request gave up (its time limit) is not run.
      jobs = [job for job in jobs if not job.future.cancelled()]
      if not jobs:
        continue
      start = time.perf_counter()
      for job in jobs:
        job.started_at = start
      try:
        results = self._run([job.item for job in jobs])
        error = None
      except Exception as e:  # pylint: disable=broad-except
        results, error = [None] * len(jobs), e
      seconds = time.perf_counter() - start
      for job, result in zip(jobs, results):
        job.batch_size, job.batch_seconds = len(jobs), seconds
      if self._on_batch is not None:
        try:
          self._on_batch(jobs)
        except Exception:  # pylint: disable=broad-except
          # Metrics must never fail a request; the bug shows in the log.
          logging.getLogger(__name__).exception('on_batch failed')
      for job, result in zip(jobs, results):
        if job.future.set_running_or_notify_cancel():
          if error is not None:
            job.future.set_exception(error)
          else:
            job.future.set_result(result)
