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
import json
import math
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from bnnrobust.attacks.base import Attack, check_logits, eval_mode
from bnnrobust.evaluation.accounting import BetaStats, SampleTally, worst_case
from bnnrobust.evaluation.partial import PartialResults, model_digest
from bnnrobust.metrics.intervals import wilson_interval_percent

__all__ = [
    "AttackResult",
    "BetaStats",
    "EvalResult",
    "SampleSource",
    "describe_budget",
    "evaluate",
    "reevaluate",
    "resolve_device",
]

DataSource = DataLoader | Dataset | tuple[Tensor, Tensor] | Sequence[Tensor]


# -- result containers ------------------------------------------------------------------------
@dataclass
class AttackResult:
    """One attack's outcome.

    Attributes:
        name: attack name (``"pgd++njs"``, ...), the key of the attack dict.
        adv_acc: adversarial accuracy in percent of ``n`` (see module docstring).
        correct: number of robust samples.
        n: number of evaluated samples.
        seconds: wall-clock seconds spent in the attack (max over ranks).
        attacked: number of samples attacked (clean-correct ones).
        beta: β statistics, or None for attacks without a temperature.
        config: the attack's ``describe()`` (eps in [0, 1] pixel units, norm, steps, ...).
    """

    name: str
    adv_acc: float
    correct: int
    n: int
    seconds: float
    attacked: int
    beta: BetaStats | None
    config: dict[str, Any]


