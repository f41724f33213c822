"""Finished attacks of an evaluation, written as each completes, so that a rerun resumes.

:func:`bnnrobust.evaluation.runner.evaluate` with ``partial_results=PATH`` writes ``PATH``
(JSON, replaced atomically) after the clean pass and after every attack: the attack's
result, its per-sample robust mask and the key of the run. A later call with the same key
(same weights, same evaluated images and labels, same n, seed, batch size, number of
processes and NJS calibration) and an attack of the same configuration takes that attack's
result from the file instead of running it again. A file with another key is ignored and
replaced. The file holds numbers only (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PartialResults", "model_digest"]

FORMAT = 1


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        if not torch.is_tensor(t):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _bits(mask: Tensor) -> str:
    return "".join("1" if v else "0" for v in mask.tolist())


def _mask(bits: str) -> Tensor:
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


class PartialResults:
    """The finished passes of one evaluation run, kept in ``path`` (None: kept nowhere)."""

    def __init__(self, path: str | Path | None, key: dict[str, Any], *, write: bool = True) -> None:
        self.path = None if path is None else Path(path)
        self.key = json.loads(json.dumps(key))
        self.write_enabled = write
        self.attacks: dict[str, dict[str, Any]] = {}
        self.clean: str | None = None
        self.ignored_reason: str | None = None
        if self.path is not None and self.path.is_file():
            try:
                blob = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                self.ignored_reason = f"unreadable ({type(err).__name__})"
                return
            if not isinstance(blob, dict) or blob.get("format") != FORMAT:
                self.ignored_reason = "another format"
            elif blob.get("key") != self.key:
                self.ignored_reason = "another model, data or settings"
            else:
                self.attacks = dict(blob.get("attacks", {}))
                self.clean = blob.get("clean")

    def finished(self, name: str, config: dict[str, Any]) -> tuple[dict[str, Any], Tensor] | None:
        """``(result fields, robust mask)`` of a finished attack of that configuration, or None."""
        entry = self.attacks.get(name)
        if entry is None or entry.get("config") != json.loads(json.dumps(config)):
            return None
        return dict(entry["result"]), _mask(entry["mask"])

    def record_clean(self, mask: Tensor) -> None:
        self.clean = _bits(mask)
        self._write()

    def record(self, name: str, config: dict[str, Any], result: dict[str, Any], mask: Tensor) -> None:
        self.attacks[name] = {"config": config, "result": result, "mask": _bits(mask)}
        self._write()

    def _write(self) -> None:
        if self.path is None or not self.write_enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"format": FORMAT, "key": self.key, "clean": self.clean, "attacks": self.attacks}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(blob, default=str))
        os.replace(tmp, self.path)
