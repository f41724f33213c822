"""What :func:`bnnrobust.evaluation.runner.evaluate` shows on stderr while it runs.

With ``progress`` (rank 0 only): a tqdm bar per pass (:func:`progress_bar`) and, with
``pilot``, before each attack one line (:func:`pilot_line`) with its budget in words
(:func:`describe_budget`) and an estimate of its time from a short pilot run. Nothing here
changes a result.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PILOT_SAMPLES", "describe_budget", "note", "pilot_line", "progress_bar"]

#: samples of the pilot run that estimates an attack's time (see ``evaluate(pilot=...)``)
PILOT_SAMPLES = 8
_NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1"}


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` images named ``desc`` (one per pass: clean, each attack)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def note(line: str) -> None:
    """Print one line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _plural(k: int, word: str, words: str | None = None) -> str:
    return f"{k} {word if k == 1 else (words or word + 's')}"


def describe_budget(config: Mapping[str, Any]) -> str:
    """An attack's budget in words from its ``describe()``: ``"20 steps x 1 restart, eps 0.1
    (L∞)"``, ``"5000 queries, eps 0.03137 = 8/255 (L∞)"``, a cascade's stages; keys that
    are missing (or not numbers) are left out, so any ``describe()`` gives a line (maybe "")."""
    parts: list[str] = []
    steps, restarts = _count(config.get("steps")), _count(config.get("restarts"))
    queries = _count(config.get("n_queries"))
    inner = config.get("attack")
    if isinstance(inner, Mapping) and steps is None and queries is None \
            and not config.get("attacks"):  # a wrapper (transfer, sign-activations-only)
        return describe_budget({**inner, **{k: config[k] for k in ("eps", "norm") if k in config}})
    if steps is not None or queries is not None:
        work = ", ".join(p for p in (None if steps is None else _plural(steps, "step"),
                                     None if queries is None else _plural(queries, "query",
                                                                           "queries")) if p)
        if restarts is not None:
            work += f" x {_plural(restarts, 'restart')}"
        parts.append(work)
    stages = config.get("attacks")
    if isinstance(stages, list | tuple) and stages:
        names = [str(st.get("name", "?")) if isinstance(st, Mapping) else "?" for st in stages]
        parts.append(f"cascade of {_plural(len(names), 'attack')} ({', '.join(names)})")
    eps = config.get("eps")
    if isinstance(eps, int | float) and not isinstance(eps, bool) and math.isfinite(eps):
        text = f"eps {eps:.4g}"
        k = eps * 255
        if eps > 0 and abs(k - round(k)) < 1e-6 * max(1.0, k) and abs(eps - round(eps)) > 1e-9:
            text += f" = {round(k)}/255"
        norm = config.get("norm")
        if isinstance(norm, str) and norm:
            text += f" ({_NORM_NAMES.get(norm.lower(), norm)})"
        parts.append(text)
    return ", ".join(p for p in parts if p)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def pilot_line(name: str, config: Mapping[str, Any], attacked: int, *, samples: int = 0,
               world: int = 1, pilot: Callable[[], float] | None = None) -> str:
    """The line printed before attack ``name`` runs on ``attacked`` samples (over ``world``
    processes): ``<name>: <budget> — estimated <t> for <k> samples (pilot <samples> samples in
    <s> s)``, ``pilot()`` giving the seconds the attack took on ``samples`` of them; else why
    there is no estimate (nothing to attack, no pilot sample, ``pilot()`` raised)."""
    budget = describe_budget(config)
    head = f"{name}: {budget}" if budget else name
    if attacked == 0:
        return f"{head} — nothing to attack (no sample is classified correctly)"
    if samples == 0 or pilot is None:
        return (f"{head} — {attacked} samples to attack; no estimate (no sample of the first "
                "batch is classified correctly)")
    try:
        seconds = pilot()
    except Exception as err:  # the run itself reports the attack's errors
        return f"{head} — no estimate (the pilot failed: {type(err).__name__}: {err})"
    procs = f" on {world} processes" if world > 1 else ""
    return (f"{head} — estimated {_duration(seconds / samples * attacked / world)} for "
            f"{attacked} samples{procs} (pilot {_plural(samples, 'sample')} in {seconds:.2f} s)")
