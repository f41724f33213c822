"""The checks, one function each: ``check_<name>(ctx) -> CheckResult``.

Each takes the :class:`~bnnrobust.evaluation.diagnose.context.Context` (the subset, the
settings, the shared PGD and gradient-probe results) and returns its verdict with the
numbers behind it. :mod:`bnnrobust.evaluation.diagnose.driver` runs them in order.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from bnnrobust.attacks.base import Norm, eval_mode
from bnnrobust.evaluation.diagnose.common import correct_after, frac, noise, predict
from bnnrobust.evaluation.diagnose.context import Context
from bnnrobust.evaluation.diagnose.probe import GradProbe
from bnnrobust.evaluation.diagnose.report import pct
from bnnrobust.evaluation.diagnose.results import CheckResult
from bnnrobust.evaluation.diagnose.verdicts import (
    REC_BLACKBOX,
    REC_CLEVER,
    REC_EOT,
    REC_EPS,
    REC_INSIDE,
    REC_ITER,
    REC_NONFINITE,
    REC_PGDPP,
    THRESHOLDS,
    Verdict,
)

_NO_CORRECT = "no correctly classified sample in the subset."


def check_randomness(ctx: Context, n_passes: int = 4) -> CheckResult:
    """``n_passes`` forward passes in eval mode must give the same logits."""
    model, x, bs = ctx.model, ctx.x, ctx.settings.batch_size
    ref = predict(model, x, bs)
    max_diff, pred_changed = 0.0, torch.zeros(ctx.n, dtype=torch.bool, device=x.device)
    nonfinite = ~torch.isfinite(ref).all(dim=1)
    for _ in range(n_passes - 1):
        other = predict(model, x, bs)
        both = torch.isfinite(ref) & torch.isfinite(other)
        if bool(both.any()):
            max_diff = max(max_diff, float((ref - other).abs()[both].max()))
        nonfinite |= ~torch.isfinite(other).all(dim=1)
        pred_changed |= other.argmax(dim=1) != ref.argmax(dim=1)
    finite = ref[torch.isfinite(ref)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    rel = max_diff / scale if scale > 0 else (0.0 if max_diff == 0 else math.inf)
    changed = frac(pred_changed)
    ev = {"passes": n_passes, "max_abs_logit_diff": max_diff, "rel_logit_diff": rel,
          "pred_changed_frac": changed, "nonfinite_logits_frac": frac(nonfinite)}
    t = THRESHOLDS
    if changed > 0 or rel > t["random_logit_rel_fail"]:
        return CheckResult("randomness", "fail",
                           f"the model is stochastic in eval mode: {pct(changed)} of predictions "
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


def check_zero_gradients(ctx: Context) -> CheckResult:
    """How many correct samples have an all-zero (or non-finite) input gradient, whether the
    zeros start at the logits or inside the network, and at which layer."""
    p = ctx.probe()
    c = p.correct
    n_c = int(c.sum())
    zero = frac(p.input_grad_zero, c)
    nonfinite = frac(p.input_grad_nonfinite, c)
    at_logits = frac(p.input_grad_zero & p.logit_grad_zero, c)
    inside = frac(p.input_grad_zero & ~p.logit_grad_zero, c)
    layers = [{"name": nm, "zero_frac": frac(z, c)}
              for nm, z in zip(p.layer_names, p.layer_zero, strict=True)]
    vanish_name, vanish_frac = locate_vanishing(p, c)
    ev: dict[str, Any] = {
        "n_correct": n_c,
        "zero_input_grad_frac": zero,
        "zero_input_grad_frac_all": frac(p.input_grad_zero),
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
        return CheckResult("zero_gradients", "skipped", _NO_CORRECT, ev)
    t = THRESHOLDS
    recs: list[str] = []
    if nonfinite > 0:
        recs.append(REC_NONFINITE)
    if at_logits > t["zero_grad_warn"]:
        recs.append(REC_PGDPP)
    if inside > t["zero_grad_warn"]:
        recs.append(REC_INSIDE)
    summary = (f"the input gradient is all-zero for {pct(zero)} of the {n_c} correctly classified "
               f"samples (at the logits: {pct(at_logits)}, inside the network: {pct(inside)}"
               + (f", first vanishing at '{vanish_name}'" if vanish_name else "")
               + f"); NaN/inf gradients: {pct(nonfinite)}.")
    if not p.connected:
        summary += " The logits do not depend on the input through autograd at all."
    if zero > t["zero_grad_fail"] or nonfinite > 0:
        verdict: Verdict = "fail"
    elif zero > t["zero_grad_warn"]:
        verdict = "warning"
    else:
        verdict = "pass"
    return CheckResult("zero_gradients", verdict, summary, ev, recs)


def locate_vanishing(p: GradProbe, c: Tensor) -> tuple[str | None, float]:
    """The module whose output gradient is non-zero while its input's is zero, for the most
    correct samples with a zero input gradient (input = the previous leaf's output, or x),
    and the fraction of those samples it accounts for."""
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


def check_softmax_saturation(ctx: Context) -> CheckResult:
    """Correct samples with ``p_y > 1 − ρ`` or a zero loss gradient at the logits; PGD
    against PGD++ (HNS) when there are any. A PGD++ weaker than PGD is named in words."""
    from bnnrobust.evaluation.report import weaker_temperature_notes

    p = ctx.probe()
    s = ctx.settings
    c = p.correct
    n_c = int(c.sum())
    rho_sat = frac(p.p_y > 1.0 - s.rho, c)
    float_sat = frac(p.logit_grad_zero, c)
    ev: dict[str, Any] = {"n_correct": n_c, "rho": s.rho, "rho_saturated_frac": rho_sat,
                          "float_saturated_frac": float_sat}
    if n_c == 0:
        return CheckResult("softmax_saturation", "skipped", _NO_CORRECT, ev)
    t = THRESHOLDS
    gain = 0.0
    if not p.connected:
        pp = "; PGD++ not run (the logits do not depend on the input through autograd)"
    elif rho_sat > 0 or float_sat > 0:
        acc_pgd = frac(ctx.pgd(s.eps, s.ref_steps))
        acc_pp = frac(ctx.pgd(s.eps, s.ref_steps, "hns"))
        gain = acc_pgd - acc_pp
        ev.update({"steps": s.ref_steps, "pgd_acc": acc_pgd, "pgd++hns_acc": acc_pp,
                   "pgd++_gain": gain})
        pp = f"; PGD-{s.ref_steps} {pct(acc_pgd)} vs PGD++(HNS) {pct(acc_pp)}"
    else:
        pp = "; PGD++ not run (no sample with p_y > 1 − ρ)"
    nz = noise(ev.get("pgd_acc", 0.0), ctx.n)
    margin = max(t["beats_margin"], nz)
    summary = (f"{pct(rho_sat)} of correct samples have p_y > 1 − ρ (ρ = {s.rho:g}), "
               f"{pct(float_sat)} have ∂ℓ/∂logits = 0 in float{pp}.")
    if "pgd_acc" in ev:
        notes = weaker_temperature_notes(
            {"pgd": 100 * ev["pgd_acc"], "pgd++hns": 100 * ev["pgd++hns_acc"]},
            min_gap=100 * margin)
        ev["pgd++_weaker"] = bool(notes)
        summary += "".join(f" {note[0].upper()}{note[1:]}" for note in notes)
    if float_sat > t["saturation_fail"] or gain > margin:
        return CheckResult("softmax_saturation", "fail", summary, ev, [REC_PGDPP])
    if float_sat > t["saturation_warn"] or gain > max(t["beats_margin"], nz / 2):
        return CheckResult("softmax_saturation", "warning", summary, ev, [REC_PGDPP])
    return CheckResult("softmax_saturation", "pass", summary, ev)


def check_signal_propagation(ctx: Context) -> CheckResult:
    """The seed paper's signal-propagation metrics for β = 1 and the NJS/HNS β
    (:func:`bnnrobust.metrics.signal.signal_propagation`)."""
    from bnnrobust.metrics.signal import signal_propagation

    p = ctx.probed()
    if p is not None and not p.connected:
        return CheckResult("signal_propagation", "skipped",
                           "the logits do not depend on the input through autograd (no "
                           "Jacobian to measure); see zero_gradients.", {}, [REC_INSIDE])
    idx = torch.arange(min(ctx.n, ctx.settings.n_signal), device=ctx.x.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = signal_propagation(ctx.model, ctx.x[idx], ctx.y[idx])
    variants = {v: stats.summary(v) for v in stats.variants}
    ev: dict[str, Any] = {"n_samples": stats.n_samples, "n_correct": stats.n_correct,
                          "variants": variants,
                          "warnings": sorted({str(w.message) for w in caught})}
    if stats.n_correct == 0:
        return CheckResult("signal_propagation", "skipped", _NO_CORRECT, ev)
    orig = variants["original"]
    z0 = orig["zero_grad_frac"]
    best_other = min((variants[v]["zero_grad_frac"] for v in variants if v != "original"),
                     default=z0)
    t = THRESHOLDS
    summary = (f"β = 1: jsv mean {orig['jsv_mean']:.3g} (std {orig['jsv_std']:.3g}), "
               f"‖ψ‖₂ {orig['psi_norm']:.3g}, zero-gradient {pct(z0)}; with NJS/HNS β the "
               f"zero-gradient fraction is {pct(best_other)}.")
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


def check_more_iterations(ctx: Context) -> CheckResult:
    """PGD at every step count of ``steps_list``: accuracy must not keep dropping."""
    s = ctx.settings
    accs = {st: frac(ctx.pgd(s.eps, st)) for st in s.steps_list}
    ev: dict[str, Any] = {"acc": {str(st): a for st, a in accs.items()},
                          "step_size_rule": "2.5 * eps / steps"}
    steps = list(accs)
    first, last = accs[steps[0]], accs[steps[-1]]
    drop = first - last
    last_drop = accs[steps[-2]] - last if len(steps) > 1 else 0.0
    ev.update({"drop": drop, "last_drop": last_drop})
    t = THRESHOLDS
    margin = noise(last, ctx.n)
    summary = (f"PGD accuracy {pct(first)} with {steps[0]} steps, {pct(last)} with {steps[-1]} "
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


def check_eps_growth(ctx: Context) -> CheckResult:
    """PGD at eps times each multiplier (capped): accuracy must reach ~0 at a large radius."""
    s = ctx.settings
    n_in = ctx.x[0].numel()
    if s.norm is Norm.LINF:
        cap, large = 0.5, THRESHOLDS["eps_large_linf"]
    else:
        cap, large = 0.5 * math.sqrt(n_in), THRESHOLDS["eps_large_l2_per_sqrt_n"] * math.sqrt(n_in)
    radii = sorted({min(s.eps * m, cap) for m in s.eps_multipliers})
    steps = min(max(s.steps_list), 100)
    accs = {r: frac(ctx.pgd(r, steps)) for r in radii}
    r_max, acc_max = radii[-1], accs[radii[-1]]
    increases = [(a, b) for a, b in zip(radii, radii[1:], strict=False)
                 if accs[b] - accs[a] > max(THRESHOLDS["beats_margin"], noise(accs[a], ctx.n))]
    ev: dict[str, Any] = {"acc": {f"{r:.6g}": a for r, a in accs.items()}, "steps": steps,
                          "radius_cap": cap, "large_radius": large, "max_radius": r_max,
                          "acc_at_max_radius": acc_max, "non_monotone": bool(increases)}
    t = THRESHOLDS
    summary = (f"PGD-{steps} accuracy {pct(accs[radii[0]])} at eps {radii[0]:.4g}, "
               f"{pct(acc_max)} at the largest radius {r_max:.4g}.")
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


def check_black_box(ctx: Context) -> CheckResult:
    """Square and (with ``source_model``) a transfer attack must not beat the white-box PGD."""
    wb, wb_names = ctx.white_box_at_eps()
    wb_acc = frac(wb)
    margin = max(THRESHOLDS["beats_margin"], noise(wb_acc, ctx.n))
    bb_results = _black_box_attacks(ctx)
    ctx.other_attacks.update(bb_results)
    ev: dict[str, Any] = {"white_box": wb_names, "white_box_acc": wb_acc, "margin": margin,
                          "black_box_acc": {}, "only_black_box_frac": {}}
    beaten, partial = [], []
    for name, res in bb_results.items():
        acc = frac(res & ctx.clean_correct)
        only = frac(wb & ~res)
        ev["black_box_acc"][name] = acc
        ev["only_black_box_frac"][name] = only
        if acc < wb_acc - margin:
            beaten.append(f"{name} {pct(acc)}")
        elif only > THRESHOLDS["beats_margin"]:
            partial.append(f"{name} fools {pct(only)} of samples PGD cannot")
    summary = (f"white-box worst case {pct(wb_acc)}; black-box "
               + ", ".join(f"{k} {pct(v)}" for k, v in ev["black_box_acc"].items()) + ".")
    if beaten:
        return CheckResult("black_box", "fail", summary + " Beaten by: " + ", ".join(beaten) + ".",
                           ev, [REC_BLACKBOX])
    if partial:
        return CheckResult("black_box", "warning", summary + " " + "; ".join(partial) + ".", ev,
                           [REC_BLACKBOX])
    return CheckResult("black_box", "pass", summary, ev)


def _black_box_attacks(ctx: Context) -> dict[str, Tensor]:
    """Per-sample correct after Square and, with a source model, after the transfer attack."""
    from bnnrobust.attacks.peers import Square
    from bnnrobust.attacks.pgd import PGD
    from bnnrobust.attacks.transfer import TransferAttack

    s = ctx.settings
    out: dict[str, Tensor] = {}
    sq = Square(eps=s.eps, norm=s.norm.value, n_queries=s.square_queries, seed=s.seed)
    out[f"square-{s.square_queries}"] = correct_after(ctx.model, sq, ctx.x, ctx.y, s.batch_size)
    if s.source_model is not None:
        src = PGD(eps=s.eps, step_size=2.5 * s.eps / s.ref_steps, steps=s.ref_steps,
                  norm=s.norm, seed=s.seed)
        tr = TransferAttack(s.source_model, src)
        out[tr.name] = correct_after(ctx.model, tr, ctx.x, ctx.y, s.batch_size)
    return out


def check_clever(ctx: Context) -> CheckResult:
    """CLEVER-style score per correct sample: margin / max ‖∇ margin‖_dual over the ball."""
    s = ctx.settings
    c_idx = torch.nonzero(ctx.clean_correct).flatten()[: s.n_clever]
    if c_idx.numel() == 0:
        return CheckResult("clever", "skipped", _NO_CORRECT)
    score = clever_scores(ctx, c_idx)
    inf_frac = frac(~torch.isfinite(score))
    fooled_any = torch.zeros(ctx.n, dtype=torch.bool, device=ctx.x.device)
    for (eps, _, _), res in ctx.pgd_runs().items():
        if eps == s.eps:
            fooled_any |= ~res
    for res in ctx.other_attacks.values():
        fooled_any |= ~res
    over = frac((score > s.eps) & fooled_any[c_idx])
    finite = score[torch.isfinite(score)]
    median = float(finite.median()) / s.eps if finite.numel() else math.inf
    ev = {"n_samples": int(c_idx.numel()), "points": s.clever_points,
          "dual_norm": "l1" if s.norm is Norm.LINF else "l2", "inf_score_frac": inf_frac,
          "median_score_over_eps": median, "over_eps_but_fooled_frac": over}
    t = THRESHOLDS
    summary = (f"infinite score (zero margin gradient over the ball) for {pct(inf_frac)} of "
               f"{ev['n_samples']} correct samples; median score {median:.3g}·eps; score > eps "
               f"yet fooled by an attack: {pct(over)}.")
    if inf_frac > t["clever_inf_fail"]:
        return CheckResult("clever", "fail", summary, ev, [REC_CLEVER, REC_INSIDE])
    if inf_frac > t["clever_inf_warn"] or over > t["clever_over_warn"]:
        return CheckResult("clever", "warning", summary, ev, [REC_CLEVER])
    return CheckResult("clever", "pass", summary, ev)


def clever_scores(ctx: Context, idx: Tensor) -> Tensor:
    """(len(idx),) float64 CLEVER-style scores of the samples ``idx``: the logit margin at the
    clean point over the largest dual norm of its gradient at the clean point and at
    ``clever_points − 1`` seeded random points of the eps ball (inf where that norm is 0)."""
    s = ctx.settings
    model, x, y = ctx.model, ctx.x[idx], ctx.y[idx]
    g = torch.Generator(device=x.device)
    g.manual_seed(s.seed)
    dual = 1.0 if s.norm is Norm.LINF else 2.0
    with torch.no_grad():
        z = predict(model, x, s.batch_size)
        runner_up = z.clone()
        runner_up.scatter_(1, y[:, None], -math.inf)
        j = runner_up.argmax(dim=1)
        margin = (z.gather(1, y[:, None]) - z.gather(1, j[:, None])).squeeze(1)
    lip = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for k in range(s.clever_points):
        xp = x if k == 0 else s.norm.random_start(x, s.eps, g)
        with torch.enable_grad(), eval_mode(model):
            xg = xp.detach().clone().requires_grad_(True)
            out = model(xg)
            m = (out.gather(1, y[:, None]) - out.gather(1, j[:, None])).sum()
            grad = torch.autograd.grad(m, xg, allow_unused=True)[0] if m.requires_grad else None
        if grad is None:
            grad = torch.zeros_like(xg)
        norm = grad.detach().flatten(1).double().norm(p=dual, dim=1)
        lip = torch.maximum(lip, torch.nan_to_num(norm, nan=math.inf))
    return torch.where(lip > 0, margin.double() / lip.clamp_min(1e-300),
                       torch.full_like(lip, math.inf))

