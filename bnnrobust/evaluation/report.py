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

Tables show each accuracy with its Wilson 95 % interval from the counts
(:func:`bnnrobust.metrics.intervals.wilson_interval`), e.g. ``81.3 (78.8–83.6)``, and eps in
the dataset's usual unit (:func:`format_eps`: ``0.1`` for Fashion-MNIST/MNIST, ``8/255`` for
CIFAR). :func:`run_name` turns a checkpoint path into the run's name for titles.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bnnrobust.evaluation.runner import EvalResult
from bnnrobust.metrics.intervals import wilson_interval_percent

__all__ = [
    "eps_in_255",
    "format_accuracy",
    "format_eps",
    "format_table",
    "markdown_table",
    "report_title",
    "run_name",
    "to_json_dict",
    "versions",
    "write_reports",
]


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


#: datasets whose budgets are written in k/255 (8-bit images; the paper's Table 6)
_PER_255 = ("cifar10", "cifar100")
#: datasets whose budgets are written as decimals of the [0, 1] pixel range (eps 0.1, 0.3)
_DECIMAL = ("fmnist", "mnist", "synthetic")


def _canonical(dataset: str | None) -> str | None:
    if not dataset:
        return None
    from bnnrobust.attacks.presets import canonical_dataset

    try:
        return canonical_dataset(dataset)
    except ValueError:
        return None


def eps_in_255(dataset: str | None, eps: float | Sequence[float] = ()) -> bool:
    """Whether eps values (in [0, 1] pixel units) are written as k/255 for ``dataset``.

    CIFAR-10/100: yes; Fashion-MNIST, MNIST, synthetic: no (they read 0.1, 0.3). Unknown or
    no dataset: yes exactly when every non-zero value is a whole number of 1/255 steps (8/255
    reads "8/255", 0.1 reads "0.1", not "25.5/255").
    """
    key = _canonical(dataset)
    if key in _PER_255:
        return True
    if key in _DECIMAL:
        return False
    values = [float(eps)] if isinstance(eps, int | float) else [float(e) for e in eps]
    nonzero = [e for e in values if e > 0]
    return bool(nonzero) and all(abs(e * 255 - round(e * 255)) < 1e-6 * max(1.0, e * 255)
                                 for e in nonzero)


def format_eps(eps: float, norm: str = "", dataset: str | None = None) -> str:
    """An eps (in [0, 1] pixel units) in the dataset's usual unit, e.g. ``"8/255 linf"`` for
    CIFAR-10 or ``"0.1 linf"`` for Fashion-MNIST (see :func:`eps_in_255`); 0 reads ``"0"``."""
    if eps == 0:
        shown = "0"
    elif eps_in_255(dataset, eps):
        shown = f"{eps * 255:.4g}/255"
    else:
        shown = f"{eps:.4g}"
    return f"{shown} {norm}".strip()


def _eps(config: dict[str, Any], dataset: str | None = None) -> str:
    eps = config.get("eps")
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        return "-"
    return format_eps(float(eps), str(config.get("norm", "") or ""), dataset)


def format_accuracy(correct: int, n: int, digits: int = 1) -> str:
    """``"81.3 (78.8–83.6)"``: accuracy ``correct / n`` in percent and its Wilson 95 % interval."""
    low, high = wilson_interval_percent(int(correct), int(n))
    return f"{100.0 * correct / n:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def _accuracy(acc: float, correct: int | None, n: int) -> str:
    if correct is None or n < 1:
        return f"{acc:.1f}"
    return format_accuracy(correct, n)


def _rows(result: EvalResult, dataset: str | None = None) -> list[tuple[str, str, str, str, str]]:
    rows = [("clean", _accuracy(result.clean_acc, result.clean_correct, result.n), "-", "-", "-")]
    for name, res in result.attacks.items():
        steps = res.config.get("steps")
        budget = _eps(res.config, dataset) + (f", {steps} step{'s' if steps != 1 else ''}"
                                               if steps else "")
        rows.append((name, _accuracy(res.adv_acc, res.correct, res.n), f"{res.seconds:.1f}",
                     budget, _beta(res.beta)))
    if result.worst_case_acc is not None and len(result.attacks) > 1:
        # worst_case_acc = 100 * count / n exactly, so the count is recovered by rounding
        count = round(result.worst_case_acc * result.n / 100.0)
        rows.append(("worst case (all attacks)", _accuracy(result.worst_case_acc, count, result.n),
                     "-", "-", "-"))
    return rows


