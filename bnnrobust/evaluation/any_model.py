"""Evaluate a network bnnrobust never trained (``docs/evaluation.md``, "Any model").

``evaluate.py --model SPEC --weights PATH --dataset NAME`` builds the network from ``SPEC``:

* ``MODULE:CLASS`` (e.g. ``mypkg.nets:WideResNet``): the class (or a function returning an
  ``nn.Module``) called with ``--model_args`` as keyword arguments. The user names the module
  on the command line, so it is allowed (:mod:`bnnrobust.safe_loading`: only classes named
  *inside* a checkpoint are allow-listed); the current folder is on the import path;
* ``timm:NAME`` (``timm.create_model(NAME, pretrained=False, **model_args)``) or
  ``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights=None, **model_args)``):
  nothing is ever downloaded.

``--weights`` is a plain ``state_dict``, a full Lightning checkpoint (its ``state_dict`` is
taken) or ``zoo:NAME`` (:mod:`bnnrobust.zoo`, checksum verified), read with
``torch.load(weights_only=True)`` from a local file only. Key prefixes ``model.`` and
``module.`` (Lightning, DataParallel) are stripped when that makes the keys match; any other
mismatch is one :class:`AnyModelError` naming a few missing and unexpected keys. A NaN/inf in
any tensor is refused, naming the tensor. ``--binarizer NAME`` converts the network with
:func:`bnnrobust.binarize.binarize_model`; ``--normalize {mean: [...], std: [...]}`` puts a
:class:`bnnrobust.models.normalize.Normalize` in front (``Sequential(Normalize, net)``, the
layout of bnnrobust's own checkpoints); without it the network sees [0, 1] pixels as they are.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnrobust.safe_loading import is_remote, load_checkpoint

__all__ = ["DATA_MODULES", "AnyModelError", "build_datamodule", "build_model",
           "build_user_model", "load_weights", "match_state_dict", "read_state_dict"]

#: ``--dataset`` name → data module class of :mod:`bnnrobust.data`
DATA_MODULES: dict[str, str] = {
    "cifar10": "CIFAR10DataModule",
    "cifar100": "CIFAR100DataModule",
    "fmnist": "FashionMNISTDataModule",
    "mnist": "MNISTDataModule",
    "synthetic": "SyntheticDataModule",
}

#: key prefixes stripped (in these combinations) to make a state dict fit the model
PREFIXES: tuple[tuple[str, ...], ...] = ((), ("module.",), ("model.",), ("model.", "module."),
                                         ("module.", "model."))

_SPEC_FORMS = ("MODULE:CLASS (e.g. mypkg.nets:ResNet18), timm:NAME (e.g. timm:resnet18) or "
               "torchvision:NAME (e.g. torchvision:resnet18)")
_NO_DOWNLOAD = ("pretrained", "weights", "pretrained_cfg", "pretrained_cfg_overlay",
                "checkpoint_path")


class AnyModelError(ValueError):
    """A ``--model``/``--weights``/``--dataset`` value that cannot be used (one paragraph)."""


# -- the network ----------------------------------------------------------------------------
def build_user_model(spec: str, model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """The network of ``spec`` (``MODULE:CLASS``, ``timm:NAME``, ``torchvision:NAME``), in eval mode.

    ``model_args`` are passed as keyword arguments. Nothing is downloaded: ``timm`` models are
    built with ``pretrained=False``, ``torchvision`` models with ``weights=None``.
    """
    text = str(spec).strip()
    if is_remote(text):
        raise AnyModelError(f"--model {text!r} is a remote address; bnnrobust imports no code "
                            f"from the network. Give {_SPEC_FORMS}.")
    source, sep, name = text.partition(":")
    if not sep or not source or not name or "/" in source or "\\" in source \
            or source.endswith(".py"):
        raise AnyModelError(f"--model {text!r} is not a network spec; give {_SPEC_FORMS}. "
                            "MODULE is an importable dotted module name, not a file path.")
    args = dict(model_args or {})
    if source in ("timm", "torchvision"):
        given = sorted(k for k in args if k in _NO_DOWNLOAD)
        if given:
            raise AnyModelError(f"--model_args {given} of {text!r} would load pretrained "
                                "weights; bnnrobust downloads nothing. Give the weights as a "
                                "local file with --weights PATH instead.")
    if source == "timm":
        net = _timm_model(name, args)
    elif source == "torchvision":
        net = _torchvision_model(name, args)
    else:
        net = _user_model(source, name, args, text)
    return net.eval()


def _timm_model(name: str, args: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise AnyModelError(f"--model timm:{name}: timm has no model {name!r}.{hint} "
                            "`python -c 'import timm; print(timm.list_models())'` lists them.")
    try:
        net = timm.create_model(name, pretrained=False, **args)
    except TypeError as err:
        raise AnyModelError(f"--model timm:{name} does not take --model_args {args}: {err}") \
            from None
    return _check_module(net, f"timm:{name}")


def _torchvision_model(name: str, args: dict[str, Any]) -> nn.Module:
    from torchvision import models

    names = models.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise AnyModelError(f"--model torchvision:{name}: torchvision has no model {name!r}."
                            f"{hint} torchvision.models.list_models() lists them.")
    try:
        net = models.get_model(name, weights=None, **args)
    except (TypeError, ValueError) as err:
        raise AnyModelError(f"--model torchvision:{name} does not take --model_args {args}: "
                            f"{err}") from None
    return _check_module(net, f"torchvision:{name}")


def _user_model(module_name: str, attr: str, args: dict[str, Any], spec: str) -> nn.Module:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # `bnnrobust evaluate` (console script) as `python -m` does
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise AnyModelError(f"--model {spec!r}: the module {module_name!r} cannot be imported "
                            f"({err}). Run from the folder that holds it or add that folder to "
                            "PYTHONPATH.") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(module).items()
                           if inspect.isclass(v) and issubclass(v, nn.Module)
                           and v.__module__ == module.__name__)
            raise AnyModelError(f"--model {spec!r}: {module_name!r} has no {attr!r}; its "
                                f"nn.Module classes: {', '.join(found[:10]) or 'none'}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise AnyModelError(f"--model {spec!r} names a {type(obj).__name__}, not an nn.Module "
                            "class or a function that returns one.")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**args)
        except TypeError as err:
            params = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
            raise AnyModelError(f"--model {spec!r} does not take --model_args {args} ({err}); "
                                f"it accepts: {', '.join(params) or 'no arguments'}.") from None
    try:
        net = obj(**args)
    except Exception as err:
        raise AnyModelError(f"--model {spec!r} with --model_args {args} failed to build: "
                            f"{type(err).__name__}: {' '.join(str(err).split())}") from None
    return _check_module(net, spec)


def _check_module(net: Any, spec: str) -> nn.Module:
    if not isinstance(net, nn.Module):
        raise AnyModelError(f"--model {spec!r} built a {type(net).__name__}, not a "
                            "torch.nn.Module.")
    return net


# -- the weights ----------------------------------------------------------------------------
def read_state_dict(weights: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``weights``: a plain state dict, a Lightning checkpoint's ``state_dict``
    or ``zoo:NAME``; a local file read with ``weights_only=True``."""
    text = str(weights)
    if text.startswith("zoo:"):
        from bnnrobust import zoo

        try:
            file: Path = zoo.path(text)
        except zoo.ZooError as err:
            raise AnyModelError(f"--weights {text!r}: {err}") from None
    else:
        if is_remote(text):
            raise AnyModelError(f"--weights {text!r} is a remote path; bnnrobust loads local "
                                "files only. Download it yourself and pass the local file (it "
                                "is read with weights_only=True).")
        file = Path(text)
        if not file.is_file():
            raise AnyModelError(f"--weights {text!r} " + ("is a folder; give the weights file."
                                if file.is_dir() else "does not exist."))
    try:
        blob = load_checkpoint(file, map_location="cpu")
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        if refused is None:  # not a refused class: a corrupt byte stream
            raise AnyModelError(f"--weights {text!r} is unreadable (corrupt or truncated, or not "
                                "a PyTorch file): the safe loader (weights_only=True) failed.") \
                from None
        raise AnyModelError(f"--weights {text!r} holds an object of class {refused.group(1)}, "
                            "not only tensors and containers, and was refused by the safe loader "
                            "(weights_only=True; a weights file is data, never code). Save the "
                            "weights with torch.save(model.state_dict(), PATH).") from None
    except Exception as err:  # torch raises many types for corrupt or truncated files
        raise AnyModelError(f"--weights {text!r} is unreadable (corrupt or truncated, or not a "
                            f"PyTorch file): {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}") from None
    state = blob.get("state_dict") if isinstance(blob, dict) and "state_dict" in blob else blob
    if not (isinstance(state, Mapping) and state
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        found = (sorted(map(str, blob))[:8] if isinstance(blob, dict)
                 else type(blob).__name__)
        raise AnyModelError(f"--weights {text!r} is neither a state dict (names → tensors) nor a "
                            f"Lightning checkpoint with a 'state_dict' (found: {found}). Save "
                            "the weights with torch.save(model.state_dict(), PATH).")
    return dict(state)


def _strip(state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]
           ) -> dict[str, torch.Tensor] | None:
    out = dict(state)
    for prefix in prefixes:
        if not all(k.startswith(prefix) for k in out):
            return None
        out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def match_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module
                     ) -> dict[str, torch.Tensor] | None:
    """``state`` with the ``model.``/``module.`` prefixes stripped that make its keys exactly
    ``model``'s; ``None`` when no stripping does."""
    own = set(model.state_dict())
    for prefixes in PREFIXES:
        candidate = _strip(state, prefixes)
        if candidate is not None and set(candidate) == own:
            return candidate
    return None


