"""The diagnosis' results: one :class:`CheckResult` per check, gathered in a :class:`Diagnosis`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from bnnrobust.evaluation.diagnose.verdicts import RANK, Verdict


@dataclass
class CheckResult:
    """Outcome of one check.

    Attributes:
        name: check name (one of :data:`~bnnrobust.evaluation.diagnose.CHECKS`).
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
    """All check results of :func:`~bnnrobust.evaluation.diagnose.diagnose`.

    Attributes:
        checks: results, in the order of :data:`~bnnrobust.evaluation.diagnose.CHECKS` (only
            those asked for).
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
        rank = max((RANK[c.verdict] for c in self.checks), default=0)
        return ("pass", "warning", "fail")[rank]  # type: ignore[return-value]

    @property
    def recommendations(self) -> list[str]:
        """Recommendations of every check, failing checks first, without duplicates."""
        out: list[str] = []
        for c in sorted(self.checks, key=lambda c: -RANK[c.verdict]):
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
        from bnnrobust.evaluation.diagnose.report import format_diagnosis

        return format_diagnosis(self)
