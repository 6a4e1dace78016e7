"""Elementwise detection losses.

Every function returns an unreduced loss with the broadcast shape of its inputs;
masking and normalisation (e.g. by the number of positive anchors) are left to
the caller. Probabilities are never formed and then logged: all logs come from
`jax.nn.log_sigmoid`, which is exact for large |logits|, so the losses and
their gradients with respect to the logits stay finite at logits of +-100 and
beyond. Targets are treated as data; gradients are meant to be taken with
respect to logits and predicted boxes.
"""

import jax
import jax.numpy as jnp

from detector.ops import boxes as box_ops

# Heatmap values at or above 1 - this count as CenterNet peaks. Gaussian
# heatmaps are built in float32, where the peak may come out a few ulps below 1.
_PEAK_TOLERANCE = 1e-4


def sigmoid_binary_cross_entropy(logits, targets):
  """Binary cross-entropy on logits, -(t log p + (1 - t) log(1 - p)).

  Args:
    logits: float array [...], any real values.
    targets: float array broadcastable against `logits`, values in [0, 1]
      (soft targets allowed).

  Returns:
    float array [...] >= 0 (up to rounding for soft targets), finite for finite
    logits. Same as `optax.sigmoid_binary_cross_entropy`.
  """
  logits = jnp.asarray(logits)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  return -(targets * log_p + (1.0 - targets) * log_not_p)


def _safe_power(x, exponent: float):
  """x**exponent for x >= 0 with a finite gradient at x == 0.

  For 0 < exponent < 1 the derivative of x**exponent is infinite at 0, and
  0 * inf = NaN would appear in the backward pass even where the value is 0. A
  double `where` keeps the differentiated branch away from 0.
  """
  if exponent == 0:
    return jnp.ones_like(x)
  positive = x > 0
  return jnp.where(positive, jnp.where(positive, x, 1.0)**exponent, 0.0)


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25,
                       gamma: float = 2.0):
  """Sigmoid focal loss (Lin et al., 2017, RetinaNet), elementwise.

    loss = alpha_t * (1 - p_t)**gamma * BCE(logits, targets)
    p = sigmoid(logits), p_t = p t + (1 - p)(1 - t),
    alpha_t = alpha t + (1 - alpha)(1 - t)

  For binary targets BCE = -log(p_t), i.e. the familiar
  -alpha_t (1 - p_t)**gamma log(p_t); for soft targets this is the usual
  generalisation used by torchvision and optax (BCE against the soft target).

  1 - p_t is computed as t * sigmoid(-x) + (1 - t) * sigmoid(x) with each
  sigmoid taken as exp(log_sigmoid(.)), so it keeps full relative precision
  when p_t is close to 1 instead of cancelling to 0 as 1 - p_t would.

  Args:
    logits: float array [...], any real values.
    targets: float array broadcastable against `logits`, values in [0, 1]
      (typically one-hot class targets).
    alpha: Python float in [0, 1], weight of the positive class; a negative
      value disables the alpha weighting (alpha_t = 1).
    gamma: Python float >= 0, focusing parameter; gamma = 0 gives
      alpha-weighted BCE.

  Returns:
    float array [...] >= 0 of per-element losses (unreduced). Finite with finite
    gradients for all finite logits.
  """
  logits = jnp.asarray(logits)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  ce = -(targets * log_p + (1.0 - targets) * log_not_p)
  one_minus_p_t = (targets * jnp.exp(log_not_p) +
                   (1.0 - targets) * jnp.exp(log_p))
  loss = _safe_power(one_minus_p_t, gamma) * ce
  if alpha >= 0:
    loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
  return loss


def gaussian_focal_loss(logits, heatmap, alpha: float = 2.0,
                        beta: float = 4.0):
  """CenterNet's penalty-reduced focal loss on Gaussian heatmaps, elementwise.

    peak (heatmap >= 1 - 1e-4):  -(1 - p)**alpha * log(p)
    elsewhere:                   -(1 - heatmap)**beta * p**alpha * log(1 - p)

  with p = sigmoid(logits). The powers of p and 1 - p are evaluated as
  exp(alpha * log_sigmoid(+-logits)) and the logs as log_sigmoid, so nothing
  underflows to log(0) and the value and gradient are finite for any finite
  logit. Normalise the sum by the number of peaks, as in CenterNet.

  Args:
    logits: float array [...], any real values.
    heatmap: float array broadcastable against `logits`, values in [0, 1]; 1
      at object centres (within 1e-4) and a Gaussian bump around them.
    alpha: Python float >= 0, focusing exponent on p / (1 - p).
    beta: Python float >= 0, penalty-reduction exponent around the peaks.

  Returns:
    float array [...] >= 0 of per-element losses (unreduced).
  """
  logits = jnp.asarray(logits)
  heatmap = jnp.asarray(heatmap)
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  is_peak = heatmap >= 1.0 - _PEAK_TOLERANCE
  positive_loss = -jnp.exp(alpha * log_not_p) * log_p
  # Both branches are finite everywhere, so `where` is gradient-safe; the peak
  # value is replaced before the power so that (1 - heatmap) is never 0 there.
  penalty = _safe_power(
      jnp.where(is_peak, 1.0, jnp.clip(1.0 - heatmap, 0.0, 1.0)), beta)
  negative_loss = -penalty * jnp.exp(alpha * log_p) * log_not_p
  return jnp.where(is_peak, positive_loss, negative_loss)


def huber_loss(pred, target, delta: float = 1.0):
  """Huber loss in the optax convention, elementwise.

    x = pred - target
    loss = 0.5 x**2                    if |x| <= delta
           delta * (|x| - 0.5 delta)   otherwise

  This is `optax.huber_loss`. Detectron2's / PyTorch's smooth-L1 with
  beta = delta equals this divided by delta (0.5 x**2 / beta, |x| - 0.5 beta);
  the two coincide for the default delta = 1.

  Args:
    pred: float array [...], e.g. predicted box deltas.
    target: float array broadcastable against `pred`.
    delta: Python float > 0, where the loss switches from quadratic to linear.

  Returns:
    float array [...] >= 0; continuous with a continuous gradient (slope
    clipped to [-delta, delta]).
  """
  abs_error = jnp.abs(jnp.asarray(pred) - target)
  # min/subtract form instead of a `where` on |x|: one expression with the
  # right gradient in both regimes (as in optax).
  quadratic = jnp.minimum(abs_error, delta)
  linear = abs_error - quadratic
  return 0.5 * quadratic**2 + delta * linear


def giou_loss(pred_boxes, target_boxes):
  """1 - GIoU of corresponding boxes, elementwise.

  Args:
    pred_boxes: float array [..., 4], `[ymin, xmin, ymax, xmax]` in pixels
      (e.g. decoded predictions; inverted boxes are allowed).
    target_boxes: float array [..., 4], same format, broadcastable.

  Returns:
    float array [...] with values in [0, 2]; 0 for identical non-empty boxes.
    See `boxes.giou` for the handling of empty boxes.
  """
  return 1.0 - box_ops.giou(pred_boxes, target_boxes)
