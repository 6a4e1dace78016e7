"""Experiment configs: `get_config(arg)` returns a locked ConfigDict.

Each file is one experiment family (`cnn`, `classify`, `resnet50`,
`efficientnet`), its docstring the command that runs it; `common` holds the
settings they share. `main.py --config=configs/cnn.py[:arg]` reads the
repository's `configs/*.py`, which take `get_config` from here, so that an
installed package has them too: `from detector.configs import cnn;
cnn.get_config('tiny')`.
"""
