"""Datasets and input pipelines.

A dataset spec (`config.dataset`) becomes a TFDS builder in `datasets`
(TFDS names, or folders read by `formats` and checked by `quality`, converted
once); `loading` turns builders into each process's training stream and
evaluation batches, `detection` and `classification` are the two tasks'
pipelines, built from the box-aware ops in `preprocess` and `augment`.
`shapes` is the built-in data; `report` prints a dataset's quality report.
"""
