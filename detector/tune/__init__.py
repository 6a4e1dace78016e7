"""Hyper-parameter sweeps with Optuna on the resumable trainer.

`python -m detector.tune` (`__main__`) runs a study; `space` reads and checks
search spaces (`configs/spaces/*.py`), `study` holds the Optuna side (storage,
sampler, pruner, the lock and the requeueing of interrupted trials),
`worker` trains trials in `STUDY_DIR/trials/N` through
`train.train_and_evaluate`, and `results` writes the tables, plots,
`best_config.py` and the TensorBoard HParams runs.
"""
