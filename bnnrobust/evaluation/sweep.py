"""Adversarial accuracy as a function of eps, for several attacks in one call.

Accuracy must fall (weakly) as eps grows; a curve that rises, or that stays flat at the clean
accuracy for large eps, is a sign of gradient masking. :func:`eps_sweep` flags the first
(``non_monotone``) in its result. Every accuracy carries its Wilson 95 % interval (``ci95``,
percent) and the plot draws it as error bars, with eps in the dataset's usual unit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from bnnrobust.evaluation.report import eps_in_255
from bnnrobust.evaluation.runner import evaluate
from bnnrobust.metrics.hessian_curve import model_label
from bnnrobust.metrics.intervals import wilson_interval_percent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["eps_sweep", "plot_sweep", "sweep_figure"]


def _check_eps(eps_list: Sequence[float]) -> list[float]:
    if not eps_list:
        raise ValueError("eps_sweep: eps_list is empty; give eps values in [0, 1] pixel units.")
    out = []
    for e in eps_list:
        if isinstance(e, bool) or not isinstance(e, int | float) or e != e:
            raise ValueError(f"eps_sweep: eps must be numbers in [0, 1] pixel units, got {e!r}.")
        if e < 0:
            raise ValueError(f"eps_sweep: eps must be >= 0 (pixel units in [0, 1]), got {e!r}.")
        out.append(float(e))
    return out


def eps_sweep(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[str | dict[str, Any]],
    eps_list: Sequence[float],
    *,
    dataset: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    json_path: str | Path | None = None,
    png_path: str | Path | None = None,
    progress: bool = True,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Adversarial accuracy (percent) of each attack at each eps.

    Args:
        model: classifier taking images in [0, 1].
        x, y: evaluation images (B, C, H, W) in [0, 1] and labels (B,).
        attacks: attack names or dicts (see :func:`bnnrobust.attacks.factory.build_attack`);
            their ``eps`` is replaced by each value of ``eps_list`` (the preset's step/eps
            ratio is kept unless the dict gives ``step_size``).
        eps_list: radii in [0, 1] pixel units (L2 radii for L2 attacks); 0 gives clean accuracy.
        dataset: preset for the attacks' other defaults (``None``: the factory's default).
        seed, batch_size, device: as in :func:`bnnrobust.evaluation.runner.evaluate`.
        json_path: write the result as JSON here. png_path: write the plot here, a 300 dpi PNG
            plus a PDF of the same stem (:func:`plot_sweep`).
        progress: tqdm bar over the eps values.
        model_name: the model or run named in the plot's title and the JSON (``"model"``);
            default: :func:`bnnrobust.metrics.hessian_curve.model_label` (the class name).

    Returns:
        ``{"eps": [...], "clean_acc": %, "clean_correct": .., "clean_ci95": [lo %, hi %],
        "n": .., "seed": .., "dataset": .., "model": .., "attacks": {name: {"adv_acc": [%...],
        "correct": [...], "ci95": [[lo %, hi %]...], "seconds": [...], "config": describe()}},
        "non_monotone": [names whose accuracy rises with eps]}``; ``ci95`` is the Wilson 95 %
        interval of each accuracy (:func:`bnnrobust.metrics.intervals.wilson_interval`).
    """
    from bnnrobust.attacks.factory import build_attack

    eps_values = _check_eps(eps_list)
    specs = _sweep_specs(attacks, dataset)
    curves: dict[str, dict[str, Any]] = {
        k: {"adv_acc": [], "correct": [], "ci95": [], "seconds": [], "config": None} for k in specs
    }
    clean_acc: float | None = None
    clean_correct: int | None = None
    n = int(y.shape[0])
    iterator: Any = eps_values
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(eps_values, desc="eps sweep", unit="eps", dynamic_ncols=True)
    for eps in iterator:
        built = {k: build_attack(s, dataset=dataset, eps=eps) for k, s in specs.items() if eps > 0}
        res = evaluate(model, (x, y), built, seed=seed, device=device, progress=False,
                       batch_size=batch_size)
        clean_acc, clean_correct = res.clean_acc, res.clean_correct
        for k in specs:
            curve = curves[k]
            if eps > 0:
                correct = res.attacks[k].correct
                curve["adv_acc"].append(res.attacks[k].adv_acc)
                curve["seconds"].append(res.attacks[k].seconds)
                if curve["config"] is None:
                    curve["config"] = res.attacks[k].config
            else:
                correct = res.clean_correct
                curve["adv_acc"].append(res.clean_acc)
                curve["seconds"].append(0.0)
            curve["correct"].append(int(correct))
            curve["ci95"].append(list(wilson_interval_percent(int(correct), n)))
    order = sorted(range(len(eps_values)), key=lambda i: eps_values[i])
    non_monotone = [k for k, c in curves.items()
                    if any(c["adv_acc"][b] > c["adv_acc"][a] + 1e-9
                           for a, b in zip(order, order[1:], strict=False))]
    result: dict[str, Any] = {
        "eps": eps_values, "clean_acc": clean_acc, "clean_correct": clean_correct,
        "clean_ci95": (list(wilson_interval_percent(clean_correct, n))
                       if clean_correct is not None and n > 0 else None),
        "n": n, "seed": int(seed), "dataset": dataset,
        "model": model_name if model_name else model_label(model),
        "attacks": curves, "non_monotone": non_monotone,
    }
    _write_sweep(result, json_path, png_path)
    return result


