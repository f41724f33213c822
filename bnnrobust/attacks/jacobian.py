"""Input-output Jacobians of a classifier, batched and without ``vmap``.

``J(x) = ∂f(x)/∂x`` has shape (d, N) per sample, N = C·H·W. Two batched ways, both with
ordinary autograd only, so they work through custom ``torch.autograd.Function`` sign/STE
layers (``torch.func`` would need them to define ``vmap`` rules):

* ``"repeat"``: each sample is repeated d times and copy k back-propagates the k-th logit
  only (``Σ_k f_k(x_k)``): one forward, one backward per chunk;
* ``"loop"``: one forward per chunk, then d backward passes through the retained graph
  (no repeated forward: faster on CPU).

The model's own train/eval mode is left untouched (callers decide; attacks run in eval mode,
where BatchNorm does not mix the copies). Parameters' ``.grad`` are left untouched (gradients
are taken with respect to the input only). Results are detached.

While a Jacobian is taken, every eval-mode ``nn.BatchNorm1d/2d/3d`` with running statistics
computes ``x·α + β`` (``α = γ/√(σ²+ε)``, ``β = b − μ·α``: the same per-channel affine map as
PyTorch's inference kernel, equal to it up to float rounding) instead of calling ``batch_norm``: its backward is then one
multiply rather than ``native_batch_norm_backward``, about 1.2x faster Jacobians on CPU
(``benchmarks/bench_jsv.py``). The modules are restored on exit; training-mode BatchNorm is
never touched.

Jacobians are taken with respect to the model's input, [0, 1] pixels. NJS and the JSV
statistics follow the authors' convention, the Jacobian with respect to the *normalized*
input (the tensor after the model's :class:`~bnnrobust.models.Normalize`):
:func:`to_jacobian_space` turns one into the other, ``J_normalized = J_pixel · std`` per
channel. A model without ``Normalize`` gives the same Jacobian in both spaces.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

import torch
from torch import Tensor, nn

from bnnrobust.models.normalize import Normalize

#: the input a Jacobian is taken with respect to: after the model's Normalize, or the pixels
JacobianSpace = Literal["normalized", "pixel"]
JACOBIAN_SPACES: tuple[str, ...] = ("normalized", "pixel")

_PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _affine_batchnorm_forward(bn: nn.modules.batchnorm._BatchNorm):  # type: ignore[no-untyped-def]
    """``bn``'s forward, computing ``x·α + β`` whenever ``bn`` would use its running statistics.

    The mode and the statistics are read at every call, so a wrapper that switches the layer to
    batch statistics inside the block (``BatchStatsView``) still gets ``batch_norm``.
    """
    original = type(bn).forward

    def forward(x: Tensor) -> Tensor:
        if bn.training or not bn.track_running_stats or bn.running_var is None:
            return original(bn, x)
        assert bn.running_mean is not None
        alpha = torch.rsqrt(bn.running_var.detach() + bn.eps)
        if bn.weight is not None:
            alpha = alpha * bn.weight.detach()
        beta = -bn.running_mean.detach() * alpha
        if bn.bias is not None:
            beta = beta + bn.bias.detach()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(beta.to(x.dtype).view(shape), x, alpha.to(x.dtype).view(shape))

    return forward


@contextmanager
def eval_batchnorm_as_affine(model: nn.Module) -> Iterator[int]:
    """Within the block, eval-mode BatchNorm layers of ``model`` run as ``x·α + β``.

    Only plain ``nn.BatchNorm1d/2d/3d`` in eval mode with running statistics are swapped
    (subclasses with their own ``forward``, training-mode and batch-statistics layers keep
    theirs). Mode and statistics are read at each call: a swapped layer that is switched to
    training mode or batch statistics inside the block (e.g. by the adversarial trainer's
    ``BatchStatsView``) calls ``batch_norm`` again. Forward hooks still run. Yields the number
    of layers swapped.
    """
    swapped: list[nn.Module] = []
    try:
        for m in model.modules():
            if (
                type(m) in _PLAIN_BATCHNORMS
                and isinstance(m, nn.modules.batchnorm._BatchNorm)  # narrows; always true here
                and not m.training
                and m.track_running_stats
                and m.running_mean is not None
                and m.running_var is not None
                and "forward" not in m.__dict__
            ):
                m.forward = _affine_batchnorm_forward(m)  # type: ignore[method-assign]
                swapped.append(m)
        yield len(swapped)
    finally:
        for m in swapped:
            del m.forward


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        out = model(x[:1])
    if out.dim() != 2:
        raise ValueError(f"The model must return logits of shape (B, d), got {tuple(out.shape)}.")
    return int(out.shape[1])


JACOBIAN_METHODS: tuple[str, ...] = ("auto", "repeat", "loop")


def input_jacobian_and_logits(
    model: nn.Module,
    x: Tensor,
    *,
    num_classes: int | None = None,
    chunk_size: int = 32,
    method: str = "auto",
    affine_batchnorm: bool = True,
) -> tuple[Tensor, Tensor]:
    """Like :func:`input_jacobian`, also returning the (B, d) logits (detached) for free."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}.")
    if method not in JACOBIAN_METHODS:
        raise ValueError(
            f"Unknown Jacobian method {method!r}; accepted: {', '.join(JACOBIAN_METHODS)}."
        )
    if method == "auto":
        method = "loop" if x.device.type == "cpu" else "repeat"
    x = x.detach()
    b = x.shape[0]
    n = x[0].numel() if b else 0
    if b == 0:
        d = num_classes or 0
        return x.new_zeros((0, d, n)), x.new_zeros((0, d))
    jac: Tensor | None = None
    logits_out: Tensor | None = None
    d_rep = 0
    if method == "repeat":
        d_rep = num_classes if num_classes is not None else _num_classes(model, x)
    bn_context: AbstractContextManager[object] = (
        eval_batchnorm_as_affine(model) if affine_batchnorm else nullcontext()
    )
    with torch.enable_grad(), bn_context:
        for start in range(0, b, chunk_size):
            xc = x[start : start + chunk_size]
            bc = xc.shape[0]
            if method == "repeat":
                d = d_rep
                x_in = xc.repeat_interleave(d, dim=0).requires_grad_(True)  # (bc*d, ...)
                logits = model(x_in)
                _check_logits(logits, bc * d, d)
                blocks = logits.view(bc, d, d)
                eye = torch.eye(d, dtype=blocks.dtype, device=blocks.device)
                # copy k of each sample back-propagates logit k only: one backward
                (grad,) = torch.autograd.grad((blocks * eye).sum(), x_in, allow_unused=True)
                rows = _or_zeros(grad, x_in).reshape(bc, d, n)
                logits_c = blocks[:, 0]
            else:
                x_in = xc.clone().requires_grad_(True)
                logits_c = model(x_in)
                d = logits_c.shape[-1] if logits_c.dim() == 2 else -1
                _check_logits(logits_c, bc, d if num_classes is None else num_classes)
                # one forward, d backward passes through the retained graph
                rows = torch.stack(
                    [
                        _or_zeros(
                            torch.autograd.grad(
                                logits_c[:, k].sum(),
                                x_in,
                                retain_graph=k < d - 1,
                                allow_unused=True,
                            )[0],
                            x_in,
                        ).reshape(bc, n)
                        for k in range(d)
                    ],
                    dim=1,
                )
            if jac is None or logits_out is None:
                jac = x.new_zeros((b, d, n))
                logits_out = x.new_zeros((b, d))
            jac[start : start + bc] = rows
            logits_out[start : start + bc] = logits_c.detach()
    assert jac is not None and logits_out is not None
    return jac, logits_out


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    """A logit that does not depend on the input has a zero Jacobian row."""
    return torch.zeros_like(like) if grad is None else grad


