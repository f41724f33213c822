"""``hessian_norm`` = ‖β² Jᵀ (diag(p) − p pᵀ) J‖_F without cancellation, also in the saturated tail.

References: the explicit N × N Hessian in float64 where the softmax is not saturated, and the
same explicit Hessian in 700-digit decimal arithmetic (exact enough for ``1 − max p`` down to
1e-300) everywhere else.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest
import torch
from torch import Tensor

import bnnrobust.attacks.hns as temperature  # the module that holds _TR_CHUNK_ELEMENTS
from bnnrobust.attacks.temperature import hessian_norm, hns_beta_from_gram, hns_grid


def _explicit_float64(jac: Tensor, logits: Tensor, beta: float) -> float:
    """‖β² Jᵀ (diag(p) − p pᵀ) J‖_F built directly as an N × N float64 matrix (one sample)."""
    p = torch.softmax(beta * logits.double(), 0)
    h = beta * beta * jac.double().T @ (torch.diag(p) - torch.outer(p, p)) @ jac.double()
    return float(torch.linalg.norm(h))


def _explicit_decimal(jac: Tensor, logits: Tensor, beta: float) -> float:
    """The same explicit Hessian in 700-digit decimal arithmetic (inputs taken exactly)."""
    with localcontext() as ctx:
        ctx.prec = 700
        b = Decimal(beta)
        z = [Decimal(float(v)) * b for v in logits.tolist()]
        top = max(z)
        e = [(v - top).exp() for v in z]
        total = sum(e, Decimal(0))
        p = [v / total for v in e]
        d, n = jac.shape
        j = [[Decimal(float(v)) for v in row] for row in jac.tolist()]
        s = [[(p[a] if a == c else Decimal(0)) - p[a] * p[c] for c in range(d)] for a in range(d)]
        sj = [[sum((s[a][c] * j[c][k] for c in range(d)), Decimal(0)) for k in range(n)]
              for a in range(d)]
        fro2 = sum((sum((j[a][k] * sj[a][m] for a in range(d)), Decimal(0)) ** 2
                    for k in range(n) for m in range(n)), Decimal(0))
        return float(b * b * fro2.sqrt())


def _old_expansion(gram: Tensor, logits: Tensor, beta: Tensor) -> Tensor:
    """The previous formula: β² sqrt(pᵀ(G∘G)p − 2 Σ_k p_k (Gp)_k² + (pᵀGp)²), clamped at 0."""
    p = torch.softmax(beta[..., None] * logits[:, None, :].double(), dim=-1)
    gp = p @ gram
    t1 = ((p @ (gram * gram)) * p).sum(-1)
    t2 = (p * gp * gp).sum(-1)
    t3 = (p * gp).sum(-1) ** 2
    return beta * beta * (t1 - 2.0 * t2 + t3).clamp_min(0.0).sqrt()


def _sample(d: int, n: int, seed: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(d, n, generator=g, dtype=torch.float64)
    logits = torch.randn(d, generator=g, dtype=torch.float64) * scale
    return jac, logits


@pytest.mark.parametrize("d", [2, 3, 10, 100])
def test_matches_the_explicit_float64_hessian_where_the_softmax_is_not_saturated(d: int) -> None:
    jacs, zs = zip(*(_sample(d, 7, seed) for seed in range(3)), strict=True)
    jac, logits = torch.stack(jacs), torch.stack(zs)
    gram = jac @ jac.transpose(1, 2)
    betas = torch.tensor([0.05, 0.3, 1.0, 2.0], dtype=torch.float64)
    grid = betas.expand(3, -1)
    from_jac = hessian_norm(jac, logits, grid)
    from_gram = hessian_norm(gram, logits, grid, is_gram=True)
    assert from_jac.dtype == torch.float64 and from_jac.shape == (3, 4)
    for i in range(3):
        for k, beta in enumerate(betas.tolist()):
            ref = _explicit_float64(jac[i], logits[i], beta)
            assert from_jac[i, k].item() == pytest.approx(ref, rel=1e-10)
            assert from_gram[i, k].item() == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize(("d", "scale"), [(2, 3.0), (5, 10.0), (10, 30.0)])
def test_matches_the_high_precision_hessian_in_the_saturated_tail(d: int, scale: float) -> None:
    jac, logits = _sample(d, 5, seed=d, scale=scale)
    top2 = logits.topk(2).values
    gamma = float(top2[0] - top2[1])
    # 1 − max p from about 1e-2 down to about 1e-250 (large logit gaps and large β)
    betas = [c / gamma for c in (5.0, 20.0, 40.0, 80.0, 160.0, 320.0, 575.0)]
    got = hessian_norm(jac[None], logits[None], torch.tensor([betas], dtype=torch.float64))[0]
    got_gram = hessian_norm((jac @ jac.T)[None], logits[None],
                            torch.tensor([betas], dtype=torch.float64), is_gram=True)[0]
    for k, beta in enumerate(betas):
        ref = _explicit_decimal(jac, logits, beta)
        assert ref > 0.0
        assert got[k].item() == pytest.approx(ref, rel=1e-10), (beta, got[k].item(), ref)
        assert got_gram[k].item() == pytest.approx(ref, rel=1e-9), (beta, got_gram[k].item(), ref)


def test_where_the_old_expansion_is_off_by_1e3_the_new_form_is_exact() -> None:
    d, n = 10, 6
    jacs, zs = zip(*(_sample(d, n, seed, scale=2.0) for seed in range(4)), strict=True)
    jac, logits = torch.stack(jacs), torch.stack(zs)
    gram = jac @ jac.transpose(1, 2)
    top2 = logits.topk(2, dim=1).values
    betas = hns_grid(top2[:, 0] - top2[:, 1], d, n_grid=100)  # what HNS scores
    new = hessian_norm(gram, logits, betas, is_gram=True)
    old = _old_expansion(gram, logits, betas)
    assert bool((new > 0).all()) and bool(torch.isfinite(new).all())
    # every 9th grid point of each sample against the exact value
    for i in range(4):
        for k in range(0, 100, 9):
            ref = _explicit_decimal(jac[i], logits[i], float(betas[i, k]))
            assert float(new[i, k]) == pytest.approx(ref, rel=1e-10), (i, k)
    # the grid points where the two formulas disagree by more than 1e3: the old one is wrong
    hard = torch.nonzero((old - new).abs() > 1e3 * new).tolist()
    assert len(hard) >= 3  # spikes orders of magnitude above the true tail
    for i, k in hard[:10]:
        ref = _explicit_decimal(jac[i], logits[i], float(betas[i, k]))
        assert abs(float(old[i, k]) - ref) / ref > 1e3
        assert float(new[i, k]) == pytest.approx(ref, rel=1e-10), (i, k)


def test_the_saturated_tail_decreases_without_spikes() -> None:
    jac, logits = _sample(10, 8, seed=5, scale=2.0)
    top2 = logits.topk(2).values
    gamma = top2[0] - top2[1]
    betas = hns_grid(gamma[None], 10, n_grid=100)
    norms = hessian_norm(jac[None], logits[None], betas)[0]
    tail = betas[0] > 4.0 / gamma  # β²·exp(−βγ) falls for β > 2/γ
    assert int(tail.sum()) > 50
    values = norms[tail]
    assert bool((values > 0).all())
    assert bool((values[1:] < values[:-1]).all())
    # log-linear in β far out: successive log-ratios agree (a spike would break this)
    logs = values.log()
    steps = logs[1:] - logs[:-1]
    assert float((steps[-20:] - steps[-20:].mean()).abs().max()) < 0.05 * float(steps[-20:].abs().mean())


def test_chunking_keeps_memory_bounded_and_values_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    d, b = 100, 3  # CIFAR-100's d on HNS's full grid
    g = torch.Generator().manual_seed(11)
    jac = torch.randn(b, d, 9, generator=g, dtype=torch.float64)
    logits = torch.randn(b, d, generator=g, dtype=torch.float64) * 2
    gram = jac @ jac.transpose(1, 2)
    top2 = logits.topk(2, dim=1).values
    betas = hns_grid(top2[:, 0] - top2[:, 1], d, n_grid=100)
    whole = hessian_norm(gram, logits, betas, is_gram=True)
    monkeypatch.setattr(temperature, "_TR_CHUNK_ELEMENTS", 3 * d * d)  # a few rows per chunk
    chunked = hessian_norm(gram, logits, betas, is_gram=True)
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=0.0)
    monkeypatch.setattr(temperature, "_TR_CHUNK_ELEMENTS", 1)  # one (d, d) block at a time
    torch.testing.assert_close(hessian_norm(gram, logits, betas, is_gram=True), whole,
                               rtol=1e-13, atol=0.0)
    k = 37  # one point checked against the explicit Hessian
    ref = _explicit_float64(jac[0], logits[0], float(betas[0, k]))
    assert float(whole[0, k]) == pytest.approx(ref, rel=1e-8)


def test_hns_scores_keep_their_argmax_where_well_conditioned() -> None:
    """Away from the saturated tail the old expansion was accurate; HNS's β* must not move."""
    d = 10
    jacs, zs = zip(*(_sample(d, 12, seed, scale=1.5) for seed in range(6)), strict=True)
    jac, logits = torch.stack(jacs), torch.stack(zs)
    gram = jac @ jac.transpose(1, 2)
    y = logits.argmax(dim=1)
    beta, fallback = hns_beta_from_gram(gram, logits, y)
    top2 = logits.topk(2, dim=1).values
    betas = hns_grid(top2[:, 0] - top2[:, 1], d, n_grid=100)
    idx = _old_expansion(gram, logits, betas).argmax(dim=1)
    old_beta = torch.where((idx == 0) | (idx == 99), 1.0, betas.gather(1, idx[:, None])[:, 0])
    assert not bool(fallback.any())
    torch.testing.assert_close(beta, old_beta, rtol=0.0, atol=0.0)


