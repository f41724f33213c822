"""PGD / FGSM (++): threat-model invariants, modes, grads, seeds, peers, saturation, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnrobust.attacks import (
    FGSM,
    LOSSES,
    NJS,
    PGD,
    check_surrogate_name,
    make_temperature,
    per_sample_loss,
    use_surrogate,
)

# ----------------------------------------------------------------------------- fixtures


def _data(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Four noisy prototypes on 1x8x8 images in [0, 1] (overlapping: accuracy ~85%)."""
    protos = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(123)) * 0.3 + 0.35
    y = torch.randint(0, 4, (n,), generator=g)
    x = (protos[y] + 0.3 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def _train(model: nn.Module, x: Tensor, y: Tensor, steps: int = 200) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        i = torch.randint(0, x.shape[0], (64,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, Tensor, Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr = _data(1024, g)
    xte, yte = _data(640, g)
    mlp = _train(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)), xtr, ytr
    )
    return mlp, xtr, ytr, xte, yte


def _acc(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _attacks(eps: float = 0.05) -> list[PGD]:
    return [
        PGD(eps=eps, step_size=eps / 4, steps=5, seed=0),
        PGD(eps=eps, step_size=eps / 4, steps=5, restarts=2, seed=0),
        PGD(eps=eps, step_size=eps / 4, steps=5, temperature="njs", seed=0),
        PGD(eps=eps, step_size=eps / 4, steps=5, temperature="hns", seed=0),
        PGD(eps=eps, step_size=eps / 4, steps=5, loss="dlr", seed=0),
        PGD(eps=8 * eps, step_size=2 * eps, steps=5, norm="l2", seed=0),
        PGD(
            eps=8 * eps,
            step_size=2 * eps,
            steps=5,
            norm="l2",
            restarts=2,
            temperature="hns",
            seed=0,
        ),
        FGSM(eps=eps, seed=0),
        FGSM(eps=eps, temperature="njs", seed=0),
        FGSM(eps=8 * eps, norm="l2", temperature=2.0, seed=0),
    ]


# ----------------------------------------------------------------------------- invariants


def test_threat_model_and_robust_le_clean(setup) -> None:
    model, _, _, x, y = setup
    x, y = x[:64], y[:64]
    clean = _acc(model, x, y)
    for attack in _attacks():
        out = attack.perturb(model, x, y)
        xa = out.x_adv
        assert xa.shape == x.shape and xa.dtype == x.dtype and not xa.requires_grad
        assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0, attack.name
        delta = (xa - x).flatten(1)
        if attack.norm.value == "linf":
            assert float(delta.abs().max()) <= attack.eps + 1e-6, attack.name
        else:
            assert float(delta.norm(dim=1).max()) <= attack.eps + 1e-5, attack.name
        assert _acc(model, xa, y) <= clean, attack.name
        if attack.temperature is not None:
            beta = out.info["beta"]
            assert (
                beta.shape == (64,) and bool(torch.isfinite(beta).all()) and bool((beta > 0).all())
            )


def test_names_and_describe() -> None:
    assert PGD().name == "pgd"
    assert PGD(norm="l2").name == "pgd_l2"
    assert PGD(temperature="njs").name == "pgd++njs"
    assert PGD(norm="L2", temperature="hns").name == "pgd_l2++hns"
    assert FGSM(temperature="hns").name == "fgsm++hns"
    assert PGD(loss="dlr").name == "pgd-dlr"
    desc = PGD(eps=0.1, steps=3, temperature="njs", seed=4, surrogate="tanh:3").describe()
    for key in (
        "eps",
        "step_size",
        "steps",
        "norm",
        "restarts",
        "loss",
        "temperature",
        "surrogate",
        "seed",
    ):
        assert key in desc
    assert desc["eps"] == 0.1 and desc["norm"] == "linf" and desc["surrogate"] == "tanh:3"
    assert FGSM(eps=0.1).describe()["step_size"] == 0.1
    assert "PGD(" in repr(PGD())


class _Probe(nn.Module):
    """Records the training flag seen by every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(self.training)
        return x


def _mixed_model() -> nn.Sequential:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.BatchNorm1d(16),
        _Probe(),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, 4),
    )
    model.train()
    model[5].eval()  # a submodule in its own mode
    return model


def test_modes_restored_eval_inside_and_param_grads_untouched() -> None:
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 4, (8,))
    for attack in _attacks():
        model = _mixed_model()
        flags = [m.training for m in model.modules()]
        running = model[2].running_mean.clone()
        for p in model.parameters():
            p.grad = torch.full_like(p, 3.0)
        attack(model, x, y)
        assert [m.training for m in model.modules()] == flags, attack.name
        assert model[3].seen and not any(model[3].seen), attack.name  # eval inside
        assert torch.equal(model[2].running_mean, running)
        for p in model.parameters():
            assert torch.equal(p.grad, torch.full_like(p, 3.0)), attack.name


def test_batch_of_one_no_grad_and_inference_mode(setup) -> None:
    model, _, _, x, y = setup
    attack = PGD(eps=0.05, step_size=0.02, steps=3, temperature="hns", seed=0)
    ref = attack(model, x[:1], y[:1])
    assert ref.shape == (1, 1, 8, 8)
    with torch.no_grad():
        out = attack(model, x[:1], y[:1])
    torch.testing.assert_close(out, ref)
    # inference_mode: the attack steps out of it locally (documented) and still works
    with torch.inference_mode():
        xi, yi = x[:1].clone(), y[:1].clone()
        out = attack(model, xi, yi)
    torch.testing.assert_close(out, ref)
    empty = attack(model, x[:0], y[:0])
    assert empty.shape == (0, 1, 8, 8)


def test_seeded_reruns_identical(setup) -> None:
    model, _, _, x, y = setup
    x, y = x[:32], y[:32]
    for attack in (
        PGD(eps=0.05, steps=3, seed=7),
        PGD(eps=0.4, steps=3, norm="l2", restarts=2, seed=7),
        FGSM(seed=7),
    ):
        torch.testing.assert_close(attack(model, x, y), attack(model, x, y), rtol=0, atol=0)
    a = PGD(eps=0.05, steps=1, seed=1)(model, x, y)
    b = PGD(eps=0.05, steps=1, seed=2)(model, x, y)
    assert not torch.equal(a, b)


def test_restarts_keep_worst_case(setup) -> None:
    model, _, _, x, y = setup
    x, y = x[:128], y[:128]
    kwargs = {"eps": 0.03, "step_size": 0.01, "steps": 3}
    # restart 0 of a seeded multi-restart run draws the same start as the single run
    single = PGD(**kwargs, seed=0)(model, x, y)
    out = PGD(**kwargs, restarts=4, seed=0).perturb(model, x, y)
    with torch.no_grad():
        robust_single = model(single).argmax(1) == y
        robust_multi = model(out.x_adv).argmax(1) == y
    assert bool((robust_multi <= robust_single).all())  # robust only if every restart failed
    assert robust_multi.sum() < robust_single.sum()  # later restarts found more
    assert torch.equal(out.info["restart_fooled"], ~robust_multi)
    assert out.info["loss"].shape == (128,)


def test_matches_torchattacks_pgd(setup) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, _, _, x, y = setup
    eps, alpha = 0.04, 0.01
    clean = _acc(model, x, y)
    # deterministic start: same iterates (sum vs mean loss: same signs)
    ours = PGD(eps=eps, step_size=alpha, steps=10, random_start=False)(model, x, y)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # random start: same robust accuracy within 1 point
    torch.manual_seed(3)
    acc_ours = _acc(model, PGD(eps=eps, step_size=alpha, steps=20, seed=0)(model, x, y), y)
    acc_theirs = _acc(
        model, torchattacks.PGD(model, eps=eps, alpha=alpha, steps=20, random_start=True)(x, y), y
    )
    assert 0.2 < acc_ours < clean - 0.2  # mid-range
    assert abs(acc_ours - acc_theirs) <= 0.01


class _Saturated(nn.Module):
    """A linear classifier whose logits are multiplied by 1e4: float32 CE saturates."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: Tensor) -> Tensor:
        return 1e4 * self.linear(x.flatten(1))


def test_temperature_fixes_saturated_softmax(setup) -> None:
    _, xtr, ytr, x, y = setup
    linear = nn.Linear(64, 4)
    _train(nn.Sequential(nn.Flatten(), linear), xtr, ytr)
    model = _Saturated(linear).eval()
    with torch.no_grad():
        raw = linear(x.flatten(1))
        top = raw.topk(2, dim=1).values
        keep = (raw.argmax(1) == y) & (top[:, 0] - top[:, 1] > 0.02)
    x, y = x[keep][:64], y[keep][:64]
    assert x.shape[0] >= 32
    eps, attack_args = 0.05, {"step_size": 0.0125, "steps": 10, "seed": 0}
    # plain PGD from the clean point: exactly zero input gradients, so it never moves
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    assert float(g.abs().max()) == 0.0
    x_pgd = PGD(eps=eps, random_start=False, **attack_args)(model, x, y)
    assert torch.equal(x_pgd, x) and _acc(model, x_pgd, y) == 1.0
    acc_pgd_rs = _acc(model, PGD(eps=eps, **attack_args)(model, x, y), y)
    for spec in ("njs", "hns"):
        t = make_temperature(spec)
        t.prepare(model, x)
        state = t.start(model, x, y)
        xr = x.clone().requires_grad_(True)
        scaled, _ = t.scale(model(xr), y, state)
        (g,) = torch.autograd.grad(F.cross_entropy(scaled, y, reduction="sum"), xr)
        assert float(g.abs().flatten(1).sum(1).min()) > 0.0, spec  # every sample has a gradient
        acc_pp = _acc(
            model, PGD(eps=eps, temperature=spec, random_start=False, **attack_args)(model, x, y), y
        )
        assert acc_pp < 1.0, spec
        acc_pp_rs = _acc(model, PGD(eps=eps, temperature=spec, **attack_args)(model, x, y), y)
        assert acc_pp_rs < acc_pgd_rs, spec


def test_zero_eps_returns_input(setup) -> None:
    model, _, _, x, y = setup
    torch.testing.assert_close(PGD(eps=0.0, seed=0)(model, x[:8], y[:8]), x[:8], rtol=0, atol=0)
    torch.testing.assert_close(FGSM(eps=0.0, norm="l2")(model, x[:8], y[:8]), x[:8], rtol=0, atol=0)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": -0.1}, "eps"),
        ({"step_size": 0.0}, "step_size"),
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"norm": "l1"}, "linf"),
        ({"loss": "mse"}, "'ce'"),
        ({"loss": "dlr_targeted"}, "APGD"),
        ({"temperature": "bogus"}, "njs"),
        ({"temperature": -1.0}, "> 0"),
        ({"surrogate": "relu"}, "ste_clipped"),
    ],
)
def test_bad_construction(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        PGD(**kwargs)


def test_bad_inputs(setup) -> None:
    model, _, _, x, y = setup
    attack = PGD(steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(model, x[:4] * 2 + 0.5, y[:4])
    with pytest.raises(ValueError, match="4 classes"):
        attack(model, x[:4], torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="4 classes"):
        PGD(steps=1, temperature="hns")(model, x[:4], torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match="shape"):
        attack(model, x[:4], y[:3])
    with pytest.raises(TypeError):
        attack(model, x[:4], y[:4].float())


def test_losses() -> None:
    assert LOSSES == ("ce", "dlr", "dlr_targeted")
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, -2.0]])
    y = torch.tensor([0, 0])
    torch.testing.assert_close(per_sample_loss("ce", z, y), F.cross_entropy(z, y, reduction="none"))
    # dlr: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)
    torch.testing.assert_close(
        per_sample_loss("dlr", z, y), torch.tensor([-(3 - 1) / 2.5, -(0 - 2) / 2.0])
    )
    t = torch.tensor([2, 3])
    expected = torch.tensor([-(3 - 0.5) / (3 - (0.5 - 1) / 2), -(0 + 2) / (2 - (0 - 2) / 2)])
    torch.testing.assert_close(per_sample_loss("dlr_targeted", z, y, t), expected)
    with pytest.raises(ValueError, match="accepted"):
        per_sample_loss("hinge", z, y)
    with pytest.raises(ValueError, match="target"):
        per_sample_loss("dlr_targeted", z, y)
    with pytest.raises(ValueError, match="at least 3"):
        per_sample_loss("dlr", z[:, :2], y)


