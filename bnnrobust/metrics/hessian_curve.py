"""Hessian norm ‖H(β)‖_F of the loss against the temperature β (the seed paper's Fig. 3).

For a piecewise-linear network (∂J/∂x = 0 almost everywhere) the input Hessian of
``ℓ(β) = CE(β·f(x), y)`` is ``H(β) = β² Jᵀ S(β) J`` with ``S(β) = diag(p) − p pᵀ`` and
``p = softmax(β·f(x))``. With the d × d Gram matrix ``G = J Jᵀ``,
``‖H(β)‖_F = β² sqrt(tr(S G S G))`` — no N × N matrix is formed, and ``J`` is computed once
for the whole β grid (the same Gram form as ``bnnrobust.attacks.temperature.hessian_norm``).

Figures are built on a bare :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state),
so they work headless and can be sent to TensorBoard's ``add_figure``; :func:`save_figure`
writes them as a 300 dpi PNG plus a PDF of the same stem (also used by the eps-sweep plot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from bnnrobust.attacks.base import eval_mode
from bnnrobust.attacks.jacobian import gram_from_jacobian, input_jacobian_and_logits
from bnnrobust.attacks.temperature import hessian_norm, hns_beta_from_gram

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: resolution of saved raster figures (dots per inch)
FIGURE_DPI = 300


def model_label(model: nn.Module) -> str:
    """A model's name for figure titles when the caller gives none: its class name; for an
    ``nn.Sequential`` wrapper (e.g. ``Normalize`` + network) the one child with parameters."""
    if isinstance(model, nn.Sequential):
        inner = [m for m in model if next(m.parameters(), None) is not None]
        if len(inner) == 1:
            return model_label(inner[0])
    return type(model).__name__


def save_figure(fig: Figure, path: str | Path, *, dpi: int = FIGURE_DPI) -> list[Path]:
    """Write ``fig`` as a PNG (``dpi`` dots per inch) and a PDF with ``path``'s stem.

    ``path`` with another extension (``.svg``) is written too, in that format. Parent folders
    are created. The PDF carries no creation date, so reruns give identical files. Returns the
    paths written (the PNG first).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    targets = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    if out.suffix.lower() not in ("", ".png", ".pdf"):
        targets.append(out)
    for target in targets:
        metadata = {"CreationDate": None} if target.suffix.lower() == ".pdf" else None
        fig.savefig(str(target), dpi=dpi, metadata=metadata)
    return targets


def hessian_norms_from_gram(gram: Tensor, logits: Tensor, betas: Tensor) -> Tensor:
    """``‖β² Jᵀ S(β) J‖_F`` for every sample and every β of a grid.

    Thin wrapper over :func:`bnnrobust.attacks.temperature.hessian_norm` (Gram form).

    Args:
        gram: (B, d, d) Gram matrices ``J Jᵀ``.
        logits: (B, d) unscaled logits.
        betas: (K,) grid shared by all samples, or (B, K) one grid per sample; β > 0.

    Returns:
        (B, K) float64 Frobenius norms (loss units per squared pixel unit).
    """
    z = logits.detach().to(torch.float64)
    b = betas.to(device=z.device, dtype=torch.float64)
    if b.dim() == 1:
        b = b.expand(z.shape[0], -1)
    if b.dim() != 2 or b.shape[0] != z.shape[0]:
        raise ValueError(f"betas must have shape (K,) or ({z.shape[0]}, K), got {tuple(betas.shape)}.")
    return hessian_norm(gram.to(torch.float64), z, b, is_gram=True)


def _beta_of_eps(eps: float, gamma: Tensor, d: int) -> Tensor:
    """β(ε) = −log(ε / ((1 − ε)(d − 1))) / γ (the HNS grid end points)."""
    return -math.log(eps / ((1 - eps) * (d - 1))) / gamma


@dataclass
class HessianCurve:
    """‖H(β)‖_F on a β grid for a few samples.

    Attributes:
        betas: (K,) common β grid (log-spaced, covering every sample's HNS search range).
        norms: (B, K) ‖H(β)‖_F per sample.
        labels: (B,) true labels; ``correct``: (B,) whether each sample is correctly classified.
        hns_beta: (B,) HNS's β* (its own linear grid and fallbacks, as the attack uses it).
        argmax_beta: (B,) β of the largest norm on this curve's grid.
    """

    betas: Tensor
    norms: Tensor
    labels: Tensor
    correct: Tensor
    hns_beta: Tensor

    @property
    def argmax_beta(self) -> Tensor:
        return self.betas[self.norms.argmax(dim=1)]


