"""Signal-propagation metrics (paper Table 12) and the Hessian-norm curve (Fig. 3)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnrobust.attacks.temperature import hns_temperature, njs_temperature
from bnnrobust.metrics import format_table, signal_propagation, signal_sums
from bnnrobust.metrics.hessian_curve import (
    hessian_figure,
    hessian_norm_curve,
    hessian_norms_from_gram,
)
from bnnrobust.metrics.signal import JSV_HIST_LIMITS, QUANTITIES, SignalSums


def linear_model(n_in: int = 12, d: int = 5, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, d))


def correct_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


def population_std(values: torch.Tensor) -> float:
    return float(values.double().std(unbiased=False))


# -- Jacobian singular values ------------------------------------------------------------------
def test_linear_model_jsv_are_weight_singular_values_times_beta() -> None:
    model = linear_model()
    x = torch.rand(8, 3, 2, 2)
    y = correct_labels(model, x)
    w = model[1].weight.detach().double()
    sv = torch.linalg.svdvals(w)  # (5,)
    per_sample = torch.linspace(0.5, 3.0, 8)
    stats = signal_propagation(model, x, y, {"original": 1.0, "scaled": 2.5, "per": per_sample})

    for name, beta in (("original", torch.ones(8)), ("scaled", torch.full((8,), 2.5)),
                       ("per", per_sample)):
        pooled = (beta.double()[:, None] * sv[None, :]).reshape(-1)
        q = stats.stats[name]["jsv"]
        assert q.n == 8 * 5
        assert q.mean == pytest.approx(float(pooled.mean()), rel=1e-6)
        assert q.std == pytest.approx(population_std(pooled), rel=1e-5)
        assert q.min == pytest.approx(float(pooled.min()), rel=1e-6)
        assert q.max == pytest.approx(float(pooled.max()), rel=1e-6)
        # the condition number does not depend on β
        assert stats.stats[name]["jsv_cond"].mean == pytest.approx(float(sv[0] / sv[-1]), rel=1e-5)
        assert sum(stats.hist[name]) == q.n
    assert stats.summary("scaled")["jsv_mean"] == pytest.approx(2.5 * float(sv.mean()), rel=1e-6)


# -- ψ and gradient norms by hand ---------------------------------------------------------------
def test_psi_and_gradient_norms_match_hand_computation() -> None:
    torch.manual_seed(1)
    n_in, d = 6, 3
    model = nn.Sequential(nn.Flatten(), nn.Linear(n_in, d))
    with torch.no_grad():
        model[1].weight[:, 2] = 0.0  # pixel 2 never influences the logits: zero gradient entry
    x = torch.rand(5, 1, 2, 3)
    y = correct_labels(model, x)
    beta = 1.7
    stats = signal_propagation(model, x, y, {"b": beta})

    w, bias = model[1].weight.detach().double(), model[1].bias.detach().double()
    psi_norms, grad_norms = [], []
    for xi, yi in zip(x.double().flatten(1), y, strict=True):
        p = torch.softmax(beta * (w @ xi + bias), dim=0)
        psi = p - F.one_hot(yi, d).double()
        psi_norms.append(float(psi.norm()))
        grad_norms.append(float((beta * w.T @ psi).norm()))  # ∂ℓ/∂x = β Wᵀ (p − onehot)
    s = stats.summary("b")
    assert s["psi_norm"] == pytest.approx(sum(psi_norms) / 5, rel=1e-5)
    assert s["grad_norm"] == pytest.approx(sum(grad_norms) / 5, rel=1e-5)
    assert s["sign_grad_norm"] == pytest.approx(math.sqrt(n_in - 1))
    assert s["zero_grad_frac"] == 0.0
    assert stats.stats["b"]["psi_norm"].std == pytest.approx(population_std(torch.tensor(psi_norms)),
                                                            rel=1e-4, abs=1e-9)


def test_dead_network_gives_zero_gradient_and_infinite_condition_number() -> None:
    # ReLU net whose hidden units are all dead at x = 0: f = b2, J = 0, ∂ℓ/∂x = 0
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3, 4))
        model[1].bias.fill_(-0.5)
        model[3].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    x = torch.zeros(2, 1, 2, 2)  # sample 0: every hidden unit sees -0.5 (dead)
    x[1] = 1.0  # sample 1: every hidden unit sees 0.5 (alive)
    y = correct_labels(model, x)
    assert int(y[0]) == 1
    with pytest.warns(RuntimeWarning, match="jsv_cond"):
        stats = signal_propagation(model, x, y, {"original": 1.0})
    s = stats.summary("original")
    assert stats.n_correct == 2
    assert s["zero_grad_frac"] == pytest.approx(0.5)  # sample 0 only
    assert s["jsv_min"] == 0.0
    assert math.isinf(s["jsv_cond"])  # σ_min = 0 → inf, reported as such
    assert "original/jsv_cond" in stats.nonfinite_metrics()
    assert "inf ⚠" in format_table(stats)


# -- sums and counts -----------------------------------------------------------------------------
def test_two_halves_merged_equal_the_whole() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(24, 3, 2, 2)
    y = correct_labels(model, x)
    y[::5] = (y[::5] + 1) % 4  # some misclassified samples (excluded from the metrics)
    betas = {"original": 1.0, "njs": 0.37, "per": torch.rand(24) + 0.5}
    whole = signal_sums(model, x, y, betas)
    first = signal_sums(model, x[:10], y[:10], {k: (v[:10] if torch.is_tensor(v) else v)
                                                for k, v in betas.items()})
    second = signal_sums(model, x[10:], y[10:], {k: (v[10:] if torch.is_tensor(v) else v)
                                                 for k, v in betas.items()})
    merged = first + second
    assert torch.equal(merged.count, whole.count)
    assert torch.equal(merged.counts, whole.counts)
    assert torch.equal(merged.hist, whole.hist)
    assert torch.equal(merged.minimum, whole.minimum)
    assert torch.equal(merged.maximum, whole.maximum)
    torch.testing.assert_close(merged.total, whole.total, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.total_sq, whole.total_sq, rtol=1e-12, atol=1e-12)

    # the same through the collective interface, simulating two ranks
    parts = [first, second]

    def fake_all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
        idx = fake_all_reduce.calls % 3  # sum, min, max in this order
        fake_all_reduce.calls += 1
        other = [p for p in parts if p is not current][0]
        o = [torch.cat([other.count.reshape(-1), other.total.reshape(-1), other.total_sq.reshape(-1),
                        other.n_nan.reshape(-1), other.n_inf.reshape(-1), other.hist.reshape(-1),
                        other.counts]), other.minimum, other.maximum][idx]
        return {"sum": t + o, "min": torch.minimum(t, o), "max": torch.maximum(t, o)}[op]

    fake_all_reduce.calls = 0
    current = first
    reduced = first.reduce(fake_all_reduce)
    a, b = reduced.finalize(), whole.finalize()
    assert a.n_correct == b.n_correct == int((correct_labels(model, x) == y).sum())
    for v in betas:
        for key, value in b.summary(v).items():
            assert a.summary(v)[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (v, key)
    # a mean of means would differ: halves hold different numbers of correct samples
    mean_of_means = (first.finalize().summary("original")["psi_norm"]
                     + second.finalize().summary("original")["psi_norm"]) / 2
    assert first.counts[1] != second.counts[1]
    assert mean_of_means != pytest.approx(b.summary("original")["psi_norm"], rel=1e-9)


def test_empty_sums_are_neutral_and_variants_must_match() -> None:
    model = linear_model()
    x = torch.rand(6, 3, 2, 2)
    y = correct_labels(model, x)
    s = signal_sums(model, x, y, {"original": 1.0})
    merged = SignalSums.empty(("original",)) + s
    assert merged.finalize().to_dict() == s.finalize().to_dict()
    with pytest.raises(ValueError, match="variants"):
        _ = s + SignalSums.empty(("other",))


# -- non-finite values ----------------------------------------------------------------------------
class NanForLargeInputs(nn.Module):
    """Linear model whose logits become nan for samples with a first pixel > 0.9."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        bad = x.flatten(1)[:, :1] > 0.9
        return torch.where(bad, torch.full_like(out, torch.nan), out)


