"""The findings: each claim of the paper compared with our numbers, one function per table or
claim, each returning :class:`Finding` rows. The paper's side always comes from
:mod:`bnnrobust.reproduce.paper` (``paper_numbers.json``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .paper import PAPER, PAPER_CLEVER, PAPER_RHO, PAPER_RHO_VALUES, PAPER_SIGNAL
from .specs import BY_KEY, MODELS, REF_KEY, RHO_ABLATIONS, WAQ_KEY, WQ_HIDDEN_KEY, WQ_KEY

#: a difference smaller than this (percentage points) is "about equal" in the findings
CLEAR_POINTS = 2.0
#: a plain attack at or below this accuracy (percent) leaves nothing for a stronger one to show
FLOOR_POINTS = 1.0
#: the verdicts of :class:`Finding`
VERDICTS = ("agrees", "partly agrees", "differs", "not testable", "not measured")

#: the BNNs of the paper's Tables 1-3 and 5, in row order
_BNNS = (WQ_KEY, "wq_bc", WQ_HIDDEN_KEY, WAQ_KEY)
#: the adversarially trained networks (Table 4)
_ADV = ("adv_ref", "adv_wq_md_tanh_s")


@dataclass
class Finding:
    """One comparison with the paper: a claim, our numbers, the paper's, and a verdict."""

    topic: str
    claim: str
    ours: str
    paper: str
    verdict: str  # one of VERDICTS


def acc(evals: Mapping[str, Any], model: str, attack: str) -> float | None:
    """Accuracy (%) of ``model`` clean (``attack="clean"``) or under ``attack``; None if not run."""
    body = evals.get(model)
    if not body:
        return None
    if attack == "clean":
        return float(body["clean_acc"])
    res = body.get("attacks", {}).get(attack)
    return None if res is None else float(res["adv_acc"])


def pp(v: float | None) -> str:
    """A percentage with two decimals, ``n/a`` for None."""
    return "n/a" if v is None else f"{v:.2f}"


def _label(key: str) -> str:
    return BY_KEY[key].label if key in BY_KEY else key


def _pgdpp(evals: Mapping[str, Any], key: str) -> list[float]:
    """Our PGD++ (NJS, HNS) accuracies of ``key`` that were measured."""
    return [v for v in (acc(evals, key, "pgd++njs"), acc(evals, key, "pgd++hns")) if v is not None]


def _paper_pgdpp(key: str) -> float | None:
    """The paper's best PGD++ (NJS or HNS) accuracy of ``key``."""
    row = PAPER.get(key, {})
    vals = [v for v in (row.get("pgd++njs"), row.get("pgd++hns")) if v is not None]
    return min(vals) if vals else None


def _drop_finding(evals: Mapping[str, Any], model: str, base: str, pluses: Sequence[str],
                  topic: str, claim: str) -> Finding:
    """Does the best of ``pluses`` (the ++ attacks) lower ``model``'s accuracy vs ``base``?"""
    b = acc(evals, model, base)
    vals = [v for v in (acc(evals, model, p) for p in pluses) if v is not None]
    pb = PAPER.get(model, {})
    pvals = [v for v in (pb.get(p) for p in pluses) if v is not None]
    paper = (f"{pp(pb.get(base))} → {pp(min(pvals))}" if pb.get(base) is not None and pvals
             else "n/a")
    if b is None or not vals:
        return Finding(topic, claim, "not measured", paper, "not measured")
    best = min(vals)
    if b <= FLOOR_POINTS:
        return Finding(topic, claim, f"{b:.2f} → {best:.2f}: the plain attack already reaches "
                       f"≤ {FLOOR_POINTS:g} % at this eps (see the sweep rows at smaller eps and "
                       "docs/masking_study.md)", paper, "not testable")
    drop = b - best
    ours = f"{b:.2f} → {best:.2f} ({drop:+.2f} points lower)" if drop >= 0 else \
        f"{b:.2f} → {best:.2f} ({-drop:.2f} points higher)"
    if drop >= CLEAR_POINTS:
        verdict = "agrees"
    elif drop > 0:
        verdict = "partly agrees"
    else:
        verdict = "differs"
    return Finding(topic, claim, ours, paper, verdict)


