"""CLEVER scores (Weng et al. 2018) of a network under a logit temperature β (paper Table 10).

The score is ART's untargeted ``art.metrics.clever_u`` (the paper's implementation) computed
on ``β · f(x)``: the network wrapped with a fixed scale on its logits. The paper's settings
are the defaults: L1 norm, 50 batches of 10 samples, radius 5 (in [0, 1] pixel units).

Variants (:func:`temperature_betas`): ``original`` (β = 1), ``heuristic`` (β = 0.01), ``njs``
(NJS's β1 from the first clean samples' Jacobian singular values) and ``hns`` (HNS's β* of
each sample at the clean input).

What to expect: CLEVER estimates ``min_t (f_y − f_t) / L_t`` with ``L_t`` a reverse-Weibull
fit of the sampled gradient norms of ``f_y − f_t``. Scaling the logits by β scales the margin
and every gradient norm by β, so in exact arithmetic the score does not depend on β; what a
temperature changes is only the numerics (float32 gradients of saturated margins, the
Weibull fit on rescaled data). The tests check that invariance on a float model, and the
reproduction reports what ART returns on the BNNs.

ART draws its samples from NumPy's global generator: :func:`clever_scores` seeds it (and
torch's) with ``seed`` before each sample and restores neither (documented global effect).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import eval_mode
from bnnrobust.validation import check_int

__all__ = ["LogitScale", "clever_scores", "summarize", "temperature_betas"]

#: the paper's CLEVER settings (Table 10)
PAPER_SETTINGS = {"norm": 1, "nb_batches": 50, "batch_size": 10, "radius": 5.0}


class LogitScale(nn.Module):
    """``x ↦ β · model(x)`` with ``β`` a number or a (B,)-broadcastable fixed tensor."""

    def __init__(self, model: nn.Module, beta: float) -> None:
        super().__init__()
        self.model = model
        self.beta = float(beta)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.beta


def _check(x: Tensor, norm: Any, nb_batches: Any, batch_size: Any, radius: Any,
           betas: Mapping[str, Any]) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"CLEVER x must be a (B, C, H, W) image tensor, got "
                         f"{getattr(x, 'shape', type(x).__name__)}.")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError(f"CLEVER x must be images in [0, 1] pixel units, got values in "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}].")
    if norm not in (1, 2, math.inf, "inf"):
        raise ValueError(f"CLEVER norm must be 1, 2 or inf, got {norm!r}.")
    check_int("nb_batches", nb_batches, prefix="CLEVER ")
    check_int("batch_size", batch_size, prefix="CLEVER ")
    if isinstance(radius, bool) or not isinstance(radius, int | float) or not radius > 0 \
            or not math.isfinite(radius):
        raise ValueError(f"CLEVER radius must be a finite number > 0, got {radius!r}.")
    for name, beta in betas.items():
        values = beta.tolist() if isinstance(beta, Tensor) else [beta]
        values = values if isinstance(values, list) else [values]
        if not values or any(not isinstance(b, int | float) or isinstance(b, bool)
                             or not math.isfinite(b) or b <= 0 for b in values):
            raise ValueError(f"CLEVER beta {name!r} must be a finite number > 0 (or one per "
                             f"sample), got {beta!r}.")


def _beta_of(beta: float | Tensor, i: int) -> float:
    if isinstance(beta, Tensor):
        return float(beta.reshape(-1)[i] if beta.numel() > 1 else beta.reshape(-1)[0])
    return float(beta)


def clever_scores(
    model: nn.Module,
    x: Tensor,
    *,
    betas: Mapping[str, float | Tensor],
    norm: float | str = 1,
    nb_batches: int = 50,
    batch_size: int = 10,
    radius: float = 5.0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Untargeted CLEVER score of each image of ``x`` for each temperature of ``betas``.

    Args:
        model: maps [0, 1] images (B, C, H, W) to logits; put in eval mode meanwhile.
        x: images in [0, 1] pixel units.
        betas: ``{variant: β}`` with β a number or a (B,) tensor (one β per image, HNS).
        norm: perturbation norm of the score (paper: 1).
        nb_batches, batch_size: gradient samples per target class (paper: 50 × 10).
        radius: radius of the sampling ball, [0, 1] pixel units (paper: 5, L1).
        seed: seeds NumPy's and torch's global generators before each image (ART samples
            from NumPy's global generator).
        progress: a tqdm bar over (variant, image) with an ETA.

    Returns:
        ``{variant: [score of image 0, ...]}`` (the score is a perturbation size in the unit
        of ``norm``).
    """
    from art.estimators.classification import PyTorchClassifier
    from art.metrics import clever_u

    _check(x, norm, nb_batches, batch_size, radius, betas)
    art_norm: float = math.inf if norm in (math.inf, "inf") else float(norm)
    x_np = x.detach().cpu().float().numpy()
    out: dict[str, list[float]] = {name: [] for name in betas}
    total = len(betas) * x.shape[0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="CLEVER", unit="image")
    with eval_mode(model):
        n_classes = int(model(x[:1]).shape[-1])
        for name, beta in betas.items():
            for i in range(x.shape[0]):
                wrapped = LogitScale(model, _beta_of(beta, i))
                clf = PyTorchClassifier(model=wrapped, loss=nn.CrossEntropyLoss(),
                                        input_shape=tuple(x.shape[1:]), nb_classes=n_classes,
                                        clip_values=(0.0, 1.0), device_type="cpu")
                np.random.seed(seed)
                torch.manual_seed(seed)
                score = clever_u(clf, x_np[i], nb_batches=nb_batches, batch_size=batch_size,
                                 radius=float(radius), norm=art_norm, verbose=False)
                out[name].append(float(score))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return out


