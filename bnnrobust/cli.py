"""The one place bnnrobust's command line is built.

``python -m bnnrobust {fit,validate,test} --config X.yaml`` is LightningCLI;
``python train.py --config X.yaml`` fits and then tests the best checkpoint with the same
configs. Shared behaviour:

* the system (``model:``) and data module (``data:``) are chosen by ``class_path``;
* ``num_classes``/``in_channels`` of the network, normalization statistics and the dataset
  name for attack presets are linked from the data module, so configs never repeat them;
* ``Trainer(inference_mode=False)`` (attacks need gradients in validate/test);
* one folder per run, Lightning's layout: ``<log dir>/<run name>/version_N/`` (log dir:
  ``--log_dir``, else ``--trainer.default_root_dir``, else ``logs``) holds the TensorBoard
  events, the resolved ``config.yaml`` (reusable with ``--config``) and ``checkpoints/``: the
  best by ``val/clean_acc`` (``--checkpoint.*``) and ``last.ckpt``, rewritten after every
  epoch by :class:`callbacks.last_checkpoint.LastCheckpoint` (``--last_checkpoint.*``);
  ``--ckpt_path last`` resumes the newest run of that name in its own folder;
* ``validate``/``test``/``predict --ckpt_path X`` rebuild the model from X's hyperparameters
  (a config is optional; flags still win); every checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from bnnrobust.data.base import ImageDataModule
from bnnrobust.errors import fail
from bnnrobust.safe_loading import (
    UntrustedInputError,
    check_class_paths,
    check_local_path,
    is_remote,
)
from bnnrobust.systems.classifier import ImageClassifier
from bnnrobust.validation import unwritable_reason
from callbacks.last_checkpoint import LastCheckpoint

DEFAULT_LOG_DIR = "logs"
#: the run version rank 0 chose, for the processes DDP starts (see :func:`run_version`)
RUN_VERSION_ENV = "BNNROBUST_RUN_VERSION"

#: values the system and the network take from the data module (never set them directly)
LINKS: tuple[tuple[str, str], ...] = (
    ("data.num_classes", "model.init_args.num_classes"),
    ("data.mean", "model.init_args.mean"),
    ("data.std", "model.init_args.std"),
    ("data.dataset_name", "model.init_args.attack_dataset"),
    ("data.num_classes", "model.init_args.model.init_args.num_classes"),
    ("data.in_channels", "model.init_args.model.init_args.in_channels"),
)


_EVAL_SUBCOMMANDS = ("validate", "test", "predict")


def with_checkpoint_hparams(argv: list[str]) -> list[str]:
    """``argv`` with ``--config <hyperparameters of --ckpt_path>`` inserted (see parse_arguments)."""
    sub = next((a for a in argv if not a.startswith("-")), None)
    if sub not in _EVAL_SUBCOMMANDS:
        return argv
    ckpt = None
    for i, a in enumerate(argv):
        if a == "--ckpt_path" and i + 1 < len(argv):
            ckpt = argv[i + 1]
        elif a.startswith("--ckpt_path="):
            ckpt = a.split("=", 1)[1]
    if ckpt is None or is_remote(ckpt) or not Path(ckpt).is_file():
        return argv
    from bnnrobust.evaluation.checkpoint import CheckpointError, load_checkpoint_dict

    try:
        blob = load_checkpoint_dict(ckpt)
        check_class_paths({"hyper_parameters": blob.get("hyper_parameters"),
                           "datamodule_hyper_parameters": blob.get("datamodule_hyper_parameters")},
                          f"Checkpoint {ckpt!r}")
    except (CheckpointError, UntrustedInputError) as err:
        fail(f"error: {err}")
    body = {}
    for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        hp = dict(blob.get(key) or {})
        if not hp.get("_class_path") or (section == "model" and not isinstance(hp.get("model"), dict)):
            continue  # built in Python: the config must describe it
        linked = {t.split(".")[-1] for s_, t in LINKS if t.count(".") == 2} if section == "model" else set()
        init = {k: v for k, v in hp.items() if k not in ("_class_path", "_instantiator")
                and k not in linked}
        if section == "model" and isinstance(init.get("model"), dict):
            net = dict(init["model"])
            net["init_args"] = {k: v for k, v in (net.get("init_args") or {}).items()
                                if k not in ("num_classes", "in_channels")}
            init["model"] = net
        body[section] = {"class_path": hp["_class_path"], "init_args": init}
    if not body:
        return argv
    import atexit
    import tempfile

    tmp = tempfile.NamedTemporaryFile("w", suffix="_ckpt_hparams.yaml", delete=False)
    with tmp:
        yaml.safe_dump(body, tmp, sort_keys=False)
    atexit.register(Path(tmp.name).unlink, missing_ok=True)
    configs = [i for i, a in enumerate(argv) if a == "--config"]
    at = (configs[-1] + 2) if configs else argv.index(sub) + 1
    return [*argv[:at], "--config", tmp.name, *argv[at:]]


class ReusableConfig(SaveConfigCallback):
    """Saves the run's ``config.yaml`` without the options of one invocation (``ckpt_path``,
    ``skip_test``, ``summary_json``), so ``--config <run>/config.yaml`` is accepted back by
    ``train.py`` and by ``python -m bnnrobust fit``."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        config = self.config.clone()
        for key in ("ckpt_path", "skip_test", "summary_json", "config"):
            if key in config:
                del config[key]
        # the run folder this invocation chose (logger version, checkpoint folders) is not
        # a setting: a reused config gets a folder of its own
        logger = config.get("trainer.logger")
        init = getattr(logger, "init_args", None) or (logger or {}).get("init_args", {}) \
            if isinstance(logger, dict | Namespace) else None
        if init is not None and set(dict(init)) == {"save_dir", "name", "version"}:
            config["trainer.logger"] = None
        for key in ("checkpoint.dirpath", "last_checkpoint.dirpath", "trainer.default_root_dir"):
            value = config.get(key)
            if value is not None and _in_version_folder(str(value)):
                config[key] = None
        self.config = config
        super().setup(trainer, pl_module, stage)