def test_non_finite_logits_are_reported_not_dropped() -> None:
    torch.manual_seed(3)
    model = NanForLargeInputs()
    x = torch.rand(10, 3, 2, 2) * 0.8
    x[[2, 7], 0, 0, 0] = 0.95
    y = correct_labels(model, x)
    y[[2, 7]] = 0
    with pytest.warns(RuntimeWarning) as record:
        stats = signal_propagation(model, x, y, {"original": 1.0})
    messages = " ".join(str(w.message) for w in record)
    assert "original/psi_norm" in messages and "non-finite logits" in messages
    assert stats.n_nonfinite_logits == 2
    assert stats.n_correct == 10  # kept
    assert stats.clean_acc == pytest.approx(0.8)
    s = stats.summary("original")
    assert math.isnan(s["psi_norm"]) and math.isnan(s["grad_norm"])
    assert stats.stats["original"]["psi_norm"].n_nan == 2
    assert "original/psi_norm" in stats.nonfinite_metrics()
    assert "nan ⚠" in format_table(stats)
    json.dumps(stats.to_dict())  # NaN stays serializable


def test_no_correct_sample_gives_nan_with_a_warning() -> None:
    model = linear_model()
    x = torch.rand(4, 3, 2, 2)
    y = (correct_labels(model, x) + 1) % 5
    with pytest.warns(RuntimeWarning, match="none of the 4 samples"):
        stats = signal_propagation(model, x, y, {"original": 1.0})
    assert stats.n_correct == 0 and math.isnan(stats.summary("original")["jsv_mean"])


