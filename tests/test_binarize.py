"""Binarizers, sign surrogates, binary layers, binarize_model() and the summary, against the table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnrobust.binarize import (
    BC,
    SURROGATES,
    Binarizer,
    BinaryConv2d,
    BinaryLinear,
    GDTanh,
    Hubara,
    MDTanhS,
    NoBinarizer,
    SignActivation,
    binarize_model,
    binary_modules,
    binary_stats,
    binary_summary,
    hard_sign,
    make_binarizer,
    sign_activations,
)
from bnnrobust.binarize.functions import check_surrogate, surrogate_grad

U = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5])


def _grad(
    binarizer: Binarizer, u: torch.Tensor, training: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward values and d(sum(c·w))/du for c = 1..n (distinct upstream gradients)."""
    u = u.clone().requires_grad_(True)
    w = binarizer.quantize(u, training)
    c = torch.arange(1.0, u.numel() + 1)
    (w * c).sum().backward()
    return w.detach(), u.grad / c


def test_hard_sign_maps_zero_to_plus_one() -> None:
    assert hard_sign(U).tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert hard_sign(torch.tensor([-0.0])).item() == 1.0


def test_none_is_identity_with_exact_gradient() -> None:
    w, g = _grad(NoBinarizer(), U)
    assert torch.equal(w, U) and torch.equal(g, torch.ones_like(U))


def test_bc_sign_forward_and_ste_zeroed_where_abs_u_above_one() -> None:
    w, g = _grad(BC(), U)
    assert w.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert g.tolist() == [0, 1, 1, 1, 1, 1, 0]  # |u| = 1 still passes, |u| > 1 is zeroed


def test_gd_tanh_forward_and_exact_chain_rule() -> None:
    b = GDTanh()
    b.tanh_scale.fill_(2.0)
    w, g = _grad(b, U)
    t = torch.tanh(2.0 * U)
    torch.testing.assert_close(w, t)
    torch.testing.assert_close(g, 2.0 * (1 - t * t))


def test_md_tanh_s_forward_tanh_and_identity_backward() -> None:
    b = MDTanhS()
    b.tanh_scale.fill_(3.0)
    w, g = _grad(b, U)
    torch.testing.assert_close(w, torch.tanh(3.0 * U))
    assert torch.equal(g, torch.ones_like(U))


def test_hubara_weights_sign_with_straight_through() -> None:
    w, g = _grad(Hubara(), U)
    assert w.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert torch.equal(g, torch.ones_like(U))
    assert Hubara.binarize_activations and not BC.binarize_activations


@pytest.mark.parametrize("cls", [BC, GDTanh, MDTanhS, Hubara])
def test_eval_forward_is_hard_sign(cls: type[Binarizer]) -> None:
    b = cls()
    if hasattr(b, "tanh_scale"):
        b.tanh_scale.fill_(0.5)
    w, _ = _grad(b, U, training=False)
    assert w.tolist() == [-1, -1, -1, 1, 1, 1, 1]


def test_sign_activation_training_ste_is_gated() -> None:
    x = U.clone().requires_grad_(True)
    y = SignActivation()(x)
    y.sum().backward()
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]


def _swish_sign(x: torch.Tensor, b: float) -> torch.Tensor:
    s = torch.sigmoid(b * x)
    return 2 * s * (1 + b * x * (1 - s)) - 1


