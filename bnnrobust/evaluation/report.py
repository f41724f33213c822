"""Present an :class:`~bnnrobust.evaluation.runner.EvalResult`: text table, JSON, Markdown.

JSON schema (accuracies in percent, seconds wall-clock, eps in [0, 1] pixel units)::

    {
      "clean_acc": 91.2, "clean_correct": 912, "n": 1000, "seed": 0, "batch_size": 256,
      "device": "cpu", "world_size": 1, "seconds": 12.3, "worst_case_acc": 40.1,
      "attacks": {"pgd++njs": {"adv_acc": 45.0, "correct": 450, "seconds": 3.2,
                               "attacked": 912, "n": 1000,
                               "beta": {"count": 912, "mean": .., "std": .., "min": .., "max": ..} | null,
                               "config": {"name": "pgd++njs", "eps": 0.1, "norm": "linf", ...}}},
      "versions": {"torch": .., "lightning": .., "torchattacks": .., "bnnrobust": .., "python": ..},
      ... extra keys added by the caller (checkpoint, dataset, split, signal_propagation)
    }
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from bnnrobust.evaluation.runner import EvalResult

__all__ = ["format_table", "markdown_table", "to_json_dict", "versions", "write_reports"]


def versions() -> dict[str, str]:
    """Versions of the packages that determine the numbers."""
    out: dict[str, str] = {}
    for pkg in ("torch", "lightning", "torchattacks"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        import bnnrobust

        out["bnnrobust"] = str(bnnrobust.__version__)
    except Exception:  # pragma: no cover - the package is importable when this runs
        out["bnnrobust"] = "unknown"
    out["python"] = platform.python_version()
    return out


def to_json_dict(result: EvalResult, **extra: Any) -> dict[str, Any]:
    """The report's JSON body: ``result.to_dict()`` plus ``versions`` and ``extra`` keys."""
    body = result.to_dict()
    body["versions"] = versions()
    body.update(extra)
    return body


def weaker_temperature_notes(accs: Mapping[str, float], *, unit: str = " %",
                             min_gap: float = 0.0) -> list[str]:
    """One sentence per ``X++rule`` attack that is weaker than plain ``X`` on the same images.

    ``accs`` maps attack names (``"pgd"``, ``"pgd++njs"``, ...) to adversarial accuracies;
    a tempered attack whose accuracy exceeds its base's by more than ``min_gap`` is named:
    its temperature lowered the gradient signal (typically β < 1 on a network whose softmax
    is not saturated), so PGD's own result is the stronger one there.
    """
    notes = []
    for name, acc in accs.items():
        base, sep, rule = name.partition("++")
        if not sep or base not in accs or not acc > accs[base] + min_gap:
            continue
        notes.append(
            f"{name} is weaker than {base} ({acc:.1f}{unit} vs {accs[base]:.1f}{unit}): the "
            f"temperature ({rule}) lowered the gradient signal on this network instead of "
            f"restoring it; {base}'s number is the one to report, and this gap is no sign of "
            "gradient masking by softmax saturation."
        )
    return notes


def _notes(result: EvalResult) -> list[str]:
    return weaker_temperature_notes({n: r.adv_acc for n, r in result.attacks.items()})


def _beta(stats: Any) -> str:
    if stats is None:
        return "-"
    return f"{stats.mean:.3g} ± {stats.std:.2g} [{stats.min:.3g}, {stats.max:.3g}]"


def _eps(config: dict[str, Any]) -> str:
    eps = config.get("eps")
    if not isinstance(eps, int | float):
        return "-"
    norm = config.get("norm", "")
    shown = f"{eps * 255:.3g}/255" if norm == "linf" and eps < 1 else f"{eps:.4g}"
    return f"{shown} {norm}".strip()


def _rows(result: EvalResult) -> list[tuple[str, str, str, str, str]]:
    rows = [("clean", f"{result.clean_acc:.2f}", "-", "-", "-")]
    for name, res in result.attacks.items():
        steps = res.config.get("steps")
        rows.append((name, f"{res.adv_acc:.2f}", f"{res.seconds:.1f}",
                     f"{_eps(res.config)}" + (f", {steps} step{'s' if steps != 1 else ''}" if steps else ""), _beta(res.beta)))
    if result.worst_case_acc is not None and len(result.attacks) > 1:
        rows.append(("worst case (all attacks)", f"{result.worst_case_acc:.2f}", "-", "-", "-"))
    return rows


_HEADER = ("attack", "acc %", "seconds", "eps / steps", "β mean ± std [min, max]")


def format_table(result: EvalResult, title: str | None = None) -> str:
    """Plain-text table: clean accuracy, then per attack accuracy, seconds, budget and β."""
    rows = [_HEADER, *_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = []
    if title:
        lines.append(f"== {title} ==")
    lines.append(f"n = {result.n}, seed = {result.seed}, device = {result.device}, "
                 f"world size = {result.world_size}")
    for j, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i in (0, 3, 4) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"note: {note}" for note in _notes(result)]
    return "\n".join(lines)


def markdown_table(result: EvalResult, title: str | None = None) -> str:
    """The same table in Markdown (one row per attack)."""
    lines = [f"# {title}", ""] if title else []
    lines.append(f"n = {result.n}, seed = {result.seed}, device = `{result.device}`, "
                 f"world size = {result.world_size}")
    lines.append("")
    lines.append("| " + " | ".join(_HEADER) + " |")
    lines.append("|---|---:|---:|---|---|")
    for row in _rows(result):
        lines.append("| " + " | ".join(row) + " |")
    notes = _notes(result)
    if notes:
        lines += [""] + [f"* {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_reports(result: EvalResult, json_path: str | Path, *, markdown_path: str | Path | None = None,
                  title: str | None = None, markdown_extra: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    """Write ``json_path`` and ``markdown_path`` (default: same name, ``.md``); return the JSON body.

    ``extra`` keys are added to the JSON; ``markdown_extra`` is appended to the Markdown file.
    """
    body = to_json_dict(result, **extra)
    json_file = Path(json_path)
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(body, indent=2) + "\n")
    md_file = Path(markdown_path) if markdown_path is not None else json_file.with_suffix(".md")
    md = markdown_table(result, title)
    if markdown_extra:
        md += "\n" + markdown_extra.rstrip() + "\n"
    md_file.write_text(md)
    return body
