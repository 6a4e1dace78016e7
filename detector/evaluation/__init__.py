"""Metrics of predictions against ground truth, computed on the host.

`coco`: COCO box AP/AR (faster-coco-eval), with input checks and per-class AP.
`prf`: precision / recall / F1 at a score threshold (and swept over
thresholds), counted from the same COCO matching.
`classification`: accuracy, top-k and precision/recall/F1 of the
classification task.
"""