EXPECTED = {
    "ste_clipped": lambda x, kw: (x.abs() <= 1).double(),
    "ste_identity": lambda x, kw: torch.ones_like(x),
    "approx_sign": lambda x, kw: torch.where(x.abs() <= 1, 2 - 2 * x.abs(), torch.zeros_like(x)),
    "tanh": lambda x, kw: torch.autograd.functional.jacobian(
        lambda z: torch.tanh(kw.get("slope", 5.0) * z), x
    ).diagonal(),
    "swish_sign": lambda x, kw: torch.autograd.functional.jacobian(
        lambda z: _swish_sign(z, kw.get("beta", 5.0)), x
    ).diagonal(),
}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [(n, {}) for n in SURROGATES] + [("tanh", {"slope": 2.0}), ("swish_sign", {"beta": 3.0})],
)
def test_surrogate_backward_matches_formula(name: str, kwargs: dict) -> None:
    assert set(SURROGATES) == set(EXPECTED)
    x = torch.tensor([-1.5, -1.0, -0.7, -0.2, 0.0, 0.1, 0.5, 0.99, 1.2], dtype=torch.float64)
    act = SignActivation()
    act.attack_surrogate, act.surrogate_kwargs = name, kwargs
    xr = x.clone().requires_grad_(True)
    y = act(xr)
    assert y.tolist() == hard_sign(x).tolist()  # forward stays exactly sign(x)
    upstream = torch.linspace(0.5, 2.0, x.numel(), dtype=torch.float64)
    (y * upstream).sum().backward()
    torch.testing.assert_close(xr.grad, upstream * EXPECTED[name](x, kwargs))


def test_surrogate_values_at_known_points() -> None:
    x = torch.tensor([0.0, 0.5, 2.0])
    assert surrogate_grad(x, "approx_sign").tolist() == [2.0, 1.0, 0.0]
    assert surrogate_grad(x, "tanh", 5.0)[0].item() == pytest.approx(5.0)
    assert surrogate_grad(x, "swish_sign", 5.0)[0].item() == pytest.approx(5.0)  # 2β σ(0)² · 2


def test_bad_surrogates_give_clear_errors() -> None:
    act = SignActivation()
    act.attack_surrogate = "relu"
    with pytest.raises(ValueError, match="relu.*ste_clipped"):
        act(torch.zeros(2))
    with pytest.raises(ValueError, match="does not accept.*beta"):
        check_surrogate("tanh", {"beta": 2.0})
    with pytest.raises(ValueError, match="slope > 0"):
        check_surrogate("tanh", {"slope": -1.0})


def test_annealing_schedule_and_cap() -> None:
    b = MDTanhS(tanh_scale_start=2.0, growth=1.5, interval=3)
    assert [b.scale_at(s) for s in (0, 2, 3, 5, 6)] == [2.0, 2.0, 3.0, 3.0, 4.5]
    layer = BinaryLinear(3, 2, binarizer=b)
    for step in range(1, 7):
        b.on_optimizer_step(layer, step)
    assert b.tanh_scale.item() == pytest.approx(4.5)
    assert GDTanh().scale_at(10**9) == 1e35  # capped, no overflow
    assert GDTanh().scale_at(200) == pytest.approx(1.02) and GDTanh().scale_at(199) == 1.0


def test_clipping_only_for_bc_and_hubara() -> None:
    for cls, clips in [(BC, True), (Hubara, True), (MDTanhS, False), (GDTanh, False)]:
        b = cls()
        layer = BinaryLinear(2, 2, binarizer=b)
        other = BinaryLinear(2, 2, binarizer=cls())  # a different binarizer: never touched
        with torch.no_grad():
            layer.weight.fill_(3.0)
            layer.bias.fill_(-2.0)
            other.weight.fill_(3.0)
        b.on_optimizer_step([layer, other], step=1)
        assert (layer.weight.abs().max().item() == 1.0) is clips, cls
        assert (layer.bias.min().item() == -1.0) is clips, cls
        assert other.weight.max().item() == 3.0


def test_make_binarizer_specs_and_errors() -> None:
    assert isinstance(make_binarizer("MD-tanh-S"), MDTanhS)
    assert isinstance(make_binarizer("bnn_waq"), Hubara)
    assert isinstance(make_binarizer(None), NoBinarizer)
    b = make_binarizer({"class_path": "bnnrobust.binarize.GDTanh", "init_args": {"growth": 1.1}})
    assert isinstance(b, GDTanh) and b.growth == 1.1
    assert make_binarizer(BC) is not None and make_binarizer(b) is b
    with pytest.raises(ValueError, match=r"'bc' does not accept.*growth.*clip_latent"):
        make_binarizer("bc", growth=1.02)
    with pytest.raises(
        ValueError, match=r"Unknown binarizer 'sgn'.*none, bc, gd_tanh, md_tanh_s, hubara"
    ):
        make_binarizer("sgn")
    with pytest.raises(ValueError, match="already built"):
        make_binarizer(b, growth=2.0)
    with pytest.raises(ValueError, match="growth must be"):
        make_binarizer("gd_tanh", growth=0.5)
    with pytest.raises(ValueError, match="interval must be"):
        make_binarizer("md_tanh_s", interval=0)
    with pytest.raises(TypeError, match="binarizer must be"):
        make_binarizer(3)