def _check_logits(logits: Tensor, rows: int, d: int) -> None:
    if logits.dim() != 2 or logits.shape != (rows, d):
        raise ValueError(
            f"The model must return (B, d) logits (B={rows}, d={d}), got {tuple(logits.shape)}."
        )


def input_jacobian(
    model: nn.Module,
    x: Tensor,
    *,
    num_classes: int | None = None,
    chunk_size: int = 32,
    method: str = "auto",
    affine_batchnorm: bool = True,
) -> Tensor:
    """Jacobian of the logits with respect to the input, per sample.

    Args:
        model: maps (B, ...) inputs to (B, d) logits.
        x: (B, ...) inputs (any float tensor; attacks pass images in [0, 1]).
        num_classes: d, if known (saves the extra one-sample forward of ``"repeat"``).
        chunk_size: samples per chunk; memory grows with ``chunk_size * d``.
        method: ``"repeat"`` — one forward of each chunk repeated d times and one backward
            (best on GPUs); ``"loop"`` — one forward of the chunk and d backward passes
            through the retained graph (best on CPUs: no repeated forward); ``"auto"`` picks
            ``"loop"`` on CPU and ``"repeat"`` elsewhere. Both use plain autograd only (no
            ``vmap``), so custom autograd Functions work, and both give the same result.
            Repeating every sample d times leaves BatchNorm batch statistics unchanged.
        affine_batchnorm: run eval-mode BatchNorm as ``x·α + β`` meanwhile (see the module
            docstring: same map up to float rounding, faster backward); ``False`` calls the
            layers as they are.

    Returns:
        (B, d, N) detached tensor in ``x``'s dtype, N = ``x[0].numel()``.
    """
    return input_jacobian_and_logits(
        model, x, num_classes=num_classes, chunk_size=chunk_size, method=method,
        affine_batchnorm=affine_batchnorm,
    )[0]


