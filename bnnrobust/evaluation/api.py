"""One-call robustness evaluation, as AutoAttack offers: :func:`evaluate_robustness`.

::

    import bnnrobust

    result = bnnrobust.evaluate_robustness(model, (x, y), attacks="strongest", dataset="cifar10")
    # clean accuracy: 81.20 %
    # strongest: robust accuracy 10.10 % (worst case so far 10.10 %), 812.3 s
    # robust accuracy: 10.10 % (95 % CI 8.4–12.1 %; worst case over 1 attack, n = 1000)
    result.robust_mask          # (n,) bool: correct clean and under every attack
    result.to_dict()            # the JSON body of evaluate.py's report
    print(result.to_markdown())

It resolves the attacks (a preset, names/dicts or ``{name: Attack}``), runs
:func:`bnnrobust.evaluation.runner.evaluate` and prints one line per stage; the numbers are
exactly those of ``evaluate`` with the same attacks, seed and batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from bnnrobust.attacks.base import Attack
from bnnrobust.evaluation.report import markdown_table
from bnnrobust.evaluation.runner import AttackResult, EvalResult, evaluate
from bnnrobust.metrics.intervals import wilson_interval_percent

__all__ = ["RobustnessResult", "evaluate_robustness"]

#: keyword arguments of :func:`~bnnrobust.evaluation.runner.evaluate` passed through
_PASSED_ON = ("save_adv", "partial_results", "calibrate_njs", "n_calib", "num_classes")


@dataclass
class RobustnessResult(EvalResult):
    """:class:`~bnnrobust.evaluation.runner.EvalResult` plus :meth:`to_markdown`.

    ``robust_mask`` is the per-sample worst case, ``masks`` the per-attack robust masks,
    ``to_dict()`` the JSON body (with Wilson 95 % intervals); ``extra["dataset"]`` holds the
    dataset, which sets the unit of eps in the tables.
    """

    def to_markdown(self, title: str | None = None) -> str:
        """The Markdown table of :func:`bnnrobust.evaluation.report.markdown_table`."""
        return markdown_table(self, title)


def _check_dataset(dataset: object) -> str:
    from bnnrobust.attacks.presets import canonical_dataset, list_datasets

    try:
        if isinstance(dataset, str):
            return canonical_dataset(dataset)
    except ValueError:
        pass
    raise ValueError(f"evaluate_robustness: unknown dataset {dataset!r}; accepted: "
                     f"{', '.join(repr(d) for d in list_datasets())} (case, '-' and '_' "
                     "ignored; it sets the attacks' eps and steps and the eps unit of the "
                     "tables).")


def _check_data(data: object) -> None:
    accepted = ("accepted: a tuple (x, y) of tensors (images (N, C, H, W) in [0, 1], integer "
                "labels (N,)), a torch DataLoader or a map-style Dataset of (image, label)")
    if isinstance(data, DataLoader):
        return
    if isinstance(data, IterableDataset):
        raise ValueError(f"evaluate_robustness: data is an IterableDataset "
                         f"({type(data).__name__}); wrap it in a DataLoader. {accepted}.")
    if isinstance(data, Dataset):
        return
    if isinstance(data, tuple | list) and len(data) == 2 \
            and all(torch.is_tensor(t) for t in data):
        x, y = data
        if x.dim() < 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"evaluate_robustness: data (x, y) must be images of shape "
                             f"(N, ...) and labels of shape (N,), got x {tuple(x.shape)} and "
                             f"y {tuple(y.shape)}.")
        return
    what = type(data).__name__
    if isinstance(data, tuple | list):
        what = f"a {what} of {len(data)} item(s) ({', '.join(type(t).__name__ for t in data)})"
    elif torch.is_tensor(data):
        what = "a single tensor (labels missing)"
    raise ValueError(f"evaluate_robustness: data must be (x, y) tensors, a DataLoader or a "
                     f"Dataset, got {what}; {accepted}.")


def _resolve_attacks(attacks: object, dataset: str) -> dict[str, Attack]:
    """``"paper"``/``"strongest"``/``"quick"``, an attack name, a list of names/dicts/Attacks
    or ``{name: Attack}`` → ``{name: Attack}`` (see :func:`evaluate_robustness`)."""
    from bnnrobust.attacks.factory import build_attack, list_attacks
    from bnnrobust.attacks.presets import PRESET_KINDS, preset_attacks

    presets = ", ".join(repr(k) for k in PRESET_KINDS)
    if isinstance(attacks, str):
        kind = attacks.strip().lower()
        if kind in PRESET_KINDS:
            return preset_attacks(dataset, kind)  # as evaluate.py: attacks' own seeds as preset
        try:
            atk = build_attack(attacks, dataset)
        except (ValueError, TypeError):
            raise ValueError(f"evaluate_robustness: attacks={attacks!r} is neither a preset "
                             f"(accepted: {presets}) nor an attack name (known: "
                             f"{', '.join(list_attacks())}).") from None
        return {atk.name: atk}
    if isinstance(attacks, Attack):
        return {attacks.name: attacks}
    if isinstance(attacks, Mapping) and attacks and all(isinstance(a, Attack)
                                                          for a in attacks.values()):
        return {str(k): a for k, a in attacks.items()}
    if isinstance(attacks, Mapping) and "name" in attacks:
        items: Sequence[Any] = [attacks]  # one attack dict
    elif isinstance(attacks, list | tuple):
        items = attacks
    else:
        raise ValueError(f"evaluate_robustness: attacks must be a preset name ({presets}), a "
                         "list of attack names/dicts/Attacks or a dict {name: Attack}, got "
                         f"{type(attacks).__name__} ({attacks!r:.80}).")
    if not items:
        raise ValueError(f"evaluate_robustness: attacks is empty; give a preset ({presets}) or "
                         "at least one attack.")
    out: dict[str, Attack] = {}
    for item in items:
        try:
            atk = build_attack(item, dataset)
        except (ValueError, TypeError) as err:
            raise ValueError(f"evaluate_robustness: bad attack {item!r}: {err}") from None
        if atk.name in out:
            raise ValueError(f"evaluate_robustness: the attack name {atk.name!r} appears "
                             "twice; give the dicts distinct 'label' keys, e.g. "
                             "{'name': 'pgd', 'eps': 0.05, 'label': 'pgd_eps0.05'}.")
        out[atk.name] = atk
    return out


def evaluate_robustness(
    model: nn.Module,
    data: Any,
    attacks: str | Sequence[Any] | Mapping[str, Any] | Attack = "strongest",
    dataset: str = "cifar10",
    n: int | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    log: bool = True,
    progress: bool | None = None,
    pilot: bool = True,
    **options: Any,
) -> RobustnessResult:
    """Clean and robust accuracy of ``model`` under ``attacks``, in one call.

    Args:
        model: classifier mapping images in [0, 1] (normalization inside) to logits.
        data: ``(x, y)`` tensors, a DataLoader or a map-style Dataset (see
            :func:`~bnnrobust.evaluation.runner.evaluate`).
        attacks: a preset, ``"strongest"`` (the worst-case cascade, the number to report),
            ``"paper"`` (Table 6 set) or ``"quick"`` (5-step PGD ×{plain, NJS, HNS}); an
            attack name; a list of names/dicts (:func:`bnnrobust.attacks.factory.build_attack`;
            a dict's ``label`` names it) or Attacks; or a dict ``{name: Attack}``.
        dataset: preset dataset for the budgets (``"cifar10"``, ``"cifar100"``, ``"fmnist"``,
            ``"mnist"``, ``"synthetic"``); also the eps unit of :meth:`~RobustnessResult.to_markdown`.
        n: evaluate the first ``n`` samples (``None``: all).
        device, batch_size, seed: as :func:`~bnnrobust.evaluation.runner.evaluate`.
        log: print one line per stage on stdout (rank 0): ``clean accuracy: 81.20 %``, then per
            attack ``<name>: robust accuracy 12.30 % (worst case so far 10.10 %), 14.2 s``
            and a final ``robust accuracy: ...`` line with its Wilson 95 % interval.
        progress: tqdm bars with an ETA per attack and the pilot estimates on stderr
            (``None``: as ``log``). pilot: see :func:`~bnnrobust.evaluation.runner.evaluate`.
        **options: ``save_adv``, ``partial_results``, ``calibrate_njs``, ``n_calib``,
            ``num_classes`` of :func:`~bnnrobust.evaluation.runner.evaluate`.

    The clean line is printed with the first attack's line (the runner reports after each
    attack; the clean-correct count is the attacks' ``attacked``).

    Raises:
        ValueError: an unknown preset, attack or dataset, data of the wrong type, ``n < 1``,
            an unknown option (each message names the value and what is accepted); and the
            errors of ``evaluate`` (broken model, images outside [0, 1], ...).

    Returns:
        :class:`RobustnessResult`: ``clean_acc``, ``attacks[name].adv_acc``,
        ``worst_case_acc`` (percent), ``robust_mask``, ``masks``, ``to_dict()``,
        ``to_markdown()``.
    """
    unknown = sorted(set(options) - set(_PASSED_ON))
    if unknown:
        raise ValueError(f"evaluate_robustness: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"accepted: {', '.join(_PASSED_ON)} (and model, data, attacks, "
                         "dataset, n, device, batch_size, seed, log, progress, pilot).")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"evaluate_robustness: n must be a positive integer (the first n "
                         f"samples) or None (all samples), got {n!r}.")
    if not isinstance(model, nn.Module):
        raise ValueError(f"evaluate_robustness: model must be a torch nn.Module mapping images "
                         f"in [0, 1] to logits, got {type(model).__name__}.")
    ds = _check_dataset(dataset)
    _check_data(data)
    built = _resolve_attacks(attacks, ds)

    worst: list[Tensor] = []

    def on_attack(name: str, res: AttackResult, mask: Tensor) -> None:
        if not worst:  # every attack attacks exactly the clean-correct samples
            print(f"clean accuracy: {100.0 * res.attacked / res.n:.2f} %", flush=True)
            worst.append(mask.bool().cpu())
        else:
            worst[0] = worst[0] & mask.bool().cpu()
        so_far = 100.0 * int(worst[0].sum()) / res.n
        print(f"{name}: robust accuracy {res.adv_acc:.2f} % (worst case so far {so_far:.2f} %), "
              f"{res.seconds:.1f} s", flush=True)

    result = evaluate(model, data, built, n=n, seed=seed, device=device,
                      progress=log if progress is None else bool(progress),
                      batch_size=batch_size, pilot=pilot,
                      on_attack=on_attack if log else None, **options)
    out = RobustnessResult(**{f.name: getattr(result, f.name) for f in fields(EvalResult)})
    out.extra = {**out.extra, "dataset": ds}
    if log and worst:  # printed on rank 0 only, where on_attack ran
        count = round(out.worst_case_acc * out.n / 100.0) if out.worst_case_acc is not None else 0
        lo, hi = wilson_interval_percent(count, out.n)
        print(f"robust accuracy: {out.worst_case_acc:.2f} % (95 % CI {lo:.1f}–{hi:.1f} %; worst "
              f"case over {len(built)} attack{'s' if len(built) != 1 else ''}, n = {out.n}), "
              f"total {out.seconds:.1f} s", flush=True)
    return out
