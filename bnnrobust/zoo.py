"""A small model zoo: Fashion-MNIST networks trained by the project's own ``train.py``.

    from bnnrobust import zoo
    zoo.list_models()                         # ['fmnist_bnn_waq_hubara', 'fmnist_bnn_wq_bc', ...]
    model = zoo.load("fmnist_bnn_wq_bc")      # nn.Module, eval mode, [0, 1] images -> logits
    python evaluate.py --ckpt zoo:fmnist_bnn_wq_bc --attacks pgd pgd++njs

Each entry is a Lightning checkpoint without optimizer state in ``zoo/`` at the repository
root, listed in ``zoo/manifest.json`` with its SHA-256, the config and the command that
trained it, and the accuracies measured on it. :func:`path` verifies the checksum before
anything is loaded; loading goes through the project's safe loader (``weights_only=True``).

    python -m bnnrobust.zoo export NAME CKPT --config CONFIG --command "..." [--description ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ZOO_DIR", "ZooError", "entry", "export", "list_models", "load", "path"]

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
PREFIX = "zoo:"


class ZooError(RuntimeError):
    """Unknown zoo name, missing file or checksum mismatch."""


def _manifest(root: Path) -> dict[str, dict[str, Any]]:
    file = root / "manifest.json"
    if not file.is_file():
        raise ZooError(f"The model zoo's manifest {file} is missing.")
    return dict(json.loads(file.read_text()))


def list_models(root: str | Path = ZOO_DIR) -> list[str]:
    """Names of the zoo's networks, sorted."""
    return sorted(_manifest(Path(root)))


def entry(name: str, root: str | Path = ZOO_DIR) -> dict[str, Any]:
    """The manifest entry of ``name`` (file, sha256, config, command, measured accuracies)."""
    name = name.removeprefix(PREFIX)
    models = _manifest(Path(root))
    if name not in models:
        raise ZooError(f"Unknown zoo model {name!r}; accepted: {', '.join(sorted(models))}.")
    return dict(models[name])


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path(name: str, root: str | Path = ZOO_DIR) -> Path:
    """The checkpoint file of ``name`` (``"zoo:"`` prefix allowed), after its checksum matched."""
    info = entry(name, root)
    if Path(str(info.get("file", ""))).name != info.get("file") or not str(info["file"]).endswith(".ckpt"):
        raise ZooError(f"Zoo model {name!r}: the manifest names the file {info.get('file')!r}; "
                       "only a .ckpt file name inside the zoo folder is accepted.")
    file = Path(root) / info["file"]
    if not file.is_file():
        raise ZooError(f"Zoo model {name!r}: its file {file} is missing.")
    got = sha256(file)
    if got != info["sha256"]:
        raise ZooError(f"Zoo model {name!r}: {file} has SHA-256 {got}, the manifest records "
                       f"{info['sha256']}; the file is corrupt or was replaced. Not loaded.")
    return file


def load(name: str, root: str | Path = ZOO_DIR, map_location: str | torch.device = "cpu") -> nn.Module:
    """The network of zoo entry ``name``, in eval mode: [0, 1] images (B, 1, 28, 28) → logits."""
    from bnnrobust.evaluation.checkpoint import CheckpointError, load_system

    try:
        system, _ = load_system(path(name, root), map_location=map_location)
    except CheckpointError as err:
        raise ZooError(f"Zoo model {name!r}: {err}") from None
    model = getattr(system, "model", system)
    assert isinstance(model, nn.Module)
    return model.eval()


def export(name: str, ckpt: str | Path, *, config: str, command: str, description: str = "",
           metrics: dict[str, float] | None = None, root: str | Path = ZOO_DIR) -> Path:
    """Copy a train.py checkpoint into the zoo without optimizer/loop state; record it."""
    from bnnrobust.evaluation.checkpoint import load_checkpoint_dict

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    full = load_checkpoint_dict(ckpt)
    keep = {k: full[k] for k in ("state_dict", "hyper_parameters", "datamodule_hyper_parameters",
                                 "epoch", "global_step", "pytorch-lightning_version") if k in full}
    file = root / f"{name}.ckpt"
    torch.save(keep, file)
    manifest_file = root / "manifest.json"
    models = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    models[name] = {"file": file.name, "sha256": sha256(file), "description": description,
                    "config": config, "command": command, "epoch": int(keep.get("epoch", -1)) + 1,
                    "metrics": metrics or {}}
    manifest_file.write_text(json.dumps(dict(sorted(models.items())), indent=2) + "\n")
    return file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The bnnrobust model zoo.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the zoo's networks")
    ex = sub.add_parser("export", help="add a train.py checkpoint to the zoo")
    ex.add_argument("name")
    ex.add_argument("ckpt")
    ex.add_argument("--config", required=True)
    ex.add_argument("--command", required=True)
    ex.add_argument("--description", default="")
    ex.add_argument("--metrics", default=None, help="JSON file of measured accuracies")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "list":
            for name in list_models():
                info = entry(name)
                print(f"{name}: {info['description']} ({info['file']}, epoch {info['epoch']})")
        else:
            metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
            print(export(args.name, args.ckpt, config=args.config, command=args.command,
                         description=args.description, metrics=metrics))
    except ZooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
