"""Anderson acceleration (type II) for ``z = fn(z)``, batched per sample.

With the last ``n <= m`` iterates ``x_i`` and residuals ``r_i = fn(x_i) - x_i``, each step
solves, per sample, the regularised constrained least-squares problem

    min_alpha ||sum_i alpha_i r_i||^2 + lam * s * ||alpha||^2   s.t.  sum_i alpha_i = 1

through its bordered normal equations ``[[0, 1^T], [1, R R^T + lam s I]] [mu; alpha] = [1; 0]``
and moves to ``z = sum_i alpha_i (x_i + beta r_i)``. ``s`` is the mean of the Gram diagonal:
the regularisation is relative, so it means the same for residuals of size 1 and 1e-6 (an
absolute ``lam`` swamps the Gram matrix as a solve converges and stalls it in float32).

Cost per step beyond the ``fn`` call: the Gram matrix ``R R^T`` is kept up to date
incrementally (one new row, ``O(m d)``), and the small systems are solved together on the
device with ``torch.linalg.solve_ex``, which neither raises nor syncs on a singular matrix,
so a sample that went NaN cannot stop the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks
from ._state import write_slot
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
        state = {
            "x": z0.new_zeros(batch, self.m, dim),  # past iterates, a ring buffer
            "r": z0.new_zeros(batch, self.m, dim),  # their residuals fn(x) - x
            "gram": z0.new_zeros(batch, self.m, self.m),  # r r^T, kept incrementally
            "count": 0,
        }
        self.update(state, z0, fz0, None)
        return state

    def update(self, state, z, fz, active) -> None:
        slot = state["count"] % self.m
        n = min(state["count"] + 1, self.m)
        residual = fz - z
        state["x"] = write_slot(state["x"], slot, z)
        state["r"] = write_slot(state["r"], slot, residual)
        row = torch.einsum("bnd,bd->bn", state["r"][:, :n], residual)
        gram = write_slot(state["gram"], slot, row, columns=n)
        gram[:, :n, slot] = row
        state["gram"] = gram
        state["count"] += 1

    def propose(self, state) -> torch.Tensor:
        n = min(state["count"], self.m)
        gram = state["gram"][:, :n, :n]
        batch = gram.shape[0]
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1) + torch.finfo(gram.dtype).tiny
        eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
        bordered = gram.new_zeros(batch, n + 1, n + 1)
        bordered[:, 0, 1:] = 1
        bordered[:, 1:, 0] = 1
        bordered[:, 1:, 1:] = gram + (self.lam * scale)[:, None, None] * eye
        rhs = gram.new_zeros(batch, n + 1)
        rhs[:, 0] = 1
        alpha = torch.linalg.solve_ex(bordered, rhs)[0][:, 1:]
        x, r = state["x"][:, :n], state["r"][:, :n]
        mixed = x + self.beta * r if self.beta != 1.0 else x + r
        return torch.einsum("bn,bnd->bd", alpha, mixed)
