"""``last.ckpt`` at every epoch, whether or not the monitored metric improved.

Lightning 2.5+ writes ``ModelCheckpoint(save_last=True)``'s ``last.ckpt`` only at steps where a
top-k checkpoint was also saved. With ``monitor="val/clean_acc", save_top_k=1`` a run whose
accuracy stopped improving therefore kept a ``last.ckpt`` of its best epoch, and
``--ckpt_path last`` resumed from there, losing the later epochs. :class:`LastCheckpoint` is a
``ModelCheckpoint`` without a monitor that keeps exactly one file, ``<dirpath>/last.ckpt``,
rewritten at each of Lightning's save points (after every validation, or at the end of every
training epoch when there is none). The training CLI adds it next to the best-checkpoint
callback; both callbacks' states travel in every checkpoint.

Exact resume: its state also holds the random generators' states (torch CPU and CUDA, Python,
NumPy) at the moment a checkpoint is written; a run resumed from it restores them when its
first training epoch starts (after the sanity check), so that random starts of adversarial
training and data augmentation continue where the interrupted run stopped. Together with the
per-epoch seeded training order (``bnnrobust.data.base.EpochShuffleSampler``) a resumed CPU
run with a fixed seed ends with the weights of the uninterrupted run.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["LastCheckpoint"]


class LastCheckpoint(ModelCheckpoint):
    """Rewrites ``<dirpath>/last.ckpt`` every ``every_n_epochs`` epochs (default: every epoch).

    Args:
        dirpath: folder of ``last.ckpt`` (the CLI uses ``<log_dir>/<run_name>/checkpoints``).
        every_n_epochs: save every this many epochs (>= 1).
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 1) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) \
                or every_n_epochs < 1:
            raise ValueError(f"LastCheckpoint every_n_epochs must be an integer >= 1, got "
                             f"{every_n_epochs!r}.")
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, monitor=None,
                         save_top_k=1, save_last=False, every_n_epochs=every_n_epochs,
                         auto_insert_metric_name=False, enable_version_counter=False)

    # -- random generator states (exact resume) ---------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["rng"] = _rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._pending_rng = state.pop("rng", None)
        super().load_state_dict(state)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending = getattr(self, "_pending_rng", None)
        if pending is not None:
            _set_rng_state(pending)
            self._pending_rng = None


def _rng_state() -> dict[str, Any]:
    """Generator states as tensors, ints and lists only (they load with ``weights_only=True``)."""
    version, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [version, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    version, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((version, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
