"""The threat model owns the geometry: projection, random start, step direction (Norm)."""

from __future__ import annotations

import pytest
import torch

from bnnrobust.attacks.base import Norm


def _x() -> torch.Tensor:
    return torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(0))


def _size(norm: Norm, d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).abs().amax(1) if norm is Norm.LINF else d.flatten(1).norm(dim=1)


@pytest.mark.parametrize("norm,eps", [(Norm.LINF, 0.1), (Norm.L2, 0.5)])
def test_project_lands_in_the_ball_and_the_image_box(norm: Norm, eps: float) -> None:
    x = _x()
    far = x + 3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    p = norm.project(far, x, eps)
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    assert bool((_size(norm, p - x) <= eps + 1e-6).all())
    inside = x + 0.1 * eps * norm.direction(torch.randn_like(x))
    torch.testing.assert_close(norm.project(inside.clamp(0, 1), x, eps), inside.clamp(0, 1))
    assert p.data_ptr() != far.data_ptr()  # a new tensor, the argument untouched


@pytest.mark.parametrize("norm", list(Norm))
def test_direction_has_unit_size_and_zero_stays_zero(norm: Norm) -> None:
    g = torch.randn(8, 3, 4, 4)
    d = norm.direction(g)
    torch.testing.assert_close(_size(norm, d), torch.ones(8))
    assert bool((d * g >= 0).all())  # an ascent direction
    assert torch.equal(norm.direction(torch.zeros_like(g)), torch.zeros_like(g))
    tiny = norm.direction(1e-20 * g)  # a vanishing but non-zero gradient still gives a step
    torch.testing.assert_close(_size(norm, tiny), torch.ones(8))


@pytest.mark.parametrize("norm,eps", [(Norm.LINF, 0.1), (Norm.L2, 0.5)])
def test_random_start_inside_or_on_the_surface(norm: Norm, eps: float) -> None:
    x = torch.full((64, 1, 8, 8), 0.5)  # far from the [0, 1] edges: no clipping
    inside = _size(norm, norm.random_start(x, eps, torch.Generator().manual_seed(0)) - x)
    surface = _size(norm, norm.random_start(x, eps, torch.Generator().manual_seed(0),
                                            surface=True) - x)
    torch.testing.assert_close(surface, torch.full((64,), eps))
    assert bool((inside <= eps + 1e-6).all())
    if norm is Norm.L2:  # radius uniform in [0, eps]: well spread below the surface
        assert float(inside.min()) < 0.5 * eps
    again = norm.random_start(x, eps, torch.Generator().manual_seed(0))
    assert torch.equal(again, norm.random_start(x, eps, torch.Generator().manual_seed(0)))
