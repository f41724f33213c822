"""Temperature rules: NJS β1/β2, HNS (Gram form, grid, fallbacks), Proposition 1, factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnrobust.attacks.temperature import (
    HNS,
    NJS,
    FixedTemperature,
    TemperatureState,
    calibrate_njs,
    hessian_norm,
    hns_beta_from_gram,
    hns_grid,
    hns_temperature,
    make_temperature,
    njs_beta2,
    njs_bound,
    njs_temperature,
)


def _relu_net(d: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, d)
    ).double()


def _tanh_net(d: int = 5) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, d)).double()


def _jac(model: nn.Module, x: Tensor) -> Tensor:
    rows = [torch.func.jacrev(lambda v: model(v[None])[0])(x[i]) for i in range(x.shape[0])]
    return torch.stack([r.reshape(r.shape[0], -1) for r in rows]).detach()


# ----------------------------------------------------------------------------- NJS


def test_njs_beta1_equals_direct_svd() -> None:
    model = _relu_net()
    x = torch.rand(12, 1, 4, 4, dtype=torch.float64)
    sv = torch.linalg.svdvals(_jac(model, x[:10]))  # n_jsv = 10 first samples only
    beta1 = njs_temperature(model, x, n_jsv=10)
    assert beta1 == pytest.approx(1.0 / float(sv.mean()), rel=1e-6)
    t = NJS(n_jsv=10)
    assert t.calibrate(model, x) == pytest.approx(beta1)


def test_njs_beta1_is_explicit_or_per_call() -> None:
    model = _relu_net()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)
    t = NJS(n_jsv=4)
    assert not t.calibrated
    # an uncalibrated rule calibrates a copy per call and remembers nothing
    prepared = t.prepare(model, x)
    assert prepared is not t and t.beta1 is None
    b1 = prepared.beta1
    assert b1 == pytest.approx(calibrate_njs(model, x[:4], n_jsv=4))
    torch.testing.assert_close(prepared.start(model, x, y).beta, torch.full((8,), b1))
    # weights changed through .data (no version counter moves): the next call sees them
    model[-1].weight.data *= 2.0
    assert t.prepare(model, x).beta1 == pytest.approx(b1 / 2, rel=0.2)
    # start() without prepare() on an uncalibrated rule: β1 of that batch, not remembered
    torch.testing.assert_close(t.start(model, x, y).beta,
                               torch.full((8,), calibrate_njs(model, x, n_jsv=4)))
    assert t.beta1 is None
    # explicit calibration (or beta1=) is kept even when weights change, until reset()
    b_cal = t.calibrate(model, x)
    model[-1].weight.data *= 3.0
    assert t.prepare(model, x) is t
    assert t.start(model, x, y).beta[0].item() == pytest.approx(b_cal)
    assert NJS(beta1=0.25).describe()["beta1"] == 0.25
    t.reset()
    assert t.beta1 is None
    with pytest.raises(ValueError, match="beta1"):
        NJS(beta1=0.0)


def test_pgd_njs_follows_weights_changed_through_data() -> None:
    """An NJS attack reused after a ``.data`` update uses β1 of the new weights (a cached β1
    keyed on parameter version counters would not see this update)."""
    from bnnrobust.attacks import PGD

    model = _relu_net().float()
    x = torch.rand(6, 1, 4, 4)
    y = torch.zeros(6, dtype=torch.long)
    attack = PGD(eps=0.1, steps=1, temperature=NJS(n_jsv=6), seed=0)
    first = attack.perturb(model, x, y).info["beta"]
    for p in model.parameters():
        p.data *= 4.0
    second = attack.perturb(model, x, y).info["beta"]
    fixed = NJS(n_jsv=6, beta1=calibrate_njs(model, x, n_jsv=6))
    expected = PGD(eps=0.1, steps=1, temperature=fixed, seed=0).perturb(model, x, y).info["beta"]
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, expected)


def test_njs_beta2_rule() -> None:
    rho, d = 0.01, 4
    bound = -math.log(rho / ((d - 1) * (1 - rho)))
    z = torch.tensor(
        [
            [20.0, 0.0, -1.0, 2.0],  # p_0 ≈ 1 > 1 - rho: scaled
            [0.5, 0.0, 0.2, 0.1],  # p_0 < 1 - rho: beta2 = 1
            [3.0, 3.0, 3.0, 3.0],  # gamma = 0: beta2 = 1, finite
        ],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 0, 1])
    beta2 = njs_beta2(z, y, rho)
    assert beta2[0].item() == pytest.approx(bound / 21.0)
    assert beta2[1].item() == 1.0 and beta2[2].item() == 1.0
    # after scaling, the saturated sample's logit range is exactly the bound
    t = NJS(rho=rho)
    t.beta1 = 1.0
    state = t.start(nn.Identity(), torch.rand(3, 4), y)
    scaled, beta = t.scale(z.float().requires_grad_(True), y, state)
    assert not beta.requires_grad
    assert float((scaled[0].max() - scaled[0].min()).detach()) == pytest.approx(bound, rel=1e-5)
    assert torch.isfinite(scaled).all()
    # beta2 carries no gradient: d scaled / d z = beta1 * beta2 exactly
    zz = z.clone().requires_grad_(True)
    out, beta = t.scale(zz, y, state)
    (g,) = torch.autograd.grad(out[:, 0].sum(), zz)
    torch.testing.assert_close(g[:, 0], beta.double())


def test_njs_saturated_float32_logits_get_scaled() -> None:
    z = torch.tensor([[1e4, -1e4, 0.0]])
    beta2 = njs_beta2(z, torch.tensor([0]), 0.01)
    assert torch.isfinite(beta2).all() and beta2.item() < 1e-2


@pytest.mark.parametrize("d", [2, 3, 10, 100])
def test_proposition_1(d: int) -> None:
    rho = 0.01
    g = torch.Generator().manual_seed(d)
    a = torch.randn(200, d, generator=g, dtype=torch.float64) * 5
    # the worst case for the bound: all non-maximal logits equal to the minimum
    worst = torch.zeros(50, d, dtype=torch.float64)
    worst[:, 0] = torch.rand(50, generator=g, dtype=torch.float64) * 10 + 0.1
    a = torch.cat([a, worst])
    gamma = a.max(1).values - a.min(1).values
    beta = 0.999 * njs_bound(d, rho) / gamma
    p1 = torch.softmax(beta[:, None] * a, dim=1).max(1).values
    assert bool((1 - p1 > rho).all())


# ----------------------------------------------------------------------------- HNS


def test_hessian_norm_gram_form_equals_explicit_and_autograd() -> None:
    torch.manual_seed(1)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    beta = torch.tensor([0.3, 1.0, 2.5, 7.0], dtype=torch.float64)
    # explicit beta^2 J^T S J on a smooth net (the Gram form is exact for any J)
    model = _tanh_net()
    jac = _jac(model, x)
    logits = model(x).detach()
    norm = hessian_norm(jac, logits, beta)
    gram = jac @ jac.transpose(1, 2)
    torch.testing.assert_close(norm, hessian_norm(gram, logits, beta, is_gram=True))
    for i in range(4):
        p = torch.softmax(beta[i] * logits[i], 0)
        s = torch.diag(p) - torch.outer(p, p)
        h = beta[i] ** 2 * jac[i].T @ s @ jac[i]  # explicit N x N
        assert norm[i].item() == pytest.approx(torch.linalg.norm(h).item(), rel=1e-9)
    # on a ReLU net it is the true input Hessian of CE(beta f(x), y) (double backward)
    model = _relu_net()
    jac = _jac(model, x)
    logits = model(x).detach()
    y = logits.argmax(1)
    norm = hessian_norm(jac, logits, beta)
    for i in range(4):

        def loss(v: Tensor, i: int = i) -> Tensor:
            return F.cross_entropy(beta[i] * model(v[None]), y[i : i + 1])

        h = torch.autograd.functional.hessian(loss, x[i]).reshape(16, 16)
        assert norm[i].item() == pytest.approx(torch.linalg.norm(h).item(), rel=1e-8)
    # a (B, K) grid of betas
    grid = torch.stack([beta, 2 * beta], dim=1)
    torch.testing.assert_close(hessian_norm(jac, logits, grid)[:, 0], norm)


def test_hns_grid_is_linear_in_beta_with_paper_endpoints() -> None:
    d = 10
    gamma = torch.tensor([0.5, 3.0], dtype=torch.float64)
    grid = hns_grid(gamma, d, n_grid=100)

    def beta(eps: float, g: float) -> float:
        return -math.log(eps / ((1 - eps) * (d - 1))) / g

    for i, g in enumerate(gamma.tolist()):
        assert grid[i, 0].item() == pytest.approx(beta(1 - 1 / d - 0.01, g))
        assert grid[i, -1].item() == pytest.approx(beta(1e-72, g))
        steps = grid[i, 1:] - grid[i, :-1]
        torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()))


def _hns_reference(model: nn.Module, x: Tensor, y: Tensor, n_grid: int = 100) -> Tensor:
    """The authors' procedure: per sample, explicit N x N Hessian per grid beta, argmax."""
    out = []
    for i in range(x.shape[0]):
        logits = model(x[i : i + 1]).detach()[0]
        d = logits.numel()
        top = logits.topk(2).values
        gamma = float(top[0] - top[1])
        if logits.argmax().item() != y[i].item() or gamma <= 0:
            out.append(1.0)
            continue
        j = _jac(model, x[i : i + 1])[0]
        c = [-math.log(e / ((1 - e) * (d - 1))) / gamma for e in (1 - 1 / d - 0.01, 1e-72)]
        best, best_k, betas = -1.0, 0, torch.linspace(c[0], c[1], n_grid, dtype=torch.float64)
        for k, b in enumerate(betas.tolist()):
            p = torch.softmax(b * logits, 0)
            h = b * b * j.T @ (torch.diag(p) - torch.outer(p, p)) @ j
            score = torch.linalg.norm(h).item()
            if score > best:
                best, best_k = score, k
        out.append(1.0 if best_k in (0, n_grid - 1) else betas[best_k].item())
    return torch.tensor(out, dtype=torch.float64)