def test_binary_layers_copy_float_layers() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=True)
    lin = nn.Linear(4, 2)
    x = torch.randn(2, 2, 5, 5)
    bconv = BinaryConv2d.from_float(conv, NoBinarizer())
    torch.testing.assert_close(bconv(x), conv(x))
    blin = BinaryLinear.from_float(lin, BC())
    z = torch.randn(3, 4)
    torch.testing.assert_close(blin(z), z @ hard_sign(lin.weight).T + hard_sign(lin.bias))


def _count(model: nn.Module, types: tuple[type, ...]) -> int:
    return sum(isinstance(m, types) for m in model.modules())


def test_binarize_torchvision_resnet18() -> None:
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(weights=None, num_classes=10)
    n_layers = _count(model, (nn.Conv2d, nn.Linear))
    bnn = binarize_model(model, "md_tanh_s", growth=1.05)
    assert len(binary_modules(bnn)) == n_layers == 21
    assert len(binary_modules(model)) == 0  # input model untouched
    assert {m.binarizer.growth for m in binary_modules(bnn)} == {1.05}
    torch.testing.assert_close(bnn.conv1.weight, model.conv1.weight)
    x = torch.rand(2, 3, 32, 32)
    bnn(x).sum().backward()
    assert bnn.conv1.weight.grad is not None and bnn.fc.bias.grad is not None
    kept = binarize_model(model, "bc", keep_first_last=True)
    assert type(kept.conv1) is nn.Conv2d and type(kept.fc) is nn.Linear
    assert len(binary_modules(kept)) == n_layers - 2
    hub = binarize_model(model, "hubara")
    assert len(sign_activations(hub)) == _count(model, (nn.ReLU,)) and _count(hub, (nn.ReLU,)) == 0
    assert torch.isfinite(hub.eval()(x)).all()


def test_binarize_timm_models() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    bnn = binarize_model(model, "gd_tanh")
    assert len(binary_modules(bnn)) == _count(model, (nn.Conv2d, nn.Linear)) > 0
    out = bnn(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    vit = timm.create_model("test_vit", pretrained=False, num_classes=5)
    hub = binarize_model(vit, "hubara")
    assert len(sign_activations(hub)) > 0 and len(binary_modules(hub)) > 0
    size = vit.default_cfg["input_size"][-1]
    assert hub(torch.rand(2, 3, size, size)).shape == (2, 5)


def test_binarize_rejects_bad_inputs() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(TypeError, match="nn.Module"):
        binarize_model("resnet18")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already binarized"):
        binarize_model(binarize_model(model, "bc"), "bc")
    with pytest.raises(ValueError, match=r"Unknown binarizer 'xnor'"):
        binarize_model(model, "xnor")


def test_binary_summary_counts_params_and_memory() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    bnn = binarize_model(model, "bc", keep_first_last=True)  # both kept: nothing binary
    assert binary_stats(bnn).binary_params == 0
    bnn = binarize_model(model, "bc")
    s = binary_stats(bnn)
    assert (s.binary_layers, s.binary_params, s.float_params) == (2, 40 + 10, 0)
    assert s.memory_bits == 50
    text = binary_summary(binarize_model(model, "hubara"))
    assert "binary params:     50" in text and "sign activations:  1" in text and "32.0x" in text


def test_the_function_and_the_package_have_different_names() -> None:
    import bnnrobust
    import bnnrobust.binarize as package

    model = bnnrobust.binarize_model(nn.Sequential(nn.Linear(2, 2)), "bc")
    assert len(binary_modules(model)) == 1 and package.BC is BC
    assert bnnrobust.binarize is package and not callable(package)