def _in_version_folder(path: str) -> bool:
    parts = Path(path).parts
    tail = parts[-2:] if parts and parts[-1] == "checkpoints" else parts[-1:]
    return bool(tail) and tail[0].startswith("version_") and tail[0][8:].isdigit()


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
        kwargs.setdefault("save_config_callback", ReusableConfig)
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """``validate``/``test``/``predict --ckpt_path X`` rebuild the model from X's hyperparameters.

        They are read safely (``weights_only=True``, classes allow-listed before any import)
        and applied after the ``--config`` files and before the other flags, so a config is
        optional and flags such as ``--model.init_args.test_attacks`` still win.
        """
        if args is None or isinstance(args, list):
            argv = list(sys.argv[1:] if args is None else args)
            new = with_checkpoint_hparams(argv)
            if new != argv:
                if args is None:
                    sys.argv[1:] = new
                else:
                    args = new
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Done in :meth:`parse_arguments` instead: LightningCLI's version writes the
        checkpoint's hyperparameters over the parsed config, undoing command-line flags."""

    # -- run folder, logger and checkpoint location ------------------------------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        _check_checkpoint_args(cfg)
        name = cfg.get("run_name") or _run_name([str(p) for p in (cfg.get("config") or [])])
        trainer_cfg = cfg["trainer"]
        log_dir = Path(cfg.get("log_dir") or DEFAULT_LOG_DIR)
        if trainer_cfg.get("default_root_dir") is not None and cfg.get("log_dir") == DEFAULT_LOG_DIR:
            log_dir = Path(trainer_cfg["default_root_dir"])  # Lightning's flag names the root
        _check_writable(log_dir)
        fitting = self.subcommand in (None, "fit")
        if cfg.get("ckpt_path") == "last":
            given = cfg["last_checkpoint"].get("dirpath") or cfg["checkpoint"].get("dirpath")
            if given is not None and (Path(given) / "last.ckpt").is_file():
                cfg["ckpt_path"] = str(Path(given) / "last.ckpt")  # an explicit folder wins
            else:
                cfg["ckpt_path"] = latest_checkpoint(log_dir / name) if fitting else None
            if cfg["ckpt_path"] is None:
                print(f"[bnnrobust] no last checkpoint under {log_dir / name}; starting from "
                      "scratch.", file=sys.stderr)
        version = run_version(log_dir / name, cfg.get("ckpt_path") if fitting else None)
        run_dir = log_dir / name / f"version_{version}"
        if trainer_cfg.get("logger") in (None, True):
            trainer_cfg["logger"] = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(log_dir), "name": name, "version": version},
            }
        if cfg["checkpoint"].get("dirpath") is None:
            cfg["checkpoint"]["dirpath"] = str(run_dir / "checkpoints")
        if cfg["last_checkpoint"].get("dirpath") is None:
            cfg["last_checkpoint"]["dirpath"] = cfg["checkpoint"]["dirpath"]
        if trainer_cfg.get("default_root_dir") is None:
            trainer_cfg["default_root_dir"] = str(run_dir)


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


