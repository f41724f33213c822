"""The command line of ``python -m bnnrobust.reproduce`` (and ``python reproduce.py``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .common import ReproError
from .stages import run


def build_parser(prog: str = "python -m bnnrobust.reproduce") -> argparse.ArgumentParser:
    """The command line of the reproduction (``prog``: the name shown in its usage)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=("Reproduce the paper's findings offline on Fashion-MNIST: take the zoo's "
                     "five converged networks (or --retrain them), train two adversarially, "
                     "attack all seven, write JSON/PNG results and the Markdown report "
                     "(docs/results.md). 84 min on 2 idle CPU cores, plus the five trainings "
                     "with --retrain."))
    p.add_argument("--out", required=True, help="Output folder, e.g. results/fmnist.")
    p.add_argument("--quick", action="store_true",
                   help="Toy size (a few hundred images, tiny budgets): the pipeline in 1-2 min.")
    p.add_argument("--synthetic", action="store_true",
                   help="Synthetic data instead of Fashion-MNIST (no dataset needed).")
    p.add_argument("--force", action="store_true",
                   help="Delete the earlier reproduction in --out and start from scratch.")
    p.add_argument("--markdown", default=None,
                   help="Report path (default docs/results.md for the full Fashion-MNIST run, "
                        "<out>/results.md otherwise).")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--zoo", action="store_true", default=None,
                        help="Reuse the model zoo's checkpoints of the five configs/fmnist/ "
                             "recipes (checksum and recipe checked) instead of training them "
                             "again: the default of the full Fashion-MNIST run.")
    source.add_argument("--retrain", dest="zoo", action="store_false",
                        help="Train the five configs/fmnist/ recipes again with train.py's code "
                             "instead of reusing the zoo's checkpoints (the masking study "
                             "trained them in 98 min, one core each).")
    p.add_argument("--no-progress", action="store_true", help="No progress bars inside stages.")
    p.add_argument("--dry-run", action="store_true",
                   help="Print the plan (stages, estimated minutes) and exit; writes nothing.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: one per core; use 1 on a busy machine).")
    p.add_argument("--step-ms", type=float, default=None,
                   help="Milliseconds per image-step for the estimates (default: measured).")
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m bnnrobust.reproduce") -> int:
    """Entry point of ``python -m bnnrobust.reproduce`` / ``bnnrobust reproduce``; returns the
    exit code."""
    args = build_parser(prog).parse_args(list(argv) if argv is not None else None)
    try:
        run(args.out, quick=args.quick, synthetic=args.synthetic, force=args.force,
            markdown=args.markdown, progress=not args.no_progress,
            step_seconds=None if args.step_ms is None else args.step_ms / 1000.0,
            dry_run=args.dry_run, threads=args.threads, zoo=args.zoo)
    except ReproError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
