""":func:`diagnose`: validate the arguments, draw the seeded subset, run the checks in order."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bnnrobust import validation as v
from bnnrobust.attacks.base import Norm, check_inputs, eval_mode
from bnnrobust.evaluation.diagnose.checks import (
    check_black_box,
    check_clever,
    check_eps_growth,
    check_more_iterations,
    check_randomness,
    check_signal_propagation,
    check_softmax_saturation,
    check_zero_gradients,
)
from bnnrobust.evaluation.diagnose.context import Context, Settings
from bnnrobust.evaluation.diagnose.results import CheckResult, Diagnosis
from bnnrobust.evaluation.diagnose.verdicts import THRESHOLDS

#: every check and its function, in the order they run (later checks reuse earlier results)
CHECK_FUNCTIONS: dict[str, Callable[[Context], CheckResult]] = {
    "randomness": check_randomness,
    "zero_gradients": check_zero_gradients,
    "softmax_saturation": check_softmax_saturation,
    "signal_propagation": check_signal_propagation,
    "more_iterations": check_more_iterations,
    "eps_growth": check_eps_growth,
    "black_box": check_black_box,
    "clever": check_clever,
}

#: every check, in the order it runs
CHECKS: tuple[str, ...] = tuple(CHECK_FUNCTIONS)

#: ``quick=True`` caps every PGD at this many steps (and Square at ``QUICK_SQUARE_QUERIES``)
QUICK_MAX_STEPS = 50
QUICK_SQUARE_QUERIES = 300


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
    settings = _settings(eps=eps, norm=norm, source_model=source_model, rho=rho, seed=seed,
                         steps_list=steps_list, eps_multipliers=eps_multipliers,
                         square_queries=square_queries, n_clever=n_clever,
                         clever_points=clever_points, n_signal=n_signal, batch_size=batch_size,
                         quick=quick)
    if n_samples is not None:
        v.positive_int("n_samples", n_samples)
    selected = select_checks(checks)
    xs, ys = seeded_subset(x, y, n_samples, seed)
    with eval_mode(model):
        ctx = Context(model, xs, ys, settings)
        results = run_checks(ctx, selected, progress=progress)
    return Diagnosis(results, _settings_record(model, settings, ctx.n, x.shape[0], quick, selected),
                     ctx.clean_acc, time.perf_counter() - t0)


def _settings(*, eps: float, norm: str | Norm, source_model: nn.Module | None, rho: float,
              seed: int, steps_list: Sequence[int], eps_multipliers: Sequence[float],
              square_queries: int, n_clever: int, clever_points: int, n_signal: int,
              batch_size: int, quick: bool) -> Settings:
    """Validate the numeric arguments of :func:`diagnose` (``quick`` applies its caps)."""
    eps = v.finite_number("eps", eps)
    norm_e = Norm.parse(norm)
    if norm_e is Norm.LINF and eps > 1:
        raise ValueError(f"An L∞ eps must lie in (0, 1] ([0, 1] pixel units), got {eps!r}; "
                         "for 8/255 pass eps=8/255, not 8.")
    rho = v.finite_number("rho", rho)
    if not rho < 1:
        raise ValueError(f"rho must lie in (0, 1), got {rho!r}.")
    seed = v.integer("seed", seed)
    steps = v.positive_ints("steps_list", steps_list)
    mults = v.positive_numbers("eps_multipliers", eps_multipliers)
    counts = {name: v.positive_int(name, value) for name, value in (
        ("square_queries", square_queries), ("n_clever", n_clever),
        ("clever_points", clever_points), ("n_signal", n_signal), ("batch_size", batch_size))}
    if quick:
        steps = tuple(sorted({min(s, QUICK_MAX_STEPS) for s in steps}))
        counts["square_queries"] = min(counts["square_queries"], QUICK_SQUARE_QUERIES)
    return Settings(eps=eps, norm=norm_e, rho=rho, seed=seed, steps_list=steps,
                    eps_multipliers=mults, source_model=source_model, **counts)


def _settings_record(model: nn.Module, s: Settings, n: int, n_total: int, quick: bool,
                     checks: list[str]) -> dict[str, Any]:
    """The JSON-able settings that :class:`Diagnosis` records."""
    return {
        "model": type(model).__name__,
        "eps": s.eps,
        "norm": s.norm.value,
        "n": n,
        "n_total": n_total,
        "seed": s.seed,
        "rho": s.rho,
        "steps_list": list(s.steps_list),
        "eps_multipliers": list(s.eps_multipliers),
        "square_queries": s.square_queries,
        "source_model": None if s.source_model is None else type(s.source_model).__name__,
        "quick": quick,
        "checks": checks,
        "thresholds": dict(THRESHOLDS),
    }


def select_checks(checks: Sequence[str] | None) -> list[str]:
    """The names asked for (default: all), in the order of :data:`CHECKS`."""
    selected = list(CHECKS) if checks is None else list(dict.fromkeys(checks))
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise ValueError(f"Unknown check(s) {unknown}; accepted: {list(CHECKS)}.")
    return [c for c in CHECKS if c in selected]


def seeded_subset(x: Tensor, y: Tensor, n_samples: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """``n_samples`` samples drawn without replacement with ``seed``, in their original order
    (all of them when ``n_samples`` is None or not smaller); detached, labels as int64."""
    n_total = x.shape[0]
    if n_samples is None or n_samples >= n_total:
        return x.detach(), y.detach().long()
    g = torch.Generator()
    g.manual_seed(seed)
    idx = torch.randperm(n_total, generator=g)[:n_samples].sort().values.to(x.device)
    return x[idx].detach(), y[idx].detach().long()


def run_checks(ctx: Context, names: Sequence[str], *, progress: bool = True) -> list[CheckResult]:
    """Run the checks ``names`` in order; one that raises gives an ``error`` result and the
    others still run."""
    from tqdm.auto import tqdm

    results: list[CheckResult] = []
    bar = tqdm(names, desc="diagnose", disable=not progress, leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        try:
            result = CHECK_FUNCTIONS[name](ctx)
        except Exception as err:  # a failing check must not hide the others
            result = CheckResult(name, "error", f"{type(err).__name__}: {err}")
        result.seconds = time.perf_counter() - start
        results.append(result)
    bar.close()
    return results
