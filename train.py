"""Train a model from a YAML config, then test its best checkpoint.

    python train.py --config configs/quickstart.yaml [--section.key value ...]
    python train.py --config configs/quickstart.yaml --ckpt_path last   # resume a killed run
"""

from bnnrobust.errors import run_entry_point
from bnnrobust.training import main

if __name__ == "__main__":
    run_entry_point(main)
