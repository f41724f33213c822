"""Gradients of the CE loss at the clean inputs: with respect to the input, the logits and
every layer's output (forward hooks on the leaf modules)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnrobust.attacks.base import check_labels, eval_mode
from bnnrobust.evaluation.diagnose.common import batches


@dataclass
class GradProbe:
    """Per-sample gradient facts at the clean inputs (all tensors (n,), on x's device)."""

    correct: Tensor
    p_y: Tensor  # float64
    logit_grad_zero: Tensor  # ∂ℓ/∂z zero or denormal in the model's dtype
    input_grad_zero: Tensor  # ∂ℓ/∂x exactly zero everywhere (incl. no graph from x)
    input_grad_nonfinite: Tensor
    input_zero_entries: Tensor  # fraction of exactly-zero entries of ∂ℓ/∂x
    connected: bool  # the logits depend on x through autograd at all
    layer_names: list[str]
    layer_zero: list[Tensor]  # per layer (forward order): per-sample all-zero output gradient


def leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module without children (``"(model)"`` for a leaf model)."""
    return [(n or "(model)", m) for n, m in model.named_modules() if not any(True for _ in m.children())]


def layer_gradient_zeros(
    model: nn.Module, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor, Tensor, list[str], list[Tensor], bool]:
    """Gradients of the summed CE loss with respect to the input, the logits and every layer.

    Forward hooks on every leaf module record its output (a module called twice appears
    twice, as ``name#2``). Outputs that carry no autograd graph (e.g. ``(x > 0.5).float()``)
    are replaced by a leaf that requires grad, so the gradient *arriving* at them is measured
    (the graph above them is cut anyway). Outputs modified in place later (``inplace=True``)
    report the gradient of the in-place result.

    Returns:
        ``(logits, grad_logits, grad_x, layer_names, layer_zero, connected)``: logits and
        ``∂ℓ/∂z`` (B, d), ``∂ℓ/∂x`` (B, ...) (zeros where the output does not depend on x),
        layer names in forward order, per layer a (B,) bool tensor "the gradient with respect
        to this layer's output is all zero for this sample", and whether x is connected to the
        logits by autograd at all. Model in eval mode; parameters' ``.grad`` untouched.
    """
    records: list[tuple[str, Tensor]] = []
    handles = [m.register_forward_hook(_recording_hook(n, x.shape[0], records))
               for n, m in leaf_modules(model)]
    try:
        with torch.enable_grad(), eval_mode(model):
            xg = x.detach().clone().requires_grad_(True)
            logits = model(xg)
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"The model must return (B, d) logits, got shape {tuple(logits.shape)}.")
            check_labels(logits, y)
            if not logits.requires_grad:  # nothing upstream needs a gradient at all
                logits = logits.detach().requires_grad_(True)
            loss = F.cross_entropy(logits, y, reduction="sum")
            inputs: list[Tensor] = [xg, logits]
            index: dict[int, int] = {id(xg): 0, id(logits): 1}
            layer_pos: list[int] = []
            for _, t in records:
                if id(t) not in index:
                    index[id(t)] = len(inputs)
                    inputs.append(t)
                layer_pos.append(index[id(t)])
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    connected = grads[0] is not None
    g_x = grads[0] if grads[0] is not None else torch.zeros_like(xg)
    g_z = grads[1] if grads[1] is not None else torch.zeros_like(logits)
    names, zeros = [], []
    for (label, _), pos in zip(records, layer_pos, strict=True):
        g = grads[pos]
        names.append(label)
        zeros.append(torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if g is None
                     else (g.detach().flatten(1) == 0).all(dim=1))
    return logits.detach(), g_z.detach(), g_x.detach(), names, zeros, connected


def _recording_hook(name: str, batch: int,
                    records: list[tuple[str, Tensor]]) -> Callable[[nn.Module, Any, Any], Any]:
    """A forward hook that appends ``(label, output)`` to ``records`` for every floating (B, ...)
    output; an output without a graph is replaced by a leaf that requires grad."""
    calls = 0

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        nonlocal calls
        if not torch.is_tensor(out) or not out.is_floating_point() or out.dim() == 0:
            return None
        if out.shape[0] != batch:
            return None
        calls += 1
        label = name if calls == 1 else f"{name}#{calls}"
        if out.requires_grad:
            records.append((label, out))
            return None
        leaf = out.detach().requires_grad_(True)
        records.append((label, leaf))
        return leaf

    return hook


def probe_gradients(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> GradProbe:
    """:func:`layer_gradient_zeros` over ``x`` in batches, reduced to per-sample facts."""
    parts: dict[str, list[Tensor]] = {k: [] for k in ("correct", "p_y", "lz", "xz", "xnf", "xfrac")}
    names: list[str] | None = None
    layer_parts: list[list[Tensor]] = []
    connected = True
    for s in batches(x.shape[0], batch_size):
        logits, g_z, g_x, lnames, lzero, conn = layer_gradient_zeros(model, x[s], y[s])
        connected &= conn
        tiny = torch.finfo(g_z.dtype).tiny if g_z.is_floating_point() else 0.0
        gx = g_x.flatten(1)
        parts["correct"].append(logits.argmax(dim=1) == y[s])
        parts["p_y"].append(torch.softmax(logits.double(), dim=1).gather(1, y[s][:, None]).squeeze(1))
        parts["lz"].append(g_z.abs().amax(dim=1) < tiny)
        parts["xz"].append((gx == 0).all(dim=1))
        parts["xnf"].append(~torch.isfinite(gx).all(dim=1))
        parts["xfrac"].append((gx == 0).double().mean(dim=1))
        if names is None:
            names, layer_parts = lnames, [[] for _ in lnames]
        if lnames == names:
            for i, z in enumerate(lzero):
                layer_parts[i].append(z)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    return GradProbe(
        correct=cat["correct"], p_y=cat["p_y"], logit_grad_zero=cat["lz"], input_grad_zero=cat["xz"],
        input_grad_nonfinite=cat["xnf"], input_zero_entries=cat["xfrac"], connected=connected,
        layer_names=names or [], layer_zero=[torch.cat(p) for p in layer_parts],
    )
