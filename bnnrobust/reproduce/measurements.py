"""The stages that measure more than the attack suite: signal propagation (paper Table 12),
CLEVER under temperature (Table 10), accuracy-vs-eps sweeps (Fig. 1b) and PGD++ with
varying rho (Tables 11 and 13)."""

from __future__ import annotations

from typing import Any

from .common import log, write_json
from .context import Context, Stage
from .specs import BY_KEY, MODELS, RHO_ABLATIONS, SWEEP_ATTACKS, ModelSpec
from .suite import pgd_overrides


def signal_stage(ctx: Context) -> Stage:
    """``signal``: paper Table 12 on every network -> ``signal_propagation.json/md``."""
    out = ctx.out / "signal_propagation.json"

    def run_it() -> dict[str, Any]:
        from bnnrobust.metrics.signal import format_table, signal_propagation

        body: dict[str, Any] = {"n": ctx.settings.signal_n, "models": {}}
        md: list[str] = []
        for spec in MODELS:
            x, y = ctx.test_data(spec.key, ctx.settings.signal_n)
            stats = signal_propagation(ctx.model(spec.key), x, y)
            body["models"][spec.key] = {"label": spec.label, **stats.to_dict()}
            md.append(f"### {spec.label}\n\n{format_table(stats)}\n")
            zero = stats.summary("original")["zero_grad_frac"]
            log(f"  {spec.label}: zero-gradient fraction at β=1 {zero:.3f}")
        write_json(out, body)
        out.with_suffix(".md").write_text("\n".join(md))
        return {"models": len(MODELS)}

    est = len(MODELS) * ctx.settings.signal_n * 45 * ctx.step_seconds + 10.0
    return Stage("signal", f"signal propagation (paper Table 12) of all {len(MODELS)} networks", est,
                 [out, out.with_suffix(".md")], run_it, [f"train/{m.key}" for m in MODELS])


def clever_stage(ctx: Context) -> Stage:
    """Paper Table 10: ART's CLEVER (L1, 50 × 10, radius 5) under the four temperatures."""
    out = ctx.out / "clever.json"
    s = ctx.settings

    def run_it() -> dict[str, Any]:
        from bnnrobust.metrics.clever import clever_table

        body: dict[str, Any] = {"n": s.clever_n, "models": {}}
        for key in s.clever_models:
            x, y = ctx.test_data(key, s.clever_n)
            table = clever_table(ctx.model(key), x, y, progress=ctx.progress,
                                 nb_batches=s.clever_batches, batch_size=s.clever_batch_size,
                                 radius=s.clever_radius, norm=1, seed=s.seed)
            body["models"][key] = {"label": BY_KEY[key].label, **table}
            log(f"  {BY_KEY[key].label}: mean CLEVER " + ", ".join(
                f"{n} {v['mean']:.4f}" for n, v in table["summary"].items()))
        write_json(out, body)
        return {"models": len(s.clever_models)}

    # per image and variant: (d − 1) targets × nb_batches backward passes of batch_size images
    est = (len(s.clever_models) * s.clever_n * 4 * 9 * s.clever_batches * s.clever_batch_size
           * 1.5 * ctx.step_seconds + 10.0)
    return Stage("clever", "CLEVER under temperature (paper Table 10)", est, [out], run_it,
                 [f"train/{k}" for k in s.clever_models])


def sweep_stage(ctx: Context, spec: ModelSpec) -> Stage:
    """``sweep/<key>``: accuracy vs eps of :data:`SWEEP_ATTACKS` -> ``sweep_<key>.json/png``."""
    js = ctx.sweep_json(spec.key)

    def run_it() -> dict[str, Any]:
        from bnnrobust.evaluation.sweep import eps_sweep

        s = ctx.settings
        x, y = ctx.test_data(spec.key, s.sweep_n)
        specs = [{"name": a, **pgd_overrides(a, s)} for a in SWEEP_ATTACKS]
        res = eps_sweep(ctx.model(spec.key), x, y, specs, list(s.sweep_eps),
                        dataset=s.dataset, seed=s.seed, batch_size=s.batch_size, device="cpu",
                        json_path=js, png_path=js.with_suffix(".png"), progress=ctx.progress)
        return {"non_monotone": res["non_monotone"]}

    s = ctx.settings
    n_eps = sum(1 for e in s.sweep_eps if e > 0)
    t = s.pgd_steps or 20
    est = s.sweep_n * 0.9 * (1 + 3 * t + 12) * n_eps * ctx.step_seconds + 10.0
    return Stage(f"sweep/{spec.key}", f"accuracy vs eps of {spec.label} (Fig. 1b)", est,
                 [js, js.with_suffix(".png")], run_it, [f"train/{spec.key}"])


def _rho_key(rule: str, rho: float) -> str:
    return f"{rule}_rho{rho:g}"


def rho_stage(ctx: Context) -> Stage:
    """``rho``: PGD++ at each rho of :data:`RHO_ABLATIONS` -> ``rho_ablation.json``."""
    out = ctx.out / "rho_ablation.json"

    def run_it() -> dict[str, Any]:
        from bnnrobust.attacks.factory import build_attack
        from bnnrobust.evaluation.runner import evaluate

        st = ctx.settings
        body: dict[str, Any] = {"n": st.rho_n, "rho": {}, "models": {}}
        for rule, (rhos, keys) in RHO_ABLATIONS.items():
            body["rho"][rule] = list(rhos)
            for key in keys:
                x, y = ctx.test_data(key, st.rho_n)
                attacks = {_rho_key(rule, r): build_attack(
                    {"name": "pgd", "temperature": {"name": rule, "rho": r},
                     **pgd_overrides("pgd", st)}, st.dataset) for r in rhos}
                res = evaluate(ctx.model(key), (x, y), attacks, seed=st.seed, device="cpu",
                               progress=ctx.progress, batch_size=st.batch_size)
                entry = body["models"].setdefault(key, {"label": BY_KEY[key].label,
                                                        "clean_acc": res.clean_acc})
                entry[rule] = [res.attacks[_rho_key(rule, r)].adv_acc for r in rhos]
                log(f"  {BY_KEY[key].label}, PGD++ {rule} over rho: "
                    + ", ".join(f"{a:.2f}" for a in entry[rule]))
        write_json(out, body)
        return {"models": len(body["models"])}

    st = ctx.settings
    t = st.pgd_steps or 20
    n_runs = sum(len(r) * len(k) for r, k in RHO_ABLATIONS.values())
    est = n_runs * st.rho_n * 0.9 * (t + 1) * ctx.step_seconds + 10.0
    keys = sorted({k for _, ks in RHO_ABLATIONS.values() for k in ks})
    return Stage("rho", "PGD++ with varying rho: NJS (Table 11), Proposition 1 (Table 13)", est,
                 [out], run_it, [f"train/{k}" for k in keys])
