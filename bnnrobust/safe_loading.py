"""What bnnrobust accepts from files it is handed: local checkpoints and allow-listed classes.

A checkpoint is data, never code. Every checkpoint the project reads goes through
:func:`load_checkpoint` (``torch.load(weights_only=True)``, a local path unless remote paths
are explicitly allowed), and every class a checkpoint names (``_class_path`` and nested
``class_path`` entries of its hyperparameters) is checked against an allow-list with
:func:`check_class_paths` *before* anything is imported.

The allow-list is :data:`TRUSTED_PACKAGES` (the project and the libraries it is built on) plus
the modules a user names: the ``allow_modules`` argument of the loaders, or the command line's
``--allow_module NAME`` / the ``BNNROBUST_ALLOW_MODULES`` environment variable (comma
separated). Classes a user writes in their own YAML config are theirs to choose and are not
restricted; only names that arrive inside a checkpoint are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["TRUSTED_PACKAGES", "UntrustedInputError", "allowed_packages", "check_class_paths",
           "check_local_path", "class_paths", "is_remote", "load_checkpoint"]

#: top-level packages whose classes a checkpoint may name without being allowed explicitly
TRUSTED_PACKAGES: tuple[str, ...] = ("bnnrobust", "callbacks", "torch", "torchvision", "timm")

#: environment variable with more allowed top-level modules, comma separated
ALLOW_ENV = "BNNROBUST_ALLOW_MODULES"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class UntrustedInputError(ValueError):
    """A checkpoint or path that bnnrobust refuses to load (one paragraph, names the value)."""


def is_remote(path: str | Path) -> bool:
    """True for URLs and fsspec paths (``http://``, ``s3://``, ``hf://`` ...), not for local files."""
    return bool(_SCHEME.match(str(path))) and not str(path).startswith("file://")


def check_local_path(path: str | Path, what: str = "checkpoint", *,
                     allow_remote: bool = False) -> str:
    """``path`` unchanged if it is local (or remote paths are allowed); else a clear error."""
    if is_remote(path) and not allow_remote:
        raise UntrustedInputError(
            f"The {what} {str(path)!r} is a remote path; bnnrobust loads local files only by "
            "default. Download it yourself and pass the local file, or allow remote paths "
            "explicitly (--allow_remote_checkpoint true); it is still loaded with "
            "weights_only=True.")
    return str(path)


def allowed_packages(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """:data:`TRUSTED_PACKAGES` plus ``extra`` and the ``BNNROBUST_ALLOW_MODULES`` modules."""
    env = [m.strip() for m in os.environ.get(ALLOW_ENV, "").split(",") if m.strip()]
    return tuple(dict.fromkeys([*TRUSTED_PACKAGES, *extra, *env]))


def class_paths(obj: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """``(location, class path)`` of every ``class_path``/``_class_path`` string in ``obj``."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            loc = f"{where}.{key}" if where else str(key)
            if key in ("class_path", "_class_path") and isinstance(value, str):
                yield loc, value
            else:
                yield from class_paths(value, loc)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from class_paths(value, f"{where}[{i}]")


def _allowed(class_path: str, packages: tuple[str, ...]) -> bool:
    return any(class_path == p or class_path.startswith(p + ".") for p in packages)


def check_class_paths(obj: Any, source: str, allow_modules: Iterable[str] = ()) -> None:
    """Refuse any class named in ``obj`` outside the allow-list, before anything is imported.

    Args:
        obj: hyperparameters read from a checkpoint (nested dicts and lists).
        source: what ``obj`` came from, for the message (e.g. the checkpoint path).
        allow_modules: more allowed modules (a top-level package or a dotted module prefix).
    """
    packages = allowed_packages(allow_modules)
    bad = [(loc, cp) for loc, cp in class_paths(obj) if not _allowed(cp, packages)]
    if bad:
        shown = ", ".join(f"{loc} = {cp!r}" for loc, cp in bad[:5])
        first = bad[0][1].split(".")[0]
        raise UntrustedInputError(
            f"{source} names classes outside the allowed packages ({shown}); nothing was "
            f"imported. A checkpoint may name classes from {', '.join(packages)}. If you trust "
            f"the module, allow it with --allow_module {first} (or allow_modules=[{first!r}] "
            f"in Python, or {ALLOW_ENV}={first}).")


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu",
                    allow_remote: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` of a local file (remote only when allowed)."""
    check_local_path(path, allow_remote=allow_remote)
    if is_remote(path):
        return torch.hub.load_state_dict_from_url(str(path), map_location=map_location,
                                                  weights_only=True)
    return torch.load(path, map_location=map_location, weights_only=True)
