"""Build attacks from names and dicts (configs, CLI, ``ImageClassifier(test_attacks=...)``).

Names (:func:`list_attacks`)::

    fgsm  fgsm++njs  fgsm++hns            R+FGSM (L∞), FGSM++
    pgd   pgd++njs   pgd++hns             PGD L∞, PGD++
    pgd_l2 pgd_l2++njs pgd_l2++hns        PGD L2, PGD++
    pgd_dlr  pgd_dlr++njs  pgd_dlr++hns   PGD L∞ with the DLR loss
    apgd-ce  apgd-ce++njs  apgd-ce++hns   our APGD-CE (APGD++ with a temperature)
    apgd-dlr  apgd-t                      our APGD-DLR, APGD-T (targeted DLR, 9 targets)
    square  deepfool                      torchattacks Square, DeepFool (unbounded)
    ta-apgd-ce ta-apgd-dlr ta-apgd-t ta-fab-t   torchattacks' APGD/APGD-T/FAB-T
    strongest                             the worst-case cascade of presets.strongest_cascade

A ``_l2`` suffix selects the L2 threat model for any attack that has a ``norm``
(``"apgd-ce_l2"``, ``"square_l2"``, ``"fgsm_l2++hns"``); the names the attacks themselves
report (``atk.name``, e.g. ``"pgd-dlr"``) are accepted too. ``"++prop1"`` (Proposition 1's β
per sample and step, paper Table 13) works like ``"++njs"``.

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
Keyword ``overrides`` are merged over the dict.

Defaults: eps, step size and steps come from the dataset's preset
(:mod:`bnnrobust.attacks.presets`; ``dataset=None`` uses cifar10, the paper's Table 6):
FGSM uses the FGSM row, PGD the PGD row of its norm, APGD/Square/torchattacks the eps of
that row (with their own step rules and budgets: APGD 100 steps, Square 5000 queries).
If eps is given but not the step size, PGD/FGSM's step keeps the preset's ratio step/eps.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from bnnrobust.attacks.apgd import APGD
from bnnrobust.attacks.base import Attack, Norm
from bnnrobust.attacks.cascade import Cascade
from bnnrobust.attacks.peers import (
    DeepFool,
    Square,
    TorchattacksAPGD,
    TorchattacksAPGDT,
    TorchattacksFAB,
)
from bnnrobust.attacks.pgd import FGSM, PGD
from bnnrobust.attacks.presets import get_preset, strongest_cascade
from bnnrobust.attacks.transfer import TransferAttack

__all__ = ["build_attack", "list_attacks"]

# base name -> (builder, arguments fixed by the name)
_BASES: dict[str, tuple[Any, dict[str, Any]]] = {
    "fgsm": (FGSM, {}),
    "pgd": (PGD, {}),
    "pgd_dlr": (PGD, {"loss": "dlr"}),
    "apgd-ce": (APGD, {"loss": "ce"}),
    "apgd-dlr": (APGD, {"loss": "dlr"}),
    "apgd-t": (APGD, {"loss": "dlr_targeted"}),
    "square": (Square, {}),
    "deepfool": (DeepFool, {}),
    "ta-apgd-ce": (TorchattacksAPGD, {"loss": "ce"}),
    "ta-apgd-dlr": (TorchattacksAPGD, {"loss": "dlr"}),
    "ta-apgd-t": (TorchattacksAPGDT, {}),
    "ta-fab-t": (TorchattacksFAB, {"targeted": True}),
    "strongest": (strongest_cascade, {}),
}
_ALIASES = {"pgd-dlr": "pgd_dlr", "apgd": "apgd-ce", "apgd-ce-t": "apgd-t", "fab-t": "ta-fab-t"}
#: bases that take a temperature (a "++njs"/"++hns"/"++prop1" suffix)
_TEMPERED = ("fgsm", "pgd", "pgd_l2", "pgd_dlr", "apgd-ce")
_TEMPERATURES = ("njs", "hns", "prop1")

_LISTED: list[str] = [
    "fgsm", "fgsm++njs", "fgsm++hns",
    "pgd", "pgd++njs", "pgd++hns",
    "pgd_l2", "pgd_l2++njs", "pgd_l2++hns",
    "pgd_dlr", "pgd_dlr++njs", "pgd_dlr++hns",
    "apgd-ce", "apgd-ce++njs", "apgd-ce++hns", "apgd-dlr", "apgd-t",
    "square", "deepfool",
    "ta-apgd-ce", "ta-apgd-dlr", "ta-apgd-t", "ta-fab-t",
    "strongest",
]


def list_attacks() -> list[str]:
    """The attack names :func:`build_attack` accepts (plus ``_l2`` variants, see module doc)."""
    return list(_LISTED)


def _unknown_name(name: object) -> ValueError:
    close = difflib.get_close_matches(str(name).lower(), _LISTED, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"Unknown attack {name!r}.{hint} Known names: {', '.join(_LISTED)}; a '_l2' suffix "
        "selects the L2 threat model (e.g. 'apgd-ce_l2'), a '++njs'/'++hns'/'++prop1' suffix "
        f"the temperature of {', '.join(_TEMPERED)}; dicts {{'name': ..., <arguments>}} (with "
        "e.g. 'temperature': {'name': 'njs', 'rho': 1e-5}) and "
        "{'name': 'cascade', 'attacks': [...]} are accepted too."
    )


def _parse_name(name: str) -> tuple[str, Any, dict[str, Any]]:
    """``"pgd_l2++hns"`` → ``("pgd", PGD, {"norm": "l2", "temperature": "hns"})``."""
    if not isinstance(name, str):
        raise TypeError(f"An attack name must be a string, got {type(name).__name__} ({name!r}).")
    key = name.strip().lower()
    base, sep, temp = key.partition("++")
    fixed: dict[str, Any] = {}
    if sep:
        if temp not in _TEMPERATURES or base not in _TEMPERED and base.removesuffix("_l2") \
                not in _TEMPERED:
            raise _unknown_name(name)
        fixed["temperature"] = temp
    base = _ALIASES.get(base, base)
    if base not in _BASES and base.endswith("_l2"):
        base = _ALIASES.get(base[:-3], base[:-3])
        fixed["norm"] = "l2"
    if base not in _BASES:
        raise _unknown_name(name)
    builder, name_fixed = _BASES[base]
    fixed.update(name_fixed)
    if "norm" in fixed and "norm" not in _parameters(builder):
        raise _unknown_name(name)
    return base, builder, fixed


def _parameters(builder: Any) -> list[str]:
    sig = inspect.signature(builder)
    return [p for p in sig.parameters if p not in ("self",)]


def _defaults(base: str, builder: Any, kwargs: dict[str, Any], dataset: str | None) -> None:
    """Fill eps/step_size/steps from the dataset preset where the user gave none."""
    params = _parameters(builder)
    if base in ("deepfool",):
        return
    if base == "strongest":
        kwargs.setdefault("dataset", dataset)
        return
    preset = get_preset(dataset or "cifar10")
    norm = Norm.parse(kwargs.get("norm", "linf"))
    if builder is FGSM:
        row = preset.fgsm if norm is Norm.LINF else preset.pgd_l2
        ref_eps, ref_step, ref_steps = row.eps, (row.step_size if norm is Norm.LINF else row.eps), 1
    else:
        row = preset.budget(norm)
        ref_eps, ref_step, ref_steps = row.eps, row.step_size, row.steps
    user_eps = "eps" in kwargs
    kwargs.setdefault("eps", ref_eps)
    if "step_size" in params and "step_size" not in kwargs:
        kwargs["step_size"] = ref_step * (float(kwargs["eps"]) / ref_eps if user_eps else 1.0)
    if builder is PGD:
        kwargs.setdefault("steps", ref_steps)


def build_attack(
    spec: str | Mapping[str, Any] | Attack, dataset: str | None = None, **overrides: Any
) -> Attack:
    """Build an attack from a name, a dict or an instance (see the module docstring).

    Args:
        spec: ``"pgd++hns"``, ``{"name": "pgd", "eps": 0.1, "steps": 10}``, an ``Attack``...
        dataset: preset for the defaults (``"cifar10"``, ``"cifar100"``, ``"fmnist"``,
            ``"mnist"``, ``"synthetic"``); ``None``: cifar10.
        **overrides: arguments merged over the dict's (e.g. ``seed=0``).

    Raises:
        ValueError: unknown name (listing the known ones), unknown argument (naming it and
            the accepted ones), an argument that contradicts the name (``"pgd_l2"`` with
            ``norm="linf"``), or a bad value (from the attack's own checks).
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
                             f"{', '.join(_LISTED)}.")
        name = spec["name"]
        kwargs = {k: v for k, v in spec.items() if k != "name"}
    else:
        raise TypeError(f"An attack spec must be a name, a dict or an Attack, got "
                        f"{type(spec).__name__} ({spec!r}).")
    kwargs.update(overrides)

    if isinstance(name, str) and name.strip().lower() == "cascade":
        return _build_cascade(kwargs, dataset)
    if isinstance(name, str) and name.strip().lower() == "transfer":
        return _build_transfer(kwargs, dataset)

    base, builder, fixed = _parse_name(name)
    params = _parameters(builder)
    for key in kwargs:
        if key not in params:
            accepted = [p for p in params if p not in fixed]
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
    _defaults(base, builder, kwargs, dataset)
    return builder(**kwargs)


def _check_keys(kind: str, kwargs: Mapping[str, Any], accepted: tuple[str, ...]) -> None:
    for key in kwargs:
        if key not in accepted:
            raise ValueError(f"Unknown argument {key!r} for attack {kind!r}. Accepted: "
                             f"{', '.join(accepted)}.")


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
            "{name: transfer, source: logs/resnet18_ref/checkpoints/last.ckpt, attack: pgd}."
        )
    return TransferAttack(source, build_attack(kwargs.get("attack", "pgd"), dataset))
