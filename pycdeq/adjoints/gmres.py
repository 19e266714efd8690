"""Matrix-free GMRES, batched with one independent Krylov space per sample.

Solves ``A g = v`` per sample, where ``A`` is only available as a batched product
``A(u): (B, d) -> (B, d)``. For the DEQ adjoint ``A u = u - J^T u`` is block diagonal (one
block per sample) as long as ``f`` does not couple samples, so each sample runs its own
Arnoldi process: inner products, Givens rotations, residual estimates and stopping are all
per sample. Arnoldi uses classical Gram-Schmidt with one re-orthogonalisation pass (batched
matrix products against the whole basis, kept in a preallocated buffer). The least-squares
problem is updated with Givens rotations, which give the residual norm ``|gamma_{j+1}|``
without extra products; the small triangular systems are solved once per restart cycle,
each sample on the leading block of the step where it stopped.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch

from ..solvers._state import history_combine, history_dot, write_slot


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
        basis = write_slot(rhs.new_empty(batch, size + 1, dim), 0, _safe_divide(residual, beta))
        hessenberg = rhs.new_zeros(batch, size + 1, size)
        cosines, sines = [], []
        gamma = rhs.new_zeros(batch, size + 1)
        gamma[:, 0] = beta
        # Per sample, the Arnoldi step whose solution it keeps: the step where it stopped, or
        # the cycle's last one; -1 for samples that sat the whole cycle out.
        last_step = torch.full((batch,), -1, dtype=torch.long, device=rhs.device)
        steps = 0
        for j in range(size):
            w = operator(basis[:, j])
            products += 1
            known = basis[:, : j + 1]  # (B, j+1, d)
            h = history_dot(known, w)
            w = w - history_combine(h, known)
            correction = history_dot(known, w)  # re-orthogonalise once
            w = w - history_combine(correction, known)
            h = h + correction
            h_next = torch.linalg.vector_norm(w, dim=1)
            basis = write_slot(basis, j + 1, _safe_divide(w, h_next))
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
            gamma_j = gamma[:, j]
            if torch.is_grad_enabled():
                # Recorded for a second derivative (backward with create_graph): earlier
                # values of these buffers are saved for backward, so write into copies.
                hessenberg, gamma = hessenberg.clone(), gamma.clone()
            hessenberg[:, : j + 2, j] = torch.stack(column, dim=1)
            gamma[:, j + 1] = -s * gamma_j
            gamma[:, j] = c * gamma_j
            estimate = gamma[:, j + 1].abs()
            residual_norm = torch.where(active, estimate, residual_norm)
            iterations = torch.where(active, iterations + 1, iterations)
            last_step = torch.where(active, j, last_step)
            active = active & ~(estimate <= threshold)
            steps = j + 1
            if products >= max_iter:
                break
            if (j + 1) % check_every == 0 and not bool(active.any()):
                break
        # Each sample's update from its own leading (k+1) x (k+1) block, k = last_step: rows
        # and columns past k become the identity and their right-hand side 0, so one batched
        # triangular solve gives y_{<=k} of the leading block and y_{>k} = 0.
        index = torch.arange(steps, device=rhs.device)
        keep = index[None, :] <= last_step[:, None]  # (B, steps)
        eye = torch.eye(steps, dtype=rhs.dtype, device=rhs.device)
        triangle = torch.where(keep[:, :, None] & keep[:, None, :], hessenberg[:, :steps, :steps], eye)
        diagonal = triangle.diagonal(dim1=1, dim2=2)
        triangle = triangle + torch.diag_embed((diagonal == 0).to(rhs.dtype))  # breakdown guard
        y = torch.linalg.solve_triangular(triangle, torch.where(keep, gamma[:, :steps], 0)[..., None],
                                          upper=True)[..., 0]
        candidate = x + history_combine(y, basis[:, :steps])
        x = torch.where((last_step >= 0)[:, None], candidate, x)
        if not bool(active.any()):
            break
    converged = residual_norm <= threshold
    return x, residual_norm, iterations, converged, products
