"""A tolerance for float32 computations that are equal in exact arithmetic.

A step on 8 devices and on 1, or a batch in 4 micro-batches and whole, sum
the same terms in other groupings: float32 rounding alone separates them.
Rounding errors of a sum of N terms grow like a random walk, about
sqrt(N) * eps relative to the sum's magnitude; a train step's largest sums
(BatchNorm statistics, weight gradients, the losses) run over every pixel of
the batch, N = B * H * W. So two such results agree to
`factor * sqrt(N) * eps` of each array's largest value, whatever the data,
while a real error (a lost micro-batch, a wrong weight, statistics of one
device) moves them by orders of magnitude more.
"""

import math

import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def flat(tree):
  return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def tolerance(terms: int, factor: float = 2.0) -> float:
  """Relative agreement of float32 results whose sums run over `terms`."""
  return factor * math.sqrt(terms) * EPS32


def assert_close(reference, got, terms, what, factor=2.0):
  """Each array of `got` within tolerance(terms) of the largest magnitude of
  the same array of `reference`."""
  assert len(reference) == len(got), (what, len(reference), len(got))
  rtol = tolerance(terms, factor)
  for i, (a, b) in enumerate(zip(reference, got)):
    scale = np.abs(a).max(initial=0.0)
    err = np.abs(a - b).max(initial=0.0)
    assert err <= rtol * scale, (
        f'{what}: array {i} {a.shape} differs by {err:.3g}, more than float32 '
        f'rounding ({rtol:.2g} x {scale:.3g})')
