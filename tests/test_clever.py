"""CLEVER under a temperature (paper Table 10): faithful to ART, β-invariant, validated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bnnrobust.metrics.clever import clever_scores, summarize, temperature_betas

art = pytest.importorskip("art")  # a declared dependency: installed by scripts/run.sh


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _x() -> torch.Tensor:
    return torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))


SMALL = {"nb_batches": 4, "batch_size": 5, "radius": 2.0}


def test_beta_one_equals_a_direct_art_call() -> None:
    from art.estimators.classification import PyTorchClassifier
    from art.metrics import clever_u

    net, x = _net().eval(), _x()
    ours = clever_scores(net, x[:1], betas={"original": 1.0}, seed=3, **SMALL)["original"][0]
    clf = PyTorchClassifier(model=net, loss=nn.CrossEntropyLoss(), input_shape=(1, 4, 4),
                            nb_classes=3, clip_values=(0.0, 1.0), device_type="cpu")
    np.random.seed(3)
    torch.manual_seed(3)
    direct = clever_u(clf, x[0].numpy(), nb_batches=4, batch_size=5, radius=2.0, norm=1,
                      verbose=False)
    assert ours == pytest.approx(float(direct), rel=1e-6)


def test_scaling_the_logits_leaves_the_score_unchanged_and_runs_are_reproducible() -> None:
    net, x = _net(), _x()
    s = clever_scores(net, x, betas={"a": 1.0, "b": 0.01, "c": torch.tensor([3.0, 0.5])},
                      seed=0, **SMALL)
    for i in range(2):
        assert s["b"][i] == pytest.approx(s["a"][i], rel=1e-3)
        assert s["c"][i] == pytest.approx(s["a"][i], rel=1e-3)
    again = clever_scores(net, x, betas={"a": 1.0}, seed=0, **SMALL)
    assert again["a"] == s["a"]
    assert summarize(s)["a"]["n"] == 2 and math.isfinite(summarize(s)["a"]["mean"])


def test_mode_is_restored() -> None:
    net = _net().train()
    clever_scores(net, _x()[:1], betas={"a": 1.0}, **SMALL)
    assert net.training


@pytest.mark.parametrize("kwargs, message", [
    ({"norm": 3}, "norm must be 1, 2 or inf"),
    ({"nb_batches": 0}, "nb_batches must be an integer >= 1"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"radius": -1.0}, "radius must be a finite number > 0"),
    ({"betas": {"x": 0.0}}, "beta 'x' must be a finite number > 0"),
])
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    args = {"betas": {"a": 1.0}, **SMALL, **kwargs}
    with pytest.raises(ValueError, match=message):
        clever_scores(_net(), _x(), **args)
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel units"):
        clever_scores(_net(), _x() * 3, betas={"a": 1.0})


def test_temperature_betas_are_the_papers_variants() -> None:
    net, x = _net(), _x()
    y = net(x).argmax(1)
    b = temperature_betas(net, x, y)
    assert set(b) == {"original", "heuristic", "njs", "hns"}
    assert b["original"] == 1.0 and b["heuristic"] == 0.01 and b["njs"] > 0
    assert isinstance(b["hns"], torch.Tensor) and b["hns"].shape == (2,)


def test_clever_table_scores_only_correct_images() -> None:
    from bnnrobust.metrics.clever import clever_table

    net, x = _net(), _x()
    y = net(x).argmax(1)
    y[1] = (y[1] + 1) % 3  # the second image is now misclassified
    table = clever_table(net, x, y, **SMALL)
    assert table["n_images"] == 2 and table["n_scored"] == 1
    assert all(len(v) == 1 for v in table["scores"].values())
    assert len(table["betas"]["hns"]) == 1
