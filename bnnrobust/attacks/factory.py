"""Build attacks from names and dicts (configs, CLI, ``ImageClassifier(test_attacks=...)``).

Names: the attacks registered in :mod:`bnnrobust.attacks.registry` (:func:`list_attacks`;
the table in ``docs/attacks.md``). A ``_l2`` suffix selects the L2 threat model of the
attacks that have one (``"apgd-ce_l2"``, ``"square_l2"``, ``"fgsm_l2++hns"``); a
``"++njs"``/``"++hns"``/``"++prop1"`` suffix the temperature of those that take one
(``"++prop1"``: Proposition 1's β per sample and step, paper Table 13); the aliases (such
as the names the attacks themselves report, ``atk.name``, e.g. ``"pgd-dlr"``) are accepted
too.

Temperatures with arguments: ``{"name": "pgd", "temperature": {"name": "njs", "rho": 1e-5}}``
(NJS with another ρ, Table 11), ``{"name": "pgd", "temperature": {"name": "prop1", "rho":
0.1}}``, ``{"name": "fgsm", "temperature": {"name": "fixed", "beta": 5.0}}``; a
``"pgd++njs"`` name with a ``{"name": "njs", ...}`` temperature dict is accepted too.

Specs: a name; a dict ``{"name": "pgd", "eps": 0.1, "steps": 10, "restarts": 20,
"surrogate": "tanh:5", ...}`` whose other keys are the attack class's arguments; a dict
``{"name": "cascade", "attacks": [spec, ...]}``; a dict ``{"name": "transfer", "source":
<nn.Module>, "attack": spec}`` (examples crafted on ``source``, e.g. the float reference;
``evaluate.py`` configs give a checkpoint path as ``source``); or an :class:`Attack`
(returned as is).
Keyword ``overrides`` are merged over the dict. Every dict (and the overrides) may carry a
``"label"``: the built attack's ``name`` (result keys, metric and log names), e.g.
``{"name": "pgd", "eps": 0.05, "label": "pgd_eps0.05"}``.

Defaults: eps, step size and steps come from the dataset's preset
(:mod:`bnnrobust.attacks.presets`; ``dataset=None`` uses cifar10, the paper's Table 6), as
each entry's ``budget`` says: FGSM uses the FGSM row, PGD the PGD row of its norm,
APGD/Square/torchattacks the eps of that row (with their own step rules and budgets: APGD
100 steps, Square 5000 queries). If eps is given but not the step size, PGD/FGSM's step
keeps the preset's ratio step/eps.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from torch import nn

from bnnrobust.attacks.base import Attack, Norm
from bnnrobust.attacks.cascade import Cascade
from bnnrobust.attacks.presets import get_preset
from bnnrobust.attacks.registry import (
    TEMPERATURE_SUFFIXES,
    AttackEntry,
    find_attack,
    list_attacks,
    unknown_attack_error,
)
from bnnrobust.attacks.transfer import TransferAttack

__all__ = ["build_attack", "list_attacks"]


def _parse_name(name: object) -> tuple[AttackEntry, dict[str, Any]]:
    """``"pgd_l2++hns"`` → ``(<entry pgd_l2>, {"temperature": "hns", "norm": "l2"})``."""
    if not isinstance(name, str):
        raise TypeError(f"An attack name must be a string, got {type(name).__name__} ({name!r}).")
    base, sep, temp = name.strip().lower().partition("++")
    entry, l2 = find_attack(base), False
    if entry is None and base.endswith("_l2"):
        entry, l2 = find_attack(base[:-3]), True
    if entry is None or l2 and not entry.l2_variant \
            or sep and (temp not in TEMPERATURE_SUFFIXES or not entry.temperature):
        raise unknown_attack_error(name)
    fixed: dict[str, Any] = {"temperature": temp} if sep else {}
    if l2:
        fixed["norm"] = "l2"
    fixed.update(entry.fixed)
    return entry, fixed


def _defaults(entry: AttackEntry, kwargs: dict[str, Any], dataset: str | None) -> None:
    """Fill eps/step_size/steps from the dataset preset where the user gave none."""
    if entry.budget == "none":
        return
    if entry.budget == "dataset":
        kwargs.setdefault("dataset", dataset)
        return
    preset = get_preset(dataset or "cifar10")
    norm = Norm.parse(kwargs.get("norm", "linf"))
    if entry.budget == "fgsm":
        row = preset.fgsm if norm is Norm.LINF else preset.pgd_l2
        ref_eps, ref_step = row.eps, (row.step_size if norm is Norm.LINF else row.eps)
    else:
        row = preset.budget(norm)
        ref_eps, ref_step = row.eps, row.step_size
    user_eps = "eps" in kwargs
    kwargs.setdefault("eps", ref_eps)
    if entry.budget in ("fgsm", "pgd") and "step_size" not in kwargs:
        kwargs["step_size"] = ref_step * (float(kwargs["eps"]) / ref_eps if user_eps else 1.0)
    if entry.budget == "pgd":
        kwargs.setdefault("steps", row.steps)


def _pop_label(kwargs: dict[str, Any]) -> str | None:
    """Remove and check the spec's ``label`` (the built attack's name); None if not given."""
    label = kwargs.pop("label", None)
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise ValueError(f"An attack 'label' (its name in results and logs) must be a "
                         f"non-empty string, got {label!r}.")
    return label


def build_attack(
    spec: str | Mapping[str, Any] | Attack, dataset: str | None = None, **overrides: Any
) -> Attack:
    """Build an attack from a name, a dict or an instance (see the module docstring).

    Args:
        spec: ``"pgd++hns"``, ``{"name": "pgd", "eps": 0.1, "steps": 10}``, an ``Attack``...
        dataset: preset for the defaults (``"cifar10"``, ``"cifar100"``, ``"fmnist"``,
            ``"mnist"``, ``"synthetic"``); ``None``: cifar10.
        **overrides: arguments merged over the dict's (e.g. ``seed=0``, ``label="pgd50"``).

    A ``label`` (in the dict or the overrides) becomes the attack's ``name``, the key of
    results, metrics and logs.

    Raises:
        ValueError: unknown name (listing the known ones), unknown argument (naming it and
            the accepted ones), an argument that contradicts the name (``"pgd_l2"`` with
            ``norm="linf"``), an empty or non-string label, or a bad value (from the
            attack's own checks).
    """
    if isinstance(spec, Attack):
        if overrides:
            raise ValueError(f"build_attack got an Attack instance ({spec!r}) and overrides "
                             f"{sorted(overrides)}; set them on the instance instead.")
        return spec
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, Mapping):
        if "name" not in spec:
            raise ValueError(f"An attack dict needs a 'name' key, got keys {sorted(spec)}; "
                             f"e.g. {{'name': 'pgd', 'eps': 0.1}}. Known names: "
                             f"{', '.join(list_attacks())}.")
        name = spec["name"]
        kwargs = {k: v for k, v in spec.items() if k != "name"}
    else:
        raise TypeError(f"An attack spec must be a name, a dict or an Attack, got "
                        f"{type(spec).__name__} ({spec!r}).")
    kwargs.update(overrides)
    label = _pop_label(kwargs)
    attack = _build(name, kwargs, dataset)
    if label is not None:
        attack.name = label
    return attack


def _build(name: object, kwargs: dict[str, Any], dataset: str | None) -> Attack:
    """The attack of ``name`` with the spec's other arguments (``label`` removed)."""
    if isinstance(name, str) and name.strip().lower() == "cascade":
        return _build_cascade(kwargs, dataset)
    if isinstance(name, str) and name.strip().lower() == "transfer":
        return _build_transfer(kwargs, dataset)

    entry, fixed = _parse_name(name)
    params = entry.parameters()
    for key in kwargs:
        if key not in params:
            accepted = [p for p in params if p not in fixed] + ["label"]
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown argument {key!r} for attack {name!r}.{hint} Accepted: "
                             f"{', '.join(accepted)}.")
    for key, value in fixed.items():
        given = kwargs.get(key)
        if key == "temperature" and isinstance(given, Mapping) \
                and str(given.get("name", "")).strip().lower() == value:
            continue  # "pgd++njs" with {"name": "njs", "rho": ...}: the dict's arguments win
        if key in kwargs and str(kwargs[key]).lower() != str(value).lower():
            raise ValueError(f"Attack {name!r} fixes {key}={value!r} by its name, got "
                             f"{key}={kwargs[key]!r}; drop the argument or change the name.")
        kwargs[key] = value
    _defaults(entry, kwargs, dataset)
    return entry.builder(**kwargs)


