"""Rebuild a trained system and its data module from a checkpoint, safely.

Checkpoints written by ``train.py`` / ``python -m bnnrobust fit`` (LightningCLI) hold:

* ``hyper_parameters``: the system's init arguments (the network as a nested
  ``class_path``/``init_args`` dict, linked values such as ``mean``/``std``/``num_classes``
  included), plus ``_class_path`` (the system class) and ``_instantiator``
  (``lightning.pytorch.cli.instantiate_module``, which builds nested ``class_path`` dicts);
* ``datamodule_hyper_parameters``: the data module's init arguments, with the same two keys;
* ``state_dict``: the system's weights (a zoo network's ``model.normalize.mean`` ... when it
  normalizes; files of the older ``model.0.mean``, ``model.1.*`` layout are renamed on load).

:func:`load_system` reads the file once with ``torch.load(weights_only=True)`` (no pickled
code is ever executed), rebuilds both objects with Lightning's own instantiator and loads
the weights strictly. A system built in Python (``ImageClassifier(model=nn.Module(...))``)
does not store its network's arguments; give the training YAML (``config=``) instead, and the
system and data module are rebuilt from it exactly as the training CLI did (same links).

Every failure (missing file, unreadable/corrupt file, unknown class, state dict that does not
match the architecture) raises :class:`CheckpointError` — one paragraph naming the path and
the offending keys; the command line turns it into a non-zero exit.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from bnnrobust.safe_loading import (
    UntrustedInputError,
    check_class_paths,
    check_local_path,
    load_checkpoint,
)

__all__ = ["CheckpointError", "check_finite_weights", "load_checkpoint_dict", "load_system",
           "run_dir_of"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read, or matched to its architecture."""


def load_checkpoint_dict(ckpt_path: str | Path) -> dict[str, Any]:
    """``torch.load(ckpt_path, weights_only=True, map_location="cpu")`` with clear errors.

    Local files only (:func:`bnnrobust.safe_loading.check_local_path`).
    """
    try:
        check_local_path(ckpt_path)
    except UntrustedInputError as err:
        raise CheckpointError(str(err)) from None
    path = Path(ckpt_path)
    if not path.exists():
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not exist. Give the path of a .ckpt file written by "
            "train.py (e.g. logs/<run>/version_0/checkpoints/last.ckpt)."
        )
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} is not a file (a directory?).")
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not a refused class: a corrupt byte stream
            raise CheckpointError(
                f"Checkpoint {str(path)!r} is unreadable (corrupt or truncated file, or not a "
                "PyTorch checkpoint; the safe loader weights_only=True failed: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__})."
            ) from None
        raise CheckpointError(
            f"Checkpoint {str(path)!r} holds objects that are not plain tensors/containers and was "
            f"refused by the safe loader (weights_only=True): {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:  # torch raises many types for corrupt/truncated files
        raise CheckpointError(
            f"Checkpoint {str(path)!r} is unreadable (corrupt or truncated file, or not a "
            f"PyTorch checkpoint): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if isinstance(ckpt, dict) and ckpt and "state_dict" not in ckpt \
            and all(torch.is_tensor(v) for v in ckpt.values()):
        raise CheckpointError(
            f"{str(path)!r} is a plain state_dict ({len(ckpt)} tensors, e.g. "
            f"{sorted(ckpt)[0]!r}): weights without the network's configuration. --ckpt_path and "
            "--ckpt take a Lightning checkpoint written by train.py or `python -m bnnrobust fit`; "
            "to evaluate the weights of a network of your own, give the network and the weights "
            "(docs/evaluation.md, 'Any model')."
        )
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"Checkpoint {str(path)!r} has no 'state_dict' (found: {keys}); expected a Lightning "
            "checkpoint written by train.py or `python -m bnnrobust fit`."
        )
    return ckpt


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run folder of a checkpoint: ``<run>/checkpoints/x.ckpt`` → ``<run>``."""
    parent = Path(ckpt_path).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _resolve_class(class_path: str, base: type, what: str, ckpt_path: Path) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise CheckpointError(
            f"Checkpoint {str(ckpt_path)!r}: its {what} class {class_path!r} cannot be imported "
            f"({err}). Install/import the package that defines it, or pass the training config "
            "(--train_config) to rebuild the model."
        ) from None
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise CheckpointError(
            f"Checkpoint {str(ckpt_path)!r}: its {what} class {class_path!r} is not a subclass of "
            f"{base.__module__}.{base.__qualname__}; refusing to instantiate it."
        )
    return cls


def _instantiate(cls: type, hparams: dict[str, Any], what: str, ckpt_path: Path,
                 overrides: dict[str, Any] | None = None) -> Any:
    from lightning.pytorch.cli import instantiate_module

    kwargs = {k: v for k, v in hparams.items() if k not in ("_class_path", "_instantiator")}
    params = inspect.signature(cls).parameters
    has_varkw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not has_varkw:
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    kwargs.update(overrides or {})
    try:
        return instantiate_module(cls, kwargs)
    except Exception as err:  # jsonargparse raises several types; all mean "cannot rebuild"
        raise CheckpointError(
            f"Checkpoint {str(ckpt_path)!r}: cannot rebuild the {what} "
            f"{cls.__module__}.{cls.__qualname__} from its saved hyperparameters "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}). "
            "Pass the training config (--train_config) to rebuild it instead."
        ) from None


def _from_train_config(config: str | Path, data_overrides: dict[str, Any] | None
                       ) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Build system and data module from a training YAML with the training CLI's parser/links."""
    from bnnrobust.cli import BNNRobustCLI

    class _BuildOnly(BNNRobustCLI):
        def before_instantiate_classes(self) -> None:  # no log folders, no probes
            pass

        def instantiate_trainer(self, **kwargs: Any) -> Any:  # noqa: D102 - nothing to train
            return None

    if not Path(config).is_file():
        raise CheckpointError(f"Training config {str(config)!r} does not exist.")
    args = ["--config", str(config), "--seed_everything", "false"]
    for key, value in (data_overrides or {}).items():
        args += [f"--data.init_args.{key}", str(value)]
    try:
        cli = _BuildOnly(args=args, run=False)
    except SystemExit as err:
        raise CheckpointError(
            f"Training config {str(config)!r} could not be parsed (exit {err.code}); see the "
            "message above."
        ) from None
    return cli.model, cli.datamodule


def check_finite_weights(state_dict: dict[str, Any], source: str) -> None:
    """Refuse a state dict with a NaN/inf in any floating tensor, naming the tensor."""
    for key, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and \
                not bool(torch.isfinite(tensor).all()):
            n = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{source}: tensor {key!r} holds {n} non-finite value(s) (NaN or inf); a broken "
                "network is not evaluated. Use an intact checkpoint (e.g. an earlier epoch's).")


