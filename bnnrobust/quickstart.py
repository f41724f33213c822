"""The quickstart job: train a float reference and a BNN, then compare PGD with PGD++.

    python -m bnnrobust.quickstart [--config configs/quickstart.yaml] [--binarizers none md_tanh_s]

Each model is trained with ``train.py``'s code path (same config, only the binarizer
changes), tested on the config's test subset with its ``test_attacks``, and the adversarial
accuracies are printed side by side: PGD makes the BNN look robust; PGD++ shows how much of
that robustness is fake (vanishing gradients).
"""

from __future__ import annotations

import argparse
import time

from bnnrobust.training import main as train_main

LABELS = {"none": "float REF", "bc": "BNN-WQ (BC)", "gd_tanh": "BNN-WQ (GD-tanh)",
          "md_tanh_s": "BNN-WQ (MD-tanh-S)", "hubara": "BNN-WAQ (Hubara)"}


def comparison_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per model, clean and adversarial accuracy (%) per attack."""
    keys = sorted({k for m in results.values() for k in m
                   if k.startswith("test/") and k.endswith("_acc")},
                  key=lambda k: (k != "test/clean_acc", k))
    head = ["model"] + [k.removeprefix("test/").removesuffix("_acc") for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, metrics in results.items():
        cells = [f"{100 * metrics[k]:.1f}" if k in metrics else "–" for k in keys]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def conclusion(results: dict[str, dict[str, float]]) -> str:
    """What the numbers say about PGD vs PGD++ for each model, computed, not assumed."""
    lines = []
    for name, m in results.items():
        pgd = m.get("test/pgd_acc")
        plus = [m[k] for k in ("test/pgd++njs_acc", "test/pgd++hns_acc") if k in m]
        if pgd is None or not plus:
            continue
        gap = 100 * (pgd - min(plus))
        if gap >= 1.0:
            lines.append(f"{name}: PGD++ lowers adversarial accuracy by {gap:.1f} points below "
                         "PGD: part of PGD's robustness was gradient masking.")
        else:
            verdict = ("is not stronger than PGD" if gap <= 0 else
                       f"is within {gap:.1f} points of PGD")
            lines.append(f"{name}: PGD++ {verdict} (PGD {100 * pgd:.1f} %, best PGD++ "
                         f"{100 * min(plus):.1f} %): no gradient masking visible at this eps and "
                         "training length (longer training saturates the softmax; see "
                         "docs/results.md).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--binarizers", nargs="+", default=["none", "bc"],
                        help="binarizers to train, one run each (none = float reference)")
    parser.add_argument("--log_dir", default="logs")
    args, extra = parser.parse_known_args(argv)
    results: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for binarizer in args.binarizers:
        run = f"quickstart_{binarizer}"
        print(f"\n[quickstart] training {LABELS.get(binarizer, binarizer)} -> {args.log_dir}/{run}")
        results[LABELS.get(binarizer, binarizer)] = train_main([
            "--config", args.config,
            "--model.init_args.model.init_args.binarizer", binarizer,
            "--run_name", run, "--log_dir", args.log_dir, *extra,
        ])
    print(f"\n[quickstart] adversarial accuracy (%), lower = stronger attack "
          f"({time.perf_counter() - start:.0f} s in all):\n")
    print(comparison_table(results))
    print("\n" + conclusion(results))
    print(f"TensorBoard (robust/ tags: per-epoch PGD, PGD++, Jacobian singular values): "
          f".venv/bin/tensorboard --logdir {args.log_dir}")
    return results


if __name__ == "__main__":
    main()
