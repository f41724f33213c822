"""Gradient-masking diagnosis: Athalye et al.'s obfuscated-gradient checklist, automated.

A robust accuracy measured with a gradient attack is only an upper bound; on binary networks
it is often a very loose one, because the gradients the attack follows are zero, saturated or
misleading (gradient masking). :func:`diagnose` runs the checks of Athalye, Carlini & Wagner
(ICML 2018, §3.1 "Identifying obfuscated & masked gradients") and the seed paper's signal
propagation analysis on a seeded subset of an evaluation set, and gives, per check, a verdict
(``pass`` / ``warning`` / ``fail``) with the numbers behind it, an overall verdict, and
recommendations (which attack to trust instead). Checks, in the order they run:

``randomness``
    Two or more forward passes in eval mode must give the same logits. A stochastic model
    (dropout left on, noise injection) needs EOT.
``zero_gradients``
    Fraction of correctly classified samples whose input gradient ``∂ℓ/∂x`` of the CE loss is
    exactly zero (or not finite), whether the zeros start at the logits (softmax saturation:
    ``∂ℓ/∂z`` underflows in the model's float dtype) or inside the network (``∂ℓ/∂z`` non-zero,
    ``∂ℓ/∂x`` zero), and which layer the gradient vanishes at (forward hooks on every leaf
    module, gradient of the loss with respect to each layer's output).
``softmax_saturation``
    Fraction of correct samples with ``p_y > 1 − ρ`` (the NJS criterion) and with an exactly
    zero loss gradient at the logits; PGD against PGD++ (HNS temperature).
``signal_propagation``
    Jacobian singular values (mean/std), ``‖ψ‖₂``, gradient norms and the zero-gradient
    fraction for β = 1 and for the NJS/HNS β (:func:`bnnrobust.metrics.signal.signal_propagation`).
``more_iterations``
    PGD with 10/20/100/500 steps: accuracy must not keep dropping with more steps.
``eps_growth``
    PGD at eps·1, 2, 4, 8, 16 (capped at 0.5 in L∞): accuracy must reach ~0 at a large radius.
``black_box``
    Square (score-based, no gradients) and, with ``source_model``, a transfer attack from a
    float model must not beat the white-box attacks.
``clever``
    CLEVER-style local Lipschitz scores of the logit margin: a zero gradient gives an infinite
    score, and a score above eps for a sample some attack fools means the gradient misleads.

Units: eps and every radius are in [0, 1] pixel units (inputs are images in [0, 1];
normalization belongs inside the model); accuracies are fractions in [0, 1].

Example::

    diag = diagnose(model, x, y, eps=8 / 255)
    print(diag.format())
    Path("diagnosis.json").write_text(diag.to_json())

This module imports neither Lightning nor ``bnnrobust.systems``. See ``docs/diagnosis.md``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnrobust.attacks.base import Attack, Norm, check_inputs, check_labels, eval_mode

__all__ = [
    "CHECKS",
    "QUICK_MAX_STEPS",
    "THRESHOLDS",
    "CheckResult",
    "Diagnosis",
    "cli_diagnose",
    "default_threat_model",
    "diagnose",
    "layer_gradient_zeros",
]

Verdict = Literal["pass", "warning", "fail", "skipped", "error"]

#: every check, in the order it runs
CHECKS: tuple[str, ...] = (
    "randomness",
    "zero_gradients",
    "softmax_saturation",
    "signal_propagation",
    "more_iterations",
    "eps_growth",
    "black_box",
    "clever",
)

#: ``quick=True`` caps every PGD at this many steps (and Square at ``QUICK_SQUARE_QUERIES``)
QUICK_MAX_STEPS = 50
QUICK_SQUARE_QUERIES = 300

#: the thresholds of the verdicts (fractions of samples or accuracy differences in [0, 1]);
#: documented, with the reasons, in docs/diagnosis.md
THRESHOLDS: dict[str, float] = {
    # randomness: relative logit change between passes (max |Δlogit| / max |logit|)
    "random_logit_rel_fail": 1e-2,
    "random_logit_rel_warn": 1e-5,
    # zero input gradients, fraction of correctly classified samples
    "zero_grad_fail": 0.10,
    "zero_grad_warn": 0.01,
    # softmax saturation: fraction of correct samples whose ∂ℓ/∂logits underflows
    "saturation_fail": 0.10,
    "saturation_warn": 0.01,
    # more iterations: accuracy drop from the fewest to the most steps
    "iter_drop_fail": 0.10,
    "iter_drop_warn": 0.03,
    # more iterations: accuracy drop between the two largest step counts (still falling)
    "iter_last_drop_warn": 0.02,
    # eps growth: accuracy at the largest radius
    "eps_acc_fail": 0.10,
    "eps_acc_warn": 0.02,
    # eps growth: the radius counts as "large" from this per-pixel size (L2: times sqrt(N))
    "eps_large_linf": 0.25,
    "eps_large_l2_per_sqrt_n": 0.10,
    # a black-box / PGD++ attack beats the white-box one by more than this (and the noise)
    "beats_margin": 0.02,
    # CLEVER: fraction of correct samples with an infinite score (zero margin gradient)
    "clever_inf_fail": 0.10,
    "clever_inf_warn": 0.01,
    # CLEVER: fraction of correct samples with score > eps that an attack fools anyway
    "clever_over_warn": 0.10,
}

_RANK: dict[str, int] = {"pass": 0, "skipped": 0, "warning": 1, "error": 1, "fail": 2}
_MARK: dict[str, str] = {"pass": "PASS", "warning": "WARN", "fail": "FAIL", "skipped": "SKIP",
                         "error": "ERR "}

REC_PGDPP = ("softmax saturation: use PGD++ with HNS (PGD(temperature='hns')) or NJS "
             "(temperature='njs'); the temperature restores the gradient at the logits.")
REC_INSIDE = ("zero gradients inside the network, not at the logits: temperature cannot help; use "
              "a black-box attack (Square) or a surrogate-gradient attack (PGD(surrogate='tanh:5')).")
REC_EOT = ("randomness: the model is stochastic in eval mode; use EOT (average the gradient over "
           "several forward passes) and report the accuracy over several evaluations, or fix the "
           "randomness (dropout left on?).")
REC_NONFINITE = ("NaN/inf input gradients: the attack steps are undefined for these samples; find "
                 "the non-finite operation (e.g. log of 0, division by 0) before trusting PGD.")
REC_ITER = ("accuracy keeps dropping with more steps: the attack has not converged; report the "
            "accuracy at the largest step count, or use APGD (step-size schedule) with restarts.")
REC_EPS = ("accuracy does not reach ~0 at a large radius: the gradient attack is blocked (gradient "
           "masking) or eps is in the wrong units (eps is in [0, 1] pixels, normalization inside "
           "the model); cross-check with Square, a surrogate gradient or PGD++.")
REC_BLACKBOX = ("a black-box attack beats the white-box one: white-box gradients are masked; report "
                "the per-sample worst case over white-box and black-box attacks "
                "(bnnrobust.attacks.Cascade).")
REC_CLEVER = ("CLEVER-style scores are infinite or above eps where attacks succeed: the local "
              "gradient misleads; do not certify from gradients, trust black-box results.")


# ============================================================================= results
@dataclass
class CheckResult:
    """Outcome of one check.

    Attributes:
        name: check name (one of :data:`CHECKS`).
        verdict: ``"pass"``, ``"warning"``, ``"fail"``, ``"skipped"`` (not run, ``summary``
            says why) or ``"error"`` (the check raised; ``summary`` holds the error).
        summary: one sentence with the numbers behind the verdict.
        evidence: JSON-able numbers (accuracies and fractions in [0, 1], radii in pixel units).
        recommendations: what to do about it (empty when nothing is needed).
        seconds: wall-clock time of the check.
    """

    name: str
    verdict: Verdict
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    recommendations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "summary": self.summary, "evidence": self.evidence,
                "recommendations": list(self.recommendations), "seconds": round(self.seconds, 3)}


@dataclass
class Diagnosis:
    """All check results of :func:`diagnose`.

    Attributes:
        checks: results, in the order of :data:`CHECKS` (only those asked for).
        settings: eps, norm, n, seed, steps, radii... (JSON-able).
        clean_acc: clean accuracy of the subset.
        seconds: total wall-clock time.
    """

    checks: list[CheckResult]
    settings: dict[str, Any]
    clean_acc: float
    seconds: float = 0.0

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"No check {name!r} in this diagnosis; it has {[c.name for c in self.checks]}.")

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.checks)

    @property
    def verdict(self) -> Literal["pass", "warning", "fail"]:
        """Worst verdict over the checks (``error`` counts as a warning, ``skipped`` as a pass)."""
        rank = max((_RANK[c.verdict] for c in self.checks), default=0)
        return ("pass", "warning", "fail")[rank]  # type: ignore[return-value]

    @property
    def recommendations(self) -> list[str]:
        """Recommendations of every check, failing checks first, without duplicates."""
        out: list[str] = []
        for c in sorted(self.checks, key=lambda c: -_RANK[c.verdict]):
            for r in c.recommendations:
                if r not in out:
                    out.append(r)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: verdict, settings, clean accuracy, checks, recommendations, versions."""
        import bnnrobust

        return {
            "verdict": self.verdict,
            "clean_acc": self.clean_acc,
            "settings": self.settings,
            "checks": {c.name: c.to_dict() for c in self.checks},
            "recommendations": self.recommendations,
            "seconds": round(self.seconds, 3),
            "versions": {"torch": torch.__version__,
                         "bnnrobust": getattr(bnnrobust, "__version__", "unknown")},
        }

    def to_json(self, indent: int = 2) -> str:
        """:meth:`to_dict` as JSON text (nan/inf are written as NaN/Infinity)."""
        return json.dumps(self.to_dict(), indent=indent)

    def format(self) -> str:
        """A readable, plain-text report (one block per check, then the recommendations)."""
        s = self.settings
        lines = [
            f"Gradient-masking diagnosis: overall {self.verdict.upper()}",
            f"model {s.get('model', '?')} | n = {s['n']} (seed {s['seed']}) | eps = {s['eps']:.4g} "
            f"({s['norm']}, [0, 1] pixel units) | clean accuracy {_pct(self.clean_acc)}",
            "-" * 78,
        ]
        for c in self.checks:
            lines.append(f"[{_MARK[c.verdict]}] {c.name:<19} {c.summary}")
            for extra in _format_evidence(c):
                lines.append(" " * 7 + extra)
        lines.append("-" * 78)
        recs = self.recommendations
        if recs:
            lines.append("Recommendations:")
            lines.extend(f"  {i}. {r}" for i, r in enumerate(recs, 1))
        else:
            lines.append("No sign of gradient masking: the white-box accuracy can be trusted as far "
                         "as these checks go.")
        lines.append(f"({self.seconds:.1f} s)")
        return "\n".join(lines)


