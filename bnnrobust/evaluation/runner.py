"""Run a set of attacks over an evaluation set: clean and adversarial accuracy, time, β.

Definitions (all accuracies in percent of the ``n`` evaluated samples):

* ``clean_acc``: ``argmax f(x) == y``.
* ``adv_acc`` of an attack: a sample counts as robust when it is classified correctly clean
  *and* after the attack. Only clean-correct samples are attacked (a misclassified sample is
  already an adversarial example of itself: its saved ``x_adv`` is the clean image), so
  ``adv_acc <= clean_acc`` always. Every attack starts from the clean input.
* ``worst_case_acc``: robust against every attack of the run (per-sample worst case).
* β statistics: mean / std / min / max of ``info["beta"]`` over the attacked samples, for
  attacks that use a temperature (PGD++ / FGSM++ / APGD++).

NJS temperatures are calibrated once, before any attack, on the first ``n_calib = 100``
clean samples of the evaluation set (β1 of the paper), identically on every process.

Reproducibility: before each (attack, batch) pair the global torch RNG is seeded from
``(seed, attack name, global batch index)`` inside :func:`torch.random.fork_rng`, so reruns
are identical on CPU, the caller's RNG state is untouched, and results do not depend on the
order of the attacks.

Several processes (``torch.distributed`` initialized, e.g. under DDP/torchrun): the global
batches ``[0, B), [B, 2B), ...`` are dealt round-robin to the ranks; each batch, and so each
random start, is exactly what one process would see, and the correct counts, β sums and
counts are summed (min/max reduced, seconds = max over ranks). The numbers therefore equal a
single-process run with the same batch size.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from bnnrobust.attacks.base import Attack, check_logits, eval_mode
from bnnrobust.attacks.temperature import njs_temperatures
from bnnrobust.evaluation.accounting import BetaStats, SampleTally, TallyResult, worst_case
from bnnrobust.evaluation.feedback import (
    PILOT_SAMPLES,
    describe_budget,
    note,
    pilot_line,
    progress_bar,
)
from bnnrobust.evaluation.partial import PartialResults, model_digest
from bnnrobust.evaluation.results import (
    AttackResult,
    EvalResult,
    adv_path,
    jsonable,
    reevaluate,
    result_fields,
    result_from_fields,
    save_adv_examples,
)
from bnnrobust.validation import check_pixel_images

__all__ = [
    "AttackResult",
    "BetaStats",
    "EvalResult",
    "SampleSource",
    "adv_path",
    "describe_budget",
    "evaluate",
    "reevaluate",
    "resolve_device",
]

DataSource = DataLoader | Dataset | tuple[Tensor, Tensor] | Sequence[Tensor]


# -- helpers ----------------------------------------------------------------------------------
def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` → ``cuda`` when available else ``cpu``; otherwise ``torch.device(device)``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accepted = "accepted: auto, cpu, cuda, cuda:N, mps"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Unknown device {str(device)!r}; {accepted}.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA GPU is available on this machine "
                             "(torch.cuda.is_available() is False); use cpu or auto.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s), numbered from 0.")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {str(device)!r}: MPS is not available on this machine; "
                             "use cpu or auto.")
    elif dev.type != "cpu":
        raise ValueError(f"Unsupported device {str(device)!r}; {accepted}.")
    return dev


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SampleSource:
    """Uniform random access to ``(x, y)`` pairs from tensors, a Dataset or a DataLoader.

    ``SampleSource(data, n).get(start, stop)`` returns the images (B, C, H, W) and labels (B,)
    of samples ``start .. stop-1``; an iterable loader is read once, up to ``n`` samples."""

    def __init__(self, data: Any, n: int | None) -> None:
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.ds: Dataset | None = None
        if isinstance(data, DataLoader):
            ds = data.dataset
            if not isinstance(ds, IterableDataset) and hasattr(ds, "__len__"):
                self.ds = ds
            else:
                self.x, self.y = self._collect(data, n)
        elif isinstance(data, Dataset) and not isinstance(data, IterableDataset):
            self.ds = data
        elif isinstance(data, tuple | list) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
            x, y = data
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"evaluate: {x.shape[0]} images but {y.shape[0]} labels.")
            self.x, self.y = x, y
        elif isinstance(data, Iterable):
            self.x, self.y = self._collect(data, n)
        else:
            raise TypeError("evaluate: data must be a DataLoader, a map-style Dataset or a tuple "
                            f"(x, y) of tensors, got {type(data).__name__}.")

    @staticmethod
    def _collect(batches: Iterable, n: int | None) -> tuple[Tensor, Tensor]:
        xs, ys, total = [], [], 0
        for x, y in batches:
            xs.append(x)
            ys.append(y)
            total += x.shape[0]
            if n is not None and total >= n:
                break
        if not xs:
            raise ValueError("evaluate: the data loader yielded no batch.")
        return torch.cat(xs), torch.cat(ys)

    def __len__(self) -> int:
        if self.ds is not None:
            return len(self.ds)  # type: ignore[arg-type]
        assert self.y is not None
        return int(self.y.shape[0])

    def get(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        if self.ds is None:
            assert self.x is not None and self.y is not None
            return self.x[start:stop], self.y[start:stop]
        items = [self.ds[i] for i in range(start, stop)]
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
        return x, y


def _batch_seed(seed: int, name: str, batch_index: int) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode()) * 7919 + batch_index) % (2**63 - 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the runner -------------------------------------------------------------------------------
def evaluate(
    model: nn.Module,
    data: DataSource,
    attacks: Mapping[str, Attack],
    n: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    batch_size: int | None = None,
    save_adv: str | Path | None = None,
    calibrate_njs: bool = True,
    n_calib: int = 100,
    num_classes: int | None = None,
    partial_results: str | Path | None = None,
    pilot: bool = True,
    on_attack: Callable[[str, AttackResult, Tensor], None] | None = None,
) -> EvalResult:
    """Clean accuracy and, per attack, adversarial accuracy, seconds and β statistics.

    Args:
        model: classifier mapping images in [0, 1] (normalization inside) to logits. Put in
            eval mode for the run; each submodule's own mode is restored afterwards.
        data: ``(x, y)`` tensors, a map-style Dataset, or a DataLoader (its dataset is read
            in order; an iterable loader is consumed up to ``n`` samples).
        attacks: ``{name: Attack}``; names are the keys of the result. They run one after
            the other, each over the whole set.
        n: evaluate the first ``n`` samples (``None`` = all).
        seed: seed of every random start (see module docstring).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``None``/``"auto"``.
        progress: show feedback on stderr (rank 0 only): a tqdm bar per pass (clean, then
            each attack; total = the ``n`` samples, so each bar has its own ETA) and, with
            ``pilot``, before each attack a line with its budget and an estimate of its time.
        batch_size: samples per attack batch; default the loader's batch size or 256.
        save_adv: folder; if given, each attack's adversarial images are written to
            ``<folder>/<attack>.pt`` (``x_adv``, ``y``, ``indices``, ``attack``, ``adv_acc``,
            ``config``, ``seed``) as soon as that attack finishes, readable by :func:`reevaluate`.
        calibrate_njs: calibrate NJS temperatures (β1) once on the first ``n_calib`` clean samples.
        n_calib: number of clean samples for NJS (paper: 100).
        num_classes: the data's number of classes; the model must output that many logits.
        partial_results: a JSON file where every finished attack is written as it completes
            (:mod:`bnnrobust.evaluation.partial`); an existing file of the same run (same
            weights, images, settings) is resumed: its finished attacks are not run again.
        pilot: with ``progress``, time each attack (not the resumed ones) on a pilot of the
            first ``min(8, batch)`` clean-correct samples of the first batch before it runs and
            print ``<name>: <budget> — estimated <t> for <k> samples (pilot ...)``
            (:func:`describe_budget`). The pilot runs inside a forked RNG and its output is
            discarded: results are identical with or without it.
        on_attack: called on rank 0 after each attack finishes (also for attacks resumed
            from ``partial_results``) with the attack's name, its :class:`AttackResult` and
            its (n,) bool robust mask (correct clean and after that attack).

    Raises:
        ValueError: non-finite logits on any evaluated sample (clean or adversarial), a logit
            count other than ``num_classes``, labels outside ``[0, classes)``, images outside
            [0, 1]: a broken model never yields a plausible accuracy.

    Returns:
        :class:`EvalResult` (accuracies in percent; per-sample robust masks in ``masks``).
    """
    run = _prepare(model, data, attacks, n, device, batch_size, seed=seed, show=progress,
                   pilot=pilot, save_adv=save_adv, partial_results=partial_results)
    t_start = time.perf_counter()
    results: dict[str, AttackResult] = {}
    masks: dict[str, Tensor] = {}
    resumed: list[str] = []
    with eval_mode(run.model), torch.random.fork_rng(devices=run.fork_devices):
        njs_beta1 = _calibrate_njs(run, attacks, n_calib) if calibrate_njs else {}
        clean, digest = _clean_pass(run, num_classes)
        store = _open_store(run, digest, calibrate_njs, n_calib)
        store.record_clean(clean.mask)
        for name in attacks:
            config = _attack_config(attacks[name], njs_beta1.get(name))
            done = store.finished(name, config)
            if done is not None:  # finished by an earlier run of the same key
                results[name], masks[name] = result_from_fields(done[0], config), done[1]
                resumed.append(name)
                if run.show:
                    note(f"{name}: finished in an earlier run ({partial_results}); not run again")
            else:
                results[name], masks[name] = _attack_pass(run, attacks[name], name, config, clean)
                store.record(name, config, result_fields(results[name]), masks[name])
            if on_attack is not None and run.rank == 0:
                on_attack(name, results[name], masks[name])
    return _eval_result(run, clean, results, masks, resumed, t_start)


# -- the passes of evaluate() -----------------------------------------------------------------
@dataclass
class _Run:
    """One :func:`evaluate` call: the model and data, this process's batches, the settings."""

    model: nn.Module  # on ``dev``
    src: SampleSource
    total: int  # evaluated samples
    batch_size: int
    rank: int
    world: int
    mine: list[tuple[int, int, int]]  # this process's batches: (global index, start, stop)
    dev: torch.device
    dtype: torch.dtype  # the model's floating dtype; images are cast to it
    seed: int
    show: bool  # feedback on stderr (``progress``, rank 0 only)
    pilot: bool
    save_adv: str | Path | None
    partial_results: str | Path | None
    fork_devices: list[torch.device]  # the devices whose RNG fork_rng forks: [dev] on CUDA


