"""The plain-text report of a :class:`~bnnrobust.evaluation.diagnose.Diagnosis`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnnrobust.evaluation.diagnose.results import CheckResult, Diagnosis

#: the verdict's tag at the start of a check's report line
MARK: dict[str, str] = {"pass": "PASS", "warning": "WARN", "fail": "FAIL", "skipped": "SKIP",
                        "error": "ERR "}


def pct(v: float | None) -> str:
    """A fraction in [0, 1] as a percentage with one decimal (``n/a`` for None or nan)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def format_diagnosis(diag: Diagnosis) -> str:
    """One header, one block per check, then the recommendations and the wall-clock time."""
    s = diag.settings
    lines = [
        f"Gradient-masking diagnosis: overall {diag.verdict.upper()}",
        f"model {s.get('model', '?')} | n = {s['n']} (seed {s['seed']}) | eps = {s['eps']:.4g} "
        f"({s['norm']}, [0, 1] pixel units) | clean accuracy {pct(diag.clean_acc)}",
        "-" * 78,
    ]
    for c in diag.checks:
        lines.append(f"[{MARK[c.verdict]}] {c.name:<19} {c.summary}")
        for extra in format_evidence(c):
            lines.append(" " * 7 + extra)
    lines.append("-" * 78)
    recs = diag.recommendations
    if recs:
        lines.append("Recommendations:")
        lines.extend(f"  {i}. {r}" for i, r in enumerate(recs, 1))
    else:
        lines.append("No sign of gradient masking: the white-box accuracy can be trusted as far "
                     "as these checks go.")
    lines.append(f"({diag.seconds:.1f} s)")
    return "\n".join(lines)


def format_evidence(c: CheckResult) -> list[str]:
    """A few extra report lines for the checks whose evidence is a curve or a table."""
    ev = c.evidence
    out: list[str] = []
    if c.name == "more_iterations" and "acc" in ev:
        out.append("steps → acc: " + ", ".join(f"{k}: {pct(v)}" for k, v in ev["acc"].items()))
    elif c.name == "eps_growth" and "acc" in ev:
        out.append("eps → acc: " + ", ".join(f"{float(k):.4g}: {pct(v)}" for k, v in ev["acc"].items()))
    elif c.name == "zero_gradients" and ev.get("layers"):
        zeros = [f"{layer['name']}: {pct(layer['zero_frac'])}" for layer in reversed(ev["layers"])]
        if len(zeros) > 12:
            zeros = zeros[:11] + ["..."]
        zeros.append(f"input x: {pct(ev['zero_input_grad_frac'])}")
        out.append("zero-gradient fraction per layer output, output → input: " + ", ".join(zeros))
    elif c.name == "signal_propagation" and "variants" in ev:
        for v, row in ev["variants"].items():
            out.append(f"{v:<8} β={row['beta']:.3g} jsv mean={row['jsv_mean']:.3g} "
                       f"std={row['jsv_std']:.3g} ‖ψ‖₂={row['psi_norm']:.3g} "
                       f"‖∂ℓ/∂x‖₂={row['grad_norm']:.3g} zero-grad={pct(row['zero_grad_frac'])}")
    return out