def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _format_evidence(c: CheckResult) -> list[str]:
    """A few extra report lines for the checks whose evidence is a curve or a table."""
    ev = c.evidence
    out: list[str] = []
    if c.name == "more_iterations" and "acc" in ev:
        out.append("steps → acc: " + ", ".join(f"{k}: {_pct(v)}" for k, v in ev["acc"].items()))
    elif c.name == "eps_growth" and "acc" in ev:
        out.append("eps → acc: " + ", ".join(f"{float(k):.4g}: {_pct(v)}" for k, v in ev["acc"].items()))
    elif c.name == "zero_gradients" and ev.get("layers"):
        zeros = [f"{layer['name']}: {_pct(layer['zero_frac'])}" for layer in reversed(ev["layers"])]
        if len(zeros) > 12:
            zeros = zeros[:11] + ["..."]
        zeros.append(f"input x: {_pct(ev['zero_input_grad_frac'])}")
        out.append("zero-gradient fraction per layer output, output → input: " + ", ".join(zeros))
    elif c.name == "signal_propagation" and "variants" in ev:
        for v, row in ev["variants"].items():
            out.append(f"{v:<8} β={row['beta']:.3g} jsv mean={row['jsv_mean']:.3g} "
                       f"std={row['jsv_std']:.3g} ‖ψ‖₂={row['psi_norm']:.3g} "
                       f"‖∂ℓ/∂x‖₂={row['grad_norm']:.3g} zero-grad={_pct(row['zero_grad_frac'])}")
    return out


