"""Reproduce the paper's findings offline on Fashion-MNIST (see docs/results.md).

    python reproduce.py --out results/fmnist [--quick] [--synthetic] [--force]

Same as ``python -m bnnrobust.reproduce``.
"""

from bnnrobust.reproduce import main

if __name__ == "__main__":
    raise SystemExit(main())
