"""Input-output Jacobians of a classifier, batched and without ``vmap``.

``J(x) = ∂f(x)/∂x`` has shape (d, N) per sample, N = C·H·W. We get every row in one
backward pass: each sample is repeated d times, row k of the repeated block back-propagates
the k-th logit only (``Σ_k f_k(x_k)`` where ``x_k`` is the k-th copy). This needs only the
ordinary autograd, so it works through custom ``torch.autograd.Function`` sign/STE layers
(``torch.func`` would need them to define ``vmap`` rules).

The model's own train/eval mode is left untouched (callers decide; attacks run in eval mode,
where BatchNorm does not mix the copies). Parameters' ``.grad`` are left untouched (gradients
are taken with respect to the input only). Results are detached.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _num_classes(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        out = model(x[:1])
    if out.dim() != 2:
        raise ValueError(f"The model must return logits of shape (B, d), got {tuple(out.shape)}.")
    return int(out.shape[1])


def input_jacobian_and_logits(
    model: nn.Module, x: Tensor, *, num_classes: int | None = None, chunk_size: int = 32
) -> tuple[Tensor, Tensor]:
    """Like :func:`input_jacobian`, also returning the (B, d) logits (detached) for free."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}.")
    x = x.detach()
    b = x.shape[0]
    n = x[0].numel() if b else 0
    d = num_classes if num_classes is not None else (_num_classes(model, x) if b else 0)
    jac = x.new_zeros((b, d, n))
    logits_out = x.new_zeros((b, d))
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    with torch.enable_grad():
        for start in range(0, b, chunk_size):
            xc = x[start : start + chunk_size]
            bc = xc.shape[0]
            x_rep = xc.repeat_interleave(d, dim=0).requires_grad_(True)  # (bc*d, ...)
            logits = model(x_rep)
            if logits.shape != (bc * d, d):
                raise ValueError(
                    f"The model must return (B, d) logits with d={d}, got {tuple(logits.shape)}."
                )
            blocks = logits.view(bc, d, d)
            # copy k of each sample back-propagates logit k only
            selected = (blocks * eye.to(blocks.dtype)).sum()
            (grad,) = torch.autograd.grad(selected, x_rep)
            jac[start : start + bc] = grad.reshape(bc, d, n)
            logits_out[start : start + bc] = blocks[:, 0].detach()
    return jac, logits_out


def input_jacobian(
    model: nn.Module, x: Tensor, *, num_classes: int | None = None, chunk_size: int = 32
) -> Tensor:
    """Jacobian of the logits with respect to the input, per sample.

    Args:
        model: maps (B, ...) inputs to (B, d) logits.
        x: (B, ...) inputs (any float tensor; attacks pass images in [0, 1]).
        num_classes: d, if known (otherwise read from one extra forward of ``x[:1]``).
        chunk_size: samples per forward; each forward sees ``chunk_size * d`` inputs, so
            memory grows with ``chunk_size * d``.

    Returns:
        (B, d, N) detached tensor in ``x``'s dtype, N = ``x[0].numel()``.
    """
    return input_jacobian_and_logits(model, x, num_classes=num_classes, chunk_size=chunk_size)[0]


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
    model: nn.Module, x: Tensor, *, num_classes: int | None = None, chunk_size: int = 32
) -> Tensor:
    """Singular values of ``J(x_i)`` for each sample: (B, min(d, N)), descending, float64 → x's dtype.

    Computed as the square roots of the eigenvalues of the d×d Gram matrix ``J Jᵀ``
    (clamped at 0), which is exact and far cheaper than an SVD of the d×N Jacobian.
    """
    jac = input_jacobian(model, x, num_classes=num_classes, chunk_size=chunk_size)
    sv = singular_values_from_gram(gram_from_jacobian(jac), jac.shape[-1])
    return sv.to(x.dtype)
