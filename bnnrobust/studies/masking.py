"""The masking study: when does a BNN show fake robustness that PGD++ removes?

    python -m bnnrobust.studies.masking --out results/masking          # the whole grid
    python -m bnnrobust.studies.masking --out results/masking --only bc ref   # some runs
    python -m bnnrobust.studies.masking --out /tmp/m --synthetic --quick    # toy size (tests)

Each run of :data:`RUNS` is one Fashion-MNIST recipe of ``configs/fmnist/`` with one design
choice changed (binarizer, width, float last layer, BatchNorm affine, a hidden FC layer,
the MD-tanh-S end scale). It is trained with ``train.py``'s code path
(:func:`bnnrobust.training.main`) on all training images and evaluated at the epochs of
``eval_epochs`` (checkpoints of one run with the recipe's cosine schedule, so "epoch 2" is
the same network a 10-epoch run has after 2 epochs). Each evaluation measures, on the first
``n_eval`` test images: clean accuracy, PGD-20, PGD++ NJS, PGD++ HNS and APGD-CE accuracy
(the Fashion-MNIST preset, eps 0.1 L∞), the top-1 minus top-2 logit gap of the correctly
classified images, ``‖ψ‖₂`` and the fraction of images whose input gradient is exactly zero.

Every stage writes its result as it finishes (``<out>/evals/<run>_e<epoch>.json``; the
checkpoints in ``<out>/ckpt/``): an interrupted study resumes where it stopped, and a
rerun only reports. ``report`` writes ``<out>/masking.json``, ``<out>/table.md``,
``<out>/gap_vs_epochs.png`` and the table section of ``docs/masking_study.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import yaml

__all__ = ["RUNS", "Run", "evaluate_checkpoint", "main", "report", "run_study"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "fmnist"
DOC_PAGE = Path(__file__).resolve().parents[2] / "docs" / "masking_study.md"
ATTACKS = ("pgd", "pgd++njs", "pgd++hns", "apgd-ce")
#: float32 exp(-gap) is 0 (below the smallest subnormal) for logit gaps above ~104:
#: softmax saturates exactly and the cross-entropy gradient of such an image is zero
SATURATED_GAP = 104.0


@dataclass(frozen=True)
class Run:
    """One network of the study: a recipe plus the design choice it changes.

    Attributes:
        key: short name (file names, ``--only``).
        config: recipe file in ``configs/fmnist/``.
        line: the group it is drawn with in the plot (the binarizer).
        varied: the design choice, in words (the table's second column).
        model: overrides of ``model.init_args.model.init_args`` (ConvNet arguments).
        epochs: train up to this epoch (the recipe's cosine schedule is kept).
        eval_epochs: epochs (1-based) whose checkpoints are evaluated.
    """

    key: str
    config: str
    line: str
    varied: str
    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    eval_epochs: tuple[int, ...] = (1, 2, 5, 10)


def _md(growth: float, interval: int) -> dict[str, Any]:
    return {"binarizer": {"class_path": "bnnrobust.binarize.MDTanhS",
                          "init_args": {"growth": growth, "interval": interval}}}


#: the grid, in the order it runs: the training-length lines first, then one change each
RUNS: tuple[Run, ...] = (
    Run("bc", "convnet_bc.yaml", "bc", "BNN-WQ (BC), paper layout"),
    Run("hubara", "convnet_hubara.yaml", "hubara", "BNN-WAQ (Hubara), paper layout"),
    Run("ref", "convnet_ref.yaml", "none", "float REF"),
    Run("md_tanh_s", "convnet_md_tanh_s.yaml", "md_tanh_s", "BNN-WQ (MD-tanh-S), end scale 2.7e4"),
    Run("bc_hidden", "convnet_bc.yaml", "bc", "BC + hidden FC 256", {"hidden": 256},
        epochs=5, eval_epochs=(2, 5)),
    Run("bc_float_last", "convnet_bc.yaml", "bc", "BC, float first conv and last layer",
        {"keep_first_last": True}, epochs=5, eval_epochs=(2, 5)),
    Run("bc_affine", "convnet_bc.yaml", "bc", "BC + affine BatchNorm, float bias",
        {"affine_bn": True, "float_bias": True}, epochs=5, eval_epochs=(2, 5)),
    Run("bc_width05", "convnet_bc.yaml", "bc", "BC, width 0.5", {"width": 0.5},
        epochs=5, eval_epochs=(2, 5)),
    Run("gd_tanh", "convnet_gd_tanh.yaml", "gd_tanh", "BNN-WQ (GD-tanh), end scale 2.7e4",
        epochs=5, eval_epochs=(2, 5)),
    Run("md_tanh_s_fast", "convnet_md_tanh_s.yaml", "md_tanh_s",
        "MD-tanh-S, end scale 8e8 (x1.1 / 20 steps)", _md(1.1, 20), epochs=5, eval_epochs=(2, 5)),
    Run("hubara_affine", "convnet_hubara.yaml", "hubara", "Hubara + affine BatchNorm",
        {"affine_bn": True}, epochs=5, eval_epochs=(2, 5)),
)


class StudyError(RuntimeError):
    """A study that cannot run as asked (bad run name, missing recipe)."""


def _log(msg: str) -> None:
    print(f"[masking] {msg}", flush=True)


# -- training -------------------------------------------------------------------------------------
def training_config(run: Run, *, synthetic: bool = False, quick: bool = False) -> dict[str, Any]:
    """The recipe of ``run`` with its model overrides; no monitor (the study measures itself)."""
    path = CONFIG_DIR / run.config
    if not path.is_file():
        raise StudyError(f"Recipe {path} is missing.")
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["init_args"]["model"].setdefault("init_args", {}).update(run.model)
    trainer = cfg.setdefault("trainer", {})
    trainer["callbacks"] = [c for c in trainer.get("callbacks", [])
                            if "RobustnessMonitor" not in str(c.get("class_path", ""))]
    trainer.update({"accelerator": "cpu", "devices": 1})
    if synthetic:
        cfg["data"] = {"class_path": "bnnrobust.data.SyntheticDataModule", "init_args": {
            "num_samples": 256, "num_classes": 10, "in_channels": 1, "image_size": 28,
            "batch_size": 64, "seed": 0}}
    if quick:
        cfg["model"]["init_args"]["model"]["init_args"]["width"] = 0.25
    return cfg


def _ckpt_epoch(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True).get("epoch", -1))


def train_to(run: Run, epoch: int, out: Path, *, synthetic: bool = False,
             quick: bool = False) -> Path:
    """Train ``run`` up to ``epoch`` (resuming its last checkpoint) and keep a copy of it."""
    from bnnrobust.training import main as train_main

    target = out / "ckpt" / run.key / f"epoch{epoch}.ckpt"
    if target.is_file() and _ckpt_epoch(target) == epoch - 1:
        return target
    cfg = training_config(run, synthetic=synthetic, quick=quick)
    cfg["trainer"]["max_epochs"] = epoch
    cfg_path = out / "configs" / f"{run.key}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(f"# python -m bnnrobust.studies.masking: configs/fmnist/{run.config} "
                        f"with {json.dumps(run.model)} (trained to epoch {epoch})\n"
                        + yaml.safe_dump(cfg, sort_keys=False))
    from bnnrobust.cli import latest_checkpoint

    found = latest_checkpoint(out / "runs" / run.key)
    args = ["--config", str(cfg_path), "--log_dir", str(out / "runs"), "--run_name", run.key,
            "--skip_test", "true", "--seed_everything", "0",
            "--trainer.enable_progress_bar", "false"]
    if found is not None:
        args += ["--ckpt_path", "last"]
    t0 = time.perf_counter()
    train_main(args)
    last = Path(latest_checkpoint(out / "runs" / run.key) or out / "runs" / run.key / "last.ckpt")
    if not last.is_file() or _ckpt_epoch(last) != epoch - 1:
        raise StudyError(f"Training {run.key} to epoch {epoch} did not leave {last} at that epoch.")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(last, target)
    _log(f"trained {run.key} to epoch {epoch} ({time.perf_counter() - t0:.0f} s)")
    return target


# -- evaluation -----------------------------------------------------------------------------------
def _quantiles(t: torch.Tensor) -> dict[str, float]:
    if t.numel() == 0:
        return {"p10": float("nan"), "median": float("nan"), "p90": float("nan")}
    q = torch.quantile(t.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def evaluate_checkpoint(ckpt: Path, x: torch.Tensor, y: torch.Tensor, *,
                        steps: int | None = None) -> dict[str, Any]:
    """Accuracies (percent), logit gaps, ψ and zero-gradient fraction of one checkpoint."""
    from bnnrobust.attacks.factory import build_attack
    from bnnrobust.evaluation.checkpoint import load_system
    from bnnrobust.evaluation.runner import evaluate
    from bnnrobust.metrics.signal import signal_sums

    system, _ = load_system(ckpt)
    net = getattr(system, "model", system)
    if not isinstance(net, torch.nn.Module):
        raise StudyError(f"{ckpt}: the system has no network module.")
    model: torch.nn.Module = net
    over = {} if steps is None else {"steps": steps}
    attacks = {name: build_attack(name, dataset="fmnist", **over) for name in ATTACKS}
    res = evaluate(model, (x, y), attacks, seed=0, progress=False)
    with torch.no_grad():
        logits = model(x)
    if not bool(torch.isfinite(logits).all()):
        raise StudyError(f"{ckpt}: the network gives non-finite logits.")
    correct = logits.argmax(1) == y
    top2 = logits.topk(2, dim=1).values
    gap = (top2[:, 0] - top2[:, 1])[correct]
    stats = signal_sums(model, x, y, {"original": 1.0}).finalize().stats["original"]
    out: dict[str, Any] = {
        "checkpoint": str(ckpt), "n": int(y.numel()), "clean": res.clean_acc,
        **{name: r.adv_acc for name, r in res.attacks.items()},
        "njs_beta1": res.attacks["pgd++njs"].config.get("njs_beta1"),
        "logit_gap": _quantiles(gap),
        "saturated_frac": float((gap > SATURATED_GAP).double().mean()) if gap.numel() else 0.0,
        "psi_norm": stats["psi_norm"].mean, "zero_grad_frac": stats["zero_grad"].mean,
        "seconds": res.seconds,
    }
    out["best_pp"] = min(out["pgd++njs"], out["pgd++hns"])
    out["gap_pgd_minus_pp"] = out["pgd"] - out["best_pp"]
    return out


def test_images(n: int, *, synthetic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Fashion-MNIST test images (or synthetic ones) in [0, 1]."""
    from bnnrobust.data import FashionMNISTDataModule, SyntheticDataModule

    dm = (SyntheticDataModule(num_samples=256, num_classes=10, in_channels=1, image_size=28,
                              seed=0) if synthetic else FashionMNISTDataModule())
    dm.prepare_data()
    dm.setup("test")
    ds = dm.test_set
    if ds is None:
        raise StudyError("The data module has no test set.")
    n = min(n, len(cast(Sized, ds)))
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return torch.stack(xs), torch.as_tensor(ys)


# -- driver ---------------------------------------------------------------------------------------
def run_study(out: str | Path, only: list[str] | None = None, *, n_eval: int = 500,
              synthetic: bool = False, quick: bool = False) -> list[dict[str, Any]]:
    """Train and evaluate every run of :data:`RUNS` (or those named in ``only``), resumably."""
    out = Path(out)
    known = [r.key for r in RUNS]
    unknown = [k for k in (only or []) if k not in known]
    if unknown:
        raise StudyError(f"Unknown run(s) {', '.join(unknown)}; accepted: {', '.join(known)}.")
    runs = [r for r in RUNS if not only or r.key in only]
    if quick:
        runs = [Run(r.key, r.config, r.line, r.varied, r.model, 2, (1, 2)) for r in runs]
    x, y = test_images(n_eval, synthetic=synthetic)
    rows = []
    for run in runs:
        for epoch in run.eval_epochs:
            path = out / "evals" / f"{run.key}_e{epoch}.json"
            if path.is_file():
                rows.append(json.loads(path.read_text()))
                continue
            ckpt = train_to(run, epoch, out, synthetic=synthetic, quick=quick)
            t0 = time.perf_counter()
            row = {"run": run.key, "line": run.line, "varied": run.varied, "epoch": epoch,
                   **evaluate_checkpoint(ckpt, x, y, steps=3 if quick else None)}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row, indent=2))
            rows.append(row)
            _log(f"{run.key} epoch {epoch}: clean {row['clean']:.1f}, PGD {row['pgd']:.1f}, "
                 f"PGD++ {row['best_pp']:.1f}, APGD-CE {row['apgd-ce']:.1f} "
                 f"({time.perf_counter() - t0:.0f} s)")
        if run.epochs > max(run.eval_epochs):
            train_to(run, run.epochs, out, synthetic=synthetic, quick=quick)
    return rows