def _table1_pgd(evals: Mapping[str, Any]) -> list[Finding]:
    """Table 1: BNNs look more robust than REF under plain PGD (one row per BNN)."""
    out: list[Finding] = []
    r = acc(evals, REF_KEY, "pgd")
    for key in _BNNS:
        q = acc(evals, key, "pgd")
        if r is None or q is None:
            continue
        paper_q = PAPER.get(key, {}).get("pgd")
        out.append(Finding("Table 1", f"{_label(key)} looks more robust than REF under plain PGD L∞",
                           f"PGD acc. REF {r:.2f}, {_label(key)} {q:.2f}",
                           f"REF {pp(PAPER[REF_KEY].get('pgd'))}, {pp(paper_q)}"
                           if paper_q is not None else "n/a",
                           "agrees" if q > r + CLEAR_POINTS else "partly agrees" if q > r
                           else "differs"))
    return out


def _tables_2_3_5_drops(evals: Mapping[str, Any]) -> list[Finding]:
    """Tables 2/3/5: PGD++ / FGSM++ beat PGD / FGSM on BNNs."""
    out: list[Finding] = []
    for key in _BNNS:
        label = _label(key)
        out.append(_drop_finding(evals, key, "pgd", ("pgd++njs", "pgd++hns"), "Tables 2, 3, 5",
                                 f"PGD++ L∞ lowers {label} accuracy a lot vs PGD "
                                 "(fake robustness from vanishing gradients)"))
        out.append(_drop_finding(evals, key, "fgsm", ("fgsm++njs", "fgsm++hns"), "Tables 2, 3, 5",
                                 f"FGSM++ lowers {label} accuracy vs FGSM"))
        out.append(_drop_finding(evals, key, "pgd_l2", ("pgd_l2++njs", "pgd_l2++hns"),
                                 "Tables 2, 3", f"PGD++ L2 lowers {label} accuracy vs PGD L2"))
    return out


def _table3_ref(evals: Mapping[str, Any]) -> list[Finding]:
    """Table 3: on REF, PGD++ is at least as strong as PGD (both ~0 in the paper)."""
    b, pps = acc(evals, REF_KEY, "pgd"), _pgdpp(evals, REF_KEY)
    if b is None or len(pps) < 2:
        return []
    best = min(pps)
    return [Finding("Table 3", "On REF, PGD++ is at least as strong as PGD",
                    f"PGD {b:.2f}, PGD++ {best:.2f}",
                    f"{pp(PAPER[REF_KEY].get('pgd'))} and {pp(_paper_pgdpp(REF_KEY))}",
                    "agrees" if best <= b + 0.5 else
                    "partly agrees" if best <= b + CLEAR_POINTS else "differs")]


def _table1_restarts(evals: Mapping[str, Any]) -> list[Finding]:
    """Table 1: 20 restarts do not close the gap to PGD++ on BNNs."""
    out: list[Finding] = []
    for key in (WQ_KEY, WAQ_KEY):
        rr, pps = acc(evals, key, "pgd_restarts"), _pgdpp(evals, key)
        if rr is not None and pps:
            gap = rr - min(pps)
            out.append(Finding("Table 1", f"PGD with restarts stays above PGD++ on {_label(key)}",
                               f"restarts {rr:.2f} vs PGD++ {min(pps):.2f} ({gap:+.2f})",
                               f"{pp(PAPER[key].get('pgd_restarts'))} vs {pp(_paper_pgdpp(key))}",
                               "agrees" if gap >= CLEAR_POINTS else "partly agrees" if gap > 0
                               else "differs"))
    return out


