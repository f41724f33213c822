"""RobustnessMonitor: per-epoch adversarial accuracy and signal-propagation metrics.

At the end of every ``every_n_epochs``-th validation epoch (never during the sanity check)
the callback takes a fixed, seeded subset of the validation set (the same samples every
epoch) and logs under ``robust/``:

* ``robust/clean_acc`` and ``robust/<attack>_acc`` for each attack (accuracy over the whole
  subset; a sample is robust when it is correct clean and after the attack, counted per
  sample with :class:`~bnnrobust.evaluation.accounting.SampleTally` as evaluate.py does);
* the signal-propagation metrics of :mod:`bnnrobust.metrics.signal` (paper Table 12) over the
  correctly classified samples, for β = 1 (``robust/jsv_mean``, ...), NJS β1
  (``robust/njs/jsv_mean``, ...) and HNS β* (``robust/hns/jsv_mean``, ...);
* ``robust/seconds``: wall time of the monitor (the slowest rank);
* on rank zero, with a TensorBoard logger: histograms of the singular values of βJ
  (``robust/jsv_hist``, ``robust/njs/jsv_hist``, ``robust/hns/jsv_hist``) and the Hessian-norm
  figure ``robust/hessian_norm`` (paper Fig. 3).

DDP: the subset is cut into batches of ``batch_size`` in a fixed order and batch ``b`` is
processed by rank ``b % world_size`` (no sampler padding, no duplicates); every batch seeds its
attacks' random starts with ``seed + b``, so each sample sees the same computation whatever the
number of ranks. Counts and signal sums are reduced with SUM/MIN/MAX collectives that every
rank calls; only then are they turned into accuracies, means and stds. The logged values are
therefore those of a single-process run on the same subset (up to float summation order).
Images and histograms are written on rank zero only, after all collectives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from bnnrobust.attacks.base import Attack, check_logits, eval_mode
from bnnrobust.attacks.jacobian import (
    check_jacobian_space,
    gram_from_jacobian,
    input_jacobian_and_logits,
    singular_values_from_gram,
    to_jacobian_space,
)
from bnnrobust.attacks.temperature import NJS
from bnnrobust.evaluation.accounting import SampleTally
from bnnrobust.evaluation.report import weaker_temperature_notes
from bnnrobust.metrics.signal import HNS, SignalStats, signal_sums

#: preset used when the data module has no ``dataset_name``
FALLBACK_DATASET = "fmnist"

#: signal variants and their tag prefixes
VARIANT_PREFIX: dict[str, str] = {"original": "robust/", "njs": "robust/njs/", "hns": "robust/hns/"}


def _reduce_fn(device: torch.device) -> Callable[[Tensor, str], Tensor]:
    """All-reduce over the default process group (identity outside DDP)."""
    import torch.distributed as dist

    active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    ops = {"sum": "SUM", "min": "MIN", "max": "MAX"} if active else {}

    def fn(t: Tensor, op: str) -> Tensor:
        if not active:
            return t
        t = t.to(device).contiguous()
        dist.all_reduce(t, op=getattr(dist.ReduceOp, ops[op]))
        return t

    return fn


class RobustnessMonitor(Callback):
    """Log adversarial accuracy and signal-propagation metrics every few epochs.

    Args:
        every_n_epochs: run at the end of validation of epochs ``n-1, 2n-1, ...`` (0-based),
            i.e. every ``n`` epochs; always on ``trainer.validate``. Never during the sanity check.
        num_samples: size of the fixed validation subset (same samples every epoch). Must not
            exceed the validation set.
        attacks: attack names or dicts for :func:`bnnrobust.attacks.factory.build_attack`
            (``"pgd"``, ``"pgd++njs"``, ``{"name": "pgd", "steps": 5}``...). ``None``: the
            dataset's ``"quick"`` preset (:func:`bnnrobust.attacks.presets.preset_attacks`).
            Unknown names fail at setup, before training.
        seed: seed of the subset choice and of the attacks' random starts (batch ``b`` uses
            ``seed + b``).
        batch_size: samples per attack/Jacobian batch (per rank). The Jacobian forward sees
            ``min(batch_size, 32) * d`` images at once.
        histogram: log histograms of the Jacobian singular values (TensorBoard only).
        hessian_figure: log the Hessian-norm-vs-β figure of a few correct samples (TensorBoard only).
        signal_samples: the signal-propagation metrics use the first ``signal_samples`` samples
            of the subset (at most ``num_samples``); their Jacobians also give NJS's β1 (mean
            singular value over all of them, correct or not — the paper's ``n_jsv = 100``),
            used by the metrics and by every NJS attack, so all batches and ranks share one β1.
        hns_grid: HNS grid size of the metrics.
        hessian_samples: samples drawn in the Hessian figure.
        jacobian_space: NJS's β1 and the JSV statistics use J with respect to the tensor after
            the model's ``Normalize`` (``"normalized"``, the authors' convention) or the
            [0, 1] image (``"pixel"``).
        max_fraction: keep each run within this fraction of a training epoch (training and
            validation, measured): when a run takes longer, the monitor runs every ``k``
            epochs instead (``k`` the smallest that fits; the fixed subset and its size stay,
            so the numbers remain comparable), says so once, and still runs at the last
            epoch. ``None``: always every ``every_n_epochs``.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 128,
        attacks: list[str | dict[str, Any]] | None = None,
        seed: int = 0,
        batch_size: int = 128,
        histogram: bool = True,
        hessian_figure: bool = True,
        signal_samples: int = 64,
        hns_grid: int = 100,
        hessian_samples: int = 4,
        jacobian_space: str = "normalized",
        max_fraction: float | None = 0.1,
    ) -> None:
        super().__init__()
        self.jacobian_space = check_jacobian_space(jacobian_space)
        if max_fraction is not None and (isinstance(max_fraction, bool)
                                         or not isinstance(max_fraction, int | float)
                                         or not 0 < max_fraction <= 1):
            raise ValueError(f"RobustnessMonitor: max_fraction must be a number in (0, 1] or "
                             f"null, got {max_fraction!r}.")
        self.max_fraction = None if max_fraction is None else float(max_fraction)
        for name, value in (("every_n_epochs", every_n_epochs), ("num_samples", num_samples),
                            ("batch_size", batch_size), ("signal_samples", signal_samples),
                            ("hessian_samples", hessian_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RobustnessMonitor: {name} must be an integer >= 1, got {value!r}.")
        if isinstance(hns_grid, bool) or not isinstance(hns_grid, int) or hns_grid < 3:
            raise ValueError(f"RobustnessMonitor: hns_grid must be an integer >= 3, got {hns_grid!r}.")
        if attacks is not None and (isinstance(attacks, str | dict) or not isinstance(attacks, Sequence)):
            raise TypeError(f"RobustnessMonitor: attacks must be a list of names or dicts, got {attacks!r}.")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.attack_specs = None if attacks is None else list(attacks)
        self.seed = int(seed)
        self.batch_size = batch_size
        self.histogram = histogram
        self.hessian_figure = hessian_figure
        self.signal_samples = signal_samples
        self.hns_grid = hns_grid
        self.hessian_samples = hessian_samples
        self.attacks: list[Attack] = []
        self.attack_tags: list[str] = []
        self.dataset_name: str | None = None
        self._cache: dict[str, Any] | None = None
        #: scalars of the last run (identical on every rank), for scripts and tests
        self.last_metrics: dict[str, float] = {}
        #: finalized signal statistics of the last run
        self.last_stats: SignalStats | None = None
        self.last_notes: list[str] = []
        #: seconds per phase of the last run on this rank ("signal", "attack/<tag>", ...)
        self.last_timings: dict[str, float] = {}
        #: epochs (0-based) at which the monitor ran during fit; the interval it uses now
        self.run_epochs: list[int] = []
        self.interval = every_n_epochs
        self._epoch_start: float | None = None
        self._adapted_said = False

    # -- setup: attacks are built (and validated) before any training -----------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        name = getattr(datamodule, "dataset_name", None)
        from bnnrobust.attacks.presets import canonical_dataset

        try:
            name = canonical_dataset(name) if name else None
        except ValueError:
            name = None
        if name is None:
            rank_zero_warn(
                f"RobustnessMonitor: the data module has no dataset_name with attack presets "
                f"(got {getattr(datamodule, 'dataset_name', None)!r}); using the "
                f"{FALLBACK_DATASET!r} presets (eps/steps may not fit the data)."
            )
            name = FALLBACK_DATASET
        self.dataset_name = str(name)
        self.attacks, self.attack_tags = self._build_attacks(self.dataset_name)
        if datamodule is not None and hasattr(datamodule, "val_dataloader"):
            try:
                dataset = datamodule.val_dataloader().dataset
            except Exception:  # no validation split for this stage: checked at the first run
                return
            self._check_size(len(dataset))

    def _build_attacks(self, dataset: str) -> tuple[list[Attack], list[str]]:
        from bnnrobust.attacks.factory import build_attack

        if self.attack_specs is None:
            from bnnrobust.attacks.presets import preset_attacks

            specs: list[Any] = list(preset_attacks(dataset, which="quick").values())
        else:
            specs = self.attack_specs
        attacks: list[Attack] = []
        for i, spec in enumerate(specs):
            try:
                attacks.append(spec if isinstance(spec, Attack) else build_attack(spec, dataset=dataset))
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"RobustnessMonitor: attacks[{i}] = {spec!r} is invalid: {err}") from err
        tags: list[str] = []
        for attack in attacks:
            tag, k = attack.name, 2
            while tag in tags:
                tag, k = f"{attack.name}_{k}", k + 1
            tags.append(tag)
        return attacks, tags

    def _check_size(self, n_val: int) -> None:
        if self.num_samples > n_val:
            raise ValueError(
                f"RobustnessMonitor: num_samples={self.num_samples} exceeds the {n_val} samples of "
                f"the validation set; set num_samples <= {n_val}."
            )

    # -- the fixed subset -------------------------------------------------------------------
    def _subset(self, trainer: L.Trainer) -> dict[str, Any]:
        """Load this rank's batches of the fixed subset (once) and the NJS reference samples."""
        key = (trainer.world_size, trainer.global_rank)
        if self._cache is not None and self._cache["key"] == key:
            return self._cache
        loaders = trainer.val_dataloaders
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        datamodule = getattr(trainer, "datamodule", None)  # set by fit/validate, not declared
        if loaders is None and datamodule is not None:
            loaders = datamodule.val_dataloader()
        if loaders is None:
            raise RuntimeError("RobustnessMonitor needs a validation dataloader.")
        dataset = loaders.dataset
        self._check_size(len(dataset))
        g = torch.Generator().manual_seed(self.seed)
        indices = torch.randperm(len(dataset), generator=g)[: self.num_samples].tolist()

        def load(idx: Sequence[int]) -> tuple[Tensor, Tensor]:
            items = [dataset[i] for i in idx]
            x = torch.stack([torch.as_tensor(it[0]) for it in items]).float()
            y = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
            return x, y

        world, rank = trainer.world_size, trainer.global_rank
        with torch.inference_mode(False):
            # attacks: whole batches round-robin (random starts seeded per batch)
            n_batches = math.ceil(len(indices) / self.batch_size)
            local = [(b, *load(indices[b * self.batch_size:(b + 1) * self.batch_size]))
                     for b in range(n_batches) if b % world == rank]
            # signal metrics (deterministic per sample): sample i on rank i % world
            signal = load(indices[: self.signal_samples][rank::world])
            first = load(indices[: 8 * self.hessian_samples]) if trainer.is_global_zero else None
        self._cache = {"key": key, "local": local, "signal": signal, "first": first}
        return self._cache

    # -- the hook ---------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch
        max_epochs = trainer.max_epochs
        if self.interval == self.every_n_epochs:
            return (epoch + 1) % self.every_n_epochs == 0
        if max_epochs is not None and max_epochs > 0 and epoch == max_epochs - 1:
            return True  # adapted: the final numbers are still measured
        return not self.run_epochs or epoch - self.run_epochs[-1] >= self.interval

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and not self._due(trainer):
            return
        epoch_seconds = (time.perf_counter() - self._epoch_start
                         if fitting and self._epoch_start is not None else 0.0)
        if self.dataset_name is None:  # setup() was not called
            self.setup(trainer, pl_module, "validate")
        model: nn.Module = getattr(pl_module, "model", pl_module)
        device = pl_module.device
        start = time.perf_counter()
        with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
            stats, accs, beta1, first = self._evaluate(trainer, model, device)
        seconds = torch.tensor([time.perf_counter() - start, epoch_seconds], dtype=torch.float64,
                               device=device)
        seconds = _reduce_fn(device)(seconds, "max")  # identical on every rank
        if fitting:
            self.run_epochs.append(trainer.current_epoch)
            self._adapt(trainer, float(seconds[0]), float(seconds[1]))

        metrics: dict[str, float] = {"robust/clean_acc": accs[-1]}
        metrics.update({f"robust/{tag}_acc": acc
                        for tag, acc in zip(self.attack_tags, accs[:-1], strict=True)})
        for variant in stats.variants:
            prefix = VARIANT_PREFIX[variant]
            for key, value in stats.summary(variant).items():
                if key == "beta" and variant == "original":
                    continue
                metrics[prefix + key] = value
        metrics["robust/seconds"] = float(seconds[0])
        self.last_metrics = metrics
        self.last_stats = stats
        #: sentences naming each PGD++ attack that was weaker than its plain attack this epoch
        self.last_notes = weaker_temperature_notes(
            {tag: 100 * acc for tag, acc in zip(self.attack_tags, accs[:-1], strict=True)})
        for name, value in metrics.items():
            # identical on every rank: "max" syncs exactly (no rounding), and keeps the value
            # usable by ModelCheckpoint/EarlyStopping on every rank
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

        if trainer.is_global_zero:  # side effects only, after every collective
            for note in [*stats.warnings, *self.last_notes]:
                rank_zero_warn(f"RobustnessMonitor (epoch {trainer.current_epoch}): {note}")
            t = time.perf_counter()
            self._write_images(trainer, model, stats, beta1, first)
            self.last_timings["images"] = time.perf_counter() - t

    def _adapt(self, trainer: L.Trainer, cost: float, epoch_seconds: float) -> None:
        """Run less often when one run costs more than ``max_fraction`` of an epoch."""
        if self.max_fraction is None or epoch_seconds <= 0:
            return
        budget = self.max_fraction * epoch_seconds * self.interval
        if cost <= budget:
            return
        self.interval = max(self.interval,
                            math.ceil(cost / (self.max_fraction * epoch_seconds)))
        if not self._adapted_said and trainer.is_global_zero:
            rank_zero_warn(
                f"RobustnessMonitor: one run takes {cost:.1f} s, "
                f"{100 * cost / epoch_seconds:.0f} % of a {epoch_seconds:.1f} s epoch; it now "
                f"runs every {self.interval} epochs (and at the last) to stay within "
                f"{100 * self.max_fraction:.0f} % (max_fraction; null keeps every_n_epochs).")
        self._adapted_said = True

    @staticmethod
    def _njs_beta1(trainer: L.Trainer, model: nn.Module, jac_logits: Any, space: str,
                   reduce: Any, device: torch.device) -> float:
        """NJS's β1 = 1 / mean singular value over every rank's signal samples, J taken in
        ``space`` ("normalized" or "pixel"); 1 (with a warning) when undefined."""
        sv_sum = torch.zeros(2, dtype=torch.float64, device=device)  # [Σσ, #σ]
        if jac_logits is not None:
            jac = to_jacobian_space(jac_logits[0], model, space)
            finite = torch.isfinite(jac).flatten(1).all(dim=1)
            sv = singular_values_from_gram(gram_from_jacobian(jac[finite]), jac.shape[-1])
            nan = torch.tensor(math.nan, dtype=torch.float64, device=device)
            sv_sum[0] = sv.sum() if bool(finite.all()) else nan
            sv_sum[1] = float(jac.shape[0] * min(jac.shape[1], jac.shape[2]))
        sv_sum = reduce(sv_sum, "sum")
        beta1 = float(sv_sum[1] / sv_sum[0]) if float(sv_sum[0]) > 0 else math.nan
        if math.isfinite(beta1) and beta1 > 0:
            return beta1
        if trainer.is_global_zero:
            rank_zero_warn(f"RobustnessMonitor: NJS β1 ({space} space) is undefined (mean "
                           f"Jacobian singular value "
                           f"{float(sv_sum[0] / max(float(sv_sum[1]), 1.0))}); using 1.")
        return 1.0

    def _evaluate(self, trainer: L.Trainer, model: nn.Module,
                  device: torch.device) -> tuple[SignalStats, list[float], float, Any]:

        timings: dict[str, float] = {}

        def tick(key: str, since: float) -> float:
            now = time.perf_counter()
            timings[key] = timings.get(key, 0.0) + now - since
            return now

        reduce = _reduce_fn(device)
        t = time.perf_counter()
        cache = self._subset(trainer)
        t = tick("load", t)
        # one Jacobian of the signal samples serves NJS's β1 and the metrics
        x_sig, y_sig = (v.to(device) for v in cache["signal"])
        jac_logits = input_jacobian_and_logits(model, x_sig) if x_sig.shape[0] else None
        njs_rules = [t for t in (getattr(a, "temperature", None) for a in self.attacks)
                     if isinstance(t, NJS)]
        spaces = {self.jacobian_space} | {t.jacobian_space for t in njs_rules}
        beta1_of = {space: self._njs_beta1(trainer, model, jac_logits, space, reduce, device)
                    for space in sorted(spaces)}
        beta1 = beta1_of[self.jacobian_space]
        for rule in njs_rules:  # one β1 for every batch and rank, in the rule's own space
            rule.beta1 = beta1_of[rule.jacobian_space]
        t = tick("jacobian_njs", t)
        betas: dict[str, float | str] = {"original": 1.0, "njs": beta1, "hns": HNS}
        sums = signal_sums(model, x_sig, y_sig, betas, n_grid=self.hns_grid, jacobian=jac_logits,
                           jacobian_space=self.jacobian_space)
        del jac_logits
        t = tick("signal", t)
        # robust = correct clean and after the attack, counted per sample (as evaluate does)
        total = sum(int(y.shape[0]) for _, _, y in cache["local"])
        total = int(reduce(torch.tensor(float(total), dtype=torch.float64, device=device),
                           "sum"))
        clean = SampleTally(total).to(device)
        tallies = [SampleTally(total).to(device) for _ in self.attacks]
        for b, x_cpu, y_cpu in cache["local"]:
            x, y = x_cpu.to(device), y_cpu.to(device)
            index = torch.arange(b * self.batch_size, b * self.batch_size + y.shape[0])
            with torch.no_grad():
                logits = model(x)
            check_logits(logits, y, where="the robustness monitor's samples")
            correct = logits.argmax(dim=1) == y
            clean.update(index, correct)
            for i, attack in enumerate(self.attacks):
                attack.seed = self.seed + b
                x_adv = attack(model, x, y)
                with torch.no_grad():
                    adv_logits = model(x_adv)
                check_logits(adv_logits, where=f"the monitor's {self.attack_tags[i]} examples")
                tallies[i].update(index, correct & (adv_logits.argmax(dim=1) == y),
                                  attacked=int(y.shape[0]))
                t = tick(f"attack/{self.attack_tags[i]}", t)
        self.last_timings = timings
        sums = sums.reduce(reduce)
        stats = sums.finalize()
        accs = [tally.compute().correct / total for tally in tallies]
        accs.append(clean.compute().correct / total)  # attacks..., clean
        return stats, accs, beta1, cache["first"]

    # -- rank-zero side effects -------------------------------------------------------------
    def _write_images(self, trainer: L.Trainer, model: nn.Module, stats: SignalStats,
                      beta1: float, first: Any) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or not (self.histogram or self.hessian_figure):
            return
        step = trainer.global_step
        for logger in loggers:
            exp = logger.experiment
            if self.histogram:
                for variant in stats.variants:
                    self._add_histogram(exp, VARIANT_PREFIX[variant] + "jsv_hist", stats, variant, step)
        if self.hessian_figure and first is not None:
            from bnnrobust.metrics.hessian_curve import hessian_figure

            x, y = first
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            with torch.inference_mode(False), torch.enable_grad():
                fig = hessian_figure(model, x.to(device), y.to(device), n_samples=self.hessian_samples,
                                     marks={"NJS β1": beta1})
            if fig is not None:
                for logger in loggers:
                    logger.experiment.add_figure("robust/hessian_norm", fig, step, close=True)

    @staticmethod
    def _add_histogram(exp: Any, tag: str, stats: SignalStats, variant: str, step: int) -> None:
        q = stats.stats[variant]["jsv"]
        counts = stats.hist[variant]
        nonzero = [i for i, c in enumerate(counts) if c > 0]
        if not nonzero or not (math.isfinite(q.min) and math.isfinite(q.max)):
            return
        lo, hi = nonzero[0], nonzero[-1] + 1
        limits = list(stats.hist_limits[lo:hi])
        if limits[-1] > 1e299:  # the catch-all bucket: close it at the largest value
            limits[-1] = q.max
        exp.add_histogram_raw(
            tag, min=q.min, max=q.max, num=q.n, sum=q.mean * q.n,
            sum_squares=(q.std**2 + q.mean**2) * q.n, bucket_limits=limits,
            bucket_counts=counts[lo:hi], global_step=step,
        )


__all__ = ["RobustnessMonitor"]
