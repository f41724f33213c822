"""Our APGD: agreement with torchattacks, invariants, temperature alignment, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bnnrobust.attacks.apgd import APGD, apgd_checkpoints
from bnnrobust.attacks.temperature import Temperature, TemperatureState

torchattacks = pytest.importorskip("torchattacks")


def synthetic(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """10 noisy prototypes on 1x8x8 images in [0, 1]."""
    protos = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (protos[y] * 0.6 + 0.2 + 0.25 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def small_convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(512, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10),
    )


def train(model: nn.Module, steps: int = 300) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for i in range(steps):
        x, y = synthetic(64, i)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    torch.set_num_threads(1)
    model = train(small_convnet())
    x, y = synthetic(256, 9999)
    return model, x, y


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _ta_norm(norm: str) -> str:
    return {"linf": "Linf", "l2": "L2"}[norm]


@pytest.mark.parametrize(
    "loss,norm,eps",
    [("ce", "linf", 0.1), ("dlr", "linf", 0.1), ("dlr_targeted", "linf", 0.1), ("ce", "l2", 0.7)],
)
def test_agrees_with_torchattacks(trained, loss: str, norm: str, eps: float) -> None:
    model, x, y = trained
    clean = accuracy(model, x, y)
    ours = APGD(eps, norm=norm, steps=20, loss=loss, seed=0)
    if loss == "dlr_targeted":
        ref = torchattacks.APGDT(model, norm=_ta_norm(norm), eps=eps, steps=20, seed=0,
                                 n_classes=10)
    else:
        ref = torchattacks.APGD(model, norm=_ta_norm(norm), eps=eps, steps=20, seed=0, loss=loss)
    acc_ours = accuracy(model, ours(model, x, y), y)
    acc_ref = accuracy(model, ref(x, y), y)
    assert 0.1 < acc_ref < 0.9 * clean, "eps must give mid-range accuracy for a meaningful test"
    assert abs(acc_ours - acc_ref) <= 0.01 + 1e-9, (acc_ours, acc_ref)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.7)])
@pytest.mark.parametrize("temperature", [None, "hns"])
def test_invariants(trained, norm: str, eps: float, temperature: str | None) -> None:
    model, x, y = trained
    x, y = x[:64], y[:64]
    model.train()
    model[1].eval()  # mixed modes must come back exactly
    flags = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    atk = APGD(eps, norm=norm, steps=10, temperature=temperature, seed=1)
    out = atk.perturb(model, x, y)
    xa = out.x_adv
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    delta = (xa - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5) + 1e-6
    assert [m.training for m in model.modules()] == flags
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    model.eval()
    assert accuracy(model, xa, y) <= accuracy(model, x, y)
    # info: per-sample tensors; fooled agrees with the model's decisions
    with torch.no_grad():
        wrong = (model(xa).argmax(1) != y).float()
    assert torch.equal(out.info["fooled"], wrong)
    if temperature is None:
        assert "beta" not in out.info and atk.name.startswith("apgd-ce")
    else:
        beta = out.info["beta"]
        assert beta.shape == (64,) and bool(torch.isfinite(beta).all()) and bool((beta > 0).all())
        assert atk.name.endswith("++hns")
    # determinism with a seed
    again = APGD(eps, norm=norm, steps=10, temperature=temperature, seed=1)(model, x, y)
    assert torch.equal(again, xa)


def test_seed_leaves_global_rng_untouched(trained) -> None:
    model, x, y = trained
    state = torch.get_rng_state()
    APGD(0.1, steps=5, seed=3)(model, x[:16], y[:16])
    assert torch.equal(torch.get_rng_state(), state)


class _LabelTemperature(Temperature):
    """β_i = 1 + y_i; scale() checks that state and labels stay aligned per sample."""

    name = "label"

    def start(self, model: nn.Module, x: Tensor, y: Tensor) -> TemperatureState:
        return TemperatureState(1.0 + y.float())

    def scale(self, logits: Tensor, y: Tensor, state: TemperatureState) -> tuple[Tensor, Tensor]:
        assert torch.equal(state.beta, 1.0 + y.float()), "temperature state misaligned"
        return super().scale(logits, y, state)


@pytest.mark.parametrize("loss", ["ce", "dlr_targeted"])
def test_temperature_stays_aligned_per_sample(trained, loss: str) -> None:
    model, x, y = trained
    def make() -> APGD:
        return APGD(0.12, steps=25, restarts=2, loss=loss, n_target_classes=3, seed=0,
                    temperature=_LabelTemperature())

    if loss == "ce":
        atk = make()
    else:
        with pytest.warns(UserWarning, match="no effect"):
            atk = make()
    out = atk.perturb(model, x[:128], y[:128])
    with torch.no_grad():
        clean_ok = model(x[:128]).argmax(1) == y[:128]
    # every attacked sample reports its own β (1 + its label); 1 where never attacked
    assert torch.equal(out.info["beta"][clean_ok], 1.0 + y[:128][clean_ok].float())
    assert atk.name == ("apgd-ce++label" if loss == "ce" else "apgd-t++label")


def test_fixed_temperature_equals_scaled_model(trained) -> None:
    """CE on β·f is CE of the model with a β-scaled head: same iterates, same output."""
    model, x, y = trained
    scaled = nn.Sequential(model, _Scale(2.5)).eval()
    a = APGD(0.1, steps=10, temperature=2.5, seed=0)(model, x[:64], y[:64])
    b = APGD(0.1, steps=10, seed=0)(scaled, x[:64], y[:64])
    assert torch.allclose(a, b, atol=1e-6)


class _Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, z: Tensor) -> Tensor:
        return z * self.s


def test_checkpoints_follow_the_recursion() -> None:
    # p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); with 100 steps the
    # integer schedule hits ceil(100 p_j) exactly
    p_prev, p, want = 0.0, 0.22, []
    while round(100 * p) <= 100:
        want.append(round(100 * p))
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    assert [i + 1 for i in apgd_checkpoints(100)] == want
    for steps in (1, 5, 20, 250):
        got = apgd_checkpoints(steps)
        assert got == sorted(set(got)) and got and got[-1] < steps


def test_errors() -> None:
    with pytest.raises(ValueError, match="eps"):
        APGD(0.0)
    with pytest.raises(ValueError, match="Unknown attack loss"):
        APGD(0.1, loss="hinge")
    with pytest.raises(ValueError, match="norm"):
        APGD(0.1, norm="l1")
    with pytest.raises(ValueError, match="steps"):
        APGD(0.1, steps=0)
    with pytest.warns(UserWarning, match="no effect"):
        APGD(0.1, loss="dlr", temperature="hns")


def test_targeted_needs_four_classes() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(4, 1, 4, 4)
    with pytest.raises(ValueError, match="at least 4 classes"):
        APGD(0.1, loss="dlr_targeted", steps=2)(model, x, torch.zeros(4, dtype=torch.long))


def test_misclassified_and_empty_inputs(trained) -> None:
    model, x, y = trained
    wrong_y = (model(x[:8]).argmax(1) + 1) % 10
    out = APGD(0.1, steps=5, seed=0)(model, x[:8], wrong_y.detach())
    assert torch.equal(out, x[:8])  # already misclassified: returned clean
    empty = APGD(0.1, steps=5)(model, x[:0], y[:0])
    assert empty.shape == (0, 1, 8, 8)