# ============================================================================= helpers
def _noise(p: float, n: int) -> float:
    """Two binomial standard errors of an accuracy ``p`` on ``n`` samples."""
    if n <= 0 or math.isnan(p):
        return 0.0
    return 2.0 * math.sqrt(max(p * (1.0 - p), 0.0) / n)


def _frac(mask: Tensor, among: Tensor | None = None) -> float:
    """Fraction of True in ``mask`` (restricted to ``among``); nan when nothing to count."""
    if among is not None:
        mask = mask[among]
    return float(mask.float().mean()) if mask.numel() else math.nan


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """(B, d) logits in eval mode, batched."""
    return torch.cat([model(x[s]).detach() for s in _batches(x.shape[0], batch_size)])


def _correct_after(model: nn.Module, attack: Attack, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """Per-sample bool: still correctly classified on ``attack``'s examples."""
    out = []
    for s in _batches(x.shape[0], batch_size):
        x_adv = attack(model, x[s], y[s])
        with torch.no_grad():
            out.append(model(x_adv).argmax(dim=1) == y[s])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def _check_number(name: str, value: float, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    return float(value)


def _check_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    vals = tuple(values)
    if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 1, got {values!r}.")
    return tuple(sorted(set(vals)))


# ============================================================================= layer gradients
@dataclass
class _GradProbe:
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


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(n or "(model)", m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    return leaves


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
    seen: dict[str, int] = {}

    def make_hook(name: str) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
            if not torch.is_tensor(out) or not out.is_floating_point() or out.dim() == 0:
                return None
            if out.shape[0] != x.shape[0]:
                return None
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name}#{seen[name]}"
            if out.requires_grad:
                records.append((label, out))
                return None
            leaf = out.detach().requires_grad_(True)
            records.append((label, leaf))
            return leaf

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in _leaf_modules(model)]
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


def _probe(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> _GradProbe:
    parts: dict[str, list[Tensor]] = {k: [] for k in ("correct", "p_y", "lz", "xz", "xnf", "xfrac")}
    names: list[str] | None = None
    layer_parts: list[list[Tensor]] = []
    connected = True
    for s in _batches(x.shape[0], batch_size):
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
    return _GradProbe(
        correct=cat["correct"], p_y=cat["p_y"], logit_grad_zero=cat["lz"], input_grad_zero=cat["xz"],
        input_grad_nonfinite=cat["xnf"], input_zero_entries=cat["xfrac"], connected=connected,
        layer_names=names or [], layer_zero=[torch.cat(p) for p in layer_parts],
    )


# ============================================================================= the diagnosis
class _Runner:
    """Holds the subset, the settings and the cached attack results shared by the checks."""

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: Norm,
                 source_model: nn.Module | None, rho: float, seed: int, steps_list: tuple[int, ...],
                 eps_multipliers: tuple[float, ...], square_queries: int, n_clever: int,
                 clever_points: int, n_signal: int, batch_size: int) -> None:
        self.model, self.x, self.y = model, x, y
        self.n = x.shape[0]
        self.eps, self.norm, self.source_model, self.rho, self.seed = eps, norm, source_model, rho, seed
        self.steps_list, self.eps_multipliers = steps_list, eps_multipliers
        self.square_queries, self.n_clever, self.clever_points = square_queries, n_clever, clever_points
        self.n_signal, self.batch_size = n_signal, batch_size
        self.ref_steps = min(20, max(steps_list))
        self.clean_correct = _predict(model, x, batch_size).argmax(dim=1) == y
        self.clean_acc = _frac(self.clean_correct)
        self._pgd: dict[tuple[float, int, str | None], Tensor] = {}
        self.probe: _GradProbe | None = None
        self.other_attacks: dict[str, Tensor] = {}  # non-PGD results at eps (for CLEVER)

    # -- attacks -----------------------------------------------------------------------------
    def pgd(self, eps: float, steps: int, temperature: str | None = None) -> Tensor:
        """Per-sample correct after PGD (step size 2.5·eps/steps, seeded random start); cached."""
        key = (eps, steps, temperature)
        if key not in self._pgd:
            from bnnrobust.attacks.pgd import PGD

            atk = PGD(eps=eps, step_size=2.5 * eps / steps, steps=steps, norm=self.norm,
                      temperature=temperature, seed=self.seed)
            self._pgd[key] = _correct_after(self.model, atk, self.x, self.y, self.batch_size)
        return self._pgd[key]

    def white_box_at_eps(self) -> tuple[Tensor, list[str]]:
        """Per-sample worst case over every plain PGD run at ``eps`` so far (one run of
        ``ref_steps`` if none): the white-box attack whose gradients are under suspicion."""
        runs = {k: v for k, v in self._pgd.items() if k[0] == self.eps and k[2] is None}
        if not runs:
            self.pgd(self.eps, self.ref_steps)
            runs = {k: v for k, v in self._pgd.items() if k[0] == self.eps and k[2] is None}
        robust = self.clean_correct.clone()
        for v in runs.values():
            robust &= v
        names = [f"pgd-{s}" for (_, s, _) in runs]
        return robust, names

    def probe_once(self) -> _GradProbe:
        if self.probe is None:
            self.probe = _probe(self.model, self.x, self.y, self.batch_size)
        return self.probe

    # -- checks ------------------------------------------------------------------------------
    def randomness(self, n_passes: int = 4) -> CheckResult:
        ref = _predict(self.model, self.x, self.batch_size)
        max_diff, pred_changed = 0.0, torch.zeros(self.n, dtype=torch.bool, device=self.x.device)
        nonfinite = ~torch.isfinite(ref).all(dim=1)
        for _ in range(n_passes - 1):
            other = _predict(self.model, self.x, self.batch_size)
            both = torch.isfinite(ref) & torch.isfinite(other)
            if bool(both.any()):
                max_diff = max(max_diff, float((ref - other).abs()[both].max()))
            nonfinite |= ~torch.isfinite(other).all(dim=1)
            pred_changed |= other.argmax(dim=1) != ref.argmax(dim=1)
        finite = ref[torch.isfinite(ref)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        rel = max_diff / scale if scale > 0 else (0.0 if max_diff == 0 else math.inf)
        changed = _frac(pred_changed)
        ev = {"passes": n_passes, "max_abs_logit_diff": max_diff, "rel_logit_diff": rel,
              "pred_changed_frac": changed, "nonfinite_logits_frac": _frac(nonfinite)}
        t = THRESHOLDS
        if changed > 0 or rel > t["random_logit_rel_fail"]:
            return CheckResult("randomness", "fail",
                               f"the model is stochastic in eval mode: {_pct(changed)} of predictions "
                               f"change over {n_passes} passes, logits by up to {rel:.2g} (relative).",
                               ev, [REC_EOT])
        if rel > t["random_logit_rel_warn"]:
            return CheckResult("randomness", "warning",
                               f"logits differ between passes by up to {rel:.2g} (relative) but no "
                               "prediction changes (non-deterministic kernels or small noise).", ev,
                               [REC_EOT])
        return CheckResult("randomness", "pass",
                           f"{n_passes} forward passes in eval mode give the same logits "
                           f"(relative difference {rel:.2g}).", ev)

    def zero_gradients(self) -> CheckResult:
        p = self.probe_once()
        c = p.correct
        n_c = int(c.sum())
        zero = _frac(p.input_grad_zero, c)
        nonfinite = _frac(p.input_grad_nonfinite, c)
        at_logits = _frac(p.input_grad_zero & p.logit_grad_zero, c)
        inside = _frac(p.input_grad_zero & ~p.logit_grad_zero, c)
        layers = [{"name": nm, "zero_frac": _frac(z, c)} for nm, z in zip(p.layer_names, p.layer_zero,
                                                                         strict=True)]
        vanish_name, vanish_frac = self._locate(p, c)
        ev: dict[str, Any] = {
            "n_correct": n_c,
            "zero_input_grad_frac": zero,
            "zero_input_grad_frac_all": _frac(p.input_grad_zero),
            "nonfinite_input_grad_frac": nonfinite,
            "zero_at_logits_frac": at_logits,
            "zero_inside_frac": inside,
            "zero_entries_frac_mean": float(p.input_zero_entries[c].mean()) if n_c else math.nan,
            "input_connected": p.connected,
            "vanishes_at": vanish_name,
            "vanishes_at_frac": vanish_frac,
            "layers": layers,
        }
        if n_c == 0:
            return CheckResult("zero_gradients", "skipped",
                               "no correctly classified sample in the subset.", ev)
        t = THRESHOLDS
        recs: list[str] = []
        if nonfinite > 0:
            recs.append(REC_NONFINITE)
        if at_logits > t["zero_grad_warn"]:
            recs.append(REC_PGDPP)
        if inside > t["zero_grad_warn"]:
            recs.append(REC_INSIDE)
        summary = (f"the input gradient is all-zero for {_pct(zero)} of the {n_c} correctly classified "
                   f"samples (at the logits: {_pct(at_logits)}, inside the network: {_pct(inside)}"
                   + (f", first vanishing at '{vanish_name}'" if vanish_name else "")
                   + f"); NaN/inf gradients: {_pct(nonfinite)}.")
        if not p.connected:
            summary += " The logits do not depend on the input through autograd at all."
        if zero > t["zero_grad_fail"] or nonfinite > 0:
            verdict: Verdict = "fail"
        elif zero > t["zero_grad_warn"]:
            verdict = "warning"
        else:
            verdict = "pass"
        return CheckResult("zero_gradients", verdict, summary, ev, recs)

    @staticmethod
    def _locate(p: _GradProbe, c: Tensor) -> tuple[str | None, float]:
        """The module whose output gradient is non-zero while its input's is zero, for the most
        correct samples with a zero input gradient (input = the previous leaf's output, or x)."""
        target = p.input_grad_zero & c & ~p.logit_grad_zero
        if not bool(target.any()) or not p.layer_names:
            return None, 0.0
        best, best_count = None, 0
        prev = p.input_grad_zero
        for name, z in zip(p.layer_names, p.layer_zero, strict=True):
            count = int((prev & ~z & target).sum())
            if count > best_count:
                best, best_count = name, count
            prev = z
        return best, best_count / int(target.sum())

    def softmax_saturation(self) -> CheckResult:
        p = self.probe_once()
        c = p.correct
        n_c = int(c.sum())
        rho_sat = _frac(p.p_y > 1.0 - self.rho, c)
        float_sat = _frac(p.logit_grad_zero, c)
        ev: dict[str, Any] = {"n_correct": n_c, "rho": self.rho, "rho_saturated_frac": rho_sat,
                              "float_saturated_frac": float_sat}
        if n_c == 0:
            return CheckResult("softmax_saturation", "skipped",
                               "no correctly classified sample in the subset.", ev)
        t = THRESHOLDS
        gain = 0.0
        if not p.connected:
            pp = "; PGD++ not run (the logits do not depend on the input through autograd)"
        elif rho_sat > 0 or float_sat > 0:
            acc_pgd = _frac(self.pgd(self.eps, self.ref_steps))
            acc_pp = _frac(self.pgd(self.eps, self.ref_steps, "hns"))
            gain = acc_pgd - acc_pp
            ev.update({"steps": self.ref_steps, "pgd_acc": acc_pgd, "pgd++hns_acc": acc_pp,
                       "pgd++_gain": gain})
            pp = (f"; PGD-{self.ref_steps} {_pct(acc_pgd)} vs PGD++(HNS) {_pct(acc_pp)}")
        else:
            pp = "; PGD++ not run (no sample with p_y > 1 − ρ)"
        noise = _noise(ev.get("pgd_acc", 0.0), self.n)
        margin = max(t["beats_margin"], noise)
        summary = (f"{_pct(rho_sat)} of correct samples have p_y > 1 − ρ (ρ = {self.rho:g}), "
                   f"{_pct(float_sat)} have ∂ℓ/∂logits = 0 in float{pp}.")
        if "pgd_acc" in ev:
            from bnnrobust.evaluation.report import weaker_temperature_notes

            notes = weaker_temperature_notes(
                {"pgd": 100 * ev["pgd_acc"], "pgd++hns": 100 * ev["pgd++hns_acc"]},
                min_gap=100 * margin)
            ev["pgd++_weaker"] = bool(notes)
            summary += "".join(f" {note[0].upper()}{note[1:]}" for note in notes)
        if float_sat > t["saturation_fail"] or gain > margin:
            return CheckResult("softmax_saturation", "fail", summary, ev, [REC_PGDPP])
        if float_sat > t["saturation_warn"] or gain > max(t["beats_margin"], noise / 2):
            return CheckResult("softmax_saturation", "warning", summary, ev, [REC_PGDPP])
        return CheckResult("softmax_saturation", "pass", summary, ev)

    def signal_propagation(self) -> CheckResult:
        from bnnrobust.metrics.signal import signal_propagation

        p = self.probe if self.probe is not None else None
        if p is not None and not p.connected:
            return CheckResult("signal_propagation", "skipped",
                               "the logits do not depend on the input through autograd (no "
                               "Jacobian to measure); see zero_gradients.", {}, [REC_INSIDE])
        idx = torch.arange(min(self.n, self.n_signal), device=self.x.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats = signal_propagation(self.model, self.x[idx], self.y[idx])
        variants = {v: stats.summary(v) for v in stats.variants}
        ev: dict[str, Any] = {"n_samples": stats.n_samples, "n_correct": stats.n_correct,
                              "variants": variants,
                              "warnings": sorted({str(w.message) for w in caught})}
        if stats.n_correct == 0:
            return CheckResult("signal_propagation", "skipped",
                               "no correctly classified sample in the subset.", ev)
        orig = variants["original"]
        best_other = min((variants[v]["zero_grad_frac"] for v in variants if v != "original"),
                         default=orig["zero_grad_frac"])
        z0 = orig["zero_grad_frac"]
        t = THRESHOLDS
        summary = (f"β = 1: jsv mean {orig['jsv_mean']:.3g} (std {orig['jsv_std']:.3g}), "
                   f"‖ψ‖₂ {orig['psi_norm']:.3g}, zero-gradient {_pct(z0)}; with NJS/HNS β the "
                   f"zero-gradient fraction is {_pct(best_other)}.")
        if not math.isfinite(z0):
            return CheckResult("signal_propagation", "fail", summary + " Non-finite metrics.", ev,
                               [REC_NONFINITE])
        fixed = best_other < z0 - t["zero_grad_fail"]
        if z0 > t["zero_grad_fail"]:
            return CheckResult("signal_propagation", "fail",
                               summary + (" The temperature restores the gradient." if fixed else
                                          " The temperature does not restore it."), ev,
                               [REC_PGDPP if fixed else REC_INSIDE])
        if z0 > t["zero_grad_warn"]:
            return CheckResult("signal_propagation", "warning", summary, ev,
                               [REC_PGDPP if best_other < z0 else REC_INSIDE])
        return CheckResult("signal_propagation", "pass", summary, ev)

    def more_iterations(self) -> CheckResult:
        accs = {s: _frac(self.pgd(self.eps, s)) for s in self.steps_list}
        ev: dict[str, Any] = {"acc": {str(s): a for s, a in accs.items()},
                              "step_size_rule": "2.5 * eps / steps"}
        steps = list(accs)
        first, last = accs[steps[0]], accs[steps[-1]]
        drop = first - last
        last_drop = accs[steps[-2]] - last if len(steps) > 1 else 0.0
        ev.update({"drop": drop, "last_drop": last_drop})
        t = THRESHOLDS
        margin = _noise(last, self.n)
        summary = (f"PGD accuracy {_pct(first)} with {steps[0]} steps, {_pct(last)} with {steps[-1]} "
                   f"(drop {100 * drop:.1f} points, {100 * last_drop:.1f} in the last increase).")
        if len(steps) < 2:
            return CheckResult("more_iterations", "skipped", "needs at least two step counts.", ev)
        if drop > max(t["iter_drop_fail"], margin):
            return CheckResult("more_iterations", "fail", summary, ev, [REC_ITER])
        if drop > max(t["iter_drop_warn"], margin) or last_drop > max(t["iter_last_drop_warn"], margin):
            return CheckResult("more_iterations", "warning", summary, ev, [REC_ITER])
        if -drop > max(t["iter_drop_warn"], margin):
            return CheckResult("more_iterations", "warning",
                               summary + " More steps made the attack weaker (randomness or a "
                               "step size problem).", ev, [REC_ITER])
        return CheckResult("more_iterations", "pass", summary, ev)

    def eps_growth(self) -> CheckResult:
        n_in = self.x[0].numel()
        if self.norm is Norm.LINF:
            cap, large = 0.5, THRESHOLDS["eps_large_linf"]
        else:
            cap, large = 0.5 * math.sqrt(n_in), THRESHOLDS["eps_large_l2_per_sqrt_n"] * math.sqrt(n_in)
        radii = sorted({min(self.eps * m, cap) for m in self.eps_multipliers})
        steps = max(self.steps_list) if max(self.steps_list) <= 100 else 100
        accs = {r: _frac(self.pgd(r, steps)) for r in radii}
        r_max, acc_max = radii[-1], accs[radii[-1]]
        increases = [(a, b) for a, b in zip(radii, radii[1:], strict=False)
                     if accs[b] - accs[a] > max(THRESHOLDS["beats_margin"], _noise(accs[a], self.n))]
        ev: dict[str, Any] = {"acc": {f"{r:.6g}": a for r, a in accs.items()}, "steps": steps,
                              "radius_cap": cap, "large_radius": large, "max_radius": r_max,
                              "acc_at_max_radius": acc_max, "non_monotone": bool(increases)}
        t = THRESHOLDS
        summary = (f"PGD-{steps} accuracy {_pct(accs[radii[0]])} at eps {radii[0]:.4g}, "
                   f"{_pct(acc_max)} at the largest radius {r_max:.4g}.")
        if acc_max > t["eps_acc_fail"]:
            if r_max >= large:
                return CheckResult("eps_growth", "fail", summary, ev, [REC_EPS])
            return CheckResult("eps_growth", "warning",
                               summary + f" (The largest radius is below {large:.3g}; a robust model "
                               "may keep some accuracy there.)", ev, [REC_EPS])
        if acc_max > t["eps_acc_warn"] or increases:
            extra = " Accuracy rises with eps between some radii." if increases else ""
            return CheckResult("eps_growth", "warning", summary + extra, ev, [REC_EPS])
        return CheckResult("eps_growth", "pass", summary, ev)

    def black_box(self) -> CheckResult:
        from bnnrobust.attacks.peers import Square
        from bnnrobust.attacks.pgd import PGD
        from bnnrobust.attacks.transfer import TransferAttack

        wb, wb_names = self.white_box_at_eps()
        wb_acc = _frac(wb)
        margin = max(THRESHOLDS["beats_margin"], _noise(wb_acc, self.n))
        bb_results: dict[str, Tensor] = {}
        sq = Square(eps=self.eps, norm=self.norm.value, n_queries=self.square_queries, seed=self.seed)
        bb_results[f"square-{self.square_queries}"] = _correct_after(self.model, sq, self.x, self.y,
                                                                     self.batch_size)
        if self.source_model is not None:
            src = PGD(eps=self.eps, step_size=2.5 * self.eps / self.ref_steps, steps=self.ref_steps,
                      norm=self.norm, seed=self.seed)
            tr = TransferAttack(self.source_model, src)
            bb_results[tr.name] = _correct_after(self.model, tr, self.x, self.y, self.batch_size)
        self.other_attacks.update(bb_results)
        ev: dict[str, Any] = {"white_box": wb_names, "white_box_acc": wb_acc, "margin": margin,
                              "black_box_acc": {}, "only_black_box_frac": {}}
        beaten, partial = [], []
        for name, res in bb_results.items():
            acc = _frac(res & self.clean_correct)
            only = _frac(wb & ~res)
            ev["black_box_acc"][name] = acc
            ev["only_black_box_frac"][name] = only
            if acc < wb_acc - margin:
                beaten.append(f"{name} {_pct(acc)}")
            elif only > THRESHOLDS["beats_margin"]:
                partial.append(f"{name} fools {_pct(only)} of samples PGD cannot")
        summary = (f"white-box worst case {_pct(wb_acc)}; black-box "
                   + ", ".join(f"{k} {_pct(v)}" for k, v in ev["black_box_acc"].items()) + ".")
        if beaten:
            return CheckResult("black_box", "fail", summary + " Beaten by: " + ", ".join(beaten) + ".",
                               ev, [REC_BLACKBOX])
        if partial:
            return CheckResult("black_box", "warning", summary + " " + "; ".join(partial) + ".", ev,
                               [REC_BLACKBOX])
        return CheckResult("black_box", "pass", summary, ev)

    def clever(self) -> CheckResult:
        """CLEVER-style score per correct sample: margin / max ‖∇ margin‖_dual over the ball."""
        c_idx = torch.nonzero(self.clean_correct).flatten()[: self.n_clever]
        if c_idx.numel() == 0:
            return CheckResult("clever", "skipped", "no correctly classified sample in the subset.")
        x, y = self.x[c_idx], self.y[c_idx]
        g = torch.Generator(device=x.device)
        g.manual_seed(self.seed)
        dual = 1.0 if self.norm is Norm.LINF else 2.0
        with torch.no_grad():
            z = _predict(self.model, x, self.batch_size)
            runner = z.clone()
            runner.scatter_(1, y[:, None], -math.inf)
            j = runner.argmax(dim=1)
            margin = (z.gather(1, y[:, None]) - z.gather(1, j[:, None])).squeeze(1)
        lip = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for k in range(self.clever_points):
            if k == 0:
                xp = x
            elif self.norm is Norm.LINF:
                noise = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
                xp = (x + (2 * noise - 1) * self.eps).clamp(0, 1)
            else:
                u = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
                r = torch.rand(x.shape[:1], generator=g, device=x.device, dtype=x.dtype)
                u = u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
                xp = (x + u * (r * self.eps).view(-1, *[1] * (x.dim() - 1))).clamp(0, 1)
            with torch.enable_grad(), eval_mode(self.model):
                xg = xp.detach().clone().requires_grad_(True)
                out = self.model(xg)
                m = (out.gather(1, y[:, None]) - out.gather(1, j[:, None])).sum()
                grad = (torch.autograd.grad(m, xg, allow_unused=True)[0]
                        if m.requires_grad else None)
            if grad is None:
                grad = torch.zeros_like(xg)
            norm = grad.detach().flatten(1).double().norm(p=dual, dim=1)
            lip = torch.maximum(lip, torch.nan_to_num(norm, nan=math.inf))
        score = torch.where(lip > 0, margin.double() / lip.clamp_min(1e-300),
                            torch.full_like(lip, math.inf))
        inf_frac = _frac(~torch.isfinite(score))
        fooled_any = torch.zeros(self.n, dtype=torch.bool, device=x.device)
        for (eps, _, _), res in self._pgd.items():
            if eps == self.eps:
                fooled_any |= ~res
        for res in self.other_attacks.values():
            fooled_any |= ~res
        over = _frac((score > self.eps) & fooled_any[c_idx])
        finite = score[torch.isfinite(score)]
        median = float(finite.median()) / self.eps if finite.numel() else math.inf
        ev = {"n_samples": int(c_idx.numel()), "points": self.clever_points,
              "dual_norm": "l1" if dual == 1.0 else "l2", "inf_score_frac": inf_frac,
              "median_score_over_eps": median, "over_eps_but_fooled_frac": over}
        t = THRESHOLDS
        summary = (f"infinite score (zero margin gradient over the ball) for {_pct(inf_frac)} of "
                   f"{ev['n_samples']} correct samples; median score {median:.3g}·eps; score > eps "
                   f"yet fooled by an attack: {_pct(over)}.")
        if inf_frac > t["clever_inf_fail"]:
            return CheckResult("clever", "fail", summary, ev, [REC_CLEVER, REC_INSIDE])
        if inf_frac > t["clever_inf_warn"] or over > t["clever_over_warn"]:
            return CheckResult("clever", "warning", summary, ev, [REC_CLEVER])
        return CheckResult("clever", "pass", summary, ev)


def diagnose(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str | Norm = "linf",
    source_model: nn.Module | None = None,
    rho: float = 0.01,
    seed: int = 0,
    steps_list: Sequence[int] = (10, 20, 100, 500),
    eps_multipliers: Sequence[float] = (1, 2, 4, 8, 16),
    n_samples: int | None = 200,
    square_queries: int = 1000,
    n_clever: int = 50,
    clever_points: int = 16,
    n_signal: int = 100,
    batch_size: int = 256,
    checks: Sequence[str] | None = None,
    quick: bool = False,
    progress: bool = True,
) -> Diagnosis:
    """Run the gradient-masking checklist on a seeded subset of ``(x, y)``.

    Args:
        model: classifier taking images in [0, 1] (normalization inside) to (B, d) logits. It is
            put in eval mode during the diagnosis; each submodule's flag is restored.
        x: (B, C, H, W) images in [0, 1]. y: (B,) integer labels.
        eps: the threat model's radius in [0, 1] pixel units (L∞ per pixel, L2 whole image).
        norm: ``"linf"`` or ``"l2"``.
        source_model: a float reference model; adds a transfer attack to ``black_box``.
        rho: the NJS saturation level: a sample is saturated when ``p_y > 1 − rho``.
        seed: seed of the subset and of every attack's random start.
        steps_list: PGD step counts of ``more_iterations`` (step size ``2.5·eps/steps``).
        eps_multipliers: radii of ``eps_growth`` as multiples of eps (capped at 0.5 in L∞,
            ``0.5·sqrt(N)`` in L2).
        n_samples: size of the seeded random subset (``None``: all of ``x``).
        square_queries: queries per sample of the Square attack.
        n_clever: correct samples scored by ``clever``; clever_points: gradient evaluations per
            sample (the clean point plus random points of the ball).
        n_signal: samples of ``signal_propagation`` (it needs a d-row Jacobian per sample).
        batch_size: samples per forward/attack call.
        checks: names of the checks to run (default: all of :data:`CHECKS`).
        quick: cap every PGD at :data:`QUICK_MAX_STEPS` steps and Square at
            ``QUICK_SQUARE_QUERIES`` queries (for tests and smoke runs).
        progress: show a tqdm progress bar over the checks.

    Returns:
        A :class:`Diagnosis`: ``.verdict``, ``[name]``, ``.format()``, ``.to_dict()``.
    """
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    if source_model is not None and not isinstance(source_model, nn.Module):
        raise TypeError(f"source_model must be an nn.Module or None, got {type(source_model).__name__}.")
    check_inputs(x, y)
    if x.shape[0] == 0:
        raise ValueError("diagnose needs at least one sample, got an empty batch.")
    eps = _check_number("eps", eps)
    norm_e = Norm.parse(norm)
    if norm_e is Norm.LINF and eps > 1:
        raise ValueError(f"An L∞ eps must lie in (0, 1] ([0, 1] pixel units), got {eps!r}; "
                         "for 8/255 pass eps=8/255, not 8.")
    rho = _check_number("rho", rho)
    if not rho < 1:
        raise ValueError(f"rho must lie in (0, 1), got {rho!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    steps = _check_ints("steps_list", steps_list)
    mults = tuple(sorted({_check_number("eps_multipliers entry", m) for m in eps_multipliers}))
    if not mults:
        raise ValueError("eps_multipliers must hold at least one positive number.")
    for name, value in (("square_queries", square_queries), ("n_clever", n_clever),
                        ("clever_points", clever_points), ("n_signal", n_signal),
                        ("batch_size", batch_size)):
        _check_ints(name, (value,))
    if n_samples is not None:
        _check_ints("n_samples", (n_samples,))
    selected = list(CHECKS) if checks is None else list(dict.fromkeys(checks))
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"Unknown check(s) {unknown}; accepted: {list(CHECKS)}.")
    selected = [c for c in CHECKS if c in selected]
    if quick:
        steps = tuple(sorted({min(s, QUICK_MAX_STEPS) for s in steps}))
        square_queries = min(square_queries, QUICK_SQUARE_QUERIES)

    # seeded subset
    g = torch.Generator()
    g.manual_seed(seed)
    n_total = x.shape[0]
    if n_samples is not None and n_samples < n_total:
        idx = torch.randperm(n_total, generator=g)[:n_samples].sort().values.to(x.device)
        xs, ys = x[idx].detach(), y[idx].detach().long()
    else:
        xs, ys = x.detach(), y.detach().long()

    with eval_mode(model):
        run = _Runner(model, xs, ys, eps=eps, norm=norm_e, source_model=source_model, rho=rho,
                      seed=seed, steps_list=steps, eps_multipliers=mults,
                      square_queries=square_queries, n_clever=n_clever, clever_points=clever_points,
                      n_signal=n_signal, batch_size=batch_size)
        results: list[CheckResult] = []
        from tqdm.auto import tqdm

        bar = tqdm(selected, desc="diagnose", disable=not progress, leave=False)
        for name in bar:
            bar.set_postfix_str(name)
            start = time.perf_counter()
            try:
                result = getattr(run, name)()
            except Exception as err:  # a failing check must not hide the others
                result = CheckResult(name, "error", f"{type(err).__name__}: {err}")
            result.seconds = time.perf_counter() - start
            results.append(result)
        bar.close()

    settings = {
        "model": type(model).__name__,
        "eps": eps,
        "norm": norm_e.value,
        "n": run.n,
        "n_total": n_total,
        "seed": seed,
        "rho": rho,
        "steps_list": list(steps),
        "eps_multipliers": list(mults),
        "square_queries": square_queries,
        "source_model": None if source_model is None else type(source_model).__name__,
        "quick": quick,
        "checks": selected,
        "thresholds": dict(THRESHOLDS),
    }
    return Diagnosis(results, settings, run.clean_acc, time.perf_counter() - t0)


# ============================================================================= CLI support
def default_threat_model(attacks: dict[str, Any] | None) -> tuple[float, str]:
    """``(eps, norm)`` for ``evaluate.py --diagnose`` without ``--diagnose_eps``: the largest
    L∞ eps among the evaluation's attacks (else the largest L2 eps; else 8/255 L∞)."""
    found: dict[str, list[float]] = {"linf": [], "l2": []}
    for atk in (attacks or {}).values():
        desc = atk.describe() if hasattr(atk, "describe") else {}
        eps, norm = desc.get("eps"), desc.get("norm")
        if isinstance(eps, int | float) and not isinstance(eps, bool) and eps > 0 and norm in found:
            found[str(norm)].append(float(eps))
    for norm in ("linf", "l2"):
        if found[norm]:
            return max(found[norm]), norm
    return 8 / 255, "linf"


def cli_diagnose(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attacks: dict[str, Any] | None = None,
    eps: float | None = None,
    norm: str | None = None,
    n_samples: int = 200,
    seed: int = 0,
    batch_size: int = 256,
    quick: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> Diagnosis:
    """What ``evaluate.py --diagnose`` runs: :func:`diagnose` at the evaluation's threat model.

    ``eps``/``norm`` default to :func:`default_threat_model` of the evaluation's attacks. ``x``
    and ``y`` are moved to ``device`` (default: the model's device).
    """
    if eps is None:
        eps, default_norm = default_threat_model(attacks)
        norm = norm or default_norm
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else x.device
    return diagnose(model, x.to(device), y.to(device), eps=eps, norm=norm or "linf",
                    seed=seed, n_samples=n_samples, batch_size=batch_size, quick=quick,
                    progress=progress)