@dataclass
class EvalResult:
    """Everything :func:`evaluate` measured; ``to_dict()`` is the JSON body of a report."""

    n: int
    seed: int
    batch_size: int
    device: str
    world_size: int
    clean_acc: float
    clean_correct: int
    attacks: dict[str, AttackResult]
    worst_case_acc: float | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: (n,) bool: sample i is classified correctly (clean)
    clean_mask: Tensor | None = field(default=None, repr=False)
    #: per attack, (n,) bool: sample i is correct clean and after the attack
    masks: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def robust_mask(self) -> Tensor | None:
        """(n,) bool: correct clean and under every attack (the per-sample worst case)."""
        if self.clean_mask is None:
            return None
        return worst_case(self.clean_mask, list(self.masks.values()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON body; ``clean_ci95``, each attack's ``ci95`` and ``worst_case_ci95`` are
        Wilson 95 % intervals ``[low %, high %]`` of the counts (None without samples)."""
        out = {k: getattr(self, k) for k in ("n", "seed", "batch_size", "device", "world_size",
                                             "clean_acc", "clean_correct")}
        out["clean_ci95"] = _ci95(self.clean_correct, self.n)
        out["attacks"] = {name: {**asdict(res), "ci95": _ci95(res.correct, res.n)}
                          for name, res in self.attacks.items()}
        out["worst_case_acc"] = self.worst_case_acc
        out["worst_case_ci95"] = None
        if self.worst_case_acc is not None:
            robust = self.robust_mask
            # worst_case_acc = 100 * count / n exactly, so the count is recovered by rounding
            count = int(robust.sum()) if robust is not None and self.masks \
                else round(self.worst_case_acc * self.n / 100.0)
            out["worst_case_ci95"] = _ci95(count, self.n)
        out["seconds"] = self.seconds
        out.update(self.extra)
        return _jsonable(out)


def _ci95(correct: int, n: int) -> list[float] | None:
    """Wilson 95 % interval of ``correct / n`` in percent, ``[low, high]``; None if ``n < 1``."""
    if n < 1 or not 0 <= correct <= n:
        return None
    return list(wilson_interval_percent(int(correct), int(n)))


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON (tuples → lists, tensors/enums → numbers/strings)."""
    def default(o: Any) -> Any:
        if torch.is_tensor(o):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        return str(o)

    return json.loads(json.dumps(obj, default=default))


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


def _check_images(x: Tensor, start: int) -> None:
    if not x.is_floating_point():
        raise TypeError(f"evaluate: images must be floating point in [0, 1], got dtype {x.dtype} "
                        f"(batch starting at sample {start}).")
    lo, hi = float(x.min()), float(x.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(
            f"evaluate: images must lie in [0, 1] pixel units (normalization belongs inside the "
            f"model), but the batch starting at sample {start} has values in [{lo:.4g}, {hi:.4g}]. "
            "Remove any Normalize transform from the data pipeline."
        )


def _njs_targets(attack: Any, model: nn.Module) -> list[tuple[Any, nn.Module]]:
    """NJS temperatures inside an attack (and wrapped attacks) with the model each attacks."""
    from bnnrobust.attacks.temperature import NJS

    found: list[tuple[Any, nn.Module]] = []
    temp = getattr(attack, "temperature", None)
    if isinstance(temp, NJS):
        found.append((temp, model))
    inner = getattr(attack, "attack", None)
    if isinstance(inner, Attack):
        source = getattr(attack, "source_model", None)
        found += _njs_targets(inner, source if isinstance(source, nn.Module) else model)
    members = getattr(attack, "attacks", None)
    if isinstance(members, Mapping):
        members = list(members.values())
    if isinstance(members, list | tuple):
        for member in members:
            if isinstance(member, Attack):
                found += _njs_targets(member, model)
    return found


def _batch_seed(seed: int, name: str, batch_index: int) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode()) * 7919 + batch_index) % (2**63 - 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("++", "pp"))


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
    names = list(attacks)
    model = model.to(dev)
    dtype = _float_dtype(model)  # images are cast to it (float64 data, float32 model)
    t_start = time.perf_counter()
    fork_devices = [dev] if dev.type == "cuda" else []
    results: dict[str, AttackResult] = {}
    masks: dict[str, Tensor] = {}
    resumed: list[str] = []
    with eval_mode(model), torch.random.fork_rng(devices=fork_devices):
        njs_beta1: dict[str, list[float]] = {}
        if calibrate_njs:
            x_cal, _ = src.get(0, min(n_calib, total))
            _check_images(x_cal, 0)
            x_cal = x_cal.to(dev, dtype)
            for name in names:
                for temp, target in _njs_targets(attacks[name], model):
                    njs_beta1.setdefault(name, []).append(float(temp.calibrate(target, x_cal)))
        show = progress and rank == 0
        bar = _progress_bar(total, "clean") if show else None
        # the clean pass: which samples are attacked, and the data's digest for resuming
        clean_tally = SampleTally(total).to(dev)
        digest = hashlib.sha256()
        for _, start, stop in mine:
            x, y = src.get(start, stop)
            _check_images(x, start)
            x = x.to(dtype)
            digest.update(x.detach().cpu().float().contiguous().numpy().tobytes())
            digest.update(y.detach().cpu().long().numpy().tobytes())
            x, y = x.to(dev), y.to(dev).long()
            with torch.no_grad():
                logits = model(x)
            check_logits(logits, y, where=f"the batch starting at sample {start}",
                         num_classes=num_classes)
            clean_tally.update(torch.arange(start, stop), logits.argmax(dim=-1) == y)
            if bar is not None:
                bar.update((stop - start) * world)
        if bar is not None:
            bar.close()
        clean = clean_tally.compute()
        store = PartialResults(partial_results, {
            "model": model_digest(model), "data": _all_ranks(digest.hexdigest()), "n": total,
            "seed": int(seed), "batch_size": int(batch_size), "world_size": world,
            "calibrate_njs": bool(calibrate_njs), "n_calib": int(n_calib)}, write=rank == 0)
        store.record_clean(clean.mask)
        for name in names:
            config = _jsonable(attacks[name].describe())
            if name in njs_beta1:
                b1 = njs_beta1[name]
                config["njs_beta1"] = b1[0] if len(b1) == 1 else b1
            done = store.finished(name, config)
            if done is not None:
                fields, masks[name] = done
                beta = fields.pop("beta", None)
                results[name] = AttackResult(**{**fields, "beta": BetaStats(**beta) if beta
                                                else None, "config": config})
                resumed.append(name)
                if show:
                    _note(f"{name}: finished in an earlier run ({partial_results}); not run "
                          "again")
            else:
                if show and pilot:
                    _note(_pilot_line(model, src, attacks[name], name, config, mine[0],
                                      clean.mask, clean.correct, seed, world, dev, fork_devices))
                bar = _progress_bar(total, name) if show else None
                try:
                    results[name], masks[name] = _run_attack(
                        model, src, attacks[name], name, mine, clean.mask, seed, total, world,
                        dev, config, save_adv, bar)
                finally:
                    if bar is not None:
                        bar.close()
                store.record(name, config, _result_fields(results[name]), masks[name])
            if on_attack is not None and rank == 0:
                on_attack(name, results[name], masks[name])
    worst = worst_case(clean.mask, [masks[nm] for nm in names])
    return EvalResult(
        n=total, seed=int(seed), batch_size=int(batch_size), device=str(dev), world_size=world,
        clean_acc=100.0 * clean.correct / total, clean_correct=clean.correct, attacks=results,
        worst_case_acc=100.0 * int(worst.sum()) / total if names else None,
        seconds=time.perf_counter() - t_start, clean_mask=clean.mask, masks=masks,
        extra={"resumed": resumed} if resumed else {},
    )


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


#: samples of the pilot run that estimates an attack's time (see ``evaluate(pilot=...)``)
PILOT_SAMPLES = 8
_NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1"}


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _plural(k: int, word: str, words: str | None = None) -> str:
    return f"{k} {word if k == 1 else (words or word + 's')}"


def describe_budget(config: Mapping[str, Any]) -> str:
    """An attack's budget in words from its ``describe()``: ``"20 steps x 1 restart, eps 0.1
    (L∞)"``, ``"5000 queries, eps 0.03137 = 8/255 (L∞)"``, a cascade's stages; keys that
    are missing (or not numbers) are left out, so any ``describe()`` gives a line (maybe "")."""
    parts: list[str] = []
    steps, restarts = _count(config.get("steps")), _count(config.get("restarts"))
    queries = _count(config.get("n_queries"))
    inner = config.get("attack")
    if isinstance(inner, Mapping) and steps is None and queries is None \
            and not config.get("attacks"):  # a wrapper (transfer, sign-activations-only)
        return describe_budget({**inner, **{k: config[k] for k in ("eps", "norm") if k in config}})
    if steps is not None or queries is not None:
        work = ", ".join(p for p in (None if steps is None else _plural(steps, "step"),
                                     None if queries is None else _plural(queries, "query",
                                                                           "queries")) if p)
        if restarts is not None:
            work += f" x {_plural(restarts, 'restart')}"
        parts.append(work)
    stages = config.get("attacks")
    if isinstance(stages, list | tuple) and stages:
        names = [str(st.get("name", "?")) if isinstance(st, Mapping) else "?" for st in stages]
        parts.append(f"cascade of {_plural(len(names), 'attack')} ({', '.join(names)})")
    eps = config.get("eps")
    if isinstance(eps, int | float) and not isinstance(eps, bool) and math.isfinite(eps):
        text = f"eps {eps:.4g}"
        k = eps * 255
        if eps > 0 and abs(k - round(k)) < 1e-6 * max(1.0, k) and abs(eps - round(eps)) > 1e-9:
            text += f" = {round(k)}/255"
        norm = config.get("norm")
        if isinstance(norm, str) and norm:
            text += f" ({_NORM_NAMES.get(norm.lower(), norm)})"
        parts.append(text)
    return ", ".join(p for p in parts if p)


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pilot_line(model: nn.Module, src: SampleSource, attack: Attack, name: str,
                config: Mapping[str, Any], first: tuple[int, int, int], clean_mask: Tensor,
                attacked: int, seed: int, world: int, dev: torch.device,
                fork_devices: list[torch.device]) -> str:
    """``<name>: <budget> — estimated <t> for <k> samples (pilot ...)``: ``attack`` timed on
    the first clean-correct samples of this process's first batch, inside a forked RNG, its
    output discarded (so no result depends on it)."""
    budget = describe_budget(config)
    head = f"{name}: {budget}" if budget else name
    if attacked == 0:
        return f"{head} — nothing to attack (no sample is classified correctly)"
    b, start, stop = first
    idx = clean_mask[start:stop].nonzero().flatten()[:PILOT_SAMPLES]
    if idx.numel() == 0:
        return (f"{head} — {attacked} samples to attack; no estimate (no sample of the first "
                "batch is classified correctly)")
    x, y = src.get(start, stop)
    x, y = x.to(dev, _float_dtype(model))[idx.to(dev)], y.to(dev).long()[idx.to(dev)]
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(_batch_seed(seed, name, b))
            _sync(dev)
            t0 = time.perf_counter()
            attack.perturb(model, x, y)
            _sync(dev)
            spent = time.perf_counter() - t0
    except Exception as err:  # the run itself reports the attack's errors
        return f"{head} — no estimate (the pilot failed: {type(err).__name__}: {err})"
    k = int(idx.numel())
    procs = f" on {world} processes" if world > 1 else ""
    return (f"{head} — estimated {_duration(spent / k * attacked / world)} for {attacked} "
            f"samples{procs} (pilot {_plural(k, 'sample')} in {spent:.2f} s)")


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
        _save_adv(Path(save_adv), name, _gather(parts), result, seed)
    return result, done.mask


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _result_fields(result: AttackResult) -> dict[str, Any]:
    fields = asdict(result)
    fields.pop("config")
    return fields


def _all_ranks(value: str) -> str:
    """``value`` of every process joined in rank order (the value itself on one process)."""
    import torch.distributed as dist

    _, world = _dist()
    if world == 1:
        return value
    everything: list[Any] = [None] * world
    dist.all_gather_object(everything, value)
    return "|".join(str(v) for v in everything)


def _gather(parts: list[tuple[Tensor, Tensor, Tensor]]) -> list[tuple[Tensor, Tensor, Tensor]]:
    import torch.distributed as dist

    rank, world = _dist()
    if world == 1:
        return parts
    everything: list[Any] = [None] * world
    dist.all_gather_object(everything, parts)
    return [p for rank_parts in everything for p in rank_parts]


def _save_adv(folder: Path, name: str, parts: list[tuple[Tensor, Tensor, Tensor]],
              result: AttackResult, seed: int) -> None:
    rank, _ = _dist()
    if rank != 0:
        return
    folder.mkdir(parents=True, exist_ok=True)
    x_adv = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    index = torch.cat([p[2] for p in parts])
    order = torch.argsort(index)
    torch.save({
        "x_adv": x_adv[order], "y": y[order], "indices": index[order], "attack": name,
        "adv_acc": result.adv_acc, "config": result.config, "seed": seed,
    }, folder / f"{_safe_name(name)}.pt")


def adv_path(folder: str | Path, attack_name: str) -> Path:
    """Where :func:`evaluate` (``save_adv=folder``) writes an attack's adversarial examples."""
    return Path(folder) / f"{_safe_name(attack_name)}.pt"


def reevaluate(
    model: nn.Module, path: str | Path, *, batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """Accuracy (percent) of ``model`` on saved adversarial examples (``evaluate(save_adv=...)``).

    Reproduces the reported ``adv_acc`` of that attack for the same model (clean-misclassified
    samples were saved as their clean image, so they count as errors here too).
    """
    from bnnrobust.evaluation.checkpoint import CheckpointError

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"reevaluate: {str(file)!r} does not exist.")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file: one clear message
        raise CheckpointError(f"reevaluate: {str(file)!r} is unreadable ({type(err).__name__}).") from None
    if not isinstance(blob, dict) or not {"x_adv", "y"} <= set(blob):
        raise ValueError(f"reevaluate: {str(file)!r} does not hold 'x_adv' and 'y'.")
    dev = resolve_device(device)
    x_adv, y = blob["x_adv"], blob["y"].long()
    correct = 0
    model = model.to(dev)
    with eval_mode(model), torch.no_grad():
        for s in range(0, y.shape[0], batch_size):
            xb, yb = x_adv[s:s + batch_size].to(dev), y[s:s + batch_size].to(dev)
            correct += int((model(xb).argmax(dim=-1) == yb).sum())
    return 100.0 * correct / max(int(y.shape[0]), 1)
