"""The training stages: each network's YAML with the profile's overrides, trained with
``train.py``'s code path (:func:`bnnrobust.training.main`) or (the full profile's default)
copied from the model zoo after checking that the recipe trained it."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from .common import REPO_ROOT, ReproError, log
from .context import Context, Stage
from .settings import Settings
from .specs import ModelSpec


def training_config(spec: ModelSpec, settings: Settings) -> dict[str, Any]:
    """The YAML of ``spec`` with the settings' overrides (subset, epochs, width, synthetic data)."""
    path = REPO_ROOT / spec.config
    if not path.is_file():
        raise ReproError(f"Training config {path} is missing; the reproduction needs "
                         f"{spec.config} from the repository.")
    cfg = yaml.safe_load(path.read_text())
    data_args = cfg["data"].setdefault("init_args", {})
    subset = settings.adv_train_subset if spec.adversarial else settings.train_subset
    if settings.train_batch_size is not None:
        data_args["batch_size"] = settings.train_batch_size
    if settings.synthetic:
        n = subset or settings.synthetic_samples
        cfg["data"] = {"class_path": "bnnrobust.data.SyntheticDataModule", "init_args": {
            "num_samples": int(n), "num_classes": 10, "in_channels": 1, "image_size": 28,
            "batch_size": int(data_args.get("batch_size", 128)), "seed": settings.seed}}
    else:
        if subset is not None:
            data_args["train_subset"] = int(subset)
        if settings.val_size is not None:
            data_args["val_size"] = int(settings.val_size)
    trainer = cfg.setdefault("trainer", {})
    if settings.max_epochs is not None:
        trainer["max_epochs"] = int(settings.max_epochs)
    trainer.update({"accelerator": "cpu", "devices": 1})
    # the reproduction attacks every network after training: the recipes' per-epoch
    # robustness monitor would only cost time here
    trainer["callbacks"] = [c for c in trainer.get("callbacks") or []
                            if not str(c.get("class_path", "")).endswith("RobustnessMonitor")]
    if settings.profile == "quick":
        trainer["log_every_n_steps"] = 1
    if settings.width is not None:
        cfg["model"]["init_args"]["model"].setdefault("init_args", {})["width"] = settings.width
    return cfg


def _train_units(spec: ModelSpec, cfg: dict[str, Any]) -> float:
    """Image-steps of a training run (for the time estimate)."""
    data = cfg["data"].get("init_args", {})
    n = data.get("train_subset") or data.get("num_samples") or 55000
    epochs = int(cfg.get("trainer", {}).get("max_epochs") or 1)
    per_image = 1.0
    if spec.adversarial:
        per_image += int(cfg["model"]["init_args"].get("train_attack", {}).get("steps", 7))
    if spec.family == "waq":
        per_image *= 1.4
    val = data.get("val_size", 5000) if "val_size" in data else data.get("num_samples", 0) // 4
    return epochs * (n * per_image + 0.35 * val)


def _ckpt_position(path: Path) -> tuple[int, int]:
    """``(epoch, global_step)`` stored in a Lightning checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return int(ckpt.get("epoch", -1)), int(ckpt.get("global_step", -1))


def _contains(got: Any, want: Any) -> bool:
    """``want`` equals ``got``, or is a sub-dict of it (a recipe names only some arguments)."""
    if isinstance(want, Mapping) and isinstance(got, Mapping):
        return all(_contains(got.get(k), v) for k, v in want.items())
    return bool(got == want)


def zoo_mismatch(ckpt: Mapping[str, Any], cfg: Mapping[str, Any], max_epochs: int) -> str | None:
    """Why a zoo checkpoint was not trained by ``cfg`` (architecture, data, epochs), or None."""
    want = (cfg["model"]["init_args"]["model"].get("init_args") or {})
    want_cls = cfg["model"]["init_args"]["model"].get("class_path")
    got_model = (ckpt.get("hyper_parameters") or {}).get("model") or {}
    got = got_model.get("init_args") or {}
    if got_model.get("class_path") != want_cls:
        return f"network {got_model.get('class_path')!r}, the recipe builds {want_cls!r}"
    for name, value in want.items():
        if not _contains(got.get(name), value):
            return f"{name} = {got.get(name)!r}, the recipe sets {value!r}"
    data = (ckpt.get("datamodule_hyper_parameters") or {})
    want_data = cfg["data"].get("init_args") or {}
    if data.get("_class_path") != cfg["data"].get("class_path"):
        return f"data {data.get('_class_path')!r}, the recipe uses {cfg['data'].get('class_path')!r}"
    for name in ("train_subset", "val_size", "batch_size"):
        if name in want_data and data.get(name) != want_data[name]:
            return f"data {name} = {data.get(name)!r}, the recipe sets {want_data[name]!r}"
    if int(ckpt.get("epoch", -1)) != max_epochs - 1:
        return f"epoch {ckpt.get('epoch')}, the recipe ends at epoch {max_epochs - 1}"
    return None


def _reuse_zoo(ctx: Context, spec: ModelSpec, cfg: dict[str, Any], max_epochs: int,
               cfg_path: Path) -> dict[str, Any]:
    """Copy ``spec``'s zoo checkpoint (checksum verified) to its run folder as ``last.ckpt``."""
    from bnnrobust import zoo

    assert spec.zoo is not None
    try:
        src = zoo.path(spec.zoo)
    except zoo.ZooError as err:
        raise ReproError(f"the zoo: {err} Pass --retrain to train {spec.config} instead.") from None
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    why = zoo_mismatch(ckpt, cfg, max_epochs)
    if why is not None:
        raise ReproError(f"the zoo's {spec.zoo} was not trained by {spec.config} ({why}); "
                         "pass --retrain to train it.")
    dst = ctx.last_ckpt(spec.key)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    log(f"  reused zoo:{spec.zoo} (SHA-256 verified, trained by {spec.config})")
    ctx.forget(spec.key)
    return {"epoch": int(ckpt["epoch"]), "global_step": int(ckpt.get("global_step", -1)),
            "max_epochs": max_epochs, "metrics": zoo.entry(spec.zoo).get("metrics", {}),
            "config": str(cfg_path), "source": f"zoo:{spec.zoo}",
            "sha256": zoo.entry(spec.zoo)["sha256"]}