def _prepare(model: nn.Module, data: DataSource, attacks: Mapping[str, Attack], n: int | None,
             device: str | torch.device | None, batch_size: int | None, *, seed: int,
             show: bool, pilot: bool, save_adv: str | Path | None,
             partial_results: str | Path | None) -> _Run:
    """Check the arguments of :func:`evaluate`, read the data, deal the batches, move the model."""
    if not isinstance(attacks, Mapping):
        raise TypeError("evaluate: attacks must be a dict {name: Attack}; build them with "
                        "bnnrobust.attacks.factory.build_attack.")
    for name, atk in attacks.items():
        if not isinstance(atk, Attack):
            raise TypeError(f"evaluate: attack {name!r} is a {type(atk).__name__}, not a "
                            "bnnrobust Attack.")
    if n is not None and n < 1:
        raise ValueError(f"evaluate: n must be a positive integer or None, got {n!r}.")
    dev = resolve_device(device)
    src = SampleSource(data, n)
    total = len(src) if n is None else min(n, len(src))
    if total == 0:
        raise ValueError("evaluate: the evaluation set is empty.")
    if batch_size is None:
        loader_bs = data.batch_size if isinstance(data, DataLoader) else None
        batch_size = int(loader_bs) if loader_bs else 256
    if batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be >= 1, got {batch_size!r}.")
    rank, world = _dist()
    starts = list(range(0, total, batch_size))
    mine = [(b, starts[b], min(starts[b] + batch_size, total))
            for b in range(rank, len(starts), world)]
    model = model.to(dev)
    return _Run(model=model, src=src, total=total, batch_size=int(batch_size), rank=rank,
                world=world, mine=mine, dev=dev, dtype=_float_dtype(model), seed=seed,
                show=show and rank == 0, pilot=pilot, save_adv=save_adv,
                partial_results=partial_results, fork_devices=[dev] if dev.type == "cuda" else [])