def _sweep_specs(attacks: Sequence[str | dict[str, Any]],
                 dataset: str | None) -> dict[str, str | dict[str, Any]]:
    """``{curve name: attack spec}``: each spec built once to check it has an eps budget;
    the attack's name, ``name#2``, ``name#3``, ... when several specs build the same name."""
    from bnnrobust.attacks.factory import build_attack

    if not attacks:
        raise ValueError("eps_sweep: give at least one attack name or dict.")
    specs: dict[str, str | dict[str, Any]] = {}
    for spec in attacks:
        built_once = build_attack(spec, dataset=dataset)
        if "eps" not in built_once.describe():
            raise ValueError(
                f"eps_sweep: attack {built_once.name!r} has no eps budget (e.g. DeepFool is "
                "unbounded), so it cannot be swept over eps; give eps-bounded attacks such as "
                "'pgd', 'fgsm', 'apgd-ce' or 'square'."
            )
        name = built_once.name
        key, i = name, 2
        while key in specs:
            key, i = f"{name}#{i}", i + 1
        specs[key] = spec
    return specs


def _write_sweep(result: dict[str, Any], json_path: str | Path | None,
                 png_path: str | Path | None) -> None:
    """The sweep's JSON at ``json_path`` and its plot at ``png_path`` (each if given)."""
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if png_path is not None:
        plot_sweep(result, png_path)


_NORM_LABELS = {"linf": "L∞", "l2": "L2", "l1": "L1"}


def _eps_axis(result: dict[str, Any]) -> tuple[float, str]:
    """(factor applied to eps, x-axis label) in the dataset's usual unit."""
    norms = {str((c.get("config") or {}).get("norm", "")) for c in result["attacks"].values()}
    norms.discard("")
    label = _NORM_LABELS.get(norms.pop(), "") if len(norms) == 1 else ""
    prefix = f"{label} " if label else ""
    if eps_in_255(result.get("dataset"), result["eps"]):
        return 255.0, f"{prefix}ε (in 1/255; pixel values in [0, 1])"
    return 1.0, f"{prefix}ε (pixel values in [0, 1])"


def sweep_figure(result: dict[str, Any], *, title: str | None = None) -> Figure:
    """Accuracy-vs-eps figure of an :func:`eps_sweep` result, with 95 % error bars.

    eps is shown in the dataset's usual unit (k/255 for CIFAR, pixel fraction for
    Fashion-MNIST/MNIST), accuracy in percent. ``title`` None: the result's ``model`` name,
    dataset and n. A bare matplotlib ``Figure`` (no pyplot state).
    """
    from matplotlib.figure import Figure

    eps = result["eps"]
    order = sorted(range(len(eps)), key=lambda i: eps[i])
    factor, xlabel = _eps_axis(result)
    fig = Figure(figsize=(5.5, 4.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in result["attacks"].items():
        xs = [eps[i] * factor for i in order]
        ys = [curve["adv_acc"][i] for i in order]
        ci = curve.get("ci95")
        if ci:
            err = [[ys[j] - ci[i][0] for j, i in enumerate(order)],
                   [ci[i][1] - ys[j] for j, i in enumerate(order)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=3, label=name)
        else:
            ax.plot(xs, ys, marker="o", markersize=4, label=name)
    if result.get("clean_acc") is not None:
        ax.axhline(result["clean_acc"], color="grey", linestyle="--", linewidth=1, label="clean")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("adversarial accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title is None:
        details = ", ".join(str(v) for v in (result.get("dataset"), f"n = {result.get('n')}") if v)
        model = result.get("model")
        title = f"{model}: accuracy vs ε ({details})" if model else f"accuracy vs ε ({details})"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_sweep(result: dict[str, Any], png_path: str | Path, *, title: str | None = None) -> Path:
    """Write :func:`sweep_figure` at ``png_path`` (300 dpi PNG) and as a PDF of the same stem.

    Returns ``png_path``.
    """
    from bnnrobust.metrics.hessian_curve import save_figure

    out = Path(png_path)
    save_figure(sweep_figure(result, title=title), out)
    return out
