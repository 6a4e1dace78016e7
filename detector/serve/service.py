"""The model behind the HTTP API: batching, warm-up, drift and canary.

Nothing here knows HTTP (`app` does): a `Service` takes decoded images,
runs them through the predictor in dynamic batches (`batcher`), and keeps
the monitoring up to date (`metrics`, `detector.monitoring`).
"""

import dataclasses
import hashlib
import logging
import math
import os
import threading
import time
from typing import List, Optional

import numpy as np

from detector.monitoring import canary
from detector.monitoring import drift
from detector.monitoring import reference as reference_lib
from detector.monitoring import signals
from detector.serve import batcher as batcher_lib

log = logging.getLogger('detector.serve')
PSI_EVERY = 20  # Images between updates of the PSI gauges.
# With 10 bins, PSI between two samples of one distribution is about
# 9 * (1/n_reference + 1/n_window): 0.1 from 100 images on each side.
MIN_REFERENCE_IMAGES = 200


@dataclasses.dataclass
class Settings:
  """The server's knobs (`python -m detector.serve --help` tells each)."""
  max_batch: int = 8
  max_wait_ms: float = 5.0
  max_queue: int = 64
  max_upload_bytes: int = 20 * 2**20
  max_pixels: int = 40 * 10**6
  request_timeout_s: float = 30.0
  drift_window: int = 500
  drift_min_images: int = 100
  canary_every_s: float = 300.0