# ----------------------------------------------------------------------------- surrogates


class _FakeSign(nn.Module):
    """Duck-typed sign activation: records the surrogate active at forward time."""

    def __init__(self) -> None:
        super().__init__()
        self.attack_surrogate: str | None = None
        self.surrogate_kwargs: dict = {}
        self.seen: list[tuple] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((self.attack_surrogate, dict(self.surrogate_kwargs)))
        return x


def test_use_surrogate_sets_and_restores() -> None:
    model = nn.Sequential(nn.Flatten(), _FakeSign(), nn.Linear(64, 4), _FakeSign())
    model[3].attack_surrogate, model[3].surrogate_kwargs = "approx_sign", {}
    with use_surrogate(model, "tanh:3"):
        assert model[1].attack_surrogate == "tanh" and model[1].surrogate_kwargs == {"slope": 3.0}
        assert model[3].attack_surrogate == "tanh"
    assert model[1].attack_surrogate is None and model[1].surrogate_kwargs == {}
    assert model[3].attack_surrogate == "approx_sign"
    with pytest.raises(RuntimeError), use_surrogate(model, "swish_sign:2"):
        assert model[1].surrogate_kwargs == {"beta": 2.0}
        raise RuntimeError("boom")
    assert model[1].attack_surrogate is None
    with use_surrogate(model, None):
        assert model[1].attack_surrogate is None
    # the attack sees the surrogate in every forward, then restores it
    PGD(eps=0.05, steps=2, surrogate="ste_identity", seed=0)(
        model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    )
    assert {s for s, _ in model[1].seen} == {"ste_identity"}
    assert model[1].attack_surrogate is None