def _fig1c_transfer(evals: Mapping[str, Any]) -> list[Finding]:
    """Fig. 1c: black-box transfer from REF beats white-box PGD on BNNs (gradient masking)."""
    out: list[Finding] = []
    for key in (WQ_KEY, WAQ_KEY):
        tr, pg = acc(evals, key, "transfer_pgd"), acc(evals, key, "pgd")
        if tr is not None and pg is not None:
            out.append(Finding("Fig. 1c", f"Transfer PGD from REF beats white-box PGD on {_label(key)}",
                               f"transfer {tr:.2f} vs white-box {pg:.2f}",
                               "black-box below white-box (plot)",
                               "agrees" if tr < pg - 0.5 else "partly agrees" if tr <= pg + 0.5
                               else "differs"))
    return out


def _table5_dlr(evals: Mapping[str, Any]) -> list[Finding]:
    """Table 5: PGD++ is at least as strong as PGD with the DLR loss."""
    out: list[Finding] = []
    for key in (WQ_KEY, WAQ_KEY) + _ADV:
        dl, pps = acc(evals, key, "pgd_dlr"), _pgdpp(evals, key)
        if dl is not None and pps:
            pdl = PAPER[key].get("pgd_dlr")
            pap = f"DLR {pp(pdl)} vs PGD++ {pp(_paper_pgdpp(key))}" if pdl is not None else "n/a"
            out.append(Finding("Table 5", f"PGD++ is at least as strong as PGD-DLR on {_label(key)}",
                               f"DLR {dl:.2f} vs PGD++ {min(pps):.2f}", pap,
                               "agrees" if min(pps) <= dl + 0.5 else "partly agrees"
                               if min(pps) <= dl + CLEAR_POINTS else "differs"))
    return out


def _table4_adversarial(evals: Mapping[str, Any]) -> list[Finding]:
    """Tables 4/5: on adversarially trained networks PGD++ is only slightly stronger than PGD."""
    out: list[Finding] = []
    for key in _ADV:
        b, pps = acc(evals, key, "pgd"), _pgdpp(evals, key)
        if b is not None and pps:
            d = b - min(pps)
            out.append(Finding("Table 4", f"On {_label(key)}, PGD++ is slightly stronger than PGD "
                               "(small gain: no vanishing gradients after adversarial training)",
                               f"PGD {b:.2f} → PGD++ {min(pps):.2f} ({d:+.2f})",
                               f"{pp(PAPER[key].get('pgd'))} → {pp(_paper_pgdpp(key))}",
                               "agrees" if 0 < d < 2 * CLEAR_POINTS else "partly agrees"
                               if d > -0.5 else "differs"))
    return out


def _table7_peers(evals: Mapping[str, Any]) -> list[Finding]:
    """Table 7: PGD++ vs APGD-DLR and Square on BNNs."""
    out: list[Finding] = []
    for key in (WQ_KEY, WAQ_KEY):
        pps = _pgdpp(evals, key)
        ad, sq = acc(evals, key, "apgd-dlr"), acc(evals, key, "square")
        if pps and ad is not None and sq is not None:
            m = min(pps)
            out.append(Finding("Table 7", f"PGD++ is at least as strong as APGD-DLR and Square on {_label(key)}",
                               f"PGD++ {m:.2f}, APGD-DLR {ad:.2f}, Square {sq:.2f}",
                               f"PGD++ {pp(_paper_pgdpp(key))}, "
                               f"APGD-DLR {pp(PAPER[key].get('apgd-dlr'))}, Square {pp(PAPER[key].get('square'))}",
                               "agrees" if m <= min(ad, sq) + 0.5 else "partly agrees"
                               if m <= max(ad, sq) else "differs"))
    return out


