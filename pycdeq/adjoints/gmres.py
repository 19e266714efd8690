"""Matrix-free GMRES, batched with one independent Krylov space per sample.

Solves ``A g = v`` per sample, where ``A`` is only available as a batched product
``A(u): (B, d) -> (B, d)``. For the DEQ adjoint ``A u = u - J^T u`` is block diagonal (one
block per sample) as long as ``f`` does not couple samples, so each sample runs its own
Arnoldi process: inner products, Givens rotations, residual estimates and stopping are all
per sample. Arnoldi uses classical Gram-Schmidt with one re-orthogonalisation pass (two
batched matrix products instead of ``j`` small ones). The least-squares problem is updated
with Givens rotations, which give the residual norm ``|gamma_{j+1}|`` without extra products.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    ok = denominator > 0
    return torch.where(ok[:, None], numerator / torch.where(ok, denominator, 1)[:, None], 0)


def batched_gmres(
    operator: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor,
    *,
    rtol: float,
    atol: float,
    max_iter: int,
    restart: int,
    check_every: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Returns ``(x, residual_norm, iterations, converged, products)``, per sample where shaped
    ``(batch,)``. A sample stops once ``||rhs - A x|| <= max(atol, rtol * ||rhs||)``; its ``x``
    is frozen from then on. ``max_iter`` counts operator products, restarts included."""
    batch, dim = rhs.shape
    threshold = torch.clamp(rtol * torch.linalg.vector_norm(rhs, dim=1), min=atol)
    x = x0
    iterations = torch.zeros(batch, dtype=torch.long, device=rhs.device)
    active = torch.ones(batch, dtype=torch.bool, device=rhs.device)
    products = 0
    residual_norm = torch.full((batch,), float("inf"), dtype=rhs.dtype, device=rhs.device)
    while products < max_iter:
        residual = rhs - operator(x)
        products += 1
        beta = torch.linalg.vector_norm(residual, dim=1)
        residual_norm = torch.where(active, beta, residual_norm)
        active = active & ~(beta <= threshold)
        if products >= max_iter or not bool(active.any()):
            break
        size = min(restart, max_iter - products)
        basis = [_safe_divide(residual, beta)]
        hessenberg = rhs.new_zeros(batch, size + 1, size)
        cosines, sines = [], []
        gamma = rhs.new_zeros(batch, size + 1)
        gamma[:, 0] = beta
        for j in range(size):
            w = operator(basis[j])
            products += 1
            stacked = torch.stack(basis, dim=1)  # (B, j+1, d)
            h = torch.einsum("bjd,bd->bj", stacked, w)
            w = w - torch.einsum("bj,bjd->bd", h, stacked)
            correction = torch.einsum("bjd,bd->bj", stacked, w)  # re-orthogonalise once
            w = w - torch.einsum("bj,bjd->bd", correction, stacked)
            h = h + correction
            h_next = torch.linalg.vector_norm(w, dim=1)
            basis.append(_safe_divide(w, h_next))
            # Apply the previous rotations to the new column, then one new rotation that
            # zeroes its subdiagonal entry.
            column = list(h.unbind(dim=1)) + [h_next]
            for i, (c, s) in enumerate(zip(cosines, sines)):
                column[i], column[i + 1] = c * column[i] + s * column[i + 1], -s * column[i] + c * column[i + 1]
            radius = torch.sqrt(column[j] ** 2 + column[j + 1] ** 2)
            nonzero = radius > 0
            c = torch.where(nonzero, column[j] / torch.where(nonzero, radius, 1), 1)
            s = torch.where(nonzero, column[j + 1] / torch.where(nonzero, radius, 1), 0)
            cosines.append(c)
            sines.append(s)
            column[j], column[j + 1] = radius, torch.zeros_like(radius)
            hessenberg[:, : j + 2, j] = torch.stack(column, dim=1)
            gamma[:, j + 1] = -s * gamma[:, j]
            gamma[:, j] = c * gamma[:, j]
            estimate = gamma[:, j + 1].abs()
            # Per-sample update of x from this cycle's first j+1 basis vectors.
            triangle = hessenberg[:, : j + 1, : j + 1]
            diagonal = triangle.diagonal(dim1=1, dim2=2)
            triangle = triangle + torch.diag_embed((diagonal == 0).to(rhs.dtype))  # breakdown guard
            y = torch.linalg.solve_triangular(triangle, gamma[:, : j + 1, None], upper=True)[..., 0]
            candidate = x + torch.einsum("bj,bjd->bd", y, torch.stack(basis[: j + 1], dim=1))
            x_new = torch.where(active[:, None], candidate, x)
            residual_norm = torch.where(active, estimate, residual_norm)
            iterations = torch.where(active, iterations + 1, iterations)
            newly_done = active & (estimate <= threshold)
            active = active & ~newly_done
            if j == size - 1 or products >= max_iter:
                x = x_new
                break
            if (j + 1) % check_every == 0 and not bool(active.any()):
                x = x_new
                break
            # Keep the cycle's start point for still-active samples (y is relative to it);
            # frozen samples keep the x they converged with.
            x = torch.where(active[:, None], x, x_new)
        if not bool(active.any()):
            break
    converged = residual_norm <= threshold
    return x, residual_norm, iterations, converged, products
