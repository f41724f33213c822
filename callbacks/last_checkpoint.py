"""``last.ckpt`` at every epoch, whether or not the monitored metric improved.

Lightning 2.5+ writes ``ModelCheckpoint(save_last=True)``'s ``last.ckpt`` only at steps where a
top-k checkpoint was also saved. With ``monitor="val/clean_acc", save_top_k=1`` a run whose
accuracy stopped improving therefore kept a ``last.ckpt`` of its best epoch, and
``--ckpt_path last`` resumed from there, losing the later epochs. :class:`LastCheckpoint` is a
``ModelCheckpoint`` without a monitor that keeps exactly one file, ``<dirpath>/last.ckpt``,
rewritten at each of Lightning's save points (after every validation, or at the end of every
training epoch when there is none). The training CLI adds it next to the best-checkpoint
callback; both callbacks' states travel in every checkpoint.
"""

from __future__ import annotations

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
