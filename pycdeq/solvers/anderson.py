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
from .discrete import DiscreteSolver
from .history import filled, history_buffer, history_combine, history_dot, host_index, ring_slot, write_slot


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
        # float32 under float16 / bfloat16 (module docstring); the proposals are cast back.
        work = torch.float32 if z0.dtype in (torch.float16, torch.bfloat16) else z0.dtype
        # The bordered matrix [[0, 1^T], [1, 0]] with a 1 only for slots already written
        # (update sets them), and the right-hand side e_0, built once; each step copies it
        # and adds the regularised Gram matrix.
        border = z0.new_zeros(m + 1, m + 1, dtype=work)
        e0 = z0.new_zeros(batch, m + 1, dtype=work)
        e0[:, 0] = 1
        count = torch.zeros(1, dtype=torch.long, device=z0.device)  # entries written so far
        state = {
            # Ring buffers of past values fn(x_i) and residuals r_i = fn(x_i) - x_i. Storing
            # fn(x_i) rather than x_i makes the beta = 1 step a single product, sum alpha_i fn(x_i);
            # x_i + beta r_i = fn(x_i) - (1 - beta) r_i. Slots not yet written hold zeros, so
            # they add nothing to products over every slot (history.py).
            "f": history_buffer(z0, count, batch, m, dim, dtype=work),
            "r": history_buffer(z0, count, batch, m, dim, dtype=work),
            "gram": z0.new_zeros(batch, m, m, dtype=work),  # r r^T, kept incrementally; zero outside written slots
            "border": border,
            "e0": e0,
            "count": count,
            "positions": torch.arange(m, device=z0.device),
            "written": torch.zeros(m, dtype=torch.bool, device=z0.device),
            "dtype": z0.dtype,  # of the proposals: fn's own
        }
        self.update(state, z0, fz0, None)
        return state

    #: State entries shared by the whole batch (the others are per sample, batch first).
    SHARED = ("border", "count", "positions", "written", "dtype")

    def select(self, state, rows, batch):
        # Explicit: a shared entry whose first size happens to equal the batch is not sliced.
        return {key: value if key in self.SHARED else value.index_select(0, rows) for key, value in state.items()}

    def update(self, state, z, fz, active) -> None:
        # Where the count can be read for free (CPU, eager): the slot as an int and the
        # products over the written slots only; else (CUDA, torch.compile) tensors, every slot.
        written = host_index(state["count"])
        slot = ring_slot(state["count"], self.m) if written is None else written % self.m
        work = state["r"].dtype  # float32 under half precision (init)
        residual = (fz - z).to(work)
        state["f"] = write_slot(state["f"], slot, fz.to(work))
        state["r"] = write_slot(state["r"], slot, residual)
        state["count"] = state["count"] + 1
        n = None if written is None else min(written + 1, self.m)  # written slots, or None: all
        # One pass over the history. (An einsum "bnd,bd->bn" lowers to a per-sample loop of
        # matrix-vector products on CPU, several times slower; see history_dot.) Unwritten
        # slots are zero rows: their entries are exactly 0.
        row = history_dot(state["r"] if n is None else state["r"][:, :n], residual)
        gram = write_slot(state["gram"], slot, row, columns=n)
        state["gram"] = write_slot(gram, slot, row, columns=n, dim=2)
        if written is None or written < self.m:  # the ring is still filling (or we cannot tell)
            mask = state["positions"] < state["count"]
            state["written"] = mask
            border = state["border"]  # never differentiated: updated in place
            border[0, 1:] = mask
            border[1:, 0] = mask

    def propose(self, state) -> torch.Tensor:
        n = filled(state["count"], self.m)
        width = self.m if n is None else n
        gram = state["gram"][:, :width, :width]
        diagonal = gram.diagonal(dim1=1, dim2=2)
        if n is None:
            # Every slot: the mean of the Gram diagonal over the written ones (the others are
            # 0), and an unwritten slot gets a 1 on the diagonal and no border entry, so its
            # equation is alpha_i = 0, decoupled from the system of the written slots.
            scale = diagonal.sum(dim=1) / state["count"].clamp(max=self.m) + torch.finfo(gram.dtype).tiny
            shift = torch.where(state["written"], self.lam * scale[:, None], 1.0)
        else:
            scale = diagonal.mean(dim=1) + torch.finfo(gram.dtype).tiny
            shift = (self.lam * scale)[:, None]
        bordered = state["border"][: width + 1, : width + 1].expand(gram.shape[0], -1, -1).clone()
        bordered[:, 1:, 1:] += gram
        bordered.diagonal(dim1=1, dim2=2)[:, 1:] += shift
        alpha = torch.linalg.solve_ex(bordered, state["e0"][:, : width + 1])[0][:, 1:]
        mixed = history_combine(alpha, state["f"][:, :width])
        if self.beta != 1.0:
            mixed = mixed - (1.0 - self.beta) * history_combine(alpha, state["r"][:, :width])
        return mixed.to(state["dtype"])  # a no-op unless the history is float32 under half precision