def _closest(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    own = set(model.state_dict())
    candidates = [c for p in PREFIXES if (c := _strip(state, p)) is not None]
    return max(candidates, key=lambda c: len(own & set(c)))


def _show(keys: list[str], limit: int = 5) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _mismatch(state: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> str:
    best = _closest(state, model)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in best)
    unexpected = sorted(k for k in best if k not in own)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing in the weights ({_show(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model ({_show(unexpected)})")
    return (f"The weights {source} do not fit the network: " + "; ".join(parts)
            + ". The prefixes 'model.' and 'module.' were tried; check --model, --model_args "
            "and --binarizer.")


def load_weights(model: nn.Module, weights: str | Path | Mapping[str, torch.Tensor],
                 source: str | None = None) -> None:
    """Load ``weights`` (a path, ``zoo:NAME`` or a state dict) into ``model``, strictly.

    ``model.``/``module.`` prefixes are stripped when that makes the keys match; non-finite
    tensors, missing/unexpected keys and shape mismatches raise :class:`AnyModelError`.
    """
    state = weights if isinstance(weights, Mapping) else read_state_dict(weights)
    source = source or (repr(str(weights)) if not isinstance(weights, Mapping) else "given")
    _check_finite(state, source)
    matched = match_state_dict(state, model)
    if matched is None:
        raise AnyModelError(_mismatch(state, model, source))
    _load_strict(model, matched, source)


def _check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    from bnnrobust.evaluation.checkpoint import CheckpointError, check_finite_weights

    try:
        check_finite_weights(dict(state), f"The weights {source}")
    except CheckpointError as err:
        raise AnyModelError(str(err).replace("(e.g. an earlier epoch's)", "")) from None


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    shapes = sorted(f"{k}: weights {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape))
    if shapes:
        raise AnyModelError(f"The weights {source} do not fit the network: {len(shapes)} shape "
                            f"mismatch(es) ({_show(shapes)}); check --model_args (e.g. "
                            "num_classes, in_channels).")
    model.load_state_dict(state, strict=True)


# -- the model that is evaluated ------------------------------------------------------------
def _normalizer(normalize: Mapping[str, Any]) -> nn.Module:
    from bnnrobust.models.normalize import Normalize

    if set(normalize) != {"mean", "std"}:
        raise AnyModelError(f"--normalize {dict(normalize)} needs exactly the keys mean and std, "
                            "e.g. '{mean: [0.4914, 0.4822, 0.4465], std: [0.2471, 0.2435, "
                            "0.2616]}' (per channel, [0, 1] pixel units).")
    mean, std = normalize["mean"], normalize["std"]
    mean = [mean] if isinstance(mean, int | float) else mean
    std = [std] if isinstance(std, int | float) else std
    try:
        return Normalize(mean, std)
    except (TypeError, ValueError) as err:
        raise AnyModelError(f"--normalize {dict(normalize)}: {err}") from None


def _normalize_hint(state: Mapping[str, torch.Tensor]) -> str:
    """A ``--normalize`` suggestion when ``state`` holds a Normalize in front (bnnrobust layout)."""
    for prefixes in PREFIXES:
        cand = _strip(state, prefixes)
        if cand and "0.mean" in cand and "0.std" in cand:
            mean = [round(v, 6) for v in cand["0.mean"].flatten().tolist()]
            std = [round(v, 6) for v in cand["0.std"].flatten().tolist()]
            return (f" The weights hold a Normalize in front (keys 0.mean, 0.std): add "
                    f"--normalize '{{mean: {mean}, std: {std}}}'.")
        if cand and "normalize.mean" in cand and "normalize.std" in cand:
            mean = [round(v, 6) for v in cand["normalize.mean"].flatten().tolist()]
            std = [round(v, 6) for v in cand["normalize.std"].flatten().tolist()]
            return (f" The weights hold the network's own Normalize (keys normalize.mean, "
                    f"normalize.std, the layout of bnnrobust's models): add mean: {mean} and "
                    f"std: {std} to --model_args.")
    return ""


def build_model(spec: str, *, model_args: Mapping[str, Any] | None = None,
                weights: str | Path | None = None, binarizer: str | None = None,
                normalize: Mapping[str, Any] | None = None) -> nn.Module:
    """The network to evaluate, in eval mode: built, binarized, normalized, weights loaded.

    The weights are matched, in this order, to: ``Sequential(Normalize, binarized net)`` (with
    ``normalize``), the binarized net, and (with ``binarizer``) the float net before it is
    binarized, so a float state dict can be binarized. Weights that carry a Normalize must
    agree with ``normalize``.
    """
    net = build_user_model(spec, model_args)
    norm = _normalizer(normalize) if normalize is not None else None
    if binarizer is not None:
        from bnnrobust.binarize import binarize_model

        try:
            binary = binarize_model(net, binarizer).eval()
        except (TypeError, ValueError) as err:
            raise AnyModelError(f"--binarizer {binarizer!r}: {err}") from None
    else:
        binary = net

    def wrap(inner: nn.Module, front: nn.Module | None) -> nn.Module:
        return inner if front is None else nn.Sequential(front, inner).eval()

    if weights is None:
        return wrap(binary, norm)
    state = read_state_dict(weights)
    source = repr(str(weights))
    _check_finite(state, source)
    levels: list[tuple[bool, bool]] = []  # (normalize in front, float net to binarize after)
    for float_net in ([False, True] if binarizer is not None else [False]):
        levels += [(True, float_net)] if norm is not None else []
        levels.append((False, float_net))
    for front, float_net in levels:
        fresh_norm = _normalizer(normalize) if front and normalize is not None else None
        target = wrap(net if float_net else binary, fresh_norm)
        matched = match_state_dict(state, target)
        if matched is None:
            continue
        _load_strict(target, matched, source)
        if fresh_norm is not None and norm is not None:
            _same_normalize(fresh_norm, norm, source)
        if float_net and binarizer is not None:  # float weights: binarize the loaded net
            from bnnrobust.binarize import binarize_model

            binary = binarize_model(net, binarizer).eval()
        return wrap(binary, norm)
    hint = "" if norm is not None else _normalize_hint(state)
    raise AnyModelError(_mismatch(state, wrap(binary, None), source) + hint)


def _same_normalize(loaded: nn.Module, given: nn.Module, source: str) -> None:
    a, b = loaded.state_dict(), given.state_dict()
    if any(a[k].shape != b[k].shape or not torch.allclose(a[k], b[k]) for k in ("mean", "std")):
        raise AnyModelError(
            f"--normalize gives mean {b['mean'].flatten().tolist()}, std "
            f"{b['std'].flatten().tolist()}, but the weights {source} hold a Normalize with mean "
            f"{a['mean'].flatten().tolist()}, std {a['std'].flatten().tolist()}; make them agree "
            "(or drop the Normalize from the weights).")


# -- the data -------------------------------------------------------------------------------
def build_datamodule(dataset: str | None, overrides: Mapping[str, Any] | None = None) -> Any:
    """The bnnrobust data module of ``dataset`` (``--dataset``), ``overrides`` as init arguments."""
    from bnnrobust import data as data_modules
    from bnnrobust.attacks.presets import canonical_dataset

    accepted = ", ".join(DATA_MODULES)
    if not dataset:
        raise AnyModelError(f"--model needs --dataset (one of {accepted}): it chooses the data "
                            "and the attack presets.")
    try:
        key = canonical_dataset(dataset)
    except ValueError:
        key = str(dataset)
    if key not in DATA_MODULES:
        raise AnyModelError(f"--dataset {dataset!r} is not a dataset bnnrobust can load; "
                            f"accepted: {accepted}.")
    cls = getattr(data_modules, DATA_MODULES[key])
    kwargs = dict(overrides or {})
    params = [p for p in inspect.signature(cls).parameters if p != "self"]
    bad = sorted(k for k in kwargs if k not in params)
    if bad:
        raise AnyModelError(f"--data {bad} are not arguments of {cls.__name__} (--dataset {key}); "
                            f"accepted: {', '.join(params)}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise AnyModelError(f"--data {kwargs} for {cls.__name__}: {err}") from None
