"""The quickstart job: trains each binarizer's model and compares PGD with PGD++ honestly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bnnrobust.quickstart import comparison_table, conclusion, main, shows_fake_robustness

ROOT = Path(__file__).resolve().parents[1]


def test_conclusion_is_computed_from_the_numbers() -> None:
    masked = {"BNN": {"test/pgd_acc": 0.30, "test/pgd++njs_acc": 0.10, "test/pgd++hns_acc": 0.12}}
    honest = {"REF": {"test/pgd_acc": 0.034, "test/pgd++njs_acc": 0.04, "test/pgd++hns_acc": 0.034}}
    assert "lowers adversarial accuracy by 20.0 points" in conclusion(masked)
    assert "no gradient masking visible" in conclusion(honest)
    assert "PGD++ is not stronger than PGD (PGD 3.4 %, best PGD++ 3.4 %)" in conclusion(honest)
    close = {"REF": {"test/pgd_acc": 0.038, "test/pgd++njs_acc": 0.032}}
    assert "PGD++ is within 0.6 points of PGD (PGD 3.8 %, best PGD++ 3.2 %)" in conclusion(close)
    assert conclusion({"X": {"test/clean_acc": 0.5}}) == ""


def test_the_demonstration_criterion_needs_both_ratio_and_points() -> None:
    def m(pgd: float, best: float) -> dict[str, float]:
        return {"test/pgd_acc": pgd, "test/pgd++njs_acc": best, "test/pgd++hns_acc": best + 0.01}

    assert shows_fake_robustness(m(0.110, 0.052))  # 2.1x, 5.8 points
    assert not shows_fake_robustness(m(0.160, 0.100))  # 6 points but 1.6x
    assert not shows_fake_robustness(m(0.040, 0.015))  # 2.7x but 2.5 points
    assert not shows_fake_robustness({"test/pgd_acc": 0.5})  # no PGD++ row


def test_table_puts_clean_first_and_marks_missing() -> None:
    table = comparison_table({"a": {"test/clean_acc": 0.5, "test/pgd_acc": 0.25},
                              "b": {"test/clean_acc": 0.75}})
    lines = table.splitlines()
    assert lines[0] == "| model | clean | pgd |"
    assert lines[2] == "| a | 50.0 | 25.0 |" and lines[3] == "| b | 75.0 | – |"


def test_quickstart_config_is_the_documented_main_job() -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    init = cfg["model"]["init_args"]
    assert init["model"]["init_args"]["binarizer"] == "none"
    assert {"pgd", "pgd++njs", "pgd++hns"} <= set(init["test_attacks"])
    assert cfg["data"]["class_path"] == "bnnrobust.data.FashionMNISTDataModule"
    callbacks = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert "callbacks.robustness_monitor.RobustnessMonitor" in callbacks


def test_quickstart_trains_ref_and_bnn_and_prints_the_comparison(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    cfg["data"] = {"class_path": "bnnrobust.data.SyntheticDataModule",
                   "init_args": {"num_samples": 64, "image_size": 12, "batch_size": 16}}
    cfg["model"]["init_args"]["test_attacks"] = [
        {"name": "pgd", "eps": 0.1, "step_size": 0.05, "steps": 2},
        {"name": "pgd++njs", "eps": 0.1, "step_size": 0.05, "steps": 2}]
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"]
                                   if not c["class_path"].endswith("RobustnessMonitor")]
    cfg["trainer"]["enable_progress_bar"] = False
    path = tmp_path / "qs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = main(["--config", str(path), "--log_dir", str(tmp_path / "logs")])
    assert list(results) == ["float REF", "BNN-WQ (BC)"]
    for metrics in results.values():
        assert metrics["test/pgd_acc"] <= metrics["test/clean_acc"]
        assert "test/pgd++njs_acc" in metrics
    out = capsys.readouterr().out
    assert "| float REF |" in out and "| BNN-WQ (BC) |" in out
    shown = shows_fake_robustness(results["BNN-WQ (BC)"])
    assert ("BNN-WQ (BC): fake robustness shown" in out) is shown
    assert ("Not the 2x and 3 points of a clear demonstration" in out) is not shown
    assert (tmp_path / "logs" / "quickstart_bc" / "version_0" / "checkpoints" / "last.ckpt").is_file()
