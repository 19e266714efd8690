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

Cost: on a small dense operator an Arnoldi step is a few dozen tiny batched ops around one
product, and their number is what GMRES costs there. So a step does a fixed number of ops
(none loops over earlier steps), writes into the cycle's buffers in place unless autograd
records, and leaves whatever can wait (R, per-sample iterations and residuals) to one
batched computation at the end of the cycle.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from ..solvers.history import SMALL_PRODUCT

# Products of one vector per sample with the basis, in the layout of an Arnoldi step: vectors
# (B, 1, d), coefficients (B, 1, n), the basis ``known`` (B, n, d) and its transposed view
# ``known_t``. ``small``: the size rule of history_dot / history_combine, under which the
# elementwise form beats bmm (which hands tiny products to a slow per-sample loop on CPU).


def _dots(w: torch.Tensor, known: torch.Tensor, known_t: torch.Tensor, small: bool) -> torch.Tensor:
    """``known . w`` -> (B, 1, n)."""
    return (known * w).sum(dim=2)[:, None] if small else torch.bmm(w, known_t)


def _add_combination(w: torch.Tensor, h: torch.Tensor, known: torch.Tensor, small: bool,
                     subtract: bool = False) -> torch.Tensor:
    """``w + sum_i h_i known_i`` (or ``w - ...``), in one op: no separate pass over ``w``."""
    if small:
        combination = (h.transpose(1, 2) * known).sum(dim=1, keepdim=True)
        return w - combination if subtract else w + combination
    return torch.baddbmm(w, h, known, alpha=-1 if subtract else 1)


def _normalized_into(slot: torch.Tensor, w: torch.Tensor, norm: torch.Tensor, recording: bool) -> None:
    """``slot = w / norm``, and 0 where ``norm`` is 0 (``w = 0``) or NaN: nan_to_num clears 0 / 0
    and a NaN ``w``, so that a later NaN cannot reach the solution of a sample that stopped
    before. Under autograd the division is by inf there instead (a finite gradient), and out
    of place (autograd records no ``out=``)."""
    if recording:
        slot.copy_(torch.nan_to_num(w / torch.where(norm > 0, norm, float("inf")), nan=0.0))
    else:
        torch.div(w, norm, out=slot).nan_to_num_(nan=0.0)