def test_edge_cases_give_zero_or_nan_not_garbage() -> None:
    jac, logits = _sample(4, 3, seed=2)
    # one class far above the others: the Hessian underflows to exactly 0, not to noise
    far = logits.clone()
    far[0] = 1e4
    assert hessian_norm(jac[None], far[None], 10.0).item() == 0.0
    # classes that can never win (-inf logits) drop out
    minus = logits.clone()
    minus[2:] = -math.inf
    two = hessian_norm(jac[None, :2], logits[None, :2], 1.5).item()
    assert hessian_norm(jac[None], minus[None], 1.5).item() == pytest.approx(two, rel=1e-12)
    # non-finite logits give a non-finite score (HNS falls back on it)
    bad = logits.clone()
    bad[1] = math.nan
    assert math.isnan(hessian_norm(jac[None], bad[None], 1.0).item())


def test_the_expansion_equals_the_centred_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """The O(d²) form of Σ q_a q_b C'_ab² against summing C' itself, on HNS's whole grid."""
    for d, n in ((3, 5), (10, 7), (100, 9)):
        jacs, zs = zip(*(_sample(d, n, seed, scale=2.0) for seed in range(3)), strict=True)
        jac, logits = torch.stack(jacs), torch.stack(zs)
        gram = jac @ jac.transpose(1, 2)
        top2 = logits.topk(2, dim=1).values
        betas = hns_grid(top2[:, 0] - top2[:, 1], d, n_grid=100)
        fast = hessian_norm(gram, logits, betas, is_gram=True)
        monkeypatch.setattr(temperature, "_CANCELLATION_TOL", math.inf)  # C' everywhere
        monkeypatch.setattr(temperature, "_TR_CHUNK_ELEMENTS", 7 * d * d)  # in chunks
        slow = hessian_norm(gram, logits, betas, is_gram=True)
        monkeypatch.undo()
        assert bool((fast > 0).all())
        torch.testing.assert_close(fast, slow, rtol=1e-11, atol=0.0)