def _table1_clean(evals: Mapping[str, Any]) -> list[Finding]:
    """Table 1: clean accuracy orders REF ≥ BNN-WQ ≥ BNN-WAQ."""
    keys = (REF_KEY, WQ_KEY, WAQ_KEY)
    r, q, a = (acc(evals, k, "clean") for k in keys)
    if r is None or q is None or a is None:
        return []
    ok = r >= q - 0.5 and q >= a - 0.5
    return [Finding("Table 1", "Clean accuracy: REF ≥ BNN-WQ ≥ BNN-WAQ",
                    f"{r:.2f} / {q:.2f} / {a:.2f}",
                    " / ".join(pp(PAPER.get(k, {}).get("clean")) for k in keys),
                    "agrees" if ok else "differs")]


def _hns_vs_njs(evals: Mapping[str, Any]) -> list[Finding]:
    """§6.1: HNS beats NJS in the majority of cases, notably for FGSM."""
    wins = total = 0
    for spec in MODELS:
        for base in ("fgsm", "pgd", "pgd_l2"):
            n_, h_ = acc(evals, spec.key, base + "++njs"), acc(evals, spec.key, base + "++hns")
            if n_ is not None and h_ is not None and abs(n_ - h_) > 1e-9:
                total += 1
                wins += h_ < n_
    if not total:
        return []
    return [Finding("§6.1", "HNS beats NJS in the majority of cases",
                    f"HNS lower in {wins} of {total} non-tied (model, attack) pairs",
                    "HNS better in the majority, notably FGSM",
                    "agrees" if wins > total / 2 else "partly agrees" if wins == total / 2
                    else "differs")]


def _paper_signal(key: str, name_variants: bool) -> str:
    """The paper's ‖ψ‖₂ of ``key`` (Table 12), original → NJS / HNS."""
    p = PAPER_SIGNAL.get(key)
    if not p:
        return "n/a"
    if name_variants:
        return f"{p['original']:.2e} → {p['njs']:.2e} (NJS) / {p['hns']:.2e} (HNS)"
    return f"{p['original']:.2e} → {p['njs']:.2e} / {p['hns']:.2e}"


def _table12_signal(signal: Mapping[str, Any] | None) -> list[Finding]:
    """Table 12: the error signal ψ grows with NJS/HNS; which gradients vanish."""
    out: list[Finding] = []
    if not signal:
        return out
    for i, key in enumerate((WQ_KEY, WAQ_KEY, REF_KEY)):
        sm = (signal.get("models") or {}).get(key)
        if not sm:
            continue
        v = sm["variants"]
        psi = {name: v[name]["summary"]["psi_norm"] for name in v}
        zero = {name: v[name]["summary"]["zero_grad_frac"] for name in v}
        grew = all(psi[n] > psi["original"] for n in ("njs", "hns") if n in psi)
        finite = all(math.isfinite(x) for x in list(psi.values()) + list(zero.values()))
        verdict = ("not measured" if not finite else "agrees" if grew else "differs")
        out.append(Finding("Table 12", f"NJS/HNS enlarge the error signal ‖ψ‖₂ of {_label(key)}",
                           "‖ψ‖₂ " + ", ".join(f"{n} {psi[n]:.2e}" for n in psi)
                           + "; zero-gradient fraction " + ", ".join(f"{n} {zero[n]:.3f}" for n in zero),
                           # the first row names the variants, the next ones follow its order
                           _paper_signal(key, name_variants=i == 0),
                           verdict))
    return out


def _sweep_drops(sweeps: Mapping[str, Any]) -> list[Finding]:
    """Tables 2/3 at smaller radii: PGD vs PGD++ from the eps sweeps (smallest informative eps)."""
    out: list[Finding] = []
    for key, sw in sweeps.items():
        curves = sw.get("attacks", {})
        if not {"pgd", "pgd++njs", "pgd++hns"} <= set(curves):
            continue
        for i, eps in enumerate(sw["eps"]):
            base = curves["pgd"]["adv_acc"][i]
            if eps <= 0 or base <= FLOOR_POINTS:
                continue
            best = min(curves["pgd++njs"]["adv_acc"][i], curves["pgd++hns"]["adv_acc"][i])
            d = base - best
            out.append(Finding("Tables 2, 3 (sweep)", f"PGD++ lowers {_label(key)} "
                               f"accuracy vs PGD at eps {eps:g} (sweep, {sw.get('n')} images)",
                               f"{base:.2f} → {best:.2f} ({d:+.2f})",
                               "large drop for BNNs, ≈ 0 for REF at 8/255",
                               "agrees" if (d >= CLEAR_POINTS if key != REF_KEY else d > -CLEAR_POINTS)
                               else "partly agrees" if d > 0 else "differs"))
            break  # the smallest informative radius
    return out