# -- defaults, modes, contexts ------------------------------------------------------------------
def test_default_variants_use_njs_and_hns_rules() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))
    x = torch.rand(16, 3, 2, 2)
    y = correct_labels(model, x)  # all correct: NJS makes the mean JSV exactly 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = signal_propagation(model, x, y)
    assert stats.variants == ("original", "njs", "hns")
    assert stats.summary("njs")["jsv_mean"] == pytest.approx(1.0, rel=1e-5)
    assert stats.summary("njs")["beta"] == pytest.approx(njs_temperature(model, x), rel=1e-6)
    hns = hns_temperature(model, x, y).double()
    assert stats.summary("hns")["beta"] == pytest.approx(float(hns.mean()), rel=1e-5)
    assert stats.stats["hns"]["beta"].max == pytest.approx(float(hns.max()), rel=1e-5)


def test_modes_and_parameter_grads_restored_and_works_in_inference_mode() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Linear(8, 5))
    model.train()
    model[2].eval()  # a submodule with its own flag
    x = torch.rand(6, 3, 2, 2)
    y = correct_labels(model, x)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    with torch.inference_mode():
        stats = signal_propagation(model, x, y, {"original": 1.0})
    assert stats.n_samples == 6
    assert model.training and not model[2].training and model[1].training
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


def test_bad_betas_fail_clearly() -> None:
    model = linear_model()
    x = torch.rand(3, 3, 2, 2)
    y = correct_labels(model, x)
    with pytest.raises(ValueError, match="must be > 0"):
        signal_sums(model, x, y, {"bad": 0.0})
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        signal_sums(model, x, y, {"bad": torch.ones(4)})
    with pytest.raises(ValueError, match="'hns'"):
        signal_sums(model, x, y, {"bad": "njs"})


def test_format_table_and_to_dict() -> None:
    model = linear_model()
    x = torch.rand(6, 3, 2, 2)
    y = correct_labels(model, x)
    stats = signal_propagation(model, x, y, {"original": 1.0, "njs": 0.5})
    table = format_table(stats)
    assert table.splitlines()[0] == "| metric | original | njs |"
    for label in ("jsv (mean)", "jsv (std)", "‖ψ‖₂", "‖∂ℓ/∂x‖₂", "‖sign(∂ℓ/∂x)‖₂"):
        assert label in table
    d = json.loads(json.dumps(stats.to_dict()))
    assert set(d["variants"]["njs"]["quantities"]) == set(QUANTITIES)
    assert d["variants"]["njs"]["summary"]["beta"] == pytest.approx(0.5)
    assert len(stats.hist_limits) == len(JSV_HIST_LIMITS)


# -- Hessian norm curve ---------------------------------------------------------------------------
def test_hessian_norm_matches_autograd_hessian_on_a_linear_model() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double()
    x = torch.rand(2, 1, 2, 3, dtype=torch.float64)
    y = correct_labels(model, x)
    betas = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    curve = hessian_norm_curve(model, x, y, betas)
    for i in range(2):
        for k, beta in enumerate(betas):
            def loss(xi: torch.Tensor, i: int = i, beta: torch.Tensor = beta) -> torch.Tensor:
                return F.cross_entropy(beta * model(xi.view(1, 1, 2, 3)), y[i : i + 1])

            h = torch.autograd.functional.hessian(loss, x[i].flatten())
            assert float(curve.norms[i, k]) == pytest.approx(float(h.norm()), rel=1e-8)
    # Gram form against the explicit N×N matrix
    w = model[1].weight.detach()
    z = model(x).detach()
    p = torch.softmax(2.0 * z[0], dim=0)
    s = torch.diag(p) - torch.outer(p, p)
    explicit = (4.0 * w.T @ s @ w).norm()
    gram = (w @ w.T)[None]
    assert float(hessian_norms_from_gram(gram, z[:1], torch.tensor([2.0]))[0, 0]) == pytest.approx(
        float(explicit), rel=1e-10)


def test_hessian_figure_writes_png(tmp_path) -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    x = torch.rand(10, 3, 2, 2)
    y = correct_labels(model, x)
    y[0] = (y[0] + 1) % 5
    path = tmp_path / "hessian.png"
    fig = hessian_figure(model, x, y, n_samples=3, marks={"NJS β1": 0.5}, path=path)
    assert fig is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = hessian_norm_curve(model, x[1:4], y[1:4], n_grid=50)
    assert curve.norms.shape == (3, 50) and bool((curve.norms >= 0).all())
    # concave-shaped (Fig. 3): the maximum lies strictly inside the HNS search range
    idx = curve.norms.argmax(dim=1)
    assert bool(((idx > 0) & (idx < 49)).all())