def hessian_norm_curve(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    betas: Tensor | None = None,
    *,
    n_grid: int = 200,
    chunk_size: int = 32,
) -> HessianCurve:
    """‖H(β)‖_F against β for each sample of ``(x, y)`` (model in eval mode, modes restored).

    Args:
        model: classifier taking images in [0, 1] to (B, d) logits.
        x: (B, C, H, W) images; keep B small (a handful of samples).
        y: (B,) labels.
        betas: the β grid (K,); ``None``: ``n_grid`` log-spaced points from the smallest
            ``β(1 − 1/d − 0.01)`` to the largest ``β(1e−72)`` over the samples (the HNS search
            range, ``γ = z_top1 − z_top2``); ``[1e−3, 1e3]`` when every γ is 0.
        n_grid: grid size when ``betas`` is None.
        chunk_size: samples per Jacobian forward.
    """
    if n_grid < 2:
        raise ValueError(f"n_grid must be >= 2, got {n_grid!r}.")
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        x = x.detach().clone()
        jac, logits = input_jacobian_and_logits(model, x, chunk_size=chunk_size)
    d = logits.shape[1]
    z = logits.to(torch.float64)
    if betas is None:
        top2 = z.topk(2, dim=1).values
        gamma = top2[:, 0] - top2[:, 1]
        gamma = gamma[torch.isfinite(gamma) & (gamma > 0)]
        if gamma.numel():
            lo = float(_beta_of_eps(1 - 1 / d - 0.01, gamma, d).min())
            hi = float(_beta_of_eps(1e-72, gamma, d).max())
        else:
            lo, hi = 1e-3, 1e3
        lo = max(lo, 1e-12)
        betas = torch.logspace(math.log10(lo), math.log10(max(hi, lo * 10)), n_grid,
                               dtype=torch.float64)
    betas = betas.to(torch.float64).cpu()
    gram = gram_from_jacobian(jac).cpu()
    y = y.detach().cpu().long()
    norms = hessian_norms_from_gram(gram, z.cpu(), betas)
    correct = z.argmax(dim=1).cpu() == y
    hns_beta, _ = hns_beta_from_gram(gram, z.cpu(), y)
    return HessianCurve(betas=betas, norms=norms, labels=y, correct=correct, hns_beta=hns_beta)


def plot_hessian_curve(
    curve: HessianCurve,
    marks: Mapping[str, float | Tensor] | None = None,
    title: str | None = None,
    *,
    model_name: str | None = None,
) -> Figure:
    """Line plot of ``curve`` (one line per sample, log-log axes) as a matplotlib Figure.

    Axes: β (dimensionless temperature) against ‖H(β)‖_F in loss units per squared pixel
    unit (inputs in [0, 1]).

    Args:
        curve: from :func:`hessian_norm_curve`.
        marks: β values to mark with vertical lines, e.g. ``{"NJS": 0.3, "HNS": β*}``; a (B,)
            tensor marks each sample's own value in its colour.
        title: figure title; None: ``"<model_name>: Hessian norm vs. β"`` (without a model
            name: ``"Hessian norm vs. β"``).
        model_name: the model or run named in the default title.
    """
    from matplotlib.figure import Figure

    if title is None:
        title = f"{model_name}: Hessian norm vs. β" if model_name else "Hessian norm vs. β"

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    betas = curve.betas.numpy()
    styles = ["--", ":", "-."]
    for i in range(curve.norms.shape[0]):
        label = f"sample {i} (y={int(curve.labels[i])}{'' if curve.correct[i] else ', misclassified'})"
        (line,) = ax.plot(betas, curve.norms[i].numpy(), label=label)
        for j, (name, value) in enumerate((marks or {}).items()):
            per_sample = torch.is_tensor(value) and value.dim() > 0
            if not per_sample and i > 0:
                continue  # a shared β is drawn once
            v = float(value[i]) if per_sample and isinstance(value, Tensor) else float(value)
            ax.axvline(v, color=line.get_color() if per_sample else "gray",
                       linestyle=styles[j % len(styles)], linewidth=1,
                       label=name if i == 0 else None)
    ax.set_xscale("log")
    positive = curve.norms[curve.norms > 0]
    if positive.numel():
        ax.set_yscale("log")
        top = float(positive.max())
        ax.set_ylim(bottom=top * 1e-8, top=top * 10)  # the tail falls to ~1e-300: clip it
    ax.set_xlabel("β (temperature, dimensionless)")
    ax.set_ylabel("‖H(β)‖_F (loss per squared pixel unit)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def hessian_figure(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    n_samples: int = 4,
    marks: Mapping[str, float | Tensor] | None = None,
    path: str | Path | None = None,
    n_grid: int = 200,
    model_name: str | None = None,
    title: str | None = None,
) -> Figure | None:
    """Fig. 3 for the first ``n_samples`` correctly classified samples of ``(x, y)``.

    ``marks`` as in :func:`plot_hessian_curve` (per-sample tensors aligned with ``x``); each
    sample's HNS β* is always marked (dashed, in the sample's colour). ``path``: also write
    the figure there, a 300 dpi PNG plus a PDF of the same stem (:func:`save_figure`).
    ``model_name`` (default: :func:`model_label`) goes into the default title; ``title``
    replaces it. Returns the Figure, or None when no sample is correctly classified.
    """
    with torch.no_grad(), eval_mode(model):
        pred = model(x).argmax(dim=1)
    idx = torch.nonzero(pred == y).flatten()[:n_samples]
    if idx.numel() == 0:
        return None
    curve = hessian_norm_curve(model, x[idx], y[idx], n_grid=n_grid)
    sel_marks: dict[str, float | Tensor] = {"HNS β*": curve.hns_beta}
    sel_marks.update({k: (v[idx.to(v.device)].cpu() if torch.is_tensor(v) and v.dim() > 0 else v)
                      for k, v in (marks or {}).items()})
    fig = plot_hessian_curve(curve, sel_marks, title,
                             model_name=model_name if model_name else model_label(model))
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = [
    "HessianCurve",
    "hessian_figure",
    "hessian_norm_curve",
    "hessian_norms_from_gram",
    "model_label",
    "plot_hessian_curve",
    "save_figure",
]
