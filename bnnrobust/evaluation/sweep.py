"""Adversarial accuracy as a function of eps, for several attacks in one call.

Accuracy must fall (weakly) as eps grows; a curve that rises, or that stays flat at the clean
accuracy for large eps, is a sign of gradient masking. :func:`eps_sweep` flags the first
(``non_monotone``) in its result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnnrobust.evaluation.runner import evaluate

__all__ = ["eps_sweep", "plot_sweep"]


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
        json_path: write the result as JSON here. png_path: write the plot here (matplotlib Agg).
        progress: tqdm bar over the eps values.

    Returns:
        ``{"eps": [...], "clean_acc": %, "n": .., "seed": .., "attacks": {name: {"adv_acc":
        [%...], "seconds": [...], "config": describe()}}, "non_monotone": [names whose
        accuracy rises with eps]}``.
    """
    from bnnrobust.attacks.factory import build_attack

    eps_values = _check_eps(eps_list)
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
    curves: dict[str, dict[str, Any]] = {k: {"adv_acc": [], "seconds": [], "config": None}
                                         for k in specs}
    clean_acc: float | None = None
    n = int(y.shape[0])
    iterator: Any = eps_values
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(eps_values, desc="eps sweep", unit="eps", dynamic_ncols=True)
    for eps in iterator:
        built = {k: build_attack(s, dataset=dataset, eps=eps) for k, s in specs.items() if eps > 0}
        res = evaluate(model, (x, y), built, seed=seed, device=device, progress=False,
                       batch_size=batch_size)
        clean_acc = res.clean_acc
        for k in specs:
            curve = curves[k]
            if eps > 0:
                curve["adv_acc"].append(res.attacks[k].adv_acc)
                curve["seconds"].append(res.attacks[k].seconds)
                if curve["config"] is None:
                    curve["config"] = res.attacks[k].config
            else:
                curve["adv_acc"].append(res.clean_acc)
                curve["seconds"].append(0.0)
    order = sorted(range(len(eps_values)), key=lambda i: eps_values[i])
    non_monotone = [k for k, c in curves.items()
                    if any(c["adv_acc"][b] > c["adv_acc"][a] + 1e-9
                           for a, b in zip(order, order[1:], strict=False))]
    result: dict[str, Any] = {"eps": eps_values, "clean_acc": clean_acc, "n": n, "seed": int(seed),
                              "dataset": dataset, "attacks": curves, "non_monotone": non_monotone}
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    if png_path is not None:
        plot_sweep(result, png_path)
    return result


def plot_sweep(result: dict[str, Any], png_path: str | Path) -> Path:
    """Accuracy-vs-eps plot of an :func:`eps_sweep` result (PNG, matplotlib Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    eps = result["eps"]
    order = sorted(range(len(eps)), key=lambda i: eps[i])
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    try:
        for name, curve in result["attacks"].items():
            ax.plot([eps[i] for i in order], [curve["adv_acc"][i] for i in order], marker="o",
                    label=name)
        if result.get("clean_acc") is not None:
            ax.axhline(result["clean_acc"], color="grey", linestyle="--", linewidth=1, label="clean")
        ax.set_xlabel("eps (pixel units, inputs in [0, 1])")
        ax.set_ylabel("adversarial accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"accuracy vs eps (n = {result.get('n')})")
        fig.tight_layout()
        out = Path(png_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