def train_stage(ctx: Context, spec: ModelSpec) -> Stage:
    """``train/<key>``: write the run's YAML, train (resuming a half-done ``last.ckpt``) or reuse
    the zoo's checkpoint; finished only while ``last.ckpt`` holds the recorded epoch/step."""
    cfg = training_config(spec, ctx.settings)
    cfg_path = ctx.out / "configs" / f"{spec.key}.yaml"
    max_epochs = int(cfg["trainer"].get("max_epochs") or 1)

    def run_it() -> dict[str, Any]:
        from bnnrobust.training import main as train_main

        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# written by python -m bnnrobust.reproduce from {spec.config}"
                  f" ({ctx.settings.profile} profile)\n")
        cfg_path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        if ctx.settings.zoo and spec.zoo is not None:
            return _reuse_zoo(ctx, spec, cfg, max_epochs, cfg_path)
        args = ["--config", str(cfg_path), "--log_dir", str(ctx.out / "runs"),
                "--run_name", spec.key, "--skip_test", "true",
                # one fixed folder per network (not a new version_N per invocation): a rerun
                # resumes the same last.ckpt
                "--checkpoint.dirpath", str(ctx.last_ckpt(spec.key).parent),
                "--seed_everything", str(ctx.settings.seed),
                "--summary_json", str(ctx.run_dir(spec.key) / "summary.json"),
                "--trainer.enable_progress_bar", str(bool(ctx.progress and sys.stdout.isatty())).lower()]
        if ctx.last_ckpt(spec.key).is_file():
            log(f"  resuming the interrupted training from {ctx.last_ckpt(spec.key)}")
            args += ["--ckpt_path", "last"]
        metrics = train_main(args)
        if not ctx.last_ckpt(spec.key).is_file():
            raise ReproError(f"Training {spec.key} finished without writing {ctx.last_ckpt(spec.key)}.")
        epoch, step = _ckpt_position(ctx.last_ckpt(spec.key))
        ctx.trained.append(spec.key)
        ctx.forget(spec.key)
        return {"epoch": epoch, "global_step": step, "max_epochs": max_epochs,
                "metrics": metrics, "config": str(cfg_path)}

    def check(marker: dict[str, Any]) -> str | None:
        last = ctx.last_ckpt(spec.key)
        try:
            epoch, step = _ckpt_position(last)
        except Exception as err:  # corrupt file: retrain
            return f"{last} is unreadable ({type(err).__name__})"
        if epoch != marker.get("epoch") or step != marker.get("global_step"):
            return (f"{last} holds epoch {epoch}/step {step}, the finished run recorded "
                    f"epoch {marker.get('epoch')}/step {marker.get('global_step')}")
        if epoch != max_epochs - 1:
            return f"{last} is at epoch {epoch}, expected {max_epochs - 1} (max_epochs {max_epochs})"
        return None

    est = (5.0 if ctx.settings.zoo and spec.zoo is not None
           else _train_units(spec, cfg) * ctx.step_seconds + 20.0)
    return Stage(f"train/{spec.key}", f"train {spec.label} ({spec.config})", est,
                 [ctx.last_ckpt(spec.key)], run_it, check=check)
