"""train.py / LightningCLI: configs, logging, checkpoints, resume, bad input, DDP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from bnnrobust.training import main as train_main

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "model": {
        "class_path": "bnnrobust.systems.ImageClassifier",
        "init_args": {
            "model": {"class_path": "bnnrobust.models.ConvNet", "init_args": {"width": 0.25}},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
        },
    },
    "data": {
        "class_path": "bnnrobust.data.SyntheticDataModule",
        "init_args": {"num_samples": 96, "image_size": 12, "batch_size": 16, "num_classes": 4},
    },
    "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                "enable_progress_bar": False, "enable_model_summary": False},
}


def write_config(tmp_path: Path, **trainer: object) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["trainer"].update(trainer)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def scalar_tags(run_dir: Path) -> dict[str, int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    counts: dict[str, int] = {}
    for events in run_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            counts[tag] = counts.get(tag, 0) + len(acc.Scalars(tag))
    return counts


def test_train_logs_tensorboard_tags_config_and_checkpoints(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, max_epochs=2)
    metrics = train_main(["--config", str(cfg), "--log_dir", str(tmp_path / "logs")])
    run = tmp_path / "logs" / "tiny" / "version_0"
    tags = scalar_tags(run)
    for tag in ("train/loss", "train/acc_step", "train/acc_epoch", "val/loss", "val/clean_acc",
                "test/clean_acc"):
        assert tags.get(tag, 0) >= 1, f"missing TensorBoard tag {tag}: {sorted(tags)}"
    assert tags["val/clean_acc"] == 2  # once per epoch
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
    saved = list(run.glob("config.yaml"))
    assert saved, "resolved config not saved next to the events"
    resolved = yaml.safe_load(saved[0].read_text())
    assert resolved["model"]["init_args"]["model"]["class_path"] == "bnnrobust.models.ConvNet"
    assert 0.0 <= metrics["test/clean_acc"] <= 1.0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1
    # linked values reach the model although the config never states them
    hp = ckpt["hyper_parameters"]
    assert hp["num_classes"] == 4 and hp["model"]["init_args"]["num_classes"] == 4
    assert hp["model"]["init_args"]["in_channels"] == 1


def test_learns_the_synthetic_task(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, max_epochs=4)
    metrics = train_main(["--config", str(cfg), "--log_dir", str(tmp_path / "logs")])
    assert metrics["test/clean_acc"] > 0.6  # 4 classes: chance is 0.25


class _Crash(Exception):
    pass


@pytest.fixture
def importable(tmp_path: Path) -> Iterator[Callable[[str, str], None]]:
    """Write a module into tmp_path (importable by configs' class paths while the test runs)."""
    sys.path.insert(0, str(tmp_path))

    def write(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)

    yield write
    sys.path.remove(str(tmp_path))


def test_killed_run_resumes_from_last_checkpoint(tmp_path: Path,
                                                 importable: Callable[[str, str], None]) -> None:
    """A run dies in epoch 3; `--ckpt_path last` continues from the end of epoch 2."""
    importable(
        "crash_cb",
        "import lightning as L\n"
        "class CrashAt(L.Callback):\n"
        "    def __init__(self, epoch: int = 2):\n"
        "        self.epoch = epoch\n"
        "    def on_train_batch_start(self, trainer, *args):\n"
        "        if trainer.current_epoch == self.epoch:\n"
        "            raise RuntimeError('simulated crash')\n"
    )
    cfg = write_config(tmp_path, max_epochs=4)
    logs = str(tmp_path / "logs")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_main(["--config", str(cfg), "--log_dir", logs, "--skip_test", "true",
                    "--trainer.callbacks+=crash_cb.CrashAt"])
    last = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    steps_per_epoch = 96 // 16
    train_main(["--config", str(cfg), "--log_dir", logs, "--skip_test", "true",
                "--ckpt_path", "last"])
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 3
    assert final["global_step"] == 4 * steps_per_epoch


def test_last_checkpoint_follows_the_last_epoch_not_the_best(tmp_path: Path,
                                                 importable: Callable[[str, str], None]) -> None:
    """The monitored metric peaks at epoch 0: last.ckpt must still hold every later epoch."""
    importable(
        "worse_cb",
        "import lightning as L\n"
        "class GetsWorse(L.Callback):\n"
        "    def on_validation_epoch_end(self, trainer, pl_module):\n"
        "        pl_module.log('val/score', -float(trainer.current_epoch))\n"
    )
    cfg = write_config(tmp_path, max_epochs=3)
    logs = str(tmp_path / "logs")
    args = ["--config", str(cfg), "--log_dir", logs, "--skip_test", "true",
            "--trainer.callbacks+=worse_cb.GetsWorse", "--checkpoint.monitor", "val/score",
            "--checkpoint.mode", "max"]
    train_main(args)
    ckpts = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch0-step6.ckpt", "last.ckpt"]
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 18)
    # both callbacks' states are in it: resuming keeps the best of epoch 0 as the best
    states = [k for k in last["callbacks"] if k.startswith(("ModelCheckpoint", "LastCheckpoint"))]
    assert len(states) == 2
    train_main([*args, "--trainer.max_epochs", "4", "--ckpt_path", "last"])
    final = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (3, 24)
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch0-step6.ckpt", "last.ckpt"]


def test_cli_subcommands_fit_and_test(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bnnrobust.cli import main as cli_main

    cfg = write_config(tmp_path)
    logs = str(tmp_path / "logs")
    cli_main(["fit", "--config", str(cfg), "--log_dir", logs])
    last = tmp_path / "logs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    capsys.readouterr()
    # flags given to `test` win over the settings stored in the checkpoint
    cli_main(["test", "--config", str(cfg), "--log_dir", logs, "--ckpt_path", str(last),
              "--model.init_args.test_attacks", "[{name: pgd, eps: 0.05, step_size: 0.02, steps: 2}]"])
    out = capsys.readouterr().out
    assert "test/clean_acc" in out and "test/pgd_acc" in out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(cfg), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path: bnnrobust.models.ConvNet" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    (["--trainer.no_such_key", "1"], "no_such_key"),
    (["--trainer.max_epochs", "many"], "max_epochs"),
    (["--model.init_args.model", "bnnrobust.models.NoSuchNet"], "NoSuchNet"),
    (["--data", "bnnrobust.data.NoSuchData"], "NoSuchData"),
])
def test_bad_config_values_fail_with_a_message_naming_them(
        tmp_path: Path, override: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    cfg = write_config(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--config", str(cfg), "--log_dir", str(tmp_path / "logs"), *override])
    assert exit_info.value.code not in (0, None)
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


def test_unwritable_log_dir_is_reported(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match="not writable"):
        train_main(["--config", str(cfg), "--log_dir", str(blocker / "logs")])


def test_missing_data_folder_names_the_command_that_gets_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="download true"):
        train_main(["--config", str(cfg), "--log_dir", str(tmp_path / "logs"),
                    "--data", "bnnrobust.data.MNISTDataModule",
                    "--data.init_args.data_dir", str(tmp_path / "none")])
    assert not list((tmp_path / "logs").rglob("*.ckpt"))


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_log_and_checkpoint(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, max_epochs=1)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(cfg),
         "--log_dir", str(tmp_path / "logs"), "--trainer.strategy", "ddp",
         "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "logs" / "tiny" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # 96 samples, 2 ranks, batch 16: 3 optimizer steps per epoch on each rank
    assert ckpt["global_step"] == 3
    assert scalar_tags(run).get("val/clean_acc", 0) == 1
    assert "test/clean_acc" in proc.stdout