def _versions(run_root: Path) -> list[int]:
    return sorted(int(p.name.split("_", 1)[1]) for p in run_root.glob("version_*")
                  if p.is_dir() and p.name.split("_", 1)[1].isdigit())


def latest_checkpoint(run_root: Path) -> str | None:
    """``last.ckpt`` of the newest run of this name (``<run_root>/version_N/checkpoints``).

    A checkpoint in the older layout ``<run_root>/checkpoints/last.ckpt`` counts too.
    """
    found = [run_root / f"version_{v}" / "checkpoints" / "last.ckpt" for v in _versions(run_root)]
    found = [p for p in found if p.is_file()]
    if not found and (run_root / "checkpoints" / "last.ckpt").is_file():
        found = [run_root / "checkpoints" / "last.ckpt"]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def run_version(run_root: Path, resume_from: str | None) -> int:
    """The ``version_N`` of this run: the resumed checkpoint's, else the next free one.

    Processes that DDP starts for ranks > 0 read rank 0's choice from the environment.
    """
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_VERSION_ENV):
        return int(os.environ[RUN_VERSION_ENV])
    version = None
    if resume_from is not None:
        parent = Path(resume_from).resolve().parent
        if parent.name == "checkpoints" and parent.parent.name.startswith("version_") and \
                parent.parent.name.split("_", 1)[1].isdigit():
            version = int(parent.parent.name.split("_", 1)[1])
    if version is None:
        existing = _versions(run_root)
        version = existing[-1] + 1 if existing else 0
    os.environ[RUN_VERSION_ENV] = str(version)
    return version


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
    reason = unwritable_reason(path)
    if reason is not None:
        raise SystemExit(
            f"error: the log directory {str(path)!r} is not writable ({reason}). "
            "Choose another with --log_dir PATH."
        )


#: ``bnnrobust <command>`` besides LightningCLI's: parsed by their own parsers, not LightningCLI
COMMANDS: dict[str, str] = {
    "evaluate": "attacks against a checkpoint or any model (evaluate.py, docs/evaluation.md)",
    "reproduce": "the paper's findings on Fashion-MNIST (reproduce.py, docs/results.md)",
    "diagnose": "the gradient-masking checklist of a network (docs/diagnosis.md)",
}
_LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def run_command(command: str, args: list[str]) -> None:
    """Run ``bnnrobust <command> ARGS`` for a command of :data:`COMMANDS`."""
    prog = f"bnnrobust {command}"
    if command == "evaluate":
        from bnnrobust.evaluation.cli import main as evaluate_main

        evaluate_main(args, prog=prog)
    elif command == "diagnose":
        from bnnrobust.evaluation.cli import diagnose_main

        diagnose_main(args, prog=prog)
    elif command == "reproduce":
        from bnnrobust.reproduce.cli import main as reproduce_main

        code = reproduce_main(args, prog=prog)
        if code:
            raise SystemExit(code)
    else:
        raise ValueError(f"Unknown command {command!r}; accepted: {', '.join(COMMANDS)}.")


def main(args: list[str] | None = None) -> None:
    """``bnnrobust`` / ``python -m bnnrobust``: ``evaluate``, ``reproduce`` and ``diagnose``
    (:data:`COMMANDS`) are dispatched on the first argument, before LightningCLI reads the
    command line; everything else (``fit``, ``validate``, ``test``, ``predict``) is LightningCLI."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in COMMANDS:
        run_command(argv[0], argv[1:])
        return
    if argv and not argv[0].startswith("-") and argv[0] not in _LIGHTNING_COMMANDS:
        fail(f"error: unknown command {argv[0]!r}; accepted: "
             f"{', '.join((*_LIGHTNING_COMMANDS, *COMMANDS))} (each takes --help).")
    torch.set_float32_matmul_precision("high")
    epilog = "other commands: " + "; ".join(f"bnnrobust {k}: {v}" for k, v in COMMANDS.items())
    BNNRobustCLI(args=args, parser_kwargs={"epilog": epilog + " (each takes --help)."})


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
