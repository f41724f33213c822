"""The command-line entry points keep library noise users cannot act on off the console."""

from __future__ import annotations

import logging
import warnings

import pytest

from bnnrobust.errors import run_entry_point
from bnnrobust.noise import silence_library_noise


def test_the_lightning_tip_and_the_leafspec_warning_are_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    def main(argv: list[str]) -> None:
        log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        log.info("💡 Tip: For seamless cloud logging ...")
        log.info("GPU available: False")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...",
                      DeprecationWarning, stacklevel=1)
        warnings.warn("a warning users can act on", UserWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        run_entry_point(main, [])
    messages = [str(w.message) for w in caught]
    assert messages == ["a warning users can act on"]
    assert "GPU available: False" in caplog.text and "💡 Tip" not in caplog.text
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).filters.clear()


def test_silencing_is_idempotent() -> None:
    silence_library_noise()
    silence_library_noise()
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(type(f).__name__ == "_DropTips" for f in log.filters) == 1
    log.filters.clear()