def _calibrate_njs(run: _Run, attacks: Mapping[str, Attack], n_calib: int) -> dict[str, list[float]]:
    """β1 of every NJS temperature of every attack, calibrated on the first ``n_calib`` clean
    samples: ``{attack name: [β1, ...]}`` (attacks without NJS are left out)."""
    x_cal, _ = run.src.get(0, min(n_calib, run.total))
    check_pixel_images(x_cal, 0)
    x_cal = x_cal.to(run.dev, run.dtype)
    beta1: dict[str, list[float]] = {}
    for name in attacks:
        for temp, target in njs_temperatures(attacks[name], run.model):
            beta1.setdefault(name, []).append(float(temp.calibrate(target, x_cal)))
    return beta1


def _clean_pass(run: _Run, num_classes: int | None) -> tuple[TallyResult, str]:
    """The clean pass over this process's batches: which samples are attacked, and the
    SHA-256 of this process's images and labels (the data's part of the resume key)."""
    bar = progress_bar(run.total, "clean") if run.show else None
    tally = SampleTally(run.total).to(run.dev)
    digest = hashlib.sha256()
    for _, start, stop in run.mine:
        x, y = run.src.get(start, stop)
        check_pixel_images(x, start)
        x = x.to(run.dtype)
        digest.update(x.detach().cpu().float().contiguous().numpy().tobytes())
        digest.update(y.detach().cpu().long().numpy().tobytes())
        x, y = x.to(run.dev), y.to(run.dev).long()
        with torch.no_grad():
            logits = run.model(x)
        check_logits(logits, y, where=f"the batch starting at sample {start}",
                     num_classes=num_classes)
        tally.update(torch.arange(start, stop), logits.argmax(dim=-1) == y)
        if bar is not None:
            bar.update((stop - start) * run.world)
    if bar is not None:
        bar.close()
    return tally.compute(), digest.hexdigest()


