"""Lightning callback driving the binarizers: annealing, latent clipping, flip-ratio logging."""

from __future__ import annotations

from typing import Any, cast

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from bnnrobust.binarize import Binarizer, binary_modules
from bnnrobust.binarize.layers import BinaryLayer

__all__ = ["BinarizerSchedule"]


class BinarizerSchedule(pl.Callback):
    """Call every binarizer's ``on_optimizer_step`` after each optimizer step and log its state.

    After each optimizer step (``on_train_batch_end``, once the step counter moved; so it
    also follows gradient accumulation) each binarizer of ``pl_module.model`` (or of
    ``pl_module`` itself when it has no ``model`` attribute) gets
    ``on_optimizer_step(layers, trainer.global_step)``: GD-tanh/MD-tanh-S anneal
    ``tanh_scale``, BC/Hubara clip latent weights to [-1, 1]. Logged:

    * ``train/tanh_scale`` every ``log_every_n_steps`` optimizer steps (tanh binarizers only);
    * ``train/flip_ratio`` at each train epoch end: the fraction of binary weights whose
      sign changed since the previous epoch end (since the start of fit for the first epoch).

    A float model (no binary layers) makes every hook a no-op.

    Args:
        log_every_n_steps: logging interval of ``train/tanh_scale``, in optimizer steps.
    """

    def __init__(self, log_every_n_steps: int = 50) -> None:
        super().__init__()
        if (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 1
        ):
            raise ValueError(
                f"log_every_n_steps must be an integer >= 1, got {log_every_n_steps!r}."
            )
        self.log_every_n_steps = log_every_n_steps
        self._groups: list[tuple[Binarizer, list[BinaryLayer]]] = []
        self._last_step = -1
        self._signs: list[Tensor] = []

    @staticmethod
    def _network(pl_module: pl.LightningModule) -> nn.Module:
        model = getattr(pl_module, "model", None)
        return model if isinstance(model, nn.Module) else pl_module

    def _collect(self, pl_module: pl.LightningModule) -> None:
        groups: dict[int, tuple[Binarizer, list[BinaryLayer]]] = {}
        for layer in binary_modules(self._network(pl_module)):
            groups.setdefault(id(layer.binarizer), (layer.binarizer, []))[1].append(layer)
        self._groups = list(groups.values())

    def _layers(self) -> list[BinaryLayer]:
        return [layer for _, layers in self._groups for layer in layers]

    @torch.no_grad()
    def _snapshot(self) -> list[Tensor]:
        return [layer.weight.detach() >= 0 for layer in self._layers()]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._collect(pl_module)
        self._last_step = trainer.global_step
        self._signs = self._snapshot()
        for binarizer, layers in self._groups:  # resume: state that follows from the step count
            binarizer.on_optimizer_step(layers, trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if not self._groups or step == self._last_step:
            return
        self._last_step = step
        for binarizer, layers in self._groups:
            binarizer.on_optimizer_step(layers, step)
        if step % self.log_every_n_steps == 0:
            scales = [
                float(cast(Tensor, b.tanh_scale)) for b, _ in self._groups if hasattr(b, "tanh_scale")
            ]
            if scales:
                pl_module.log("train/tanh_scale", max(scales), on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._groups:
            return
        current = self._snapshot()
        if len(current) == len(self._signs):
            flipped = sum(int((a != b).sum()) for a, b in zip(current, self._signs, strict=True))
            total = sum(t.numel() for t in current)
            pl_module.log("train/flip_ratio", flipped / max(total, 1), on_step=False, on_epoch=True)
        self._signs = current
