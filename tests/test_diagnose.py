"""Gradient-masking diagnosis on constructed models whose masking we know.

* a plain float MLP trained a little: every check passes;
* the same MLP with logits × 1e4: softmax saturation, zero gradients *at the logits*,
  PGD++ recommended (and Square / transfer from the float MLP beat PGD);
* a rounding step inside (``round(x)`` or ``(x > 0.5).float()``) then a linear layer: zero
  gradients *inside* the network, located at the step module, temperature cannot help;
* dropout left on in eval mode: randomness, EOT recommended;
* PGD++ weaker than PGD (fixed attack results): named in words, and no masking verdict.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnrobust.evaluation import diagnose as dg
from bnnrobust.evaluation.diagnose import (
    CHECKS,
    REC_EOT,
    REC_INSIDE,
    REC_PGDPP,
    Diagnosis,
    diagnose,
    layer_gradient_zeros,
)
from bnnrobust.evaluation.diagnose.context import Context

EPS = 0.05
QUICK = {"quick": True, "n_samples": 48, "progress": False, "steps_list": (5, 10, 20),
         "n_clever": 16, "clever_points": 4, "n_signal": 32}


# ----------------------------------------------------------------------------- fixtures
def _blobs(n: int = 240, k: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Well-separated Gaussian blobs of 1×4×4 images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(k, 16, generator=g) * 0.6 + 0.2
    y = torch.arange(n) % k
    x = (protos[y] + 0.08 * torch.randn(n, 16, generator=g)).clamp(0, 1)
    return x.view(n, 1, 4, 4), y


def _train(model: nn.Module, x: Tensor, y: Tensor, steps: int = 150, lr: float = 0.05) -> nn.Module:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


class Scaled(nn.Module):
    """Logits multiplied by a constant (saturates the softmax without changing decisions)."""

    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x) * self.scale


class Round(nn.Module):
    """x → round(x) = (x > 0.5) on [0, 1]: differentiable graph, zero gradient."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.round(x)


class Threshold(nn.Module):
    """x → (x > 0.5).float(): no autograd graph back to x at all."""

    def forward(self, x: Tensor) -> Tensor:
        return (x > 0.5).float()


