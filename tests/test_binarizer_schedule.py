"""BinarizerSchedule: annealing and clipping per optimizer step, logged tanh_scale and flip ratio."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bnnrobust.binarize import binary_modules
from bnnrobust.models import create_model
from callbacks.binarizer_schedule import BinarizerSchedule


class TinySystem(pl.LightningModule):
    """The network in ``self.model``, like bnnrobust.systems.ImageClassifier."""

    def __init__(self, model: torch.nn.Module, lr: float = 1e-2) -> None:
        super().__init__()
        self.model = model
        self.lr = lr

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.lr)


def _fit(
    model: torch.nn.Module, steps: int, lr: float = 1e-2, **trainer_kwargs: object
) -> tuple[pl.Trainer, BinarizerSchedule]:
    data = TensorDataset(torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,)))
    callback = BinarizerSchedule(log_every_n_steps=1)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    trainer.fit(TinySystem(model, lr), DataLoader(data, batch_size=4))
    return trainer, callback


def test_tanh_scale_anneals_once_per_optimizer_step() -> None:
    model = create_model(
        "convnet",
        num_classes=3,
        in_channels=1,
        width=0.125,
        binarizer="md_tanh_s",
        growth=2.0,
        interval=2,
    )
    trainer, _ = _fit(model, steps=6, accumulate_grad_batches=2)  # 6 optimizer steps = 12 batches
    assert trainer.global_step == 6
    scale = binary_modules(model)[0].binarizer.tanh_scale.item()
    assert scale == 8.0  # 2 ** (6 // 2)
    assert trainer.callback_metrics["train/tanh_scale"].item() == 8.0
    assert "train/flip_ratio" in trainer.callback_metrics  # epoch of 4 optimizer steps ended


def test_bc_latents_are_clipped_and_flip_ratio_logged() -> None:
    model = create_model("convnet", num_classes=3, in_channels=1, width=0.125, binarizer="bc")
    trainer, _ = _fit(model, steps=8, lr=50.0)  # a huge lr pushes latents far outside [-1, 1]
    layers = binary_modules(model)
    assert max(m.weight.abs().max().item() for m in layers) == 1.0
    assert "train/tanh_scale" not in trainer.callback_metrics
    flip = trainer.callback_metrics["train/flip_ratio"].item()
    assert 0.0 < flip <= 1.0


def test_float_model_is_a_no_op() -> None:
    model = create_model("convnet", num_classes=3, in_channels=1, width=0.125, binarizer="none")
    trainer, callback = _fit(model, steps=4, lr=50.0)
    assert callback._groups == []
    assert not any(k.startswith("train/") for k in trainer.callback_metrics)
    assert max(p.abs().max().item() for p in model.parameters()) > 1.0  # nothing clipped


def test_bad_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="log_every_n_steps must be an integer >= 1, got 0"):
        BinarizerSchedule(log_every_n_steps=0)