def _fig1b_monotone(sweeps: Mapping[str, Any]) -> list[Finding]:
    """Fig. 1b: accuracy falls monotonically with eps (no masking signal from the radius)."""
    if not sweeps:
        return []
    bad = {k: s.get("non_monotone", []) for k, s in sweeps.items()}
    flagged = {k: v for k, v in bad.items() if v}
    return [Finding("Fig. 1b", "Accuracy falls monotonically as eps grows",
                    "monotone for every curve" if not flagged else
                    "rises for " + "; ".join(f"{_label(k)}: {', '.join(v)}"
                                            for k, v in flagged.items()),
                    "monotone (varying the radius shows no masking)",
                    "agrees" if not flagged else "differs")]


def _peer_finding(peers: Mapping[str, Any] | None) -> list[Finding]:
    """Not in the paper: the strongest cascade is at most every peer attack alone."""
    if not peers or not peers.get("models"):
        return []
    pieces = []
    for key, e in peers["models"].items():
        best_peer = min((p["adv_acc"] for p in e["peers"].values() if p["adv_acc"] is not None),
                        default=None)
        pieces.append(f"{_label(key)}: strongest {pp(e['strongest'])} vs min peer {pp(best_peer)}")
    return [Finding("peer check", "The strongest cascade is at most every peer attack alone",
                    "; ".join(pieces), "(not in the paper)",
                    "agrees" if peers.get("ok") else "differs" if peers.get("ok") is False
                    else "not measured")]


def findings(evals: Mapping[str, Any], signal: Mapping[str, Any] | None,
             sweeps: Mapping[str, Any], peers: Mapping[str, Any] | None) -> list[Finding]:
    """Every comparison with the paper, computed from the numbers (see ``docs/results.md``)."""
    return (_table1_pgd(evals) + _tables_2_3_5_drops(evals) + _table3_ref(evals)
            + _table1_restarts(evals) + _fig1c_transfer(evals) + _table5_dlr(evals)
            + _table4_adversarial(evals) + _table7_peers(evals) + _table1_clean(evals)
            + _hns_vs_njs(evals) + _table12_signal(signal) + _sweep_drops(sweeps)
            + _fig1b_monotone(sweeps) + _peer_finding(peers))


def _short(x: float) -> str:
    """``1e-5`` for 1e-05: ``:g`` without the exponent's leading zeros."""
    return re.sub(r"e([+-])0+(\d)", r"e\1\2", f"{x:g}")


def _table11(rho: Mapping[str, Any]) -> list[Finding]:
    """Table 11: PGD++ (NJS) is stable in ρ."""
    out: list[Finding] = []
    models = rho.get("models", {})
    rhos = PAPER_RHO_VALUES["njs"]
    for key in RHO_ABLATIONS["njs"][1]:
        vals = (models.get(key) or {}).get("njs")
        if not vals:
            continue
        spread = max(vals) - min(vals)
        pap = PAPER_RHO["njs"][key]
        out.append(Finding("Table 11", f"PGD++ (NJS) on {_label(key)} is stable in ρ "
                           f"({_short(rhos[0])} … {_short(rhos[-1])})",
                           f"{min(vals):.2f} … {max(vals):.2f} (spread "
                           f"{spread:.2f})", f"{min(pap):.2f} … {max(pap):.2f}",
                           "agrees" if spread <= CLEAR_POINTS else "partly agrees"
                           if spread <= 2 * CLEAR_POINTS else "differs"))
    return out