def _binarizer_key(value: Any) -> str:
    """A comparable name of a binarizer given as a string or a ``class_path`` dict."""
    if isinstance(value, dict):
        value = str(value.get("class_path", "")).rpartition(".")[2]
    return "none" if value in (None, "") else str(value).lower().replace("_", "").replace("-", "")


def check_same_network(recorded: Any, built: Any, ckpt_path: Path, config: str | Path) -> None:
    """The network class and binarizer recorded in a checkpoint must be those a config builds.

    Their state-dict keys are often identical (a Hubara and a BC ConvNet), so a strict
    ``load_state_dict`` alone would evaluate the wrong network.
    """
    if not (isinstance(recorded, dict) and isinstance(built, dict)):
        return  # a system built in Python records no network configuration
    rec_args, new_args = recorded.get("init_args") or {}, built.get("init_args") or {}
    pairs = [("network", recorded.get("class_path"), built.get("class_path"))]
    if "binarizer" in rec_args or "binarizer" in new_args:
        pairs.append(("binarizer", rec_args.get("binarizer"), new_args.get("binarizer")))
    for what, old, new in pairs:
        same = (_binarizer_key(old) == _binarizer_key(new)) if what == "binarizer" else old == new
        if not same:
            raise CheckpointError(
                f"Checkpoint {str(ckpt_path)!r} was trained as {what} {old!r}, but the config "
                f"{str(config)!r} builds {what} {new!r}; the weights would load into the wrong "
                "network. Use the config the checkpoint was trained with (or none: the "
                "checkpoint's own hyperparameters rebuild it).")