def batched_gmres(
    operator: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: Optional[torch.Tensor],
    *,
    rtol: float,
    atol: float,
    max_iter: int,
    restart: int,
    check_every: int,
    tolerance: str = "max",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Returns ``(x, residual_norm, iterations, converged, products)``, per sample where shaped
    ``(batch,)``. A sample stops once ``||rhs - A x|| <= max(atol, rtol * ||rhs||)``
    (``tolerance="max"``) or ``<= atol + rtol * ||rhs||`` (``tolerance="sum"``, Krylov.jl's
    rule); its ``x`` is frozen from then on. ``max_iter`` counts operator products, restarts
    included. ``x0=None`` starts from zero, whose residual ``rhs`` costs no product: a
    sample whose ``||rhs||`` already passes takes no iteration and returns ``x = 0``."""
    batch, dim = rhs.shape
    dtype, device = rhs.dtype, rhs.device
    on_cpu = device.type == "cpu"
    rhs_norm = torch.linalg.vector_norm(rhs, dim=1)
    threshold = torch.clamp(rtol * rhs_norm, min=atol) if tolerance == "max" else atol + rtol * rhs_norm
    zero_start = x0 is None
    # 0-d constants: torch.where and comparisons with them are one op each (a Python number
    # is converted to a tensor on every call).
    one, zero, inf = rhs.new_ones(()), rhs.new_zeros(()), rhs.new_full((), float("inf"))
    # Maps a pair (a, b) to the entries (c, -s, s, c) of G^T, G = [[c, s], [-s, c]] the Givens
    # rotation that zeroes b, up to the factor 1 / hypot(a, b): one small product builds every
    # sample's rotation at once. (Filled in place: a host-to-device copy would sync on CUDA.)
    rotation_t_from_pair = rhs.new_zeros(2, 4)
    rotation_t_from_pair[0, 0] = rotation_t_from_pair[0, 3] = rotation_t_from_pair[1, 2] = 1
    rotation_t_from_pair[1, 1] = -1
    identity_rotation = torch.eye(2, dtype=dtype, device=device)
    x = torch.zeros_like(rhs) if x0 is None else x0
    iterations = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    products = 0
    residual_norm = torch.full((batch,), float("inf"), dtype=dtype, device=device)
    while products < max_iter:
        if zero_start:  # the first residual from x = 0 is rhs itself
            residual, zero_start = rhs, False
        else:
            residual = rhs - operator(x)
            products += 1
        beta = torch.linalg.vector_norm(residual, dim=1)
        residual_norm = torch.where(active, beta, residual_norm)
        active = active & ~(beta <= threshold)
        if products >= max_iter or not bool(active.any()):
            break
        size = min(restart, max_iter - products)
        basis = rhs.new_empty(batch, size + 1, dim)
        recording = torch.is_grad_enabled() and residual.requires_grad
        _normalized_into(basis[:, 0], residual, beta[:, None], recording)
        basis_t = basis.transpose(1, 2)
        # Row j: the Hessenberg column j as Arnoldi made it, [h, h_next, 0...] (that is H^T,
        # one contiguous row per step). It is rotated into R once, at the end of the cycle.
        hessenberg_t = rhs.new_zeros(batch, size, size + 1)
        # Q^T, Q the product of the Givens rotations so far, one orthogonal matrix per sample:
        # a new column's rotation comes from one small product with two columns of Q^T (no
        # loop over the earlier rotations, which made GMRES cost ~10x its products on a small
        # dense f). Row 0 of Q^T is the rotated right-hand side gamma / beta (gamma = Q beta
        # e_1): the residual estimate after step j, |gamma_{j+1}|, is beta |Q^T[0, j+1]|.
        rotations_t = torch.eye(size + 1, dtype=dtype, device=device).expand(batch, -1, -1).clone()
        # |gamma_{j+1}| <= threshold, tested as |gamma_{j+1}| / beta <= threshold / beta; inf for
        # the samples that sat the cycle out, so that "all passed" means "none still runs".
        bound = torch.where(active, threshold / beta, inf)
        steps = 0
        for j in range(size):
            w = operator(basis.select(1, j))[:, None]  # (B, 1, d)
            products += 1
            known, known_t = basis[:, : j + 1], basis_t[:, :, : j + 1]  # (B, j+1, d), (B, d, j+1)
            small = on_cpu and (j + 1) * dim < SMALL_PRODUCT
            h = _dots(w, known, known_t, small)  # (B, 1, j+1)
            w = _add_combination(w, h, known, small, subtract=True)
            correction = _dots(w, known, known_t, small)  # re-orthogonalise once
            w = _add_combination(w, correction, known, small, subtract=True)
            h_next = torch.linalg.vector_norm(w, dim=2, keepdim=True)  # (B, 1, 1)
            # Recorded for a second derivative (backward with create_graph)? Then earlier
            # values of the buffers are saved for backward: write into copies, with ops that
            # autograd records (no out=). Otherwise straight into the buffers.
            recording = torch.is_grad_enabled() and (w.requires_grad or basis.requires_grad)
            if recording:
                basis, hessenberg_t = basis.clone(), hessenberg_t.clone()
                basis_t = basis.transpose(1, 2)
            _normalized_into(basis[:, j + 1: j + 2], w, h_next, recording)
            column = hessenberg_t[:, j: j + 1, : j + 2]  # row j of H^T: [h, h_next]
            if recording:
                column.copy_(torch.cat([h + correction, h_next], dim=2))
            else:
                torch.cat([h + correction, h_next], dim=2, out=column)
            # Columns j, j+1 of Q^T down to row j+1 (below, both are 0): rows j and j+1 of Q,
            # of which row j+1 is still the identity's. The new rotation G acts on the pair
            # (a, b) = (Q_j . column, h_next) they make of the column: [[c, s], [-s, c]] with
            # (c, s) = (a, b) / hypot(a, b) zeroes b, or the identity where a = b = 0 (or NaN).
            block = rotations_t[:, : j + 2, j: j + 2]  # (B, j+2, 2)
            pair = torch.bmm(column, block)  # (B, 1, 2)
            radius = torch.linalg.vector_norm(pair, dim=2, keepdim=True)
            nonzero = radius > zero
            unscaled = (pair @ rotation_t_from_pair).view(batch, 2, 2)
            # (Where radius is 0 the where drops the division's NaN, but under autograd it would
            # still reach the gradient: divide by 1 there.)
            divisor = torch.where(nonzero, radius, one) if recording else radius
            rotation_t = torch.where(nonzero, unscaled / divisor, identity_rotation)
            rotated = torch.bmm(block, rotation_t)
            if recording:  # block is saved for backward
                rotations_t = rotations_t.clone()
                rotations_t[:, : j + 2, j: j + 2] = rotated
            else:
                block.copy_(rotated)
            steps = j + 1
            if products >= max_iter:
                break
            # The estimates of a cycle never grow (|gamma_{j+1}| = |s_j gamma_j|, |s_j| <= 1),
            # so a sample has stopped by now exactly where the current one has passed (the
            # test on the true residual; NaN keeps running). The current one, Q^T[0, j+1], is
            # read from the fresh small product, not from the large buffer.
            if (j + 1) % check_every == 0 and bool((rotated[:, 0, 1].abs() <= bound).all()):
                break
        # The books of the cycle, per sample. The sine s_k stays in Q^T[k+1, k] (later
        # rotations leave it alone), so the estimates of all steps are one cumulative product,
        # in the order the steps multiplied them into gamma. A sample took the steps up to its
        # first passing estimate, or all of them; none if it sat the cycle out.
        estimates = torch.cumprod(rotations_t.diagonal(-1, 1, 2)[:, :steps].abs(), dim=1)  # (B, steps)
        passed = (estimates <= bound[:, None]).cummax(dim=1).values  # at this step or before
        taken = active * (steps - passed[:, :-1].sum(dim=1))
        last_step = taken - 1
        ran = taken > 0
        estimate = beta * estimates.gather(1, last_step.clamp(min=0)[:, None])[:, 0]
        residual_norm = torch.where(ran, estimate, residual_norm)
        iterations = iterations + taken
        active = active & ~passed[:, -1]
        # R^T = H^T Q^T (its square part) in one product: a later rotation acts on rows below a
        # column's last nonzero, so the final Q rotates each column as the Q of its own step did.
        r_t = torch.bmm(hessenberg_t[:, :steps, : steps + 1], rotations_t[:, : steps + 1, :steps])
        # Each sample's update from its own leading (k+1) x (k+1) block, k = last_step, solved
        # as y^T R^T = gamma^T: rows of R^T (columns of R) past k become the identity's and
        # their right-hand side 0, so one batched triangular solve gives y_{<=k} of the
        # leading block and y_{>k} = 0. (Rotations of later steps touch rows of Q past k
        # only, so the final Q holds step k's gamma_{<=k}.)
        keep = torch.arange(steps, device=device) < taken[:, None]  # (B, steps)
        eye = torch.eye(steps, dtype=dtype, device=device)
        triangle = torch.where(keep[:, :, None], r_t, eye)
        diagonal = triangle.diagonal(dim1=1, dim2=2)
        diagonal.copy_(torch.where(diagonal == zero, one, diagonal))  # breakdown guard
        gamma = torch.where(keep, beta[:, None] * rotations_t[:, 0, :steps], zero)
        y = torch.linalg.solve_triangular(triangle, gamma[:, None], upper=False, left=False)  # (B, 1, steps)
        small = on_cpu and steps * dim < SMALL_PRODUCT
        candidate = _add_combination(x[:, None], y, basis[:, :steps], small)[:, 0]
        x = torch.where(ran[:, None], candidate, x)
        if not bool(active.any()):
            break
    converged = residual_norm <= threshold
    return x, residual_norm, iterations, converged, products


def whole_batch_gmres(
    operator: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    rtol: float,
    atol: float,
    max_iter: int,
    restart: int,
    check_every: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """GMRES on the whole batch as one vector, as DeepEquilibriumNetworks.jl v0.2.6 runs it.

    The system ``A g = rhs`` of ``(batch, dim)`` tensors is solved as one system of size
    ``batch * dim`` (one Krylov space for the whole batch), started from ``g = 0`` and stopped
    when ``||rhs - A g|| <= atol + rtol * ||rhs||`` in the 2-norm of the whole batch
    (Krylov.jl's rule). So when ``||rhs|| <= atol / (1 - rtol)`` it takes no iteration and
    no product, and returns ``g = 0``. Same returns as :func:`batched_gmres`, the per-sample
    fields repeating the batch's one value (iterations, residual norm, converged).
    """
    batch, dim = rhs.shape

    def flat_operator(u: torch.Tensor) -> torch.Tensor:
        return operator(u.view(batch, dim)).reshape(1, batch * dim)

    g, residual, iterations, converged, products = batched_gmres(
        flat_operator, rhs.reshape(1, batch * dim), None, rtol=rtol, atol=atol, max_iter=max_iter,
        restart=restart, check_every=check_every, tolerance="sum")
    return (g.view(batch, dim), residual.expand(batch), iterations.expand(batch), converged.expand(batch),
            products)