def _open_store(run: _Run, digest: str, calibrate_njs: bool, n_calib: int) -> PartialResults:
    """The run's :class:`PartialResults`, keyed by the weights, the data and the settings."""
    return PartialResults(run.partial_results, {
        "model": model_digest(run.model), "data": "|".join(str(v) for v in _all_gather(digest)),
        "n": run.total, "seed": int(run.seed), "batch_size": run.batch_size,
        "world_size": run.world, "calibrate_njs": bool(calibrate_njs), "n_calib": int(n_calib)},
        write=run.rank == 0)


def _attack_config(attack: Attack, njs_beta1: list[float] | None) -> dict[str, Any]:
    """The attack's ``describe()`` as JSON, with its calibrated ``njs_beta1`` (if any)."""
    config = jsonable(attack.describe())
    if njs_beta1 is not None:
        config["njs_beta1"] = njs_beta1[0] if len(njs_beta1) == 1 else njs_beta1
    return config


def _attack_pass(run: _Run, attack: Attack, name: str, config: dict[str, Any],
                 clean: TallyResult) -> tuple[AttackResult, Tensor]:
    """One attack over the clean-correct samples, after its pilot line, with its progress bar."""
    if run.show and run.pilot:  # on the first clean-correct samples of the first batch
        _, start, stop = run.mine[0]
        idx = clean.mask[start:stop].nonzero().flatten()[:PILOT_SAMPLES]
        note(pilot_line(name, config, clean.correct, samples=int(idx.numel()), world=run.world,
                        pilot=lambda: _time_pilot(run, attack, name, idx)))
    bar = progress_bar(run.total, name) if run.show else None
    try:
        return _run_attack(run.model, run.src, attack, name, run.mine, clean.mask, run.seed,
                           run.total, run.world, run.dev, config, run.save_adv, bar)
    finally:
        if bar is not None:
            bar.close()


