"""Trains or evaluates a model described by a config file.

    .venv/bin/python main.py --config=configs/cnn.py --workdir=workdirs/cnn
    .venv/bin/python main.py --config=configs/cnn.py --workdir=workdirs/cnn \\
        --config.batch_size=32 --config.model.head=retinanet
    .venv/bin/python main.py --config=configs/cnn.py --workdir=workdirs/cnn \\
        --mode=evaluate

The program is `detector.main` (installed as `detector-train`).
"""

from detector import main

if __name__ == '__main__':
  main.run()