def _check_keys(kind: str, kwargs: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    for key in kwargs:
        if key not in accepted:
            raise ValueError(f"Unknown argument {key!r} for attack {kind!r}. Accepted: "
                             f"{', '.join((*accepted, 'label'))}.")


def _build_cascade(kwargs: dict[str, Any], dataset: str | None) -> Cascade:
    _check_keys("cascade", kwargs, ("attacks", "title"))
    specs = kwargs.get("attacks")
    if not isinstance(specs, list | tuple) or not specs:
        raise ValueError(f"A cascade needs a non-empty list 'attacks' of attack specs, got "
                         f"{specs!r}.")
    return Cascade([build_attack(s, dataset) for s in specs],
                   name=str(kwargs.get("title", "cascade")))


def _build_transfer(kwargs: dict[str, Any], dataset: str | None) -> TransferAttack:
    _check_keys("transfer", kwargs, ("source", "attack"))
    source = kwargs.get("source")
    if not isinstance(source, nn.Module):
        raise ValueError(
            f"A transfer attack needs 'source', the model to craft the examples on (an "
            f"nn.Module), got {source!r}. evaluate.py configs take a checkpoint path there: "
            "{name: transfer, source: logs/resnet18_ref/version_0/checkpoints/last.ckpt, attack: pgd}."
        )
    return TransferAttack(source, build_attack(kwargs.get("attack", "pgd"), dataset))
