"""The peer check: on BNN-WQ and BNN-WAQ, is the ``strongest`` cascade's accuracy at most
that of each peer attack alone (APGD-CE, APGD-DLR, APGD-T, Square)? Measured, not assumed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .common import log, read_json, write_json
from .context import Context, Stage
from .specs import BY_KEY, PEERS


def peer_check(evals: Mapping[str, Mapping[str, Any]], models: Sequence[str]) -> dict[str, Any]:
    """For each model: is the ``strongest`` accuracy <= that of every peer attack alone?

    Args:
        evals: ``{model key: eval JSON body}``.
        models: the model keys to check (BNN-WQ and BNN-WAQ).

    Returns:
        ``{"models": {key: {"strongest": acc, "peers": {peer: {"adv_acc": acc, "ok": bool,
        "margin": peer - strongest}}, "ok": bool}}, "ok": bool}`` (accuracies in percent;
        a missing number gives ``ok: None`` and ``"missing": [...]``).
    """
    out: dict[str, Any] = {"peers": list(PEERS), "models": {}}
    all_ok: bool | None = True
    for key in models:
        attacks = (evals.get(key) or {}).get("attacks", {})
        strongest = attacks.get("strongest", {}).get("adv_acc")
        entry: dict[str, Any] = {"strongest": strongest, "peers": {}, "missing": []}
        ok: bool | None = strongest is not None
        if strongest is None:
            entry["missing"].append("strongest")
        for peer in PEERS:
            acc = attacks.get(peer, {}).get("adv_acc")
            if acc is None or strongest is None:
                entry["peers"][peer] = {"adv_acc": acc, "ok": None, "margin": None}
                if acc is None:
                    entry["missing"].append(peer)
                ok = None if ok is not False else ok
                continue
            good = strongest <= acc + 1e-9
            entry["peers"][peer] = {"adv_acc": acc, "ok": good, "margin": acc - strongest}
            if not good:
                ok = False
        entry["ok"] = ok
        out["models"][key] = entry
        if ok is False:
            all_ok = False
        elif ok is None and all_ok:
            all_ok = None
    out["ok"] = all_ok
    return out


def peer_stage(ctx: Context) -> Stage:
    """``peer_check``: :func:`peer_check` on the evaluation JSONs -> ``peer_check.json``."""
    out = ctx.out / "peer_check.json"

    def run_it() -> dict[str, Any]:
        keys = ctx.settings.peer_check_models
        evals = {k: read_json(ctx.eval_json(k)) for k in keys}
        res = peer_check(evals, keys)
        write_json(out, res)
        for key, entry in res["models"].items():
            peers = ", ".join(f"{p} {v['adv_acc']:.2f}" for p, v in entry["peers"].items()
                              if v["adv_acc"] is not None)
            log(f"  {BY_KEY[key].label}: strongest {entry['strongest']:.2f} % vs {peers} "
                f"-> {'OK' if entry['ok'] else 'VIOLATED' if entry['ok'] is False else 'incomplete'}")
        return {"ok": res["ok"]}

    return Stage("peer_check", "peer check: strongest <= every peer (BNN-WQ, BNN-WAQ)", 2.0, [out],
                 run_it, [f"eval/{k}" for k in ctx.settings.peer_check_models])
