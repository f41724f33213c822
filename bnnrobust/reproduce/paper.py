"""The paper's numbers (CIFAR-10 ResNet-18), read from ``paper_numbers.json`` in this package.

That file is the one place they are typed; the findings and the report's tables use the
constants below and never retype a number.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def _load() -> dict[str, Any]:
    text = resources.files(__package__ or "bnnrobust.reproduce").joinpath(
        "paper_numbers.json").read_text(encoding="utf-8")
    return json.loads(text)


_NUMBERS = _load()

#: Tables 1, 3, 5, 7: ``{model key: {"clean" or attack key: accuracy %}}``; a key the paper
#: does not report is absent (``None`` where a caller uses ``.get``)
PAPER: dict[str, dict[str, float | None]] = _NUMBERS["accuracy"]["models"]

#: Table 10 (mean CLEVER score, L1): ``{model key: {variant: score}}``
PAPER_CLEVER: dict[str, dict[str, float]] = _NUMBERS["clever"]["models"]

#: the rho values of the paper's two rho ablations (Table 11: ``"njs"``, Table 13: ``"prop1"``)
PAPER_RHO_VALUES: dict[str, tuple[float, ...]] = {
    rule: tuple(float(r) for r in body["rho"])
    for rule, body in _NUMBERS["rho"].items() if isinstance(body, dict)}

#: Tables 11 and 13, percent, in :data:`PAPER_RHO_VALUES`' rho order
PAPER_RHO: dict[str, dict[str, tuple[float, ...]]] = {
    rule: {key: tuple(float(v) for v in vals) for key, vals in body["models"].items()}
    for rule, body in _NUMBERS["rho"].items() if isinstance(body, dict)}

#: Table 12: ``{model key: {"original"|"njs"|"hns": ‖ψ‖₂}}``
PAPER_SIGNAL: dict[str, dict[str, float]] = _NUMBERS["signal"]["models"]
