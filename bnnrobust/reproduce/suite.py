"""The attack suite run on every network (the rows of the adversarial-accuracy table), its
cost model and the evaluation stages that run it."""

from __future__ import annotations

from typing import Any

import torch

from .common import log, read_json
from .context import Context, Stage
from .settings import Settings
from .specs import ATTACK_ROWS, NAMED_ATTACKS, REF_KEY, ModelSpec


def pgd_overrides(name: str, settings: Settings) -> dict[str, Any]:
    """``{"steps": k}`` for PGD-type names when the settings shorten PGD (``--quick``)."""
    if settings.pgd_steps is None or name.startswith("fgsm"):
        return {}
    return {"steps": settings.pgd_steps}


def attack_suite(spec: ModelSpec, settings: Settings,
                 ref_model: torch.nn.Module | None) -> dict[str, Any]:
    """The attacks run on ``spec``'s network, keyed as in :data:`ATTACK_ROWS`.

    ``ref_model`` (the float REF) is the source of the transfer attack; ``None`` leaves the
    transfer attack out (REF itself). "PGD with R restarts" is a :class:`~bnnrobust.attacks.Cascade` of R
    independent random-start PGD runs: a sample is robust only if every run failed (the
    per-sample worst case of ``PGD(restarts=R)``), and each run only attacks the samples
    still robust, so it costs far less than R full runs.
    """
    from bnnrobust.attacks.cascade import Cascade
    from bnnrobust.attacks.factory import build_attack
    from bnnrobust.attacks.presets import strongest_cascade
    from bnnrobust.attacks.transfer import TransferAttack

    ds = settings.dataset
    s, q = settings.apgd_steps, settings.square_queries

    def named(name: str) -> Any:
        return build_attack(name, dataset=ds, **pgd_overrides(name, settings))

    attacks: dict[str, Any] = {name: named(name) for name in NAMED_ATTACKS}
    attacks["apgd-ce"] = build_attack({"name": "apgd-ce", "steps": s, "seed": settings.seed}, ds)
    attacks["apgd-dlr"] = build_attack({"name": "apgd-dlr", "steps": s, "seed": settings.seed}, ds)
    if spec.key in settings.peer_check_models:
        attacks["apgd-t"] = build_attack({"name": "apgd-t", "steps": s, "seed": settings.seed}, ds)
    attacks["square"] = build_attack({"name": "square", "n_queries": q, "seed": settings.seed}, ds)
    if ref_model is not None:
        attacks["transfer_pgd"] = TransferAttack(ref_model, named("pgd"))
    attacks["pgd_restarts"] = Cascade([named("pgd")
                                       for _ in range(settings.restarts)],
                                      name=f"pgd-{settings.restarts}restarts")
    attacks["strongest"] = strongest_cascade(ds, steps=s, n_queries=q, seed=settings.seed)
    return attacks


def _eval_units(spec: ModelSpec, settings: Settings) -> float:
    """Generous image-steps of one model's evaluation (assumed robust fractions).

    Checked against a pilot (n = 200, one thread): REF 32 s, BNN-WQ 25 s and REF* 149 s of
    CPU time, against 86 s, 213 s and 208 s estimated at 0.68 ms per image-step.
    """
    # r: fraction of the attacked samples that survive a plain PGD at eps 0.1 (pilot: REF 0,
    # BNN-WQ 0, REF* 0.8); attacks that stop on fooled samples cost in proportion to it
    r = 0.8 if spec.adversarial else (0.02 if spec.family == "ref" else 0.1)
    s, q, t = settings.apgd_steps, settings.square_queries, settings.pgd_steps or 20
    hns = 12.0                            # HNS: one Jacobian (d backward passes) per sample
    per = 3 + 2 * hns                     # fgsm, ++njs, ++hns
    per += 2 * (3 * t + hns)              # pgd L∞/L2 and ++
    per += t                              # pgd with the DLR loss
    per += 2 * s * (0.2 + 0.8 * r)        # apgd-ce, apgd-dlr (stop on fooled samples)
    per += 0.35 * q * (0.06 + r)          # square: forwards until fooled
    per += t + (settings.restarts - 1) * t * r   # restarts cascade
    per += s + hns + r * (11 * s + 0.35 * q + (s if spec.family == "waq" else 0))  # strongest
    if spec.key in settings.peer_check_models:
        per += s + 8 * s * r              # apgd-t alone (next target only while robust)
    if spec.key != REF_KEY:
        per += t                          # transfer (PGD on REF)
    return per * settings.n_eval * 0.85  # attacked: the clean-correct samples


def eval_stage(ctx: Context, spec: ModelSpec) -> Stage:
    """``eval/<key>``: the attack suite on the first ``n_eval`` test images -> ``eval_<key>.json/md``.

    Each attack is written to ``eval_<key>.partial.json`` as it finishes, so a stage that
    dies resumes at its first unfinished attack; the file is removed once the stage is done.
    """
    out = ctx.eval_json(spec.key)
    partial = out.with_name(f"{out.stem}.partial.json")

    def run_it() -> dict[str, Any]:
        from bnnrobust.evaluation.report import format_table, write_reports
        from bnnrobust.evaluation.runner import evaluate

        s = ctx.settings
        model = ctx.model(spec.key)
        ref = ctx.model(REF_KEY) if spec.key != REF_KEY else None
        attacks = attack_suite(spec, s, ref)
        x, y = ctx.test_data(spec.key, s.n_eval)
        log(f"  {len(attacks)} attacks on {x.shape[0]} test images: {', '.join(attacks)}")
        result = evaluate(model, (x, y), attacks, seed=s.seed, device="cpu",
                          progress=ctx.progress, batch_size=s.batch_size,
                          partial_results=partial)
        train_marker = ctx.marker(f"train/{spec.key}")
        train_info = read_json(train_marker).get("result", {}) if train_marker.is_file() else {}
        title = f"{spec.label} — Fashion-MNIST reproduction ({s.profile})"
        write_reports(result, out, title=title, model=spec.key, label=spec.label,
                      family=spec.family, adversarial=spec.adversarial,
                      checkpoint=str(ctx.last_ckpt(spec.key)), dataset=s.dataset,
                      training=train_info)
        log(format_table(result, title))
        partial.unlink(missing_ok=True)
        return {"clean_acc": result.clean_acc, "seconds": result.seconds}

    deps = [f"train/{spec.key}"] + ([f"train/{REF_KEY}"] if spec.key != REF_KEY else [])
    est = _eval_units(spec, ctx.settings) * ctx.step_seconds + 10.0
    return Stage(f"eval/{spec.key}", f"evaluate {spec.label}: {len(ATTACK_ROWS)} attack rows",
                 est, [out, out.with_suffix(".md")], run_it, deps)