def _load_weights(system: nn.Module, state_dict: dict[str, Any], ckpt_path: Path,
                  source: str) -> None:
    from bnnrobust.models.normalize import upgrade_layout

    check_finite_weights(state_dict, f"Checkpoint {str(ckpt_path)!r}")
    state_dict = upgrade_layout(system, state_dict)  # older Sequential(Normalize, net) files
    own = system.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and torch.is_tensor(state_dict[k]) and state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            more = f" ... (+{len(items) - 8} more)" if len(items) > 8 else ""
            return ", ".join(items[:8]) + more

        parts = []
        if missing:
            parts.append(f"missing in the checkpoint: {show(missing)}")
        if unexpected:
            parts.append(f"not in the model: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)}")
        raise CheckpointError(
            f"Checkpoint {str(ckpt_path)!r} does not match the architecture built from {source}: "
            + "; ".join(parts)
            + ". Use the training config this checkpoint was written with."
        )
    system.load_state_dict(state_dict, strict=True)


def load_system(
    ckpt_path: str | Path,
    config: str | Path | None = None,
    *,
    data_overrides: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
    allow_modules: Iterable[str] = (),
) -> tuple[L.LightningModule, L.LightningDataModule | None]:
    """Rebuild ``(system, datamodule)`` from a training checkpoint; the system is in eval mode.

    Args:
        ckpt_path: ``.ckpt`` file written by ``train.py`` / ``python -m bnnrobust fit``.
        config: optional training YAML; when given, the system and data module are built from
            it (as the training CLI does) instead of from the hyperparameters in the checkpoint.
        data_overrides: data module init arguments to replace (e.g. ``{"data_dir": "/data"}``,
            ``{"batch_size": 512}``).
        map_location: device the weights are loaded to.
        allow_modules: modules besides :data:`bnnrobust.safe_loading.TRUSTED_PACKAGES` whose
            classes the checkpoint may name (checked before any import).

    Returns:
        The system (a LightningModule whose ``.model`` maps [0, 1] images to logits) and the
        data module, or ``None`` when the checkpoint stores none and no config was given.

    Raises:
        CheckpointError: missing/corrupt file, remote path, a class outside the allow-list,
            class that cannot be rebuilt, or a state dict
            whose keys/shapes do not match the rebuilt architecture (names the keys).
    """
    from bnnrobust.data.base import ImageDataModule
    from bnnrobust.systems.classifier import ImageClassifier

    ckpt = load_checkpoint_dict(ckpt_path)  # before Path(), which turns "http://" into "http:/"
    path = Path(ckpt_path)
    if config is None:
        try:  # every class the checkpoint names, before anything is imported
            check_class_paths({"hyper_parameters": ckpt.get("hyper_parameters"),
                               "datamodule_hyper_parameters":
                                   ckpt.get("datamodule_hyper_parameters")},
                              f"Checkpoint {str(path)!r}", allow_modules)
        except UntrustedInputError as err:
            raise CheckpointError(str(err)) from None
    datamodule: L.LightningDataModule | None
    if config is not None:
        system, datamodule = _from_train_config(config, data_overrides)
        source = f"the training config {str(config)!r}"
        check_same_network((ckpt.get("hyper_parameters") or {}).get("model"),
                           dict(getattr(system, "hparams", {}) or {}).get("model"), path, config)
    else:
        hparams = dict(ckpt.get("hyper_parameters") or {})
        if not isinstance(hparams.get("model"), dict):
            raise CheckpointError(
                f"Checkpoint {str(path)!r} does not store the network's configuration (the system "
                "was probably built in Python rather than from a YAML config). Pass the training "
                "config with --train_config (config=...) to rebuild the model."
            )
        sys_cls = _resolve_class(str(hparams.get("_class_path") or
                                     f"{ImageClassifier.__module__}.{ImageClassifier.__qualname__}"),
                                 L.LightningModule, "system", path)
        system = _instantiate(sys_cls, hparams, "system", path)
        source = "the hyperparameters stored in the checkpoint"
        dm_hparams = ckpt.get("datamodule_hyper_parameters")
        if dm_hparams:
            dm_cls = _resolve_class(str(dm_hparams.get("_class_path", "")), ImageDataModule,
                                    "data module", path) if dm_hparams.get("_class_path") else None
            if dm_cls is None:
                raise CheckpointError(
                    f"Checkpoint {str(path)!r}: the data module's class is not recorded; pass the "
                    "training config (--train_config)."
                )
            datamodule = _instantiate(dm_cls, dict(dm_hparams), "data module", path,
                                      overrides=data_overrides)
        else:
            datamodule = None
    _load_weights(system, ckpt["state_dict"], path, source)
    system.to(map_location)
    system.eval()
    return system, datamodule
