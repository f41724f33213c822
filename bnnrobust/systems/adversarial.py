"""AdversarialClassifier: adversarial training (Madry et al. 2018) with PGD or PGD++ inner loops.

Every training batch ``(x, y)`` goes through a min-max step:

1. **Inner maximization** — the first ``k = round(adv_ratio · B)`` samples of the batch are
   replaced by adversarial examples ``x_adv = train_attack(model, x[:k], y[:k])`` (any attack of
   the engine, built with :func:`bnnrobust.attacks.factory.build_attack`; default the paper's
   Table 4 inner loop: PGD L∞, eps 8/255, step 2/255, T = 7, random start). The attack takes
   gradients with respect to the input only (``torch.autograd.grad``): parameters' ``.grad``
   are untouched by the inner loop.
2. **Outer minimization** — one ordinary training-mode forward of the mixed batch, mean
   cross-entropy, backward, optimizer step (exactly :class:`ImageClassifier`'s step on the
   mixed batch).

BatchNorm during the inner loop (``inner_bn_mode``):

* ``"eval"`` (default): the attack base class puts the whole model in eval mode: BatchNorm
  normalizes with its running statistics, sign/tanh binarizers use their eval weights
  (``sign(u)``), dropout is off. Each submodule's flag is restored afterwards.
* ``"train"``: as ``"eval"``, except that every BatchNorm layer normalizes with the statistics
  of the batch it is fed (the ``k`` perturbed samples of the current iterate), like a
  training-mode forward, but **without updating** ``running_mean``, ``running_var`` or
  ``num_batches_tracked`` (the layers run with ``track_running_stats=False`` for the
  duration of each inner forward; flags restored afterwards). Binary layers and dropout stay
  in eval mode. The Jacobians of the temperature rules (NJS β1, HNS β*) then also go through
  batch-statistics BatchNorm over chunks of ``chunk_size`` samples (a batch coupling that
  shrinks with the chunk size).

In both modes the running statistics change only in the outer forward, exactly once per
training batch, as in standard training.

NJS during training: a PGD++NJS inner attack gets its ``β1`` from a fixed calibration batch
(the first ``njs_calibration_samples`` samples of the first training batch this module
sees), re-estimated on that same batch every ``njs_interval`` optimizer steps (and at
step 0 / on resume), so β1 follows the weights as they train rather than staying frozen
at the initialization. Under DDP each rank calibrates on its own first batch and β1 is
averaged over the ranks. The calibration batch, β1 and the step of the last calibration
are saved in checkpoints.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from bnnrobust.attacks.base import Attack
from bnnrobust.systems.classifier import ImageClassifier, default_optimizer
from bnnrobust.validation import check_int

__all__ = [
    "PAPER_TRAIN_ATTACK",
    "AdversarialClassifier",
    "BatchStatsView",
    "batch_stats_batchnorm",
]

#: The paper's adversarial-training inner loop (Table 4): PGD L∞, T = 7, step 2/255,
#: eps 8/255, one random start. eps and step in [0, 1] pixel units.
PAPER_TRAIN_ATTACK: dict[str, Any] = {
    "name": "pgd",
    "eps": 8 / 255,
    "step_size": 2 / 255,
    "steps": 7,
    "random_start": True,
}

_BN_MODES = ("eval", "train")


@contextlib.contextmanager
def batch_stats_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Make every BatchNorm layer of ``model`` use batch statistics without updating running ones.

    Inside the context each ``_BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm) has
    ``training=True`` and ``track_running_stats=False``: it normalizes with the mean and
    (biased) variance of its current input and leaves ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` exactly as they were. Both flags of each layer are restored on
    exit. Other modules are untouched.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.training, m.track_running_stats) for m in layers]
    for m in layers:
        m.training = True
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m, training, track in saved:
            m.training = training
            m.track_running_stats = track


class BatchStatsView(nn.Module):
    """A view of ``model`` whose every forward runs under :func:`batch_stats_batchnorm`.

    Handed to an attack instead of the model for ``inner_bn_mode="train"``: the attack's own
    eval-mode context still applies to every other module (binary layers, dropout), while
    BatchNorm is switched to batch statistics at each forward, without running-stat updates.
    The view shares the model's parameters (no copy).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        with batch_stats_batchnorm(self.model):
            return self.model(x)