def _dataset_of(result: EvalResult, dataset: str | None) -> str | None:
    if dataset is not None:
        return dataset
    value = result.extra.get("dataset")
    return value if isinstance(value, str) else None


_VERSION_DIR = re.compile(r"version_\d+")


def run_name(checkpoint: str | Path) -> str:
    """The run's name for titles, from a checkpoint path or a zoo name.

    ``logs/<run>/version_0/checkpoints/last.ckpt`` → ``"<run> (version_0)"``,
    ``logs/<run>/checkpoints/last.ckpt`` → ``"<run>"``, another checkpoint of a run adds its
    stem (``"<run> (version_0, epoch=3-step=120)"``), ``zoo:<name>`` → ``"<name>"``, a
    checkpoint with its own name (``models/convnet_bc.ckpt``) → its stem (``"convnet_bc"``).
    The path is read as given (not resolved), so the name does not depend on the directory.
    """
    text = str(checkpoint)
    if text.startswith("zoo:"):
        return text.removeprefix("zoo:")
    path = Path(text)
    folder = path.parent
    if folder.name == "checkpoints":
        folder = folder.parent
    in_run = path.parent.name == "checkpoints"
    if _VERSION_DIR.fullmatch(folder.name) and folder.parent.name:
        version = folder.name if path.stem == "last" else f"{folder.name}, {path.stem}"
        return f"{folder.parent.name} ({version})"
    if (path.stem == "last" or in_run) and folder.name not in ("", ".", ".."):
        return folder.name if path.stem == "last" else f"{folder.name} ({path.stem})"
    return path.stem or text


def report_title(checkpoint: str | Path, dataset: str | None = None, split: str | None = None) -> str:
    """``"<run> (version_0) — fmnist, test"``: :func:`run_name` plus dataset and split if given."""
    details = ", ".join(str(v) for v in (dataset, split) if v)
    return f"{run_name(checkpoint)} — {details}" if details else run_name(checkpoint)


_HEADER = ("attack", "acc % (95 % CI)", "seconds", "eps / steps", "β mean ± std [min, max]")


def format_table(result: EvalResult, title: str | None = None, *,
                 dataset: str | None = None) -> str:
    """Plain-text table: clean accuracy, then per attack accuracy with its Wilson 95 % interval
    (percent), seconds, budget (eps in ``dataset``'s unit, see :func:`format_eps`) and β."""
    rows = [_HEADER, *_rows(result, _dataset_of(result, dataset))]
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


def markdown_table(result: EvalResult, title: str | None = None, *,
                   dataset: str | None = None) -> str:
    """The same table in Markdown (one row per attack); accuracies read ``81.3 (78.8–83.6)``."""
    lines = [f"# {title}", ""] if title else []
    lines.append(f"n = {result.n}, seed = {result.seed}, device = `{result.device}`, "
                 f"world size = {result.world_size}")
    lines.append("")
    lines.append("| " + " | ".join(_HEADER) + " |")
    lines.append("|---|---:|---:|---|---|")
    for row in _rows(result, _dataset_of(result, dataset)):
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
    ``title`` None: :func:`report_title` of the ``checkpoint`` extra (with ``dataset`` and
    ``split``) when given. A ``dataset`` extra sets the unit of the eps column.
    """
    body = to_json_dict(result, **extra)
    dataset = extra.get("dataset") if isinstance(extra.get("dataset"), str) else None
    if title is None and extra.get("checkpoint"):
        split = extra.get("split") if isinstance(extra.get("split"), str) else None
        title = report_title(str(extra["checkpoint"]), dataset, split)
    json_file = Path(json_path)
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(body, indent=2) + "\n")
    md_file = Path(markdown_path) if markdown_path is not None else json_file.with_suffix(".md")
    md = markdown_table(result, title, dataset=dataset)
    if markdown_extra:
        md += "\n" + markdown_extra.rstrip() + "\n"
    md_file.write_text(md)
    return body
