"""Anderson acceleration (type II) for ``z = fn(z)``, batched per sample.

With the last ``n <= m`` iterates ``x_i`` and residuals ``r_i = fn(x_i) - x_i``, each step
solves, per sample, the regularised constrained least-squares problem

    min_alpha ||sum_i alpha_i r_i||^2 + lam * s * ||alpha||^2   s.t.  sum_i alpha_i = 1

through its bordered normal equations ``[[0, 1^T], [1, R R^T + lam s I]] [mu; alpha] = [1; 0]``
and moves to ``z = sum_i alpha_i (x_i + beta r_i)``. ``s`` is the mean of the Gram diagonal:
the regularisation is relative, so it means the same for residuals of size 1 and 1e-6 (an
absolute ``lam`` swamps the Gram matrix as a solve converges and stalls it in float32).

Cost per step beyond the ``fn`` call: two passes over the history, ``O(m d)`` each (the new
Gram row ``R r_new``, which keeps ``R R^T`` up to date incrementally, and the mixing product),
and the small systems, solved together on the device with ``torch.linalg.solve_ex``, which
neither raises nor syncs on a singular matrix, so a sample that went NaN cannot stop the
others. For large states the two passes are memory-bound: about ``2 m`` state-sized reads.

Under float16/bfloat16 the solver's own arithmetic (history, Gram matrix, small systems)
runs in float32, as GMRES does under mixed precision: the LU solve has no half kernels on
CPU, and a Gram entry ``||r||^2`` overflows float16 (max 65504) for a residual of 0.1 per
element over 6.6e6 elements, or of 1 over 65536. ``fn`` still sees its own dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks
from .history import history_combine, history_dot, write_slot
from .discrete import DiscreteSolver


@dataclass(frozen=True)
class Anderson(DiscreteSolver):
    """Anderson acceleration with memory ``m``, mixing ``beta`` and regularisation ``lam``."""

    m: int = 5
    beta: float = 1.0
    lam: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        _checks.positive_int("m", self.m)
        _checks.in_range("beta", self.beta, 0.0, 1.0, low_open=True)
        _checks.positive("lam", self.lam)

    def init(self, z0, fz0):
        batch, dim = z0.shape
        m = self.m
        work = torch.float32 if z0.dtype in (torch.float16, torch.bfloat16) else z0.dtype
        # The bordered matrix [[0, 1^T], [1, 0]] and the right-hand side e_0, built once;
        # each step copies the leading (n+1) block and adds the regularised Gram matrix.
        border = z0.new_zeros(batch, m + 1, m + 1, dtype=work)
        border[:, 0, 1:] = 1
        border[:, 1:, 0] = 1
        e0 = z0.new_zeros(batch, m + 1, dtype=work)
        e0[:, 0] = 1
        state = {
            # Ring buffers of past values fn(x_i) and residuals r_i = fn(x_i) - x_i. Storing
            # fn(x_i) rather than x_i makes the beta = 1 step a single product, sum alpha_i fn(x_i);
            # x_i + beta r_i = fn(x_i) - (1 - beta) r_i. Only slots already written are read.
            "f": z0.new_empty(batch, m, dim, dtype=work),
            "r": z0.new_empty(batch, m, dim, dtype=work),
            "gram": z0.new_zeros(batch, m, m, dtype=work),  # r r^T, kept incrementally
            "border": border,
            "e0": e0,
            "count": 0,
            "dtype": z0.dtype,  # of the proposals: fn's own
        }
        self.update(state, z0, fz0, None)
        return state

    def update(self, state, z, fz, active) -> None:
        slot = state["count"] % self.m
        n = min(state["count"] + 1, self.m)
        state["f"] = write_slot(state["f"], slot, fz)
        if torch.is_grad_enabled() and (z.requires_grad or fz.requires_grad or state["r"].requires_grad):
            residual = (fz - z).to(state["r"].dtype)
            state["r"] = write_slot(state["r"], slot, residual)
        else:  # straight into the ring buffer: no temporary, no copy
            residual = torch.sub(fz, z, out=state["r"][:, slot])
        # One pass over the history. (An einsum "bnd,bd->bn" lowers to a per-sample loop of
        # matrix-vector products on CPU, several times slower; see history_dot.)
        row = history_dot(state["r"][:, :n], residual)
        gram = write_slot(state["gram"], slot, row, columns=n)
        gram[:, :n, slot] = row
        state["gram"] = gram
        state["count"] += 1

    def propose(self, state) -> torch.Tensor:
        n = min(state["count"], self.m)
        gram = state["gram"][:, :n, :n]
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1) + torch.finfo(gram.dtype).tiny
        bordered = state["border"][:, : n + 1, : n + 1].clone()
        bordered[:, 1:, 1:] += gram
        bordered.diagonal(dim1=1, dim2=2)[:, 1:] += (self.lam * scale)[:, None]
        alpha = torch.linalg.solve_ex(bordered, state["e0"][:, : n + 1])[0][:, 1:]
        mixed = history_combine(alpha, state["f"][:, :n])
        if self.beta != 1.0:
            mixed = mixed - (1.0 - self.beta) * history_combine(alpha, state["r"][:, :n])
        return mixed.to(state["dtype"])
