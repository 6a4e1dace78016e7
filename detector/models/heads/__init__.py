"""Dense detection heads.

Each head lives in one file that owns its options, its linen module, its
training targets and loss, and its decoding into boxes. The detector and
the trainer only see this interface:

  `Options`: a frozen dataclass, `config.model.<head>`: the module's
      architecture, loss and decoding settings, their defaults (the configs
      take them from here) and their checks (a ConfigError naming the key).
      `Options.levels` are the pyramid levels the head reads.
  `CLASS_LAYERS`: the paths of the head's modules predicting the classes
      (their variables' last axis is per anchor, then per class), which
      `config.init_from` fits to a dataset's classes or re-initialises.
  `Head(num_classes, options, norm, dtype)`: the linen module mapping pyramid
      features {level: [B, H_l, W_l, C]} to a dict of named outputs, with
      these methods (pure functions of the outputs and the options):
    `loss(outputs, batch) -> (scalar loss, dict of named scalar parts)` with
        `batch['image']` [B, H, W, 3], `batch['boxes']` [B, K, 4]
        `[ymin, xmin, ymax, xmax]` in pixels of the padded input,
        `batch['labels']` [B, K] int32 in [0, num_classes) and
        `batch['box_mask']` [B, K] bool. A loss of sums over the batch
        divided by a count from the data (boxes, positive anchors) returns
        that count, before clamping to >= 1, as the part `normalizer`: the
        trainer's gradient accumulation needs it (and does not log it);
        parts named `*loss` are loss terms with the same divisor.
    `decode(outputs, image_size) -> dict` of `boxes` [B, N, 4] (same box
        format), `scores` [B, N], `classes` [B, N] int32 and `valid` [B, N]
        bool, before NMS; `image_size` is the padded input's (H, W).
    `merge_flipped(outputs, flipped, image_size) -> outputs`: averages the
        outputs for a batch and for its horizontal mirror image, mapped back
        onto the original (test-time flip augmentation, `model.flip_test`).

A new head is a new file with these four names and one line in
`detector.models.HEADS`.
"""
