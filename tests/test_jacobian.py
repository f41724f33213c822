"""Batched input Jacobians: exact against torch.func, through custom autograd Functions."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from bnnrobust.attacks.jacobian import (
    input_jacobian,
    input_jacobian_and_logits,
    jacobian_singular_values,
)


def _conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 8 * 8, 5),
    ).double()


def _reference_jacobian(model: nn.Module, x: Tensor) -> Tensor:
    rows = [torch.func.jacrev(lambda v: model(v[None])[0])(x[i]) for i in range(x.shape[0])]
    return torch.stack([r.reshape(r.shape[0], -1) for r in rows]).detach()


class _STESign(torch.autograd.Function):
    """A custom sign with a straight-through backward (no vmap rule)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _SignNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(_STESign.apply(self.fc1(x.flatten(1))))


def test_matches_jacrev_and_chunking() -> None:
    model = _conv_net()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    ref = _reference_jacobian(model, x)
    for method in ("repeat", "loop", "auto"):
        for chunk in (1, 2, 32):
            jac = input_jacobian(model, x, chunk_size=chunk, method=method)
            assert jac.shape == (5, 5, 64)
            assert not jac.requires_grad
            torch.testing.assert_close(jac, ref)
    jac, logits = input_jacobian_and_logits(model, x, num_classes=5)
    torch.testing.assert_close(logits, model(x).detach())


@pytest.mark.parametrize("method", ["repeat", "loop"])
def test_works_through_custom_autograd_function(method: str) -> None:
    model = _SignNet()
    x = torch.rand(3, 1, 4, 4) * 0.2
    jac = input_jacobian(model, x, method=method)
    # reference: one backward per (sample, class) row
    ref = torch.zeros(3, 4, 16)
    for i in range(3):
        for k in range(4):
            xi = x[i : i + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xi)[0, k], xi)
            ref[i, k] = g.flatten()
    torch.testing.assert_close(jac, ref)


@pytest.mark.parametrize("method", ["repeat", "loop"])
def test_mode_and_parameter_grads_untouched(method: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.0), nn.Linear(8, 3))
    model.train()
    model[2].eval()
    flags = [m.training for m in model.modules()]
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    input_jacobian(model, torch.rand(4, 1, 4, 4), method=method)
    assert [m.training for m in model.modules()] == flags
    for p in model.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 7.0))


def test_singular_values_match_svd_including_wide_case() -> None:
    model = _conv_net()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    sv = jacobian_singular_values(model, x)
    ref = torch.linalg.svdvals(_reference_jacobian(model, x))
    assert sv.shape == (4, 5)
    assert bool((sv[:, :-1] >= sv[:, 1:]).all())  # descending
    torch.testing.assert_close(sv, ref, rtol=1e-6, atol=1e-6)
    # N = 3 inputs < d = 6 classes: min(d, N) = 3 values
    wide = nn.Linear(3, 6).double()
    xw = torch.rand(2, 3, dtype=torch.float64)
    svw = jacobian_singular_values(wide, xw)
    assert svw.shape == (2, 3)
    torch.testing.assert_close(svw[0], torch.linalg.svdvals(wide.weight), rtol=1e-6, atol=1e-6)


def test_bad_arguments_and_constant_logits() -> None:
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="chunk_size"):
        input_jacobian(_conv_net(), x, chunk_size=0)
    with pytest.raises(ValueError, match="repeat"):
        input_jacobian(_conv_net(), x, method="vmap")
    with pytest.raises(ValueError, match="logits"):
        input_jacobian(nn.Identity(), x)

    class Half(nn.Module):  # logit 1 ignores the input: a zero Jacobian row, not an error
        def forward(self, v: Tensor) -> Tensor:
            s = v.flatten(1).sum(1, keepdim=True)
            return torch.cat([s, torch.zeros_like(s).detach()], dim=1)

    for method in ("repeat", "loop"):
        jac = input_jacobian(Half(), x, method=method)
        assert torch.equal(jac[:, 1], torch.zeros_like(jac[:, 1]))
        assert torch.equal(jac[:, 0], torch.ones_like(jac[:, 0]))


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.BatchNorm1d(8, affine=False),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).double()
    for m in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            if m.weight is not None:
                m.weight.data.uniform_(-2.0, 2.0)
                m.bias.data.uniform_(-1.0, 1.0)
    return model.eval()


def test_eval_batchnorm_as_affine_same_map_and_restored() -> None:
    from bnnrobust.attacks.jacobian import eval_batchnorm_as_affine

    model = _bn_net()
    x = torch.rand(7, 1, 6, 6, dtype=torch.float64)
    ref = model(x)
    with eval_batchnorm_as_affine(model) as n_swapped:
        assert n_swapped == 2
        assert all("forward" in m.__dict__ for m in (model[1], model[5]))
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert not any("forward" in m.__dict__ for m in model.modules())
    # switched to batch statistics inside the block: batch_norm again, not the running stats
    with eval_batchnorm_as_affine(model):
        model[1].train()
        model[1].track_running_stats = False
        h = model[0](x)
        torch.testing.assert_close(model[1](h), nn.functional.batch_norm(
            h, None, None, model[1].weight, model[1].bias, training=True))
        model[1].track_running_stats = True
        model[1].eval()
    # the swap is undone even when the block raises
    with pytest.raises(RuntimeError, match="boom"), eval_batchnorm_as_affine(model):
        raise RuntimeError("boom")
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_eval_batchnorm_as_affine_leaves_training_layers_alone() -> None:
    from bnnrobust.attacks.jacobian import eval_batchnorm_as_affine

    model = _bn_net()
    model[1].train()  # batch statistics: must keep calling batch_norm
    no_stats = nn.BatchNorm1d(3, track_running_stats=False).eval()
    with eval_batchnorm_as_affine(nn.ModuleList([model, no_stats])) as n_swapped:
        assert n_swapped == 1
        assert "forward" not in model[1].__dict__ and "forward" not in no_stats.__dict__


def test_jacobian_with_affine_batchnorm_matches_plain_layers() -> None:
    model = _bn_net()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    ref = _reference_jacobian(model, x)
    for method in ("loop", "repeat"):
        fast, logits = input_jacobian_and_logits(model, x, method=method)
        plain = input_jacobian(model, x, method=method, affine_batchnorm=False)
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(plain, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(logits, model(x).detach(), rtol=1e-12, atol=1e-12)
