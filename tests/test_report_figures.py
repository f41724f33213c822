"""Reports and figures: Wilson intervals, eps units, run names in titles, 300 dpi PNG + PDF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer
from PIL import Image
from torch import nn

from bnnrobust.evaluation.report import (
    eps_in_255,
    format_accuracy,
    format_eps,
    format_table,
    markdown_table,
    report_title,
    run_name,
    write_reports,
)
from bnnrobust.evaluation.runner import AttackResult, EvalResult
from bnnrobust.evaluation.sweep import eps_sweep, plot_sweep, sweep_figure
from bnnrobust.metrics.hessian_curve import hessian_figure, model_label, save_figure
from bnnrobust.metrics.intervals import wilson_interval, wilson_interval_percent

# -- Wilson intervals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    # Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (Wilson score, no correction)
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
     (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_published_values(correct: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(correct, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def _width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_wilson_interval_properties() -> None:
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0
    assert 0.0 < wilson_interval(50, 50)[0] < 1.0  # not empty at 100 %
    for correct, n in [(3, 10), (500, 1000), (999, 1000)]:
        lo, hi = wilson_interval(correct, n)
        assert 0.0 <= lo < correct / n < hi <= 1.0
    # symmetric under correct <-> n - correct, narrower with more samples, wider with larger z
    lo, hi = wilson_interval(30, 100)
    lo2, hi2 = wilson_interval(70, 100)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert _width(wilson_interval(300, 1000)) < hi - lo
    assert _width(wilson_interval(30, 100, z=2.576)) > hi - lo
    numpy_counts = wilson_interval(np.int64(30), np.int64(100))  # type: ignore[arg-type]
    assert numpy_counts == (lo, hi)
    assert wilson_interval_percent(813, 1000) == pytest.approx(
        tuple(100 * v for v in wilson_interval(813, 1000)))


@pytest.mark.parametrize(("correct", "n", "z", "match"), [
    (0, 0, 1.96, "n must be >= 1"), (5, 4, 1.96, "correct must lie in"),
    (-1, 4, 1.96, "correct must lie in"), (True, 4, 1.96, "integer count"),
    (2.0, 4, 1.96, "integer count"), (1, 4, 0.0, "z must be"), (1, 4, float("nan"), "z must be"),
])
def test_wilson_interval_refuses_bad_input(correct: object, n: int, z: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wilson_interval(correct, n, z)  # type: ignore[arg-type]


def test_format_accuracy_reads_like_a_paper_table() -> None:
    assert format_accuracy(813, 1000) == "81.3 (78.8–83.6)"
    assert format_accuracy(0, 20) == "0.0 (0.0–16.1)"


# -- eps units ------------------------------------------------------------------------------


def test_eps_prints_in_the_datasets_usual_unit() -> None:
    assert format_eps(0.1, "linf", "fmnist") == "0.1 linf"  # not "25.5/255"
    assert format_eps(0.3, "linf", "mnist") == "0.3 linf"
    assert format_eps(0.1, "linf") == "0.1 linf"  # unknown dataset: no fractional k/255
    assert format_eps(8 / 255, "linf") == "8/255 linf"
    assert format_eps(8 / 255, "linf", "CIFAR-10") == "8/255 linf"
    assert format_eps(4 / 255, "linf", "cifar100") == "4/255 linf"
    assert format_eps(120 / 255, "l2", "cifar10") == "120/255 l2"  # paper Table 6's L2 radius
    assert format_eps(1.5, "l2", "fmnist") == "1.5 l2"
    assert format_eps(0.0, "linf", "cifar10") == "0 linf"
    assert eps_in_255(None, [0.0, 2 / 255, 8 / 255]) and not eps_in_255(None, [0.0, 0.05, 0.1])
    assert not eps_in_255("fmnist", [8 / 255]) and eps_in_255("cifar10", [0.1])


# -- report tables and titles ---------------------------------------------------------------


def _result(extra: dict[str, object] | None = None) -> EvalResult:
    cfg = {"eps": 0.1, "norm": "linf", "steps": 20}
    attacks = {"pgd": AttackResult("pgd", 41.2, 412, 1000, 3.0, 813, None, cfg),
               "fgsm": AttackResult("fgsm", 60.0, 600, 1000, 1.0, 813, None, dict(cfg, steps=1))}
    return EvalResult(1000, 0, 256, "cpu", 1, 81.3, 813, attacks, 40.0, 4.0, dict(extra or {}))


def test_markdown_and_text_tables_show_the_interval_and_the_unit() -> None:
    md = markdown_table(_result(), "t", dataset="fmnist")
    assert "| clean | 81.3 (78.8–83.6) |" in md
    lo, hi = wilson_interval_percent(412, 1000)
    assert f"| pgd | 41.2 ({lo:.1f}–{hi:.1f}) |" in md
    lo, hi = wilson_interval_percent(400, 1000)  # worst case: 40.0 % of 1000
    assert f"| worst case (all attacks) | 40.0 ({lo:.1f}–{hi:.1f}) |" in md
    assert "0.1 linf, 20 steps" in md and "/255" not in md
    assert "acc % (95 % CI)" in md
    text = format_table(_result(), "t", dataset="fmnist")
    assert "81.3 (78.8–83.6)" in text and "0.1 linf" in text and "25.5/255" not in text
    # the dataset may come from the result's extras; CIFAR shows k/255
    assert "25.5/255 linf" in markdown_table(_result({"dataset": "cifar10"}))


@pytest.mark.parametrize(("ckpt", "name"), [
    ("logs/convnet_bc/version_0/checkpoints/last.ckpt", "convnet_bc (version_0)"),
    ("/abs/logs/convnet_bc/version_12/checkpoints/last.ckpt", "convnet_bc (version_12)"),
    ("logs/run/version_1/checkpoints/epoch=3-step=120.ckpt", "run (version_1, epoch=3-step=120)"),
    ("logs/run/checkpoints/last.ckpt", "run"),
    ("zoo:fmnist_convnet_bc", "fmnist_convnet_bc"),
    ("models/convnet_bc.ckpt", "convnet_bc"),
])
def test_run_name_replaces_the_checkpoint_file_name(ckpt: str, name: str) -> None:
    assert run_name(ckpt) == name
    assert report_title(ckpt, "fmnist", "test") == f"{name} — fmnist, test"


def test_write_reports_titles_the_run_not_last_ckpt(tmp_path: Path) -> None:
    ckpt = "logs/convnet_bc/version_0/checkpoints/last.ckpt"
    body = write_reports(_result(), tmp_path / "r.json", checkpoint=ckpt, dataset="fmnist",
                         split="test")
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("# convnet_bc (version_0) — fmnist, test\n")
    assert "last.ckpt" not in md and "0.1 linf" in md and "81.3 (78.8–83.6)" in md
    assert body["checkpoint"] == ckpt and json.loads((tmp_path / "r.json").read_text()) == body
    # an explicit title is kept
    write_reports(_result(), tmp_path / "s.json", title="mine", checkpoint=ckpt)
    assert (tmp_path / "s.md").read_text().startswith("# mine\n")


# -- figures ----------------------------------------------------------------------------------


def _assert_png_300_dpi_and_pdf(png: Path) -> None:
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def _fake_sweep(dataset: str, eps: list[float]) -> dict[str, object]:
    n = 500
    counts = [450, 300, 120]
    curve = {"adv_acc": [100 * c / n for c in counts], "correct": counts,
             "ci95": [list(wilson_interval_percent(c, n)) for c in counts],
             "seconds": [0.0] * 3, "config": {"eps": eps[1], "norm": "linf"}}
    return {"eps": eps, "clean_acc": 90.0, "n": n, "dataset": dataset, "model": "resnet18_bnn",
            "attacks": {"pgd": curve}}


def test_sweep_figure_units_error_bars_title_and_files(tmp_path: Path) -> None:
    cifar = sweep_figure(_fake_sweep("cifar10", [0.0, 4 / 255, 8 / 255]))
    ax = cifar.axes[0]
    assert ax.get_xlabel() == "L∞ ε (in 1/255; pixel values in [0, 1])"
    assert ax.get_ylabel() == "adversarial accuracy (%)"
    assert ax.get_title() == "resnet18_bnn: accuracy vs ε (cifar10, n = 500)"
    bars = ax.containers[0]  # the error bars of "pgd"
    assert isinstance(bars, ErrorbarContainer)
    assert np.asarray(bars.lines[0].get_xdata()).tolist() == pytest.approx([0.0, 4.0, 8.0])
    # the error bars span the Wilson interval of each point
    segments = bars.lines[2][0].get_segments()
    lo, hi = wilson_interval_percent(300, 500)
    assert segments[1][:, 1].tolist() == pytest.approx([lo, hi])
    fmnist = sweep_figure(_fake_sweep("fmnist", [0.0, 0.05, 0.1]), title="custom")
    assert fmnist.axes[0].get_xlabel() == "L∞ ε (pixel values in [0, 1])"
    bars = fmnist.axes[0].containers[0]
    assert isinstance(bars, ErrorbarContainer)
    assert np.asarray(bars.lines[0].get_xdata()).tolist() == pytest.approx([0, 0.05, 0.1])
    assert fmnist.axes[0].get_title() == "custom"
    out = plot_sweep(_fake_sweep("fmnist", [0.0, 0.05, 0.1]), tmp_path / "sub" / "s.png")
    assert out == tmp_path / "sub" / "s.png"
    _assert_png_300_dpi_and_pdf(out)


def test_eps_sweep_records_a_ci95_per_accuracy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(30, 1, 4, 4)
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3
    res = eps_sweep(model, x, y, ["fgsm"], [0.0, 0.05, 0.2], dataset="synthetic", progress=False,
                    json_path=tmp_path / "s.json", png_path=tmp_path / "s.png",
                    model_name="tiny (version_0)")
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(res))
    assert res["model"] == "tiny (version_0)" and res["clean_correct"] == 25
    assert res["clean_ci95"] == pytest.approx(list(wilson_interval_percent(25, 30)))
    curve = res["attacks"]["fgsm"]
    assert len(curve["ci95"]) == len(curve["correct"]) == 3 and curve["correct"][0] == 25
    for acc, correct, (lo, hi) in zip(curve["adv_acc"], curve["correct"], curve["ci95"],
                                      strict=True):
        assert acc == pytest.approx(100 * correct / 30)
        assert (lo, hi) == pytest.approx(wilson_interval_percent(correct, 30))
        assert lo <= acc <= hi
    _assert_png_300_dpi_and_pdf(tmp_path / "s.png")
    # without a name the model's class names the run (inside a Normalize-style wrapper)
    assert eps_sweep(model, x, y, ["fgsm"], [0.0], progress=False)["model"] == "Linear"


class _Shift(nn.Module):
    mean: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


class _Net(nn.Sequential):
    pass


def test_model_label_unwraps_a_normalizing_wrapper() -> None:
    net = _Net(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2))
    assert model_label(nn.Sequential(_Shift(), net)) == "_Net"
    assert model_label(net) == "_Net"  # two layers with parameters: the container's own name
    assert model_label(nn.Linear(2, 2)) == "Linear"


def test_hessian_figure_title_units_and_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    x = torch.rand(8, 1, 4, 4)
    y = model(x).argmax(1)
    fig = hessian_figure(model, x, y, n_samples=2, path=tmp_path / "h.png", n_grid=30,
                         model_name="convnet_bc (version_0)")
    assert fig is not None
    ax = fig.axes[0]
    assert ax.get_title() == "convnet_bc (version_0): Hessian norm vs. β"
    assert ax.get_xlabel() == "β (temperature, dimensionless)"
    assert ax.get_ylabel() == "‖H(β)‖_F (loss per squared pixel unit)"
    _assert_png_300_dpi_and_pdf(tmp_path / "h.png")
    default = hessian_figure(model, x, y, n_samples=1, n_grid=10)
    assert default is not None and default.axes[0].get_title() == "Sequential: Hessian norm vs. β"
    named = hessian_figure(model, x, y, n_samples=1, n_grid=10, title="Fig. 3")
    assert named is not None and named.axes[0].get_title() == "Fig. 3"


def test_save_figure_writes_png_and_pdf_with_the_same_stem(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    written = save_figure(fig, tmp_path / "a" / "fig.pdf")
    assert written == [tmp_path / "a" / "fig.png", tmp_path / "a" / "fig.pdf"]
    _assert_png_300_dpi_and_pdf(written[0])
    with Image.open(written[0]) as im:
        assert im.size == (600, 300)  # 2 x 1 inches at 300 dpi
    # PDFs carry no creation date: the same figure gives the same bytes
    first = written[1].read_bytes()
    save_figure(fig, tmp_path / "a" / "fig.png")
    assert written[1].read_bytes() == first
    svg = save_figure(fig, tmp_path / "b.svg")
    assert [p.suffix for p in svg] == [".png", ".pdf", ".svg"] and all(p.is_file() for p in svg)
