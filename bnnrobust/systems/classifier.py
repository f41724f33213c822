"""ImageClassifier: the LightningModule that trains and tests any image classifier.

A *system* composes; it does not compute: the network is a plain ``nn.Module`` passed in
(normalization first, so every input and eps is in [0, 1] pixel units), optimizer and LR
scheduler come from the config, and test-time attacks are built by
:func:`bnnrobust.attacks.factory.build_attack`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from bnnrobust.attacks.base import check_logits
from bnnrobust.models.normalize import with_input_normalization


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """Adam with lr 1e-3: the optimizer of a system built without one."""
    return torch.optim.Adam(params, lr=1e-3)


class ImageClassifier(L.LightningModule):
    """Train/validate/test an image classifier; optionally attack it at test time.

    Args:
        model: the network mapping images to logits (any ``nn.Module``; built from its
            ``class_path`` in configs, e.g. ``bnnrobust.models.ResNet18``).
        optimizer: optimizer factory (config: ``class_path: torch.optim.Adam``). Default Adam, lr 1e-3.
        lr_scheduler: LR scheduler factory, or None.
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``
            (the paper's milestones are in steps).
        mean: per-channel mean of the data; with ``std``, a ``Normalize`` is put in
            front of ``model`` (linked from the data module by the CLI; a zoo network gets it
            in its own ``normalize`` module, see ``with_input_normalization``).
        std: per-channel standard deviation, see ``mean``.
        num_classes: number of classes (linked from the data module); read from the logits if None.
        test_attacks: attacks run on every test batch, logged as ``test/<name>_acc``: names
            (``"pgd"``, ``"pgd++njs"``, ...) or dicts (``{"name": "pgd", "eps": 0.1}``).
        attack_dataset: dataset whose paper presets fill in eps/step defaults of the test
            attacks (linked from the data module's ``dataset_name``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_classes: int | None = None,
        test_attacks: list[str | dict[str, Any]] | None = None,
        attack_dataset: str | None = None,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # built in Python (not by the CLI) the network arrives as a module; it is dropped below
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("model"), nn.Module):
            # built in Python rather than by the CLI: the module itself lives in the state dict
            del self.hparams["model"]
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}.")
        self.model = with_input_normalization(model, mean, std)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.num_classes = num_classes
        self.attack_dataset = attack_dataset
        self.test_attack_specs = list(test_attacks or [])
        self.test_attacks = self._build_attacks(self.test_attack_specs)
        n = num_classes or 2  # metrics are re-created lazily when the logits say otherwise
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=n, average="micro")
        # robust accuracy: the mean over samples of "correct clean and after the attack" (the
        # definition of bnnrobust.evaluation.accounting), reduced over processes by torchmetrics
        self.test_attack_acc = nn.ModuleDict(
            {self._metric_key(a.name): MeanMetric() for a in self.test_attacks}
        )

    # -- construction helpers ---------------------------------------------------------------
    def _build_attacks(self, specs: Sequence[str | dict[str, Any]]) -> list:
        if not specs:
            return []
        from bnnrobust.attacks.factory import build_attack

        attacks = [build_attack(s, dataset=self.attack_dataset) for s in specs]
        names = [a.name for a in attacks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"test_attacks contains the same attack name twice: {dupes}; "
                             "give each a distinct 'label' or different settings.")
        return attacks

    @staticmethod
    def _metric_key(name: str) -> str:
        return name.replace(".", "_").replace("+", "p")

    def _check_classes(self, logits: Tensor, y: Tensor | None = None, stage: str = "") -> None:
        if y is not None:  # validation/test: a broken model is an error, not an accuracy
            check_logits(logits, y, where=f"a {stage} batch")
        d = logits.shape[-1]
        if self.train_acc.num_classes != d:
            for metric in (self.train_acc, self.val_acc, self.test_acc):
                cast(MulticlassAccuracy, metric).num_classes = d
        if self.num_classes is not None and self.num_classes != d:
            raise ValueError(f"The model outputs {d} logits but num_classes={self.num_classes}.")

    # -- forward and steps ------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        self._check_classes(logits)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self._check_classes(logits, y, "validation")
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True, prog_bar=True)
        self.log("val/clean_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self._check_classes(logits, y, "test")
        self.test_acc(logits, y)
        self.log("test/clean_acc", self.test_acc)
        for attack in self.test_attacks:
            key = self._metric_key(attack.name)
            start = time.perf_counter()
            with torch.inference_mode(False), torch.enable_grad():
                x_adv = attack(self.model, x.clone(), y.clone())
            with torch.no_grad():
                adv_logits = self.model(x_adv)
            check_logits(adv_logits, where=f"the {attack.name} examples of a test batch")
            metric = cast(MeanMetric, self.test_attack_acc[key])
            robust = (logits.argmax(dim=-1) == y) & (adv_logits.argmax(dim=-1) == y)
            metric.update(robust.float())
            self.log(f"test/{attack.name}_acc", metric)
            self.log(f"test/{attack.name}_seconds", time.perf_counter() - start,
                     reduce_fx="sum", sync_dist=True)

    # -- optimization -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}