def _all_rows(out: Path) -> list[dict[str, Any]]:
    order = {r.key: i for i, r in enumerate(RUNS)}
    rows = [json.loads(p.read_text()) for p in sorted((out / "evals").glob("*.json"))]
    return sorted(rows, key=lambda r: (order.get(r["run"], 99), r["epoch"]))


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the evaluated checkpoints (accuracies in percent)."""
    head = ("| run | design choice | epoch | clean | PGD-20 | PGD++ NJS | PGD++ HNS | APGD-CE | "
            "PGD − best PGD++ | logit gap p10 / median / p90 | saturated | ‖ψ‖₂ | zero grad |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        g = r["logit_gap"]
        lines.append(
            f"| {r['run']} | {r['varied']} | {r['epoch']} | {r['clean']:.1f} | {r['pgd']:.1f} | "
            f"{r['pgd++njs']:.1f} | {r['pgd++hns']:.1f} | {r['apgd-ce']:.1f} | "
            f"{r['gap_pgd_minus_pp']:+.1f} | {g['p10']:.0f} / {g['median']:.0f} / {g['p90']:.0f} | "
            f"{100 * r['saturated_frac']:.0f} % | {r['psi_norm']:.3f} | "
            f"{100 * r['zero_grad_frac']:.0f} % |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """PGD − best PGD++ accuracy gap against training epochs, one line per binarizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["run"] in ("bc", "md_tanh_s", "hubara", "ref", "gd_tanh"):
            lines.setdefault(r["varied"], []).append((r["epoch"], r["gap_pgd_minus_pp"]))
    for name, pts in lines.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10], labels=["1", "2", "5", "10"])
    ax.set_xlabel("training epochs (55k Fashion-MNIST training images each)")
    ax.set_ylabel("PGD − best PGD++ accuracy (points)")
    ax.set_title("Fake robustness exposed by PGD++ (ConvNet, eps 0.1 L∞)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def report(out: str | Path, *, doc: Path | None = DOC_PAGE) -> str:
    """Write ``masking.json``, ``table.md``, the plot and the doc page's table section."""
    out = Path(out)
    rows = _all_rows(out)
    if not rows:
        raise StudyError(f"No evaluation in {out / 'evals'}; run the study first.")
    (out / "masking.json").write_text(json.dumps(rows, indent=2))
    md = table(rows)
    (out / "table.md").write_text(md + "\n")
    plot(rows, out / "gap_vs_epochs.png")
    if doc is not None and doc.is_file():
        text = doc.read_text()
        start, end = "<!-- study table: generated -->", "<!-- end of study table -->"
        if start in text and end in text:
            pre, rest = text.split(start, 1)
            post = rest.split(end, 1)[1]
            doc.write_text(f"{pre}{start}\n{md}\n{end}{post}")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/masking")
    parser.add_argument("--only", nargs="+", default=None, help="run keys (default: all)")
    parser.add_argument("--n_eval", type=int, default=500)
    parser.add_argument("--synthetic", action="store_true", help="synthetic data (tests)")
    parser.add_argument("--quick", action="store_true", help="toy size: width 0.25, 2 epochs")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args(argv)
    try:
        if not args.report_only:
            run_study(args.out, args.only, n_eval=args.n_eval, synthetic=args.synthetic,
                      quick=args.quick)
        doc = None if (args.synthetic or args.quick) else DOC_PAGE
        print(report(args.out, doc=doc))
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from bnnrobust.noise import silence_library_noise

    silence_library_noise()
    raise SystemExit(main())
