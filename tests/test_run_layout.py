"""Lightning's run conventions: default_root_dir, one folder per run, test from a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from bnnrobust.cli import main as cli_main
from bnnrobust.training import main as train_main

TINY = {
    "model": {
        "class_path": "bnnrobust.systems.ImageClassifier",
        "init_args": {
            "model": {"class_path": "bnnrobust.models.ConvNet",
                      "init_args": {"width": 0.25, "binarizer": "bc"}},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
        },
    },
    "data": {
        "class_path": "bnnrobust.data.SyntheticDataModule",
        "init_args": {"num_samples": 64, "image_size": 12, "batch_size": 16, "num_classes": 4},
    },
    "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1,
                "enable_progress_bar": False, "enable_model_summary": False},
}


@pytest.fixture()
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # nothing may land in ./logs unless asked
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def test_default_root_dir_is_honoured(cfg: Path, tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    train_main(["--config", str(cfg), "--trainer.default_root_dir", str(root), "--skip_test", "true"])
    run = root / "tiny" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert not (tmp_path / "logs").exists()


def test_every_run_has_its_own_folder_and_last_resumes_the_newest(cfg: Path, tmp_path: Path) -> None:
    logs = str(tmp_path / "logs")
    args = ["--config", str(cfg), "--log_dir", logs, "--skip_test", "true"]
    train_main(args)
    train_main([*args, "--model.init_args.model.init_args.binarizer", "hubara"])
    runs = tmp_path / "logs" / "tiny"
    first = torch.load(runs / "version_0/checkpoints/last.ckpt", weights_only=True)
    second = torch.load(runs / "version_1/checkpoints/last.ckpt", weights_only=True)
    assert first["hyper_parameters"]["model"]["init_args"]["binarizer"] == "bc"
    assert second["hyper_parameters"]["model"]["init_args"]["binarizer"] == "hubara"
    train_main([*args, "--model.init_args.model.init_args.binarizer", "hubara",
                "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    resumed = torch.load(runs / "version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 2 * second["global_step"]
    assert sorted(p.name for p in runs.glob("version_*")) == ["version_0", "version_1"]
    assert torch.load(runs / "version_0/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0


def test_test_rebuilds_the_model_from_the_checkpoint_without_a_config(
        cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = str(tmp_path / "logs")
    cli_main(["fit", "--config", str(cfg), "--log_dir", logs])
    last = tmp_path / "logs/tiny/version_0/checkpoints/last.ckpt"
    capsys.readouterr()
    cli_main(["test", "--ckpt_path", str(last), "--log_dir", logs, "--run_name", "tiny_test",
              "--trainer.enable_progress_bar", "false",
              "--model.init_args.test_attacks", "[{name: pgd, eps: 0.05, step_size: 0.02, steps: 1}]"])
    out = capsys.readouterr().out
    assert "test/clean_acc" in out and "test/pgd_acc" in out
    saved = yaml.safe_load(next((tmp_path / "logs/tiny_test").glob("version_*/config.yaml")).read_text())
    assert saved["model"]["init_args"]["model"]["init_args"]["binarizer"] == "bc"


def test_a_saved_config_is_accepted_back(cfg: Path, tmp_path: Path) -> None:
    logs = str(tmp_path / "logs")
    train_main(["--config", str(cfg), "--log_dir", logs, "--skip_test", "true",
                "--summary_json", str(tmp_path / "s.json")])
    saved = tmp_path / "logs/tiny/version_0/config.yaml"
    body = yaml.safe_load(saved.read_text())
    assert "skip_test" not in body and "ckpt_path" not in body
    train_main(["--config", str(saved), "--log_dir", logs, "--run_name", "again", "--skip_test", "true"])
    cli_main(["fit", "--config", str(saved), "--log_dir", logs, "--run_name", "again_cli"])
    assert (tmp_path / "logs/again/version_0/checkpoints/last.ckpt").is_file()
    assert (tmp_path / "logs/again_cli/version_0/checkpoints/last.ckpt").is_file()
    assert os.environ.get("BNNROBUST_RUN_VERSION") == "0"
