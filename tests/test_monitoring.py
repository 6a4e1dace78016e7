"""The monitoring library and the server's batcher, against references:
PSI against scipy's relative entropy, bins against numpy's own histogram,
the canary comparison on hand-built changes, the batcher's batches and
order under concurrent submitters."""

import threading
import time

import numpy as np
import pytest
from scipy import special

from detector.monitoring import canary
from detector.monitoring import drift
from detector.monitoring import signals
from detector.predict import Detections
from detector.serve import batcher as batcher_lib


def test_psi_is_the_symmetric_relative_entropy():
  rng = np.random.default_rng(0)
  for _ in range(20):
    expected = rng.integers(0, 50, size=8)
    actual = rng.integers(0, 50, size=8)
    e, a = drift.shares(expected), drift.shares(actual)
    # PSI = KL(a||e) + KL(e||a), scipy's rel_entr summed both ways.
    want = special.rel_entr(a, e).sum() + special.rel_entr(e, a).sum()
    assert drift.psi(expected, actual) == pytest.approx(want, rel=1e-12)
  assert drift.psi([5, 5, 5], [10, 10, 10]) == pytest.approx(0.0, abs=1e-15)
  with pytest.raises(ValueError, match='bins differ'):
    drift.psi([1, 2], [1, 2, 3])


def test_psi_of_samples_separates_same_and_shifted_distributions():
  rng = np.random.default_rng(1)
  reference = rng.normal(120, 30, 2000)
  bins = signals.binning('brightness', reference, 0)
  ref_counts = signals.histogram(bins, reference)
  # Deciles: each bin holds a tenth of the reference.
  np.testing.assert_array_equal(ref_counts, [200] * 10)
  same = signals.histogram(bins, rng.normal(120, 30, 500))
  darker = signals.histogram(bins, rng.normal(80, 30, 500))
  assert drift.psi(ref_counts, same) < 0.1
  assert drift.psi(ref_counts, darker) > 0.2


def test_histogram_equals_numpy_on_the_same_edges():
  rng = np.random.default_rng(2)
  values = rng.uniform(0, 1, 1000)
  bins = signals.binning('score', values, 0)
  edges = np.asarray(bins['edges'])
  # numpy's bins are [a, b) except the last; open both ends as ours are.
  want, _ = np.histogram(values, np.concatenate([[-np.inf], edges, [np.inf]]))
  np.testing.assert_array_equal(signals.histogram(bins, values), want)
  counts = signals.histogram(signals.binning('detections_per_image', [], 0),
                             [0, 0, 1, 9, 10, 25])
  assert counts.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2]
  classes = signals.histogram(signals.binning('class_frequency', [], 3),
                              [0, 2, 2, 7])  # 7: not a class, not counted.
  assert classes.tolist() == [1, 0, 2]


def _detections(boxes, scores, classes, size=(100, 200)):
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  return Detections('x', size, boxes, np.asarray(scores, np.float32),
                    np.asarray(classes), [str(c) for c in classes],
                    np.asarray(classes))


def test_measure_counts_only_detections_over_the_threshold():
  image = np.full((100, 200, 3), [100, 50, 200], np.uint8)
  det = _detections([[0, 0, 50, 50], [10, 10, 20, 20], [0, 0, 200, 100]],
                    [0.9, 0.5, 0.1], [1, 2, 0])
  values = signals.measure(det, image, 0.3)
  assert values['class_frequency'] == [1, 2]
  assert values['detections_per_image'] == [2]
  np.testing.assert_allclose(values['score'], [0.9, 0.5], rtol=1e-6)
  np.testing.assert_allclose(values['box_area'],
                             np.sqrt([2500 / 20000, 100 / 20000]), rtol=1e-6)
  assert values['brightness'] == [pytest.approx(
      0.299 * 100 + 0.587 * 50 + 0.114 * 200, rel=1e-5)]


def test_canary_compare_finds_changed_detections_not_reordering():
  base = _detections([[10, 10, 50, 50], [60, 60, 90, 95], [0, 0, 5, 5]],
                     [0.9, 0.6, 0.05], [0, 1, 2])
  recorded = [canary.record(base)]
  assert canary.compare(recorded, [canary.record(base)]) == (True, [])
  # Equal scores in another order, and rounding-sized changes: still equal.
  swapped = _detections([[60, 60, 90, 95.01], [10, 10, 50, 50]],
                        [0.6001, 0.9], [1, 0])
  assert canary.compare(recorded, [canary.record(swapped)])[0]
  # A box moved by a few pixels (other preprocessing), a class changed, a
  # detection lost or gained: each fails and is named.
  moved = _detections([[14, 10, 54, 50], [60, 60, 90, 95]], [0.9, 0.6], [0, 1])
  ok, problems = canary.compare(recorded, [canary.record(moved)])
  assert not ok and any('now missing' in p for p in problems)
  relabelled = _detections([[10, 10, 50, 50], [60, 60, 90, 95]], [0.9, 0.6],
                           [0, 2])
  assert not canary.compare(recorded, [canary.record(relabelled)])[0]
  lost = _detections([[10, 10, 50, 50]], [0.9], [0])
  assert not canary.compare(recorded, [canary.record(lost)])[0]
  rescored = _detections([[10, 10, 50, 50], [60, 60, 90, 95]], [0.8, 0.6],
                         [0, 1])
  assert not canary.compare(recorded, [canary.record(rescored)])[0]
  assert not canary.compare(recorded, [])[0]


def test_batcher_batches_concurrent_jobs_in_order_on_one_thread():
  calls, threads = [], set()

  def run(items):
    threads.add(threading.get_ident())
    calls.append(list(items))
    time.sleep(0.02)  # A model call, during which more jobs arrive.
    return [x * 10 for x in items]

  b = batcher_lib.Batcher(run, max_batch=4, max_wait_s=0.05, max_queue=100)
  jobs = []
  lock = threading.Lock()

  def client(start):
    for i in range(start, start + 10):
      job = b.submit(i)
      with lock:
        jobs.append((i, job))

  workers = [threading.Thread(target=client, args=(k * 10,)) for k in range(4)]
  for w in workers:
    w.start()
  for w in workers:
    w.join()
  for i, job in jobs:
    assert job.future.result(10) == i * 10  # Every job gets its own answer.
  b.stop(10)
  assert len(threads) == 1  # The model is only ever called on one thread.
  assert sum(len(c) for c in calls) == 40
  assert max(len(c) for c in calls) == 4  # Batches up to max_batch, no more.
  assert len(calls) < 40  # Concurrent jobs shared calls.


def test_batcher_bounded_queue_errors_and_stop():
  gate = threading.Event()

  def run(items):
    gate.wait(10)
    if 'bad' in items:
      raise RuntimeError('model failed')
    return items

  b = batcher_lib.Batcher(run, max_batch=1, max_wait_s=0, max_queue=2)
  first = b.submit('a')
  time.sleep(0.1)  # 'a' is running; the queue is empty again.
  queued = [b.submit('bad'), b.submit('c')]
  with pytest.raises(batcher_lib.QueueFull):
    b.submit('d')
  gate.set()
  assert first.future.result(10) == 'a'
  with pytest.raises(RuntimeError, match='model failed'):
    queued[0].future.result(10)
  assert queued[1].future.result(10) == 'c'  # A failed batch fails alone.
  b.stop(10)
  with pytest.raises(batcher_lib.Stopped):
    b.submit('e')