def test_surrogate_warns_and_validates() -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.warns(UserWarning, match="Sequential"), use_surrogate(plain, "approx_sign"):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with use_surrogate(plain, None):
            pass
    for name in ("ste_clipped", "ste_identity", "approx_sign", "tanh", "tanh:5", "swish_sign:2.5"):
        assert check_surrogate_name(name) == name
    for bad in ("relu", "tanh:-1", "approx_sign:2", "tanh:abc"):
        with pytest.raises(ValueError, match="ste_clipped|> 0|no parameter"):
            check_surrogate_name(bad)


def test_real_sign_activation_if_available() -> None:
    layers = pytest.importorskip("bnnrobust.binarize.layers")
    sign = layers.SignActivation()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), sign, nn.Linear(8, 4))
    x = torch.rand(4, 1, 8, 8)
    y = torch.randint(0, 4, (4,))
    with use_surrogate(model, "tanh:2"):
        assert sign.attack_surrogate == "tanh" and sign.surrogate_kwargs == {"slope": 2.0}
        model(x)  # the layer accepts our kwargs
    assert sign.attack_surrogate is None
    xa = PGD(eps=0.05, steps=2, surrogate="swish_sign:3", seed=0)(model, x, y)
    assert float((xa - x).abs().max()) <= 0.05 + 1e-6


def test_njs_prepare_uses_clean_batch(setup) -> None:
    model, _, _, x, y = setup
    t = NJS(n_jsv=16)
    out = PGD(eps=0.05, steps=1, temperature=t, seed=0).perturb(model, x[:32], y[:32])
    from bnnrobust.attacks import njs_temperature

    # β1 of this call came from the clean batch (not the random start), and was not kept
    fixed = NJS(n_jsv=16, beta1=njs_temperature(model, x[:16]))
    ref = PGD(eps=0.05, steps=1, temperature=fixed, seed=0).perturb(model, x[:32], y[:32])
    torch.testing.assert_close(out.info["beta"], ref.info["beta"])
    assert t.beta1 is None
