"""ConvNet design options of the masking study: hidden FC, affine BatchNorm, float biases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnrobust.binarize import BinaryLinear
from bnnrobust.models import create_model


def _bns(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_paper_defaults_unchanged() -> None:
    bnn = create_model("convnet", num_classes=10, in_channels=1, width=0.25, binarizer="bc")
    ref = create_model("convnet", num_classes=10, in_channels=1, width=0.25)
    assert not any(bn.affine for bn in _bns(bnn))
    assert all(bn.affine for bn in _bns(ref))
    assert isinstance(bnn.classifier, BinaryLinear) and bnn.classifier.binarize_bias


def test_affine_bn_option_overrides_the_binary_default() -> None:
    bnn = create_model("convnet", num_classes=10, in_channels=1, width=0.25, binarizer="bc",
                       affine_bn=True)
    assert all(bn.affine for bn in _bns(bnn))
    ref = create_model("convnet", num_classes=10, in_channels=1, width=0.25, affine_bn=False)
    assert not any(bn.affine for bn in _bns(ref))


def test_hidden_layer_is_binarized_with_batchnorm_and_gives_logits() -> None:
    net = create_model("convnet", num_classes=7, in_channels=1, width=0.25, binarizer="hubara",
                       hidden=16)
    kinds = [type(m).__name__ for m in net.classifier]
    assert kinds == ["BinaryLinear", "BatchNorm1d", "SignActivation", "BinaryLinear"]
    assert net.classifier[0].in_features == 16 * 16 and net.classifier[0].out_features == 16
    net.eval()
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 7)
    with pytest.raises(ValueError, match="hidden must be an integer >= 0"):
        create_model("convnet", num_classes=7, hidden=-1)


def test_float_bias_is_used_as_is_and_never_clipped() -> None:
    net = create_model("convnet", num_classes=4, in_channels=1, width=0.25, binarizer="bc",
                       float_bias=True).eval()
    head = net.classifier
    assert isinstance(head, BinaryLinear) and not head.binarize_bias
    with torch.no_grad():
        head.bias.copy_(torch.tensor([3.0, -0.25, 0.0, 7.5]))
    assert torch.equal(head.used_bias(), head.bias)
    head.binarizer.clip_(net)
    assert head.bias.tolist() == [3.0, -0.25, 0.0, 7.5]
    assert float(head.weight.abs().max()) <= 1.0
    # the paper's layout binarizes (and clips) the bias
    paper = create_model("convnet", num_classes=4, in_channels=1, width=0.25, binarizer="bc").eval()
    with torch.no_grad():
        paper.classifier.bias.copy_(torch.tensor([3.0, -0.25, 0.0, 7.5]))
    assert paper.classifier.used_bias().tolist() == [1.0, -1.0, 1.0, 1.0]
