"""Model zoo: registry, every architecture x binarizer, exact binarity in eval, a real BNN learns."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnnrobust
from bnnrobust.binarize import (
    BINARIZERS,
    BinaryConv2d,
    BinaryLinear,
    SignActivation,
    binary_modules,
    hard_sign,
    sign_activations,
)
from bnnrobust.models import (
    VGG16,
    ConvNet,
    DenseNet121,
    MobileNetV2,
    Normalize,
    ResNet18,
    ResNet50,
    create_model,
    list_models,
    register_model,
)

NAMES = ["convnet", "densenet121", "mobilenet_v2", "resnet18", "resnet50", "vgg16"]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_registry_lists_and_filters() -> None:
    assert list_models() == NAMES
    assert list_models("*resnet*") == ["resnet18", "resnet50"]
    assert bnnrobust.create_model is create_model and bnnrobust.list_models is list_models


@pytest.mark.parametrize("binarizer", list(BINARIZERS))
@pytest.mark.parametrize("name", NAMES)
def test_every_architecture_and_binarizer_runs(name: str, binarizer: str) -> None:
    in_channels = 1 if name == "convnet" else 3
    model = create_model(
        name, num_classes=7, in_channels=in_channels, width=0.125, binarizer=binarizer
    )
    x = torch.rand(2, in_channels, 8, 8)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    layers = binary_modules(model)
    if binarizer == "none":
        assert not layers and not sign_activations(model)
        assert all(bn.affine for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))
    else:  # every conv/linear binarized, one shared binarizer, affine-free BatchNorm
        n_layers = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
        assert len(layers) == n_layers and len({id(m.binarizer) for m in layers}) == 1
        assert not any(bn.affine for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))
        assert bool(sign_activations(model)) == (binarizer == "hubara")
        assert (
            not any(isinstance(m, nn.ReLU | nn.ReLU6) for m in model.modules())
            or binarizer != "hubara"
        )


@pytest.mark.parametrize("name", NAMES)
def test_grey_16px_input_and_keep_first_last(name: str) -> None:
    model = create_model(
        name, num_classes=3, in_channels=1, width=0.125, binarizer="bc", keep_first_last=True
    )
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert type(convs[0]) is nn.Conv2d and type(convs[-1]) is nn.Linear
    assert all(isinstance(m, BinaryConv2d | BinaryLinear) for m in convs[1:-1])
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)


def test_classes_match_registry_and_paper_sizes() -> None:
    classes = {
        "convnet": ConvNet,
        "densenet121": DenseNet121,
        "mobilenet_v2": MobileNetV2,
        "resnet18": ResNet18,
        "resnet50": ResNet50,
        "vgg16": VGG16,
    }
    for name, cls in classes.items():
        assert type(create_model(name, num_classes=10, width=0.125)) is cls

    def n_params(cls: type[nn.Module]) -> int:
        return sum(p.numel() for p in cls(num_classes=10).parameters())

    # the usual CIFAR variants (kuangliu/pytorch-cifar, float): ResNet-18 11.17M, ResNet-50 23.5M
    assert abs(n_params(ResNet18) - 11_173_962) < 1000
    assert abs(n_params(ResNet50) - 23_520_842) < 1000
    assert n_params(MobileNetV2) == pytest.approx(2.24e6, rel=0.03)
    small, large = (sum(p.numel() for p in ResNet18(10, width=w).parameters()) for w in (0.25, 0.5))
    assert 3.5 < large / small < 4.5  # parameters scale with width²


def test_normalize_is_first_module_and_inputs_stay_in_pixel_units() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    model = ResNet18(num_classes=4, width=0.125, mean=mean, std=std).eval()
    assert isinstance(next(iter(model.children())), Normalize)
    bare = ResNet18(num_classes=4, width=0.125).eval()
    bare.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("normalize.")}
    )
    x = torch.rand(2, 3, 8, 8)
    expected = bare((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), expected)


def test_bad_arguments_give_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"Unknown model 'resnet19'.*convnet, densenet121"):
        create_model("resnet19", num_classes=10)
    with pytest.raises(ValueError, match=r"width must be .*> 0, got -0.5"):
        create_model("resnet18", num_classes=10, width=-0.5)
    with pytest.raises(ValueError, match=r"width must be .*got 0"):
        VGG16(num_classes=10, width=0)
    with pytest.raises(ValueError, match=r"'bc' does not accept argument\(s\) \['growth'\]"):
        create_model("convnet", num_classes=10, binarizer="bc", growth=1.02)
    with pytest.raises(ValueError, match="one value per input channel"):
        ConvNet(num_classes=10, in_channels=1, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="both mean and std"):
        ConvNet(num_classes=10, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="num_classes"):
        ConvNet(num_classes=0)
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\)"):
        ResNet18(num_classes=10, width=0.125)(torch.rand(2, 1, 8, 8))


def test_register_model_adds_a_name() -> None:
    @register_model("tiny_test_net")
    class TinyNet(ConvNet):
        pass

    try:
        assert "tiny_test_net" in list_models("tiny*")
        assert isinstance(create_model("tiny_test_net", num_classes=2, width=0.1), TinyNet)
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny_test_net")(ConvNet)
    finally:
        from bnnrobust.models.registry import MODEL_REGISTRY

        MODEL_REGISTRY.pop("tiny_test_net")


def test_hubara_first_layer_sees_the_real_image() -> None:
    model = create_model("resnet18", num_classes=3, width=0.125, binarizer="hubara").eval()
    seen: dict[str, torch.Tensor] = {}
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    convs[0].register_forward_pre_hook(lambda m, i: seen.update(first=i[0]))
    convs[1].register_forward_pre_hook(lambda m, i: seen.update(second=i[0]))
    model(torch.rand(2, 3, 8, 8))
    assert not set(seen["first"].unique().tolist()) <= {-1.0, 1.0}
    assert set(seen["second"].unique().tolist()) <= {-1.0, 1.0}


def _train_steps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-2
) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    layers = binary_modules(model)
    binarizer = layers[0].binarizer if layers else None
    model.train()
    for step in range(1, steps + 1):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if binarizer is not None:
            binarizer.on_optimizer_step(layers, step)


@pytest.mark.parametrize("binarizer", ["bc", "gd_tanh", "md_tanh_s", "hubara"])
def test_eval_bnn_is_exactly_binary_and_equals_hard_sign_model(
    binarizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = (
        create_model(
            "resnet18", num_classes=4, width=0.125, binarizer=binarizer, interval=1, growth=1.5
        )
        if "tanh" in binarizer
        else create_model("resnet18", num_classes=4, width=0.125, binarizer=binarizer)
    )
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 4, (8,))
    _train_steps(model, x, y, steps=3)
    model.eval()
    # float twin: every binary layer replaced by a plain layer holding sign(latent)
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, BinaryConv2d | BinaryLinear):
            plain = (
                nn.Conv2d(
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    groups=m.groups,
                    bias=m.bias is not None,
                )
                if isinstance(m, BinaryConv2d)
                else nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            )
            with torch.no_grad():
                plain.weight.copy_(hard_sign(m.weight))
                if m.bias is not None:
                    plain.bias.copy_(hard_sign(m.bias))
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, plain)
    expected = twin.eval()(x)
    # every weight and bias the forward uses is ±1
    used: list[torch.Tensor] = []
    conv2d, linear = F.conv2d, F.linear

    def spy_conv(inp, weight, bias=None, *args, **kwargs):  # noqa: ANN001, ANN202
        used.extend(t for t in (weight, bias) if t is not None)
        return conv2d(inp, weight, bias, *args, **kwargs)

    def spy_linear(inp, weight, bias=None):  # noqa: ANN001, ANN202
        used.extend(t for t in (weight, bias) if t is not None)
        return linear(inp, weight, bias)

    monkeypatch.setattr(F, "conv2d", spy_conv)
    monkeypatch.setattr(F, "linear", spy_linear)
    out = model(x)
    monkeypatch.undo()
    assert len(used) >= len(binary_modules(model))
    assert all(set(t.unique().tolist()) <= {-1.0, 1.0} for t in used)
    torch.testing.assert_close(out, expected)


def test_sign_activation_is_found_by_duck_typing() -> None:
    model = create_model("vgg16", num_classes=3, width=0.125, binarizer="hubara")
    acts = [m for m in model.modules() if hasattr(m, "attack_surrogate")]
    assert acts and all(isinstance(a, SignActivation) and a.surrogate_kwargs == {} for a in acts)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.mark.skipif(not FMNIST.is_dir(), reason=f"Fashion-MNIST not found at {FMNIST}")
def test_fashion_mnist_bnn_learns() -> None:
    g = torch.Generator().manual_seed(0)
    xs = (
        torch.from_numpy(_read_idx(FMNIST / "train-images-idx3-ubyte.gz")[:6000].copy())
        .float()
        .div(255)
    )
    ys = torch.from_numpy(_read_idx(FMNIST / "train-labels-idx1-ubyte.gz")[:6000].astype(np.int64))
    xt = (
        torch.from_numpy(_read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")[:2000].copy())
        .float()
        .div(255)
    )
    yt = torch.from_numpy(_read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")[:2000].astype(np.int64))
    xs, xt = xs.unsqueeze(1), xt.unsqueeze(1)
    model = ConvNet(
        num_classes=10, in_channels=1, width=0.5, binarizer="bc", mean=(0.286,), std=(0.353,)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    layers = binary_modules(model)
    model.train()
    for step in range(1, 301):
        idx = torch.randint(0, len(xs), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(xs[idx]), ys[idx]).backward()
        opt.step()
        layers[0].binarizer.on_optimizer_step(layers, step)
    assert max(m.weight.abs().max().item() for m in layers) <= 1.0  # latent clipping happened
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    # about 0.73 after 300 steps of batch 64 (chance 0.1)
    assert acc > 0.6, f"binary ConvNet reached only {acc:.3f} test accuracy (chance 0.1)"
