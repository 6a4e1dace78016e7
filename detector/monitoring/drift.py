"""The population stability index of live traffic against a reference.

PSI = sum_i (a_i - e_i) ln(a_i / e_i) over the bins of a signal, e being
the reference's share of each bin and a the window's: 0 for equal
distributions, about 0.1 for a moderate shift, above 0.2 for a large one
(the usual reading, and this project's alarm). Shares are taken with half a
count added to every bin, so a bin empty on one side gives a large but
finite term instead of infinity.
"""

import collections
import math
import threading
from typing import Dict, Optional

import numpy as np

from detector.monitoring import signals

ALARM = 0.2
PSEUDO_COUNT = 0.5


def shares(counts) -> np.ndarray:
  counts = np.asarray(counts, np.float64) + PSEUDO_COUNT
  return counts / counts.sum()


def psi(expected_counts, actual_counts) -> float:
  """PSI of `actual_counts` against `expected_counts` (same bins)."""
  e, a = shares(expected_counts), shares(actual_counts)
  if e.shape != a.shape:
    raise ValueError(f'bins differ: {e.shape} and {a.shape}')
  return float(np.sum((a - e) * np.log(a / e)))


class Window:
  """The signals of the last `size` images of traffic, and their PSI
  against a reference (`reference.read`'s dict). Thread-safe."""

  def __init__(self, reference: dict, size: int = 500, min_images: int = 100):
    self.reference = reference
    self.size = size
    self.min_images = min(min_images, size)
    self._images = collections.deque(maxlen=size)
    self._lock = threading.Lock()

  def add(self, values: Dict[str, list]):
    """One image's `signals.measure`."""
    with self._lock:
      self._images.append(values)

  def __len__(self):
    return len(self._images)

  def counts(self) -> Dict[str, np.ndarray]:
    """Per signal, the window's counts in the reference's bins."""
    with self._lock:
      images = list(self._images)
    out = {}
    for name, ref in self.reference['signals'].items():
      values = [v for image in images for v in image.get(name, ())]
      out[name] = signals.histogram(ref['bins'], values)
    return out

  def psi(self) -> Dict[str, Optional[float]]:
    """Per signal its PSI; None until the window holds `min_images`."""
    ready = len(self) >= self.min_images
    out = {}
    for name, counts in self.counts().items():
      expected = self.reference['signals'][name]['counts']
      # A signal with no values yet in the window (no detections) has no
      # distribution to compare.
      out[name] = (psi(expected, counts) if ready and counts.sum() else None)
    return out


def over_alarm(values: Dict[str, Optional[float]]) -> Dict[str, float]:
  return {k: v for k, v in values.items()
          if v is not None and not math.isnan(v) and v > ALARM}
