"""Library messages a bnnrobust user cannot act on, kept off the console of the commands.

:func:`silence_library_noise` is called by the command-line entry points (train.py,
evaluate.py, ``bnnrobust``/``python -m bnnrobust``, the quickstart, the reproduction, the
masking study), never on import, and not under ``--debug``. It drops exactly these messages:

* Lightning's deprecation warning about ``isinstance(treespec, LeafSpec)`` (raised inside
  Lightning's own code by newer torch versions);
* Lightning's "💡 Tip" advertising a cloud logger on every fit.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["NOISE_WARNINGS", "silence_library_noise"]

#: regular expressions of warning messages that are silenced
NOISE_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)

_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def silence_library_noise() -> None:
    """Install the filters (idempotent)."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _TIP_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in log.filters):
            log.addFilter(_DropTips())