def test_hns_matches_per_sample_reference_and_fallbacks() -> None:
    torch.manual_seed(2)
    model = _relu_net()
    x = torch.rand(10, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 5  # misclassified -> 1
    ref = _hns_reference(model, x, y)
    beta = hns_temperature(model, x, y)
    assert beta.shape == (10,)
    torch.testing.assert_close(beta, ref)
    assert bool((beta[:3] == 1).all()) and bool((beta[3:] != 1).all())


def test_hns_ties_zero_jacobian_and_edges_give_one() -> None:
    d = 4
    logits = torch.tensor([[2.0, 2.0, 0.0, -1.0], [3.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    gram = torch.eye(d, dtype=torch.float64).expand(2, d, d)
    beta, fallback = hns_beta_from_gram(gram, logits, y)
    assert torch.isfinite(beta).all()
    assert beta[0].item() == 1.0 and bool(fallback[0])  # gamma = 0 tie
    assert beta[1].item() != 1.0 and not bool(fallback[1])
    # a zero Jacobian scores 0 everywhere: argmax at the first grid point -> 1
    beta, fallback = hns_beta_from_gram(torch.zeros(2, d, d, dtype=torch.float64), logits, y)
    assert beta.tolist() == [1.0, 1.0] and bool(fallback.all())


def test_hns_state_and_modes() -> None:
    model = _relu_net()
    model.train()
    model[2].eval()
    flags = [m.training for m in model.modules()]
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    state = HNS().start(model, x, y)
    assert state.beta.shape == (3,) and state.info["hns_fallback"].shape == (3,)
    assert [m.training for m in model.modules()] == flags


# ----------------------------------------------------------------------------- factory


def test_make_temperature_specs_and_errors() -> None:
    assert make_temperature(None) is None
    assert make_temperature("none") is None
    assert isinstance(make_temperature("njs"), NJS)
    assert isinstance(make_temperature("HNS"), HNS)
    fixed = make_temperature(2.5)
    assert isinstance(fixed, FixedTemperature) and fixed.beta == 2.5
    assert isinstance(make_temperature(3), FixedTemperature)
    assert make_temperature("0.5").beta == 0.5  # type: ignore[union-attr]
    t = NJS()
    assert make_temperature(t) is t
    for bad in ("bogus", True, [1.0]):
        with pytest.raises(ValueError, match="accepted"):
            make_temperature(bad)  # type: ignore[arg-type]
    for bad_num in (0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="> 0"):
            make_temperature(bad_num)
    with pytest.raises(ValueError, match="rho"):
        NJS(rho=0.7)
    with pytest.raises(ValueError, match="n_grid"):
        HNS(n_grid=2)
    with pytest.raises(ValueError, match="rho"):
        njs_bound(2, 0.6)


def test_fixed_temperature_scales() -> None:
    t = FixedTemperature(2.0)
    z = torch.randn(3, 4)
    state = t.start(nn.Identity(), torch.rand(3, 4), torch.zeros(3, dtype=torch.long))
    scaled, beta = t.scale(z, torch.zeros(3, dtype=torch.long), state)
    torch.testing.assert_close(scaled, 2 * z)
    torch.testing.assert_close(beta, torch.full((3,), 2.0))


@pytest.mark.parametrize("rho", [1e-15, 0.01, 0.3, 0.5])
def test_prop1_temperature_bounds_the_top_probability(rho: float) -> None:
    from bnnrobust.attacks.temperature import Prop1Temperature

    torch.manual_seed(0)
    d = 7
    logits = torch.randn(64, d, dtype=torch.float64) * 30.0
    logits[0] = 0.0  # gamma = 0: beta = 1
    y = logits.argmax(dim=1)
    y[-5:] = (y[-5:] + 1) % d  # misclassified samples keep beta = 1
    t = Prop1Temperature(rho)
    state = t.start(nn.Identity(), torch.zeros(64, 3), y)
    scaled, beta = t.scale(logits, y, state)
    gamma = logits.max(dim=1).values - logits.min(dim=1).values
    expected = torch.where(gamma > 0, njs_bound(d, rho) / gamma, torch.ones_like(gamma))
    expected[-5:] = 1.0
    torch.testing.assert_close(beta.double(), expected, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(scaled, logits * beta.double()[:, None])
    assert torch.equal(scaled.argmax(dim=1), logits.argmax(dim=1))  # decisions unchanged
    # Proposition 1: with beta = bound / (max - min), the top probability is at most 1 - rho
    p_top = torch.softmax(scaled[1:-5], dim=1).max(dim=1).values
    assert bool((p_top <= 1.0 - rho + 1e-6).all())
    # and the bound is reached when all non-top logits sit at the minimum
    two_level = torch.tensor([[5.0] + [1.0] * (d - 1)], dtype=torch.float64)
    s2, _ = t.scale(two_level, torch.tensor([0]), t.start(nn.Identity(), torch.zeros(1, 3),
                                                          torch.tensor([0])))
    assert torch.softmax(s2, dim=1)[0, 0].item() == pytest.approx(1.0 - rho, rel=1e-6)
    assert t.name == ("prop1" if rho == 0.01 else f"prop1_rho{rho:g}")


def test_temperature_dict_specs() -> None:
    from bnnrobust.attacks.temperature import Prop1Temperature

    njs = make_temperature({"name": "njs", "rho": "1e-5", "n_jsv": 20})  # YAML 1.1 string
    assert isinstance(njs, NJS) and njs.rho == 1e-5 and njs.n_jsv == 20
    assert njs.name == "njs_rho1e-05" and NJS().name == "njs"
    hns = make_temperature({"name": "HNS", "n_grid": 50})
    assert isinstance(hns, HNS) and hns.n_grid == 50
    fixed = make_temperature({"name": "fixed", "beta": 2.5})
    assert isinstance(fixed, FixedTemperature) and fixed.beta == 2.5
    prop1 = make_temperature({"name": "prop1", "rho": 0.2})
    assert isinstance(prop1, Prop1Temperature) and prop1.rho == 0.2
    assert isinstance(make_temperature("prop1"), Prop1Temperature)
    with pytest.raises(ValueError, match=r"'roh'.*accepted: n_jsv, rho, beta1, chunk_size"):
        make_temperature({"name": "njs", "roh": 0.1})
    with pytest.raises(ValueError, match="needs 'name' in njs, hns, prop1, fixed"):
        make_temperature({"rho": 0.1})
    with pytest.raises(ValueError, match="rho must be a number in"):
        make_temperature({"name": "prop1", "rho": 1.5})
    with pytest.raises(ValueError, match=r"rho must satisfy 0 < rho < \(d-1\)/d"):  # d = 2
        Prop1Temperature(0.7).scale(torch.zeros(1, 2), torch.tensor([0]), TemperatureState(
            torch.ones(1)))


def _normalized_rgb_net(d: int = 5) -> tuple[nn.Module, nn.Module, Tensor]:
    """A model with a 3-channel Normalize first, its inner network, and mean/std."""
    from bnnrobust.models import Normalize

    torch.manual_seed(3)
    inner = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, d))
    std = (0.2, 0.5, 0.8)
    return nn.Sequential(Normalize((0.4, 0.5, 0.6), std), inner).double(), inner.double(), torch.tensor(std)


def test_njs_beta1_uses_the_jacobian_of_the_normalized_input() -> None:
    model, inner, std = _normalized_rgb_net()
    x = torch.rand(7, 3, 4, 4, dtype=torch.float64)
    x_hat = model[0](x)
    # independent reference: per-sample Jacobian of the network after Normalize, at x_hat
    sv = torch.cat([
        torch.linalg.svdvals(torch.autograd.functional.jacobian(lambda v: inner(v[None])[0], x_hat[i])
                             .reshape(5, -1))
        for i in range(7)
    ])
    want = 1.0 / float(sv.mean())
    assert njs_temperature(model, x) == pytest.approx(want, rel=1e-9)
    assert NJS().calibrate(model, x) == pytest.approx(want, rel=1e-9)
    # pixel space is a different, documented convention; for one channel it differs by 1/std
    pixel = njs_temperature(model, x, jacobian_space="pixel")
    assert pixel == pytest.approx(1.0 / float(torch.linalg.svdvals(_jac(model, x)).mean()), rel=1e-9)
    assert abs(pixel - want) > 0.05 * want


def test_njs_without_normalize_is_the_same_in_both_spaces() -> None:
    model = _relu_net()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    assert njs_temperature(model, x) == njs_temperature(model, x, jacobian_space="pixel")


def test_njs_grey_normalize_scales_beta1_by_one_over_std() -> None:
    from bnnrobust.models import Normalize

    torch.manual_seed(0)
    model = nn.Sequential(Normalize((0.286,), (0.353,)), _relu_net()).double()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    ratio = njs_temperature(model, x) / njs_temperature(model, x, jacobian_space="pixel")
    assert ratio == pytest.approx(1 / 0.353, rel=1e-6)  # std stored as float32


def test_njs_jacobian_space_is_validated_and_named() -> None:
    with pytest.raises(ValueError, match="'normalized'.*'pixel'"):
        NJS(jacobian_space="pixels")
    assert NJS(jacobian_space="pixel").name == "njs_pixel"
    assert make_temperature({"name": "njs", "jacobian_space": "pixel"}).describe()["jacobian_space"] == "pixel"
