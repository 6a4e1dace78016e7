"""Dense detection heads.

Each head lives in one file that owns its linen module, its training targets
and loss, and its decoding into boxes; the trainer only sees this interface:

  `Head(num_classes, **config.model.head)` -> module mapping pyramid features
      {level: [B, H_l, W_l, C]} to a dict of named outputs.
  `loss(outputs, batch, config) -> (scalar loss, dict of named scalar parts)`
      with `batch['boxes']` [B, K, 4] `[ymin, xmin, ymax, xmax]` in pixels of
      the padded input, `batch['labels']` [B, K] int32 in [0, num_classes),
      `batch['box_mask']` [B, K] bool. A loss of sums over the batch divided
      by a count from the data (boxes, positive anchors) returns that count,
      before clamping to >= 1, as the part `normalizer`: the trainer's
      gradient accumulation needs it (and does not log it); parts named
      `*loss` are loss terms with the same divisor.
  `decode(outputs, config) -> dict` of `boxes` [B, N, 4] (same box format),
      `scores` [B, N], `classes` [B, N] int32 and `valid` [B, N] bool, before NMS.
  `merge_flipped(outputs, flipped, config) -> outputs`: averages the outputs
      for a batch and for its horizontal mirror image, mapped back onto the
      original (test-time flip augmentation, `config.model.flip_test`).
"""
