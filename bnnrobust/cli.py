"""The one place bnnrobust's command line is built.

``python -m bnnrobust {fit,validate,test} --config X.yaml`` is LightningCLI;
``python train.py --config X.yaml`` fits and then tests the best checkpoint with the same
configs. Shared behaviour:

* the system (``model:``) and data module (``data:``) are chosen by ``class_path``;
* ``num_classes``/``in_channels`` of the network, normalization statistics and the dataset
  name for attack presets are linked from the data module, so configs never repeat them;
* ``Trainer(inference_mode=False)`` (attacks need gradients in validate/test), a
  TensorBoard logger under ``logs/<run name>/version_N`` with the resolved config saved next to
  the events, and checkpoints in ``logs/<run name>/checkpoints``: the best by ``val/clean_acc``
  (``--checkpoint.*``) and ``last.ckpt``, rewritten after every epoch by
  :class:`callbacks.last_checkpoint.LastCheckpoint` (``--last_checkpoint.*``), so that
  ``--ckpt_path last`` resumes a killed run from its last finished epoch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from bnnrobust.data.base import ImageDataModule
from bnnrobust.errors import fail
from bnnrobust.safe_loading import UntrustedInputError, check_local_path
from bnnrobust.systems.classifier import ImageClassifier
from callbacks.last_checkpoint import LastCheckpoint

DEFAULT_LOG_DIR = "logs"

#: values the system and the network take from the data module (never set them directly)
LINKS: tuple[tuple[str, str], ...] = (
    ("data.num_classes", "model.init_args.num_classes"),
    ("data.mean", "model.init_args.mean"),
    ("data.std", "model.init_args.std"),
    ("data.dataset_name", "model.init_args.attack_dataset"),
    ("data.num_classes", "model.init_args.model.init_args.num_classes"),
    ("data.in_channels", "model.init_args.model.init_args.in_channels"),
)


def check_no_linked_flags(argv: list[str]) -> None:
    """A flag that sets a linked value would be silently overridden: refuse it, naming both."""
    for arg in argv:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        for source, target in LINKS:
            if key == target:
                fail(f"error: --{target} is set from the data module ({source}) and would be "
                     f"ignored; drop the flag and set the data module's value instead (e.g. "
                     f"--{source.replace('data.', 'data.init_args.')} for data modules that "
                     "take it, or choose another data module).")


def _run_name(config_paths: list[str]) -> str:
    if config_paths:
        return Path(str(config_paths[-1])).stem
    return "default"


class BNNRobustCLI(LightningCLI):
    """LightningCLI with bnnrobust's links and defaults (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        trainer_defaults = {
            "inference_mode": False,
            "log_every_n_steps": 20,
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", None) or {})
        kwargs["trainer_defaults"] = trainer_defaults
        argv = kwargs.get("args")
        argv_list = sys.argv[1:] if argv is None else [str(a) for a in argv]
        check_config_files(argv_list)
        check_no_linked_flags(argv_list)
        super().__init__(ImageClassifier, ImageDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # last.ckpt comes from LastCheckpoint, written every epoch (callbacks/last_checkpoint.py)
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/clean_acc",
            "checkpoint.mode": "max",
            "checkpoint.save_last": False,
            "checkpoint.filename": "best-epoch{epoch}-step{step}",
            "checkpoint.auto_insert_metric_name": False,
        })
        parser.add_argument("--run_name", type=str | None, default=None,
                            help="Name of the run folder under the log directory "
                                 "(default: the config file's name).")
        parser.add_argument("--log_dir", type=str, default=DEFAULT_LOG_DIR,
                            help="Root folder of TensorBoard logs and checkpoints.")
        parser.add_argument("--allow_remote_checkpoint", type=bool, default=False,
                            help="Accept a remote --ckpt_path (http://, s3://, ...); it is still "
                                 "loaded with weights_only=True.")
        for source, target in LINKS:
            parser.link_arguments(source, target, apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Keep the config as given: the checkpoint supplies weights, not settings.

        LightningCLI would otherwise write the hyperparameters stored in ``--ckpt_path`` back
        over the parsed config, silently undoing command-line flags such as
        ``--model.init_args.test_attacks`` in ``test``.
        """

    # -- run folder, logger and checkpoint location ------------------------------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        _check_checkpoint_args(cfg)
        name = cfg.get("run_name") or _run_name([str(p) for p in (cfg.get("config") or [])])
        log_dir = Path(cfg.get("log_dir") or DEFAULT_LOG_DIR)
        _check_writable(log_dir)
        trainer_cfg = cfg["trainer"]
        if cfg["checkpoint"].get("dirpath") is None:
            cfg["checkpoint"]["dirpath"] = str(log_dir / name / "checkpoints")
        if trainer_cfg.get("logger") in (None, True):
            init_args: dict[str, Any] = {"save_dir": str(log_dir), "name": name}
            version = (_resumed_version(cfg, log_dir / name, Path(cfg["checkpoint"]["dirpath"]))
                       if self.subcommand in (None, "fit") else None)
            if version is not None:  # a resumed fit continues its TensorBoard run
                init_args["version"] = version
            trainer_cfg["logger"] = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": init_args,
            }
        if cfg["last_checkpoint"].get("dirpath") is None:
            cfg["last_checkpoint"]["dirpath"] = cfg["checkpoint"]["dirpath"]
        if trainer_cfg.get("default_root_dir") is None:
            trainer_cfg["default_root_dir"] = str(log_dir / name)


def check_config_files(argv: list[str]) -> None:
    """Each ``--config FILE`` exists and holds a YAML mapping; else an error naming the file."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for name in files:
        path = Path(name)
        if not path.is_file():
            fail(f"error: the config file {name!r} does not exist.")
        try:
            body = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            fail(f"error: the config file {name!r} is not valid YAML: "
                 f"{' '.join(str(err).split())}")
        if not isinstance(body, dict) or not body:
            fail(
                f"error: the config file {name!r} is empty or not a mapping of sections (found "
                f"{type(body).__name__}); a config has model:, data: and trainer: sections, "
                "e.g. configs/quickstart.yaml.")


def _resumed_version(cfg: Any, run_dir: Path, ckpt_dir: Path) -> int | None:
    """The newest ``version_N`` of ``run_dir`` when this fit resumes a checkpoint, else None."""
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    if ckpt == "last" and not (ckpt_dir / "last.ckpt").is_file():
        return None  # nothing to resume: a fresh run gets a fresh version
    versions = [int(p.name.split("_", 1)[1]) for p in run_dir.glob("version_*")
                if p.is_dir() and p.name.split("_", 1)[1].isdigit()]
    return max(versions) if versions else None


def _check_checkpoint_args(cfg: Any) -> None:
    """``--ckpt_path`` local (unless allowed) and always loaded with ``weights_only=True``."""
    try:
        if cfg.get("ckpt_path") not in (None, "last"):
            check_local_path(cfg["ckpt_path"], "--ckpt_path",
                             allow_remote=bool(cfg.get("allow_remote_checkpoint")))
    except UntrustedInputError as err:
        raise SystemExit(f"error: {err}") from None
    if "weights_only" in cfg:
        if cfg["weights_only"] is False:
            raise SystemExit(
                "error: --weights_only false is refused: bnnrobust loads every checkpoint with "
                "weights_only=True (a checkpoint is data, never code). Drop the flag.")
        cfg["weights_only"] = True


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise SystemExit(
            f"error: the log directory {str(path)!r} is not writable ({err.strerror}). "
            "Choose another with --log_dir PATH."
        ) from None


def main(args: list[str] | None = None) -> None:
    """``python -m bnnrobust {fit,validate,test,...}``."""
    torch.set_float32_matmul_precision("high")
    BNNRobustCLI(args=args)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
