"""Evaluate a trained checkpoint against a list of attacks (see ``docs/evaluation.md``).

    python evaluate.py --config configs/eval/fmnist.yaml --ckpt logs/<run>/version_0/checkpoints/last.ckpt
    python evaluate.py --config configs/eval/fmnist.yaml --ckpt PATH --attacks pgd pgd++njs --n 500
"""

from bnnrobust.errors import run_entry_point
from bnnrobust.evaluation.cli import main

if __name__ == "__main__":
    run_entry_point(main)