def gram_from_jacobian(jac: Tensor) -> Tensor:
    """``G = J Jᵀ`` (B, d, d) in float64 (the d×d Gram matrix; never N×N)."""
    j = jac.double()
    return j @ j.transpose(1, 2)


def singular_values_from_gram(gram: Tensor, n_inputs: int | None = None) -> Tensor:
    """Singular values of J from its Gram matrix ``J Jᵀ``: (B, min(d, N)), descending."""
    eig = torch.linalg.eigvalsh(gram)  # ascending
    sv = eig.clamp_min(0).sqrt().flip(-1)
    k = gram.shape[-1] if n_inputs is None else min(gram.shape[-1], n_inputs)
    return sv[..., :k]


def jacobian_singular_values(
    model: nn.Module,
    x: Tensor,
    *,
    num_classes: int | None = None,
    chunk_size: int = 32,
    method: str = "auto",
) -> Tensor:
    """Singular values of ``J(x_i)`` for each sample: (B, min(d, N)), descending, float64 → x's dtype.

    Computed as the square roots of the eigenvalues of the d×d Gram matrix ``J Jᵀ``
    (clamped at 0), which is exact and far cheaper than an SVD of the d×N Jacobian.
    """
    jac = input_jacobian(model, x, num_classes=num_classes, chunk_size=chunk_size, method=method)
    sv = singular_values_from_gram(gram_from_jacobian(jac), jac.shape[-1])
    return sv.to(x.dtype)


def check_jacobian_space(space: str) -> str:
    """Return ``space`` if it is one of :data:`JACOBIAN_SPACES`, else raise naming it."""
    if space not in JACOBIAN_SPACES:
        raise ValueError(
            f"Unknown Jacobian space {space!r}; accepted: 'normalized' (with respect to the "
            "tensor after the model's Normalize, the authors' convention) or 'pixel' (with "
            "respect to the [0, 1] image)."
        )
    return space


def input_normalize(model: nn.Module) -> Normalize | None:
    """The model's first :class:`~bnnrobust.models.Normalize` module, or None."""
    return next((m for m in model.modules() if isinstance(m, Normalize)), None)


def to_jacobian_space(jac: Tensor, model: nn.Module, space: str) -> Tensor:
    """Pixel-space Jacobians (B, d, N) of ``model`` → Jacobians in ``space``.

    ``"pixel"`` returns ``jac``; ``"normalized"`` multiplies each input column by the std of
    its channel (``∂f/∂x̂ = ∂f/∂x · std`` for ``x̂ = (x − mean)/std``), inputs laid out
    (C, H, W) as the images are. A model without ``Normalize`` is returned unchanged.
    """
    check_jacobian_space(space)
    norm = input_normalize(model) if space == "normalized" else None
    if norm is None:
        return jac
    std = norm.std.flatten().to(device=jac.device, dtype=jac.dtype)
    c, n = std.numel(), jac.shape[-1]
    if n % c:
        raise ValueError(
            f"The model's Normalize has {c} channels but the input has N={n} values per sample, "
            "not a multiple of it."
        )
    return jac * std.repeat_interleave(n // c)