def fingerprint(path: str) -> str:
  """sha256 of the model's files: the artefact, or a workdir's checkpoint
  of the step served (its files in sorted order, with their names)."""
  digest = hashlib.sha256()
  if os.path.isfile(path):
    files = [path]
  else:
    files = sorted(os.path.join(root, name)
                   for root, _, names in os.walk(path) for name in names)
  for file in files:
    digest.update(os.path.relpath(file, path).encode())
    with open(file, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        digest.update(block)
  return digest.hexdigest()


def weights_path(model_path: str, info) -> str:
  """The file or folder holding the weights served."""
  checkpoint = os.path.join(model_path, 'checkpoints', str(info.step))
  if info.format == 'jax' and info.step is not None and os.path.isdir(
      checkpoint):
    return checkpoint
  return model_path


def filtered(prediction, score_threshold: float,
             max_detections: Optional[int]):
  """A `Detections` cut to the request's threshold and count."""
  keep = prediction.scores >= score_threshold
  if max_detections is not None:
    keep &= np.arange(len(keep)) < max_detections
  return dataclasses.replace(
      prediction, boxes=prediction.boxes[keep], scores=prediction.scores[keep],
      class_ids=prediction.class_ids[keep],
      class_names=[n for n, k in zip(prediction.class_names, keep) if k],
      category_ids=prediction.category_ids[keep])


class Service:
  """A predictor served: `submit` prepared images, get outputs back."""

  def __init__(self, predictor, model_path: str, settings: Settings, metrics):
    self.predictor = predictor
    self.info = predictor.info
    self.model_path = model_path
    self.name = os.path.basename(os.path.normpath(model_path))
    self.settings = settings
    self.metrics = metrics
    self.ready = threading.Event()
    self.draining = False
    self.sha256 = fingerprint(weights_path(model_path, self.info))
    metrics.model_info.labels(
        name=self.name, step=str(self.info.step), format=self.info.format,
        sha256=self.sha256).set(1)
    self.reference = self._read_reference()
    self.window = (drift.Window(self.reference, settings.drift_window,
                                settings.drift_min_images)
                   if self.reference else None)
    self._alarms = set()
    self._observed = 0
    self._observe_lock = threading.Lock()
    self.last_canary = None  # (time, ok, problems) of the last check.
    self._stop = threading.Event()
    self.arriving = 0  # Requests being decoded: their jobs are coming.
    self.batcher = batcher_lib.Batcher(
        predictor.run_prepared, settings.max_batch,
        settings.max_wait_ms / 1000.0, settings.max_queue, self._on_batch,
        coming=lambda: self.arriving)

  # --- the model ---------------------------------------------------------
  def submit(self, prepared, bounded: bool = True) -> batcher_lib.Job:
    job = self.batcher.submit(prepared, bounded)
    self.metrics.queue_depth.set(self.batcher.depth())
    return job

  def _on_batch(self, jobs: List[batcher_lib.Job]):
    self.metrics.batch_size.observe(len(jobs))
    self.metrics.queue_depth.set(self.batcher.depth())

  def predict(self, images: List[np.ndarray]):
    """Predictions on images through the batcher (threshold 0, all
    detections), for the server's own checks; blocks."""
    jobs = [(image, self.predictor.prepare(image)) for image in images]
    futures = [(image, prep, self.submit(prep, bounded=False))
               for image, prep in jobs]
    return [self.predictor.result('canary', image.shape[:2], prep,
                                  job.future.result())
            for image, prep, job in futures]

  def warm(self):
    """Compiles every batch size the server can use, checks the canary,
    and marks the service ready. Runs on its own thread at start."""
    start = time.perf_counter()
    h, w = self.info.input_size
    sizes = self.predictor.backend.batch_sizes
    if sizes is None:
      sizes = sorted({1, self.settings.max_batch})
    else:  # The sizes a batch of 1..max_batch is padded to.
      sizes = sorted(s for s in sizes if s <= self.settings.max_batch) + [
          s for s in sorted(sizes) if s >= self.settings.max_batch][:1]
    blank = self.predictor.prepare(np.zeros((h, w, 3), np.uint8))
    sizes = list(dict.fromkeys(sizes))
    for size in sizes:
      self.predictor.run_prepared([blank] * size)
    log.info('Model %s (%s, step %s) compiled for batch sizes %s in %.1f s.',
             self.name, self.info.format, self.info.step, sizes,
             time.perf_counter() - start)
    self.check_canary()
    self.metrics.ready.set(1)
    self.ready.set()

  # --- monitoring --------------------------------------------------------
  def _read_reference(self) -> Optional[dict]:
    path = reference_lib.path_for(self.model_path)
    if not os.path.isfile(path):
      log.warning('No monitoring reference at %s: drift and canary checks are '
                  'off. Write one with python -m detector.monitoring '
                  '--model=%s', path, self.model_path)
      return None
    reference = reference_lib.read(path)
    if reference['task'] != self.info.task:
      raise ValueError(f'{path}: a reference of a {reference["task"]} model, '
                       f'but {self.model_path} is a {self.info.task} model')
    if reference['images'] < MIN_REFERENCE_IMAGES:
      log.warning('The monitoring reference %s holds %d images: its PSI '
                  'values are mostly noise below about %d. Write one from '
                  'more images with python -m detector.monitoring --model=%s '
                  '--images=DIR', path, reference['images'],
                  MIN_REFERENCE_IMAGES, self.model_path)
    recorded = reference['model']
    if (recorded.get('step') != self.info.step
        or recorded.get('format') != self.info.format):
      log.warning('The monitoring reference %s was recorded with %s step %s; '
                  'serving %s step %s.', path, recorded.get('format'),
                  recorded.get('step'), self.info.format, self.info.step)
    return reference

  def observe(self, prediction, image: np.ndarray):
    """Adds one served image (its full prediction) to the drift window."""
    if self.window is None:
      return
    self.window.add(signals.measure(prediction, image,
                                    self.reference['score_threshold']))
    with self._observe_lock:
      self._observed += 1
      due = self._observed % PSI_EVERY == 0
    if due:
      self.update_drift()

  def update_drift(self):
    """Sets the PSI gauges; logs a warning when a signal crosses the alarm."""
    if self.window is None:
      return {}
    values = self.window.psi()
    self.metrics.window.set(len(self.window))
    for name, value in values.items():
      self.metrics.psi.labels(signal=name).set(
          math.nan if value is None else value)
    alarms = drift.over_alarm(values)
    with self._observe_lock:
      new = set(alarms) - self._alarms
      self._alarms = set(alarms)
    for name in sorted(new):
      log.warning('PSI of %s is %.3f > %s against the reference', name,
                  alarms[name], drift.ALARM, extra={'fields': {
                      'event': 'drift', 'signal': name,
                      'psi': round(alarms[name], 4),
                      'window_images': len(self.window)}})
    return values

  def check_canary(self) -> Optional[bool]:
    """Runs the canary images; sets `detector_canary_ok`. None: no canary."""
    if not self.reference or not self.reference['canary']['images']:
      return None
    stored = self.reference['canary']
    images = [reference_lib.unpng(item['png']) for item in stored['images']]
    outputs = [canary.record(p) for p in self.predict(images)]
    ok, problems = canary.compare(stored['outputs'], outputs)
    self.metrics.canary_ok.set(1 if ok else 0)
    self.metrics.canary_runs.labels(result='pass' if ok else 'fail').inc()
    self.last_canary = (time.time(), ok, problems)
    if ok:
      log.info('Canary: %d images give the recorded outputs.', len(images))
    else:
      log.error('The canary images no longer give the outputs recorded with '
                'the model', extra={'fields': {'event': 'canary_failed',
                                               'problems': problems[:10]}})
    return ok

  def canary_loop(self):
    """Reruns the canary every `canary_every_s` until `stop`."""
    every = self.settings.canary_every_s
    while every > 0 and not self._stop.wait(every):
      try:
        self.check_canary()
      except Exception:  # pylint: disable=broad-except
        log.exception('The canary check failed to run')
        self.metrics.canary_ok.set(0)

  def stop(self):
    self._stop.set()
    self.batcher.stop()
