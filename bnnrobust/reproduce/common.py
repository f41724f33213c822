"""Small helpers shared by the modules of :mod:`bnnrobust.reproduce`: the error type, paths,
atomic JSON files, the progress log and the time format."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MARKDOWN = REPO_ROOT / "docs" / "results.md"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ReproError(RuntimeError):
    """A user error of the reproduction command (printed as one paragraph, exit code 2)."""


def fmt_s(seconds: float) -> str:
    """``"42 s"`` below 90 seconds, ``"1.5 min"`` above."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def write_json(path: Path, body: Any) -> None:
    """Write ``body`` as indented JSON, atomically (a half-written file never stays behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, allow_nan=True) + "\n")
    tmp.replace(path)  # atomic: an interrupted write never leaves a half file behind


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def log(msg: str) -> None:
    """One progress line on stdout, flushed at once."""
    print(msg, flush=True)