def _table13(rho: Mapping[str, Any]) -> list[Finding]:
    """Table 13: Prop. 1's β drives plain networks to ~0; adversarial ones prefer a small ρ."""
    out: list[Finding] = []
    models = rho.get("models", {})
    rhos = list(rho.get("rho", {}).get("prop1", []))
    for key in RHO_ABLATIONS["prop1"][1]:
        vals = (models.get(key) or {}).get("prop1")
        if not vals or len(vals) != len(rhos):
            continue
        pap = PAPER_RHO["prop1"][key]
        if BY_KEY[key].adversarial:
            rise = vals[-1] - min(vals)
            claim = (f"On {_label(key)}, Prop. 1's β works best at a small ρ: "
                     f"ρ = {rhos[-1]:g} is weaker than the best ρ")
            pap_text = (f"best {min(pap):.2f}, ρ = {PAPER_RHO_VALUES['prop1'][-1]:g}: {pap[-1]:.2f} "
                        f"({pap[-1] - min(pap):+.2f})")
            if max(vals) <= FLOOR_POINTS:
                out.append(Finding("Table 13", claim, f"{max(vals):.2f} or less at every ρ: the "
                                   "network is not robust at this eps, nothing to compare",
                                   pap_text, "not testable"))
                continue
            out.append(Finding("Table 13", claim,
                               f"best {min(vals):.2f} (ρ = {rhos[vals.index(min(vals))]:g}), "
                               f"ρ = {rhos[-1]:g}: {vals[-1]:.2f} ({rise:+.2f})", pap_text,
                               "agrees" if rise >= CLEAR_POINTS else "partly agrees" if rise > 0
                               else "differs"))
        else:
            worst = max(vals[1:])
            out.append(Finding("Table 13", f"On {_label(key)}, Prop. 1's β with ρ ≥ "
                               f"{rhos[1]:g} drives accuracy to about 0",
                               f"{', '.join(f'{v:.2f}' for v in vals)} (ρ = "
                               f"{', '.join(f'{r:g}' for r in rhos)})",
                               ", ".join(f"{v:.2f}" for v in pap),
                               "agrees" if worst <= FLOOR_POINTS else "partly agrees"
                               if worst <= CLEAR_POINTS else "differs"))
    return out


def rho_findings(rho: Mapping[str, Any] | None) -> list[Finding]:
    """Tables 11 and 13, from ``rho_ablation.json``'s body."""
    if not rho:
        return []
    return _table11(rho) + _table13(rho)


def clever_findings(clever: Mapping[str, Any] | None) -> list[Finding]:
    """Table 10: do NJS/HNS lower the CLEVER estimate, and β = 0.01 not?"""
    out: list[Finding] = []
    for key, body in ((clever or {}).get("models") or {}).items():
        m = {k: v["mean"] for k, v in body["summary"].items()}
        p = PAPER_CLEVER.get(key, {})
        if not all(math.isfinite(m.get(k, float("nan"))) for k in ("original", "njs", "hns")):
            continue
        best = min(m["njs"], m["hns"])
        rel = (m["original"] - best) / m["original"] if m["original"] else 0.0
        out.append(Finding(
            "Table 10", f"NJS/HNS lower the CLEVER score of {body['label']} (a tighter bound)",
            f"original {m['original']:.4f} → NJS {m['njs']:.4f}, HNS {m['hns']:.4f} "
            f"({100 * rel:+.1f} %)",
            f"{p.get('original', float('nan')):.4f} → {p.get('njs', float('nan')):.4f}, "
            f"{p.get('hns', float('nan')):.4f}" if p else "n/a",
            "agrees" if rel >= 0.1 else "partly agrees" if rel > 0.01 else "differs"))
    return out
