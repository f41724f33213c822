"""torchattacks adapters, transfer attacks and the worst-case cascade."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from bnnrobust.attacks.apgd import APGD
from bnnrobust.attacks.base import Attack, AttackOutput
from bnnrobust.attacks.cascade import Cascade, CascadeResult
from bnnrobust.attacks.peers import (
    DeepFool,
    Square,
    TorchattacksAPGD,
    TorchattacksAPGDT,
    TorchattacksFAB,
)
from bnnrobust.attacks.pgd import FGSM, PGD
from bnnrobust.attacks.presets import OnlyWithSignActivations, strongest_cascade
from bnnrobust.attacks.transfer import TransferAttack

pytest.importorskip("torchattacks")

EPS = 0.1


def synthetic(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """10 noisy prototypes on 1x8x8 images in [0, 1]."""
    protos = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (protos[y] * 0.6 + 0.2 + 0.25 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Dropout(0.1), nn.Linear(32, 10))


def train(model: nn.Module, steps: int = 200) -> nn.Module:
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
def models() -> dict[str, nn.Module]:
    """A float MLP, its BinaryConnect version (BNN-WQ) and a sign-activation one (BNN-WAQ)."""
    torch.set_num_threads(1)
    from bnnrobust.binarize import binarize_model

    out = {"float": train(mlp(0))}
    out["bc"] = train(binarize_model(mlp(1), "bc"), 300)
    out["hubara"] = train(binarize_model(mlp(2), "hubara"), 300)
    return out


@pytest.fixture(scope="module")
def data() -> tuple[Tensor, Tensor]:
    return synthetic(48, 777)


def acc(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def _in_ball(x: Tensor, xa: Tensor, eps: float, norm: str = "linf") -> bool:
    d = (xa - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    return float(size.max()) <= eps * (1 + 1e-5) + 1e-6 and 0 <= float(xa.min()) <= float(xa.max()) <= 1


# ----------------------------------------------------------------------------- peers

PEERS = [
    lambda: TorchattacksAPGD(EPS, steps=10, seed=0),
    lambda: TorchattacksAPGD(EPS, steps=10, loss="dlr", seed=0),
    lambda: TorchattacksAPGDT(EPS, steps=5, n_target_classes=3, seed=0),
    lambda: TorchattacksFAB(EPS, steps=5, n_target_classes=2, seed=0),
    lambda: Square(EPS, n_queries=50, seed=0),
]


@pytest.mark.parametrize("make", PEERS, ids=["apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"])
def test_peer_invariants(models, data, make) -> None:
    model = models["float"]
    x, y = data
    model.train()
    model[2].eval()
    flags = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    rng = torch.get_rng_state()
    atk = make()
    xa = atk(model, x, y)
    assert torch.equal(torch.get_rng_state(), rng), "global RNG state changed"
    assert [m.training for m in model.modules()] == flags
    assert all(bool((p.grad == 3.0).all()) for p in model.parameters())
    assert xa.shape == x.shape and xa.dtype == x.dtype and _in_ball(x, xa, EPS)
    assert acc(model, xa, y) <= acc(model, x, y)
    assert torch.equal(make()(model, x, y), xa), "same seed, same result"


def test_peer_without_seed_draws_from_global_rng(models, data) -> None:
    model = models["float"]
    x, y = data
    torch.manual_seed(5)
    a = Square(EPS, n_queries=20)(model, x, y)
    torch.manual_seed(5)
    b = Square(EPS, n_queries=20)(model, x, y)
    assert torch.equal(a, b)


def test_deepfool_restores_grads_and_is_unbounded(models, data) -> None:
    model = models["float"]
    x, y = data[0][:8], data[1][:8]
    for p in model.parameters():
        p.grad = None
    xa = DeepFool(steps=20)(model, x, y)
    assert all(p.grad is None for p in model.parameters()), "DeepFool's backward leaked"
    assert 0 <= float(xa.min()) and float(xa.max()) <= 1
    assert acc(model, xa, y) < acc(model, x, y)
    assert not hasattr(DeepFool(), "eps")


def test_peer_errors() -> None:
    with pytest.raises(ValueError, match="loss"):
        TorchattacksAPGD(EPS, loss="dlr_targeted")
    with pytest.raises(ValueError, match="eps"):
        Square(0.0)
    with pytest.raises(ValueError, match="n_queries"):
        Square(EPS, n_queries=0)
    with pytest.raises(ValueError, match="norm"):
        TorchattacksAPGD(EPS, norm="l1")


# ----------------------------------------------------------------------------- transfer


class _Exploding(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("the target model must not be queried by a transfer attack")


def test_transfer_crafts_on_source(models, data) -> None:
    src = models["float"]
    x, y = data
    src.train()
    flags = [m.training for m in src.modules()]
    pgd = PGD(eps=EPS, step_size=0.02, steps=5, seed=0)
    atk = TransferAttack(src, pgd)
    assert atk.name == "transfer(pgd)" and atk.eps == EPS
    xa = atk(_Exploding(), x, y)
    assert [m.training for m in src.modules()] == flags
    assert torch.equal(xa, PGD(eps=EPS, step_size=0.02, steps=5, seed=0)(src, x, y))
    assert _in_ball(x, xa, EPS)
    # the examples transfer at least partly to the binary model
    assert acc(models["bc"], xa, y) <= acc(models["bc"], x, y)
    with pytest.raises(TypeError, match="Attack"):
        TransferAttack(src, "pgd")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- cascade


class _Recorder(Attack):
    """Wraps an attack and records the inputs it was given."""

    def __init__(self, inner: Attack) -> None:
        super().__init__()
        self.inner, self.name = inner, inner.name
        self.eps, self.norm = inner.eps, inner.norm
        self.seen: list[Tensor] = []

    def _perturb(self, model, x, y, generator) -> AttackOutput:
        self.seen.append(x.clone())
        return self.inner.perturb(model, x, y)


def _deterministic_attacks() -> list[Attack]:
    return [
        FGSM(eps=EPS, random_start=False),
        PGD(eps=EPS, step_size=0.02, steps=10, random_start=False, loss="dlr"),
        PGD(eps=EPS, step_size=0.02, steps=10, random_start=False),
    ]


@pytest.mark.parametrize("kind", ["float", "bc", "hubara"])
def test_cascade_is_the_worst_case(models, data, kind: str) -> None:
    model = models[kind]
    x, y = data
    singles = [acc(model, a(model, x, y), y) for a in _deterministic_attacks()]
    recorders = [_Recorder(a) for a in _deterministic_attacks()]
    result = Cascade(recorders).run(model, x, y)
    assert isinstance(result, CascadeResult)
    assert result.robust_acc <= min(singles) + 1e-9
    assert result.stages[0].robust_acc == pytest.approx(singles[0])
    # cumulative accuracy never increases; successes add up
    accs = [result.clean_acc] + [s.robust_acc for s in result.stages]
    assert all(b <= a for a, b in zip(accs, accs[1:], strict=False))
    assert sum(s.n_fooled for s in result.stages) == round((result.clean_acc - result.robust_acc)
                                                           * len(y))
    # every attack started from the clean input of the samples still robust
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    for k, rec in enumerate(recorders):
        if not rec.seen:
            continue
        (seen,) = rec.seen
        still = correct & (result.fooled_by.lt(0) | result.fooled_by.ge(k))
        assert torch.equal(seen, x[still]), f"stage {k} did not start from the clean input"
        assert result.stages[k].n_attacked == int(still.sum())
    # x_adv: clean where robust, fooling where fooled; evaluation reproduces the number
    assert torch.equal(result.x_adv[result.robust], x[result.robust])
    assert acc(model, result.x_adv, y) == pytest.approx(result.robust_acc)
    assert _in_ball(x, result.x_adv, EPS)
    assert set(result.to_dict()) >= {"n", "clean_acc", "robust_acc", "stages", "seconds"}
    assert "| 1 | fgsm |" in result.table()


def test_cascade_perturb_matches_run(models, data) -> None:
    model = models["bc"]
    x, y = data
    casc = Cascade(_deterministic_attacks())
    out = casc.perturb(model, x, y)
    res = casc.run(model, x, y)
    assert torch.equal(out.x_adv, res.x_adv)
    assert torch.equal(out.info["fooled_by"].long(), res.fooled_by)
    assert casc.eps == EPS and casc.describe()["attacks"][0]["name"] == "fgsm"


class _Cheater(Attack):
    name = "cheater"
    eps = EPS
    norm = "linf"

    def _perturb(self, model, x, y, generator) -> AttackOutput:
        return AttackOutput((x + 3 * EPS).clamp(0, 1))


def test_cascade_errors_and_warnings(models, data) -> None:
    with pytest.raises(ValueError, match="at least one attack"):
        Cascade([])
    with pytest.raises(TypeError, match="bnnrobust Attack"):
        Cascade(["pgd"])  # type: ignore[list-item]
    with pytest.raises(RuntimeError, match="left its threat model"):
        Cascade([_Cheater()]).run(models["float"], *data)
    with pytest.warns(UserWarning, match="mixes threat models"):
        Cascade([FGSM(eps=0.1), FGSM(eps=0.2)])
    with pytest.warns(UserWarning, match="without an eps bound"):
        Cascade([FGSM(eps=0.1), DeepFool()])


def test_strongest_on_bnns_beats_each_member(models, data) -> None:
    """The strongest cascade (tiny budgets) is <= each of its members alone, on BNNs."""
    x, y = data
    for kind in ("bc", "hubara"):
        model = models[kind]
        casc = strongest_cascade("fmnist", steps=10, n_queries=30, seed=0)
        res = casc.run(model, x, y)
        names = [s.name for s in res.stages]
        assert names == ["apgd-ce++hns", "apgd-ce", "apgd-dlr", "apgd-t",
                         "apgd-ce++hns[tanh:5]", "square"]
        for member in casc.attacks[:4]:
            alone = acc(model, member(model, x, y), y)
            assert res.robust_acc <= alone + 1 / len(y) + 1e-9, (kind, member.name)
        assert acc(model, res.x_adv, y) == pytest.approx(res.robust_acc)


def test_sign_only_stage_skips_float_models(models, data) -> None:
    x, y = data
    stage = OnlyWithSignActivations(APGD(EPS, steps=5, surrogate="tanh:5", seed=0))
    assert stage.name == "apgd-ce[tanh:5]" and stage.eps == EPS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "surrogate has no effect" warning
        assert torch.equal(stage(models["float"], x, y), x)
    xa = stage(models["hubara"], x, y)
    assert _in_ball(x, xa, EPS)
    assert acc(models["hubara"], xa, y) <= acc(models["hubara"], x, y)