class AlwaysDropout(nn.Module):
    """An MLP whose dropout ignores eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(F.dropout(h, 0.5, training=True))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


@pytest.fixture(scope="module")
def data() -> tuple[Tensor, Tensor]:
    return _blobs()


@pytest.fixture(scope="module")
def float_mlp(data: tuple[Tensor, Tensor]) -> nn.Module:
    torch.manual_seed(1)
    return _train(_mlp(), *data)


def _step_model(kind: str, data: tuple[Tensor, Tensor]) -> nn.Module:
    torch.manual_seed(2)
    step = Round() if kind == "round" else Threshold()
    return _train(nn.Sequential(step, nn.Flatten(), nn.Linear(16, 3)), *data, steps=200, lr=0.1)


# ----------------------------------------------------------------------------- the four models
def test_plain_float_model_passes_every_check(float_mlp: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    diag = diagnose(float_mlp, x, y, eps=EPS, **QUICK)
    assert [c.name for c in diag.checks] == list(CHECKS)
    bad = {c.name: (c.verdict, c.summary) for c in diag.checks if c.verdict != "pass"}
    assert not bad, bad
    assert diag.verdict == "pass" and diag.recommendations == []
    assert diag.clean_acc > 0.9
    ev = diag["zero_gradients"].evidence
    assert ev["zero_input_grad_frac"] == 0.0 and ev["vanishes_at"] is None
    # the layer table follows the forward order and no layer output has a zero gradient
    assert [layer["name"] for layer in ev["layers"]] == ["0", "1", "2", "3"]
    assert all(layer["zero_frac"] == 0.0 for layer in ev["layers"])
    # accuracy vanishes at the largest radius (0.5 = cap of 16 * eps)
    eg = diag["eps_growth"].evidence
    assert eg["max_radius"] == 0.5 and eg["acc_at_max_radius"] <= 0.02
    # the step counts were capped by quick (none above QUICK_MAX_STEPS)
    assert max(int(s) for s in diag["more_iterations"].evidence["acc"]) <= dg.QUICK_MAX_STEPS
    text = diag.format()
    assert "overall PASS" in text and "No sign of gradient masking" in text
    d = json.loads(diag.to_json())
    assert d["verdict"] == "pass" and set(d["checks"]) == set(CHECKS)
    assert d["settings"]["eps"] == EPS and d["settings"]["n"] == 48


def test_saturated_softmax_is_flagged_at_the_logits(float_mlp: nn.Module,
                                                   data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    model = Scaled(float_mlp, 1e4)
    diag = diagnose(model, x, y, eps=EPS, source_model=float_mlp,
                    checks=("zero_gradients", "softmax_saturation", "signal_propagation",
                            "black_box", "clever"), **QUICK)
    zg = diag["zero_gradients"]
    assert zg.verdict == "fail"
    assert zg.evidence["zero_at_logits_frac"] > 0.9 and zg.evidence["zero_inside_frac"] == 0.0
    assert REC_PGDPP in zg.recommendations and REC_INSIDE not in zg.recommendations
    sat = diag["softmax_saturation"]
    assert sat.verdict == "fail"
    assert sat.evidence["rho_saturated_frac"] > 0.9 and sat.evidence["float_saturated_frac"] > 0.9
    # PGD++ (HNS) is far stronger than plain PGD on this model
    assert sat.evidence["pgd++hns_acc"] < sat.evidence["pgd_acc"] - 0.2
    # the NJS/HNS temperature restores the gradient: signal check recommends PGD++
    sp = diag["signal_propagation"]
    assert sp.verdict == "fail" and sp.recommendations == [REC_PGDPP]
    assert sp.evidence["variants"]["original"]["zero_grad_frac"] > 0.9
    assert sp.evidence["variants"]["njs"]["zero_grad_frac"] < 0.1
    # Square and the transfer from the float model beat the masked PGD
    bb = diag["black_box"]
    assert bb.verdict == "fail"
    assert set(bb.evidence["black_box_acc"]) == {f"square-{dg.QUICK_SQUARE_QUERIES}",
                                                 "transfer(pgd)"}
    # the logit margin still has a gradient: CLEVER is finite
    assert diag["clever"].evidence["inf_score_frac"] == 0.0
    assert diag.verdict == "fail"
    assert diag.recommendations[0] == REC_PGDPP
    assert "overall FAIL" in diag.format()


@pytest.mark.parametrize("kind", ["round", "threshold"])
def test_step_inside_the_network_is_flagged_inside(kind: str, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    model = _step_model(kind, data)
    diag = diagnose(model, x, y, eps=EPS,
                    checks=("zero_gradients", "softmax_saturation", "signal_propagation",
                            "eps_growth", "clever"), **QUICK)
    zg = diag["zero_gradients"]
    assert zg.verdict == "fail", zg.summary
    ev = zg.evidence
    assert ev["zero_input_grad_frac"] == 1.0
    assert ev["zero_inside_frac"] == 1.0 and ev["zero_at_logits_frac"] == 0.0
    assert ev["vanishes_at"] == "0" and ev["vanishes_at_frac"] == 1.0  # the step module
    assert ev["input_connected"] is (kind == "round")
    layers = {layer["name"]: layer["zero_frac"] for layer in ev["layers"]}
    assert layers["0"] == 0.0 and layers["2"] == 0.0  # gradient reaches the step's output
    assert REC_INSIDE in zg.recommendations and "first vanishing at '0'" in zg.summary
    assert REC_PGDPP not in zg.recommendations
    assert diag["softmax_saturation"].verdict == "pass"
    sp = diag["signal_propagation"]
    if kind == "round":
        assert sp.verdict == "fail" and sp.recommendations == [REC_INSIDE]
    else:
        assert sp.verdict == "skipped"
    assert diag["eps_growth"].verdict == "fail"  # a zero gradient never reaches the boundary
    assert diag["clever"].verdict == "fail" and diag["clever"].evidence["inf_score_frac"] == 1.0
    assert not any(c.verdict == "error" for c in diag.checks), [c.summary for c in diag.checks]


def test_dropout_left_on_is_flagged_as_randomness(data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    torch.manual_seed(3)
    model = _train(AlwaysDropout(), x, y)
    diag = diagnose(model, x, y, eps=EPS, checks=("randomness",), **QUICK)
    r = diag["randomness"]
    assert r.verdict == "fail" and r.recommendations == [REC_EOT]
    assert r.evidence["rel_logit_diff"] > 1e-2
    # the deterministic model passes the same check
    det = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    assert diagnose(det, x, y, eps=EPS, checks=("randomness",), **QUICK)["randomness"].verdict == "pass"


# ----------------------------------------------------------------------------- verdict logic
def _fake_runner(monkeypatch: pytest.MonkeyPatch, accs: dict[tuple[float, int], float]) -> None:
    """Replace PGD by fixed per-sample results with the given accuracy per (eps, steps)."""

    def pgd(self: Context, eps: float, steps: int, temperature: str | None = None) -> Tensor:
        acc = accs[(round(eps, 6), steps)]
        k = int(round(acc * self.n))
        return torch.arange(self.n) < k

    monkeypatch.setattr(Context, "pgd", pgd)


def test_more_iterations_flags_accuracy_that_keeps_dropping(monkeypatch: pytest.MonkeyPatch,
                                                            float_mlp: nn.Module,
                                                            data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    kw = {**QUICK, "n_samples": None, "quick": False, "steps_list": (10, 20, 100, 500)}
    _fake_runner(monkeypatch, {(EPS, 10): 0.6, (EPS, 20): 0.5, (EPS, 100): 0.35, (EPS, 500): 0.2})
    c = diagnose(float_mlp, x, y, eps=EPS, checks=("more_iterations",), **kw)["more_iterations"]
    assert c.verdict == "fail" and math.isclose(c.evidence["drop"], 0.4, abs_tol=0.01)
    _fake_runner(monkeypatch, {(EPS, 10): 0.5, (EPS, 20): 0.5, (EPS, 100): 0.5, (EPS, 500): 0.5})
    c = diagnose(float_mlp, x, y, eps=EPS, checks=("more_iterations",), **kw)["more_iterations"]
    assert c.verdict == "pass"


def test_eps_growth_flags_accuracy_that_does_not_vanish(monkeypatch: pytest.MonkeyPatch,
                                                        float_mlp: nn.Module,
                                                        data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    kw = {**QUICK, "n_samples": None, "steps_list": (10, 20)}
    radii = [0.05, 0.1, 0.2, 0.4, 0.5]
    _fake_runner(monkeypatch, {(r, 20): a for r, a in zip(radii, [0.8, 0.7, 0.6, 0.5, 0.5], strict=True)})
    c = diagnose(float_mlp, x, y, eps=EPS, checks=("eps_growth",), **kw)["eps_growth"]
    assert c.verdict == "fail" and c.evidence["acc_at_max_radius"] == 0.5
    # the same accuracy at a small largest radius is only a warning
    _fake_runner(monkeypatch, {(round(EPS / 10 * m, 6), 20): 0.5 for m in (1, 2, 4, 8, 16)})
    c = diagnose(float_mlp, x, y, eps=EPS / 10, checks=("eps_growth",), **kw)["eps_growth"]
    assert c.verdict == "warning" and c.evidence["max_radius"] < 0.25
    _fake_runner(monkeypatch, {(r, 20): a for r, a in zip(radii, [0.8, 0.4, 0.1, 0.0, 0.0], strict=True)})
    assert diagnose(float_mlp, x, y, eps=EPS, checks=("eps_growth",), **kw)["eps_growth"].verdict == "pass"


def test_a_tempered_attack_weaker_than_its_base_is_named(monkeypatch: pytest.MonkeyPatch,
                                                         float_mlp: nn.Module,
                                                         data: tuple[Tensor, Tensor]) -> None:
    """PGD++(HNS) far weaker than PGD: the saturation summary says so in words (the note of
    bnnrobust.evaluation.report.weaker_temperature_notes), and it is no masking verdict."""
    x, y = data
    model = Scaled(float_mlp, 3.0)  # p_y > 1 − ρ for the correct samples, ∂ℓ/∂logits still > 0

    def run(hns_acc: float) -> Diagnosis:
        def pgd(self: Context, eps: float, steps: int, temperature: str | None = None) -> Tensor:
            k = int(round((hns_acc if temperature == "hns" else 0.25) * self.n))
            return torch.arange(self.n) < k

        monkeypatch.setattr(Context, "pgd", pgd)
        return diagnose(model, x, y, eps=EPS, checks=("softmax_saturation",), **QUICK)

    diag = run(0.75)  # 36 of 48 samples survive PGD++, 12 survive PGD
    sat = diag["softmax_saturation"]
    assert sat.evidence["rho_saturated_frac"] > 0.5 and sat.evidence["float_saturated_frac"] == 0.0
    assert sat.evidence["pgd_acc"] == 0.25 and sat.evidence["pgd++hns_acc"] == 0.75
    assert sat.evidence["pgd++_weaker"] is True
    assert "Pgd++hns is weaker than pgd (75.0 % vs 25.0 %)" in sat.summary
    assert "lowered the gradient signal" in sat.summary
    assert "no sign of gradient masking by softmax saturation" in sat.summary
    assert sat.verdict == "pass" and sat.recommendations == []
    assert "Pgd++hns is weaker than pgd" in diag.format()
    # equal, or weaker by less than the noise margin (2 binomial standard errors): not named
    for hns_acc in (0.25, 0.3125):
        sat = run(hns_acc)["softmax_saturation"]
        assert sat.evidence["pgd++_weaker"] is False and "weaker" not in sat.summary


# ----------------------------------------------------------------------------- helpers, contract
def test_layer_gradients_match_autograd(float_mlp: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data[0][:8], data[1][:8]
    logits, g_z, g_x, names, zeros, connected = layer_gradient_zeros(float_mlp, x, y)
    p = torch.softmax(logits, dim=1)
    torch.testing.assert_close(g_z, p - F.one_hot(y, 3).float())
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(float_mlp(xr), y, reduction="sum").backward()
    torch.testing.assert_close(g_x, xr.grad)
    assert names == ["0", "1", "2", "3"] and connected
    assert all(z.shape == (8,) and not bool(z.any()) for z in zeros)


def test_modes_grads_restored_and_bad_arguments(float_mlp: nn.Module,
                                                data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    float_mlp.train()
    float_mlp[1].eval()
    for p in float_mlp.parameters():
        p.grad = None
    diag = diagnose(float_mlp, x, y, eps=EPS, checks=("zero_gradients", "clever"), **QUICK)
    assert isinstance(diag, Diagnosis)
    assert float_mlp.training and not float_mlp[1].training and float_mlp[3].training
    assert all(p.grad is None for p in float_mlp.parameters())
    float_mlp.eval()
    with pytest.raises(ValueError, match="Unknown check"):
        diagnose(float_mlp, x, y, eps=EPS, checks=("nope",), progress=False)
    with pytest.raises(ValueError, match="pixel units"):
        diagnose(float_mlp, x, y, eps=8, progress=False)
    with pytest.raises(ValueError, match="eps must be > 0"):
        diagnose(float_mlp, x, y, eps=0.0, progress=False)
    with pytest.raises(ValueError, match="Unknown norm"):
        diagnose(float_mlp, x, y, eps=EPS, norm="l3", progress=False)
    with pytest.raises(ValueError, match="steps_list"):
        diagnose(float_mlp, x, y, eps=EPS, steps_list=(0, 10), progress=False)
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel units"):
        diagnose(float_mlp, x * 255, y, eps=EPS, progress=False)


def test_seeded_subset_is_reproducible(float_mlp: nn.Module, data: tuple[Tensor, Tensor]) -> None:
    x, y = data
    kw = {**QUICK, "checks": ("more_iterations",)}
    a = diagnose(float_mlp, x, y, eps=0.15, seed=5, **kw).to_dict()
    b = diagnose(float_mlp, x, y, eps=0.15, seed=5, **kw).to_dict()
    assert a["checks"]["more_iterations"]["evidence"] == b["checks"]["more_iterations"]["evidence"]


# ----------------------------------------------------------------------------- evaluate.py --diagnose
def test_evaluate_cli_diagnose_flag(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers_models import train_tiny

    from bnnrobust.evaluation.cli import main

    ckpt, _ = train_tiny(str(tmp_path), network="tiny")
    out = tmp_path / "eval" / "results.json"
    main(["--ckpt", ckpt, "--attacks", "[{name: pgd, eps: 0.03, steps: 2}]", "--n", "24",
          "--diagnose", "--diagnose_quick", "--diagnose_n", "12", "--output", str(out),
          "--progress", "false", "--allow_module", "[tests]"])
    diag_json = out.with_name("results_diagnosis.json")
    d = json.loads(diag_json.read_text())
    assert d["settings"]["eps"] == pytest.approx(0.03) and d["settings"]["n"] == 12
    assert d["settings"]["quick"] is True and set(d["checks"]) == set(CHECKS)
    assert not any(c["verdict"] == "error" for c in d["checks"].values()), d["checks"]
    body = json.loads(out.read_text())
    assert body["diagnosis"]["verdict"] == d["verdict"]
    assert "Gradient-masking diagnosis" in capsys.readouterr().out
    assert "Gradient-masking diagnosis" in out.with_suffix(".md").read_text()