def temperature_betas(model: nn.Module, x: Tensor, y: Tensor, *, n_jsv: int = 100,
                      heuristic: float = 0.01) -> dict[str, float | Tensor]:
    """The paper's Table 10 variants for images ``x`` with labels ``y``.

    ``njs`` is NJS's β1 from the first ``n_jsv`` images of ``x`` (normalized-input Jacobian,
    the authors' convention); ``hns`` is HNS's β* of each image at the clean input.
    """
    from bnnrobust.attacks.temperature import hns_temperature, njs_temperature

    return {"original": 1.0, "heuristic": float(heuristic),
            "njs": float(njs_temperature(model, x, min(n_jsv, x.shape[0]))),
            "hns": hns_temperature(model, x, y).double()}


def summarize(scores: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """Mean, median and count of each variant's scores (non-finite scores excluded)."""
    out = {}
    for name, values in scores.items():
        t = torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float64)
        out[name] = {"mean": float(t.mean()) if t.numel() else float("nan"),
                     "median": float(t.median()) if t.numel() else float("nan"),
                     "n": int(t.numel())}
    return out


def clever_table(model: nn.Module, x: Tensor, y: Tensor, *, n_jsv: int = 100,
                 progress: bool = False, **settings: Any) -> dict[str, Any]:
    """Table 10 for one network: the variants' β, per-image scores and their summary.

    Only correctly classified images of ``x`` are scored (CLEVER bounds the perturbation
    that changes a correct prediction); NJS's β1 uses the first ``n_jsv`` images of ``x``.
    """
    betas = temperature_betas(model, x, y, n_jsv=n_jsv)
    with torch.no_grad(), eval_mode(model):
        keep = model(x).argmax(1) == y
    hns = betas["hns"]
    betas["hns"] = hns[keep] if isinstance(hns, Tensor) else hns
    scores = (clever_scores(model, x[keep], betas=betas, progress=progress, **settings)
              if bool(keep.any()) else {name: [] for name in betas})
    shown = {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in betas.items()}
    return {"settings": {**PAPER_SETTINGS, **settings}, "n_images": int(x.shape[0]),
            "n_scored": int(keep.sum()), "betas": shown, "scores": scores,
            "summary": summarize(scores)}


def main(argv: list[str] | None = None) -> int:
    """``python -m bnnrobust.metrics.clever --ckpt PATH [--n 10] [--output clever.json]``."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m bnnrobust.metrics.clever", description=(
        "CLEVER scores (ART's clever_u, the paper's Table 10 settings) of a trained network "
        "under the temperatures original, heuristic (0.01), NJS and HNS."))
    p.add_argument("--ckpt", required=True, help="train.py checkpoint, or zoo:NAME.")
    p.add_argument("--n", type=int, default=10, help="First n test images (default 10).")
    p.add_argument("--nb_batches", type=int, default=50)
    p.add_argument("--batch_size", type=int, default=10)
    p.add_argument("--radius", type=float, default=5.0, help="[0, 1] pixel units (L1 ball).")
    p.add_argument("--norm", default="1", help="1, 2 or inf.")
    p.add_argument("--output", default=None, help="JSON file (default: print only).")
    args = p.parse_args(argv)
    from bnnrobust import zoo
    from bnnrobust.evaluation.checkpoint import load_system

    path = zoo.path(args.ckpt) if args.ckpt.startswith(zoo.PREFIX) else args.ckpt
    system, dm = load_system(path)
    if dm is None:
        raise SystemExit("error: the checkpoint stores no data module to read test images from.")
    dm.prepare_data()
    dm.setup("test")
    test_set = getattr(dm, "test_set")  # noqa: B009 - ImageDataModule attribute
    xs, ys = zip(*(test_set[i] for i in range(min(args.n, len(test_set)))), strict=True)
    model = getattr(system, "model", system)
    norm: float | str = "inf" if args.norm == "inf" else float(args.norm)
    table = clever_table(model, torch.stack(xs), torch.as_tensor(ys), progress=True,
                         norm=norm, nb_batches=args.nb_batches, batch_size=args.batch_size,
                         radius=args.radius)
    for name, s in table["summary"].items():
        print(f"{name:>10}: mean CLEVER {s['mean']:.4f} (median {s['median']:.4f}, n {s['n']})")
    if args.output:
        Path(args.output).write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