def _eval_result(run: _Run, clean: TallyResult, results: dict[str, AttackResult],
                 masks: dict[str, Tensor], resumed: list[str], t_start: float) -> EvalResult:
    """The :class:`EvalResult` of the finished passes (worst case over ``masks``' attacks)."""
    worst = worst_case(clean.mask, list(masks.values()))
    return EvalResult(
        n=run.total, seed=int(run.seed), batch_size=run.batch_size, device=str(run.dev),
        world_size=run.world, clean_acc=100.0 * clean.correct / run.total,
        clean_correct=clean.correct, attacks=results,
        worst_case_acc=100.0 * int(worst.sum()) / run.total if masks else None,
        seconds=time.perf_counter() - t_start, clean_mask=clean.mask, masks=masks,
        extra={"resumed": resumed} if resumed else {},
    )


def _time_pilot(run: _Run, attack: Attack, name: str, idx: Tensor) -> float:
    """Seconds ``attack`` takes on the samples ``idx`` of this process's first batch, run
    inside a forked RNG seeded as that batch, its output discarded (no result depends on it)."""
    b, start, stop = run.mine[0]
    x, y = run.src.get(start, stop)
    x, y = x.to(run.dev, run.dtype)[idx.to(run.dev)], y.to(run.dev).long()[idx.to(run.dev)]
    with torch.random.fork_rng(devices=run.fork_devices):
        torch.manual_seed(_batch_seed(run.seed, name, b))
        _sync(run.dev)
        t0 = time.perf_counter()
        attack.perturb(run.model, x, y)
        _sync(run.dev)
        return time.perf_counter() - t0


def _run_attack(model: nn.Module, src: SampleSource, attack: Attack, name: str,
                mine: list[tuple[int, int, int]], clean_mask: Tensor, seed: int, total: int,
                world: int, dev: torch.device, config: dict[str, Any],
                save_adv: str | Path | None, bar: Any) -> tuple[AttackResult, Tensor]:
    """One attack over this process's batches; reduced over processes; adv examples saved."""
    tally = SampleTally(total).to(dev)
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    dtype = _float_dtype(model)
    for b, start, stop in mine:
        x, y = src.get(start, stop)
        x, y = x.to(dev, dtype), y.to(dev).long()
        correct = clean_mask[start:stop].to(dev)
        idx = correct.nonzero().flatten()
        torch.manual_seed(_batch_seed(seed, name, b))
        robust = torch.zeros_like(correct)
        x_adv_full = x.clone()
        beta = None
        _sync(dev)
        t0 = time.perf_counter()
        if idx.numel():
            out = attack.perturb(model, x[idx], y[idx])
            with torch.no_grad():
                adv_logits = model(out.x_adv)
            check_logits(adv_logits, where=f"the {name} examples of the batch starting "
                         f"at sample {start}")
            robust[idx] = adv_logits.argmax(dim=-1) == y[idx]
            x_adv_full[idx] = out.x_adv
            beta = out.info.get("beta")
        _sync(dev)
        tally.update(torch.arange(start, stop), robust, attacked=int(idx.numel()), beta=beta,
                     seconds=time.perf_counter() - t0)
        if save_adv is not None:
            parts.append((x_adv_full.cpu(), y.cpu(), torch.arange(start, stop)))
        if bar is not None:
            bar.update((stop - start) * world)
    done = tally.compute()
    result = AttackResult(name=name, adv_acc=100.0 * done.correct / total, correct=done.correct,
                          n=total, seconds=done.seconds, attacked=done.attacked, beta=done.beta,
                          config=config)
    if save_adv is not None:
        parts = [p for rank_parts in _all_gather(parts) for p in rank_parts]
        if _dist()[0] == 0:
            save_adv_examples(Path(save_adv), name, parts, result, seed)
    return result, done.mask


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _all_gather(value: Any) -> list[Any]:
    """``value`` of every process, in rank order (``[value]`` on one process); a collective."""
    import torch.distributed as dist

    _, world = _dist()
    if world == 1:
        return [value]
    everything: list[Any] = [None] * world
    dist.all_gather_object(everything, value)
    return everything
