"""The Markdown tables of the report (lists of lines), each from one results JSON; the
paper's columns come from :mod:`bnnrobust.reproduce.paper`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .claims import acc, pp
from .paper import PAPER, PAPER_CLEVER, PAPER_RHO
from .settings import Settings
from .specs import ATTACK_ROWS, BY_KEY, MODELS, PEERS


def attack_table(evals: Mapping[str, Any], settings: Settings) -> list[str]:
    """Adversarial accuracy: one row per attack of :data:`ATTACK_ROWS`, one column per network."""
    present = [m for m in MODELS if m.key in evals]
    head = "| attack | " + " | ".join(m.label for m in present) + " |"
    lines = [head, "|---|" + "---:|" * len(present)]
    row = ["clean"] + [pp(acc(evals, m.key, "clean")) for m in present]
    lines.append("| " + " | ".join(row) + " |")
    for key, label in ATTACK_ROWS:
        name = label.format(S=settings.apgd_steps, Q=settings.square_queries, R=settings.restarts)
        cells = []
        for m in present:
            v = acc(evals, m.key, key)
            cells.append("—" if v is None else f"{v:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def paper_table(evals: Mapping[str, Any]) -> list[str]:
    """Ours / the paper's accuracy for the attacks the paper reports (Tables 1, 3, 5, 7)."""
    keys = [k for k in PAPER if k in evals]
    lines = ["| attack | " + " | ".join(f"{BY_KEY[k].label}: ours / paper" for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for key, label in (("clean", "clean"),) + ATTACK_ROWS:
        if not any(PAPER[k].get(key) is not None for k in keys):
            continue
        name = label.format(S="S", Q="Q", R="R")
        cells = [f"{pp(acc(evals, k, key))} / {pp(PAPER[k].get(key))}" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def peer_table(peers: Mapping[str, Any]) -> list[str]:
    """The peer check: strongest vs each peer alone, per network."""
    lines = ["| network | strongest | " + " | ".join(PEERS) + " | holds |",
             "|---|---:|" + "---:|" * len(PEERS) + "---|"]
    for key, e in peers["models"].items():
        cells = [pp(e["peers"][p]["adv_acc"]) for p in PEERS]
        verdict = "yes" if e["ok"] else "**no**" if e["ok"] is False else "incomplete"
        lines.append(f"| {BY_KEY[key].label} | {pp(e['strongest'])} | " + " | ".join(cells)
                     + f" | {verdict} |")
    return lines


def signal_table(signal: Mapping[str, Any]) -> list[str]:
    """Table 12 as Markdown: one row per (network, β variant), one column per metric."""
    models = signal.get("models") or {}
    if not models:
        return []
    cols = (("jsv_mean", "JSV mean"), ("jsv_std", "JSV std"), ("psi_norm", "‖ψ‖₂"),
            ("grad_norm", "‖∂ℓ/∂x‖₂"), ("sign_grad_norm", "‖sign(∂ℓ/∂x)‖₂"),
            ("zero_grad_frac", "zero-grad. fraction"), ("beta", "β (mean)"))
    lines = ["| network | β | " + " | ".join(label for _, label in cols) + " | samples |",
             "|---|---|" + "---:|" * (len(cols) + 1)]
    for m in models.values():
        for variant, v in m["variants"].items():
            cells = []
            for key, _ in cols:
                val = v["summary"].get(key)
                cells.append("n/a" if val is None else f"{val:.3f}" if key == "zero_grad_frac"
                             else f"{val:.2e}")
            lines.append(f"| {m['label']} | {variant} | " + " | ".join(cells)
                         + f" | {m['n_correct']} |")
    return lines


def vanishing_sentence(signal: Mapping[str, Any]) -> str:
    """Which networks have exactly-zero input gradients at β = 1, and how NJS/HNS change that."""
    models = signal.get("models") or {}
    parts, none = [], []
    for m in models.values():
        v = m["variants"]
        z = v["original"]["summary"]["zero_grad_frac"]
        if not math.isfinite(z):
            parts.append(f"{m['label']}: not measured (no correctly classified sample, or "
                         "non-finite logits)")
        elif z > 0:
            after = ", ".join(f"{n.upper()} {v[n]['summary']['zero_grad_frac']:.1%}"
                              for n in ("njs", "hns") if n in v)
            parts.append(f"{m['label']}: {z:.1%} of the correctly classified samples have an input "
                         f"gradient that is exactly zero at β = 1 ({after})")
        else:
            none.append(m["label"])
    text = ""
    if parts:
        text += "Vanishing gradients (exactly zero input gradient, cross-entropy loss): " + \
            "; ".join(parts) + ". "
    if none:
        text += ("No sample has an exactly zero input gradient at β = 1 for " + ", ".join(none)
                 + " (their gradients may still be tiny: compare ‖∂ℓ/∂x‖₂ and ‖ψ‖₂ across β).")
    return text


def clever_table(clever: Mapping[str, Any]) -> list[str]:
    """Table 10: mean CLEVER score per temperature, ours and the paper's."""
    rows = ["| network | scored images | original (β = 1) | heuristic (β = 0.01) | NJS | HNS |"
            " paper: original / heuristic / NJS / HNS |", "|---|---:|---:|---:|---:|---:|---|"]
    for key, body in clever.get("models", {}).items():
        m = body["summary"]
        p = PAPER_CLEVER.get(key)
        paper = " / ".join(f"{p[k]:.4f}" for k in ("original", "heuristic", "njs", "hns")) \
            if p else "n/a"
        rows.append(f"| {body['label']} | {body['n_scored']} | " + " | ".join(
            f"{m[k]['mean']:.4f}" for k in ("original", "heuristic", "njs", "hns")) + f" | {paper} |")
    return rows


def rho_tables(rho: Mapping[str, Any]) -> list[str]:
    """Tables 11 and 13: accuracy at each ρ, ours / the paper's (each table ends with a blank)."""
    md: list[str] = []
    names = {"njs": "PGD++ (NJS) with varying ρ — paper Table 11",
             "prop1": "PGD++ with β from Proposition 1 and varying ρ — paper Table 13"}
    for rule, rhos in rho.get("rho", {}).items():
        md.append(f"**{names.get(rule, rule)}** (adversarial accuracy %, ours / paper):")
        md.append("")
        md.append("| network | clean | " + " | ".join(f"ρ = {r:g}" for r in rhos) + " |")
        md.append("|---|---:|" + "---:|" * len(rhos))
        for key, entry in rho.get("models", {}).items():
            if rule not in entry:
                continue
            pap = PAPER_RHO.get(rule, {}).get(key)
            cells = [f"{v:.2f} / {pap[i]:.2f}" if pap else f"{v:.2f}"
                     for i, v in enumerate(entry[rule])]
            md.append(f"| {entry['label']} | {entry['clean_acc']:.2f} | " + " | ".join(cells)
                      + " |")
        md.append("")
    return md