class AdversarialClassifier(ImageClassifier):
    """Adversarial training (Madry et al.) of any classifier with any attack of the engine.

    See the module docstring for the min-max step, the BatchNorm modes and NJS re-estimation;
    ``docs/adversarial_training.md`` for usage.

    Args:
        model: the network mapping images in [0, 1] to logits (float or binarized, any
            binarizer).
        optimizer: optimizer factory. Default Adam, lr 1e-3.
        lr_scheduler: LR scheduler factory, or None.
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        mean: per-channel mean (adds a ``Normalize`` layer with ``std``; linked from the data).
        std: per-channel standard deviation, see ``mean``.
        num_classes: number of classes (linked from the data module).
        test_attacks: attacks run on every test batch (``test/<name>_acc``).
        attack_dataset: dataset whose paper presets fill in eps/step defaults of attacks
            given by name only (linked from the data module). Note that ``"pgd"`` alone then
            means the *evaluation* preset (Table 6, e.g. T = 20 on CIFAR-10); give a dict to
            fix the training attack.
        train_attack: the inner maximization: an attack name (``"pgd"``, ``"pgd++njs"``,
            ``"pgd++hns"``, ``"fgsm"``, ...) or a dict for ``build_attack``, e.g.
            ``{"name": "pgd++njs", "eps": 0.1, "step_size": 0.025, "steps": 7}``; eps and
            step sizes in [0, 1] pixel units. From Python an ``Attack`` instance also works.
            Default: the paper's Table 4 loop, PGD L∞ eps 8/255, step 2/255, T = 7, random
            start. eps must lie in (0, 1]. Leave the attack's ``seed`` unset for training
            (a fixed seed would reuse the same random start at every step).
        adv_ratio: fraction of each batch replaced by adversarial examples, in [0, 1]
            (1 = Madry's all-adversarial batch; 0.5 = half clean, half adversarial; 0 =
            standard training). ``round(adv_ratio · B)`` samples, the first of the batch.
        inner_bn_mode: BatchNorm during the inner maximization: ``"eval"`` (running
            statistics) or ``"train"`` (statistics of the perturbed batch, running
            statistics not updated). See the module docstring.
        njs_interval: with an NJS temperature, re-estimate β1 on the calibration batch every
            this many optimizer steps (>= 1).
        njs_calibration_samples: size of the NJS calibration batch taken from the first
            training batch (>= 1); None = the NJS rule's ``n_jsv`` (100, the paper's),
            capped by the batch size.
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
        train_attack: str | dict[str, Any] = PAPER_TRAIN_ATTACK,
        adv_ratio: float = 1.0,
        inner_bn_mode: Literal["eval", "train"] = "eval",
        njs_interval: int = 100,
        njs_calibration_samples: int | None = None,
    ) -> None:
        super().__init__(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scheduler_interval=scheduler_interval,
            mean=mean,
            std=std,
            num_classes=num_classes,
            test_attacks=test_attacks,
            attack_dataset=attack_dataset,
        )
        if (
            isinstance(adv_ratio, bool)
            or not isinstance(adv_ratio, int | float)
            or not 0.0 <= adv_ratio <= 1.0
        ):
            raise ValueError(
                f"AdversarialClassifier: adv_ratio must be a number in [0, 1] (the "
                f"fraction of each batch made adversarial), got {adv_ratio!r}."
            )
        if inner_bn_mode not in _BN_MODES:
            raise ValueError(
                f"AdversarialClassifier: inner_bn_mode must be one of {_BN_MODES}, "
                f"got {inner_bn_mode!r}."
            )
        check_int("njs_interval", njs_interval, 1, prefix="AdversarialClassifier: ")
        check_int("njs_calibration_samples", njs_calibration_samples, 1, allow_none=True,
                  prefix="AdversarialClassifier: ")
        self.adv_ratio = float(adv_ratio)
        self.inner_bn_mode = inner_bn_mode
        self.njs_interval = njs_interval
        self.njs_calibration_samples = njs_calibration_samples
        self.train_attack = self._build_train_attack(train_attack)
        if isinstance(train_attack, Attack):
            self.hparams["train_attack"] = self.train_attack.describe()
        elif isinstance(train_attack, dict):
            self.hparams["train_attack"] = dict(train_attack)
        njs = self.njs_rule
        if njs is not None and njs_calibration_samples is not None:
            njs.n_jsv = njs_calibration_samples
        self.train_adv_acc = MulticlassAccuracy(
            num_classes=self.train_acc.num_classes, average="micro"
        )
        # NJS calibration state (saved in checkpoints)
        self._njs_ref: Tensor | None = None
        self._njs_step: int | None = None
        #: (global_step, β1) of every NJS calibration of this fit (for logs and tests)
        self.njs_history: list[tuple[int, float]] = []

    # -- construction helpers ---------------------------------------------------------------
    def _build_train_attack(self, spec: str | dict[str, Any] | Attack) -> Attack:
        if isinstance(spec, Attack):
            attack = spec
        else:
            if not isinstance(spec, str | dict):
                raise TypeError(
                    f"AdversarialClassifier: train_attack must be an attack name, a "
                    f"dict for build_attack or an Attack, got {type(spec).__name__}."
                )
            from bnnrobust.attacks.factory import build_attack

            attack = build_attack(
                dict(spec) if isinstance(spec, dict) else spec, dataset=self.attack_dataset
            )
        eps = getattr(attack, "eps", None)
        if eps is not None and not 0.0 < float(eps) <= 1.0:
            hint = f" Did you mean {eps}/255 = {float(eps) / 255:.4g}?" if float(eps) > 1 else ""
            raise ValueError(
                f"AdversarialClassifier: the training attack {attack.name!r} has eps={eps!r}; "
                f"adversarial training needs eps in (0, 1] pixel units (images are in [0, 1], "
                f"e.g. 8/255 = 0.0314 for CIFAR-10, 0.1 for Fashion-MNIST).{hint}"
            )
        steps = getattr(attack, "steps", None)
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(
                f"AdversarialClassifier: the training attack's steps must be an "
                f"integer >= 1, got {steps!r}."
            )
        return attack

    @property
    def njs_rule(self) -> Any:
        """The inner attack's NJS temperature rule, or None when it uses no NJS."""
        from bnnrobust.attacks.temperature import NJS

        temperature = getattr(self.train_attack, "temperature", None)
        return temperature if isinstance(temperature, NJS) else None

    def _check_classes(self, logits: Tensor, y: Tensor | None = None, stage: str = "") -> None:
        super()._check_classes(logits, y, stage)
        self.train_adv_acc.num_classes = self.train_acc.num_classes

    # -- the min-max step -------------------------------------------------------------------
    def attack_model(self) -> nn.Module:
        """The module the inner attack sees: ``self.model`` (``"eval"``) or its BatchStatsView."""
        return BatchStatsView(self.model) if self.inner_bn_mode == "train" else self.model

    def num_adversarial(self, batch_size: int) -> int:
        """How many samples of a batch of ``batch_size`` are made adversarial."""
        return min(batch_size, int(math.floor(self.adv_ratio * batch_size + 0.5)))

    def make_adversarial(self, x: Tensor, y: Tensor) -> tuple[Tensor, int]:
        """The mixed batch of a training step and ``k``: ``x[:k]`` adversarial, the rest clean.

        Parameters' ``.grad`` and BatchNorm running statistics are left as they were.
        """
        k = self.num_adversarial(x.shape[0])
        if k == 0:
            return x, 0
        x_adv = self.train_attack(self.attack_model(), x[:k], y[:k])
        if k == x.shape[0]:
            return x_adv, k
        return torch.cat([x_adv, x[k:]], dim=0), k

    def _maybe_calibrate_njs(self, x: Tensor) -> None:
        njs = self.njs_rule
        if njs is None:
            return
        if self._njs_ref is None:
            n = self.njs_calibration_samples or njs.n_jsv
            self._njs_ref = x[:n].detach().clone()
        step = int(self.global_step)
        if self._njs_step is not None and step - self._njs_step < self.njs_interval:
            return
        x_ref = self._njs_ref.to(device=x.device, dtype=x.dtype)
        beta1 = float(njs.calibrate(self.attack_model(), x_ref))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            mean = trainer.strategy.reduce(torch.tensor(beta1, device=x.device), reduce_op="mean")
            beta1 = float(mean)
            njs.beta1 = beta1
        self._njs_step = step
        self.njs_history.append((step, beta1))
        if trainer is not None:
            self.log("train/njs_beta1", beta1, on_step=True, on_epoch=False)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self._maybe_calibrate_njs(x)
        x_mixed, k = self.make_adversarial(x, y)
        logits = self(x_mixed)
        self._check_classes(logits)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        if k > 0:
            adv_logits, adv_y = logits[:k], y[:k]
            adv_loss = F.cross_entropy(adv_logits.detach(), adv_y)
            self.train_adv_acc(adv_logits.detach(), adv_y)
            self.log("train/adv_loss", adv_loss, sync_dist=True, batch_size=k)
            self.log(
                "train/adv_acc",
                self.train_adv_acc,
                on_step=True,
                on_epoch=True,
                prog_bar=True,
                batch_size=k,
            )
        return loss

    # -- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        njs = self.njs_rule
        if njs is not None:
            checkpoint["adversarial_njs"] = {
                "x_ref": None if self._njs_ref is None else self._njs_ref.detach().cpu(),
                "beta1": njs.beta1,
                "step": self._njs_step,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("adversarial_njs")
        njs = self.njs_rule
        if state is None or njs is None:
            return
        self._njs_ref = state.get("x_ref")
        self._njs_step = None  # re-estimate at the first step after loading (weights changed)
        if state.get("beta1") is not None:
            njs.beta1 = float(state["beta1"])