def test_nearly_alike_rows_stay_exact() -> None:
    """Rows J_a − J_r all alike (a ≠ r) and p_r ≈ 1/d, where the expansion's parts of
    Σ q_a q_b C'_ab² nearly cancel: the norm still matches the 700-digit reference."""
    d, n = 100, 3
    g = torch.Generator().manual_seed(3)
    common = torch.randn(n, generator=g, dtype=torch.float64)
    jac = common + 1e-6 * torch.randn(d, n, generator=g, dtype=torch.float64)
    jac[0] = common + 3.0  # the top class r = 0 differs from all the others
    logits = 0.01 * torch.randn(d, generator=g, dtype=torch.float64)
    logits[0] = 0.05
    betas = torch.tensor([[0.5, 2.0]], dtype=torch.float64)  # p_r about 1/d
    got = hessian_norm(jac[None], logits[None], betas)[0]
    for k, beta in enumerate(betas[0].tolist()):
        assert float(got[k]) == pytest.approx(_explicit_decimal(jac, logits, beta), rel=1e-10)


def test_entries_summed_from_c_prime_land_in_their_places(monkeypatch: pytest.MonkeyPatch) -> None:
    """Some grid entries from the expansion, the others from C' itself: same values, in order."""
    d = 10
    jacs, zs = zip(*(_sample(d, 6, seed, scale=2.0) for seed in range(4)), strict=True)
    jac, logits = torch.stack(jacs), torch.stack(zs)
    gram = jac @ jac.transpose(1, 2)
    top2 = logits.topk(2, dim=1).values
    betas = hns_grid(top2[:, 0] - top2[:, 1], d, n_grid=50)
    fast = hessian_norm(gram, logits, betas, is_gram=True)
    summed: list[int] = []
    centred = temperature._centred_sum

    def spy(gram_ref: Tensor, q: Tensor, w: Tensor, where: Tensor) -> Tensor:
        summed.append(int(where.sum()))
        return centred(gram_ref, q, w, where)

    monkeypatch.setattr(temperature, "_centred_sum", spy)
    monkeypatch.setattr(temperature, "_CANCELLATION_TOL", 0.9)  # flags a part of the grid
    mixed = hessian_norm(gram, logits, betas, is_gram=True)
    assert len(summed) == 1 and 0 < summed[0] < betas.numel()
    torch.testing.assert_close(mixed, fast, rtol=1e-11, atol=0.0)
