"""Limited-memory ("good") Broyden for the root ``g(z) = fn(z) - z = 0``, batched per sample.

The inverse Jacobian of ``g`` is approximated, per sample, as ``H = -I + sum_i u_i v_i^T``
(``H_0 = -I`` assumes ``d fn / dz = 0``, so the first step is a plain Picard step), the form
used by MDEQ and DeepEquilibriumNetworks.jl's L-Broyden. With ``dz = z_k - z_{k-1}`` and
``dg = g_k - g_{k-1}`` the rank-one update is

    v = H^T dz,    u = (dz - H dg) / (v . dg),

and the next step is ``z_{k+1} = z_k - H g_k``. Only the last ``memory`` pairs are kept (a
ring buffer; unused slots are zero and so drop out of the sums). A sample whose denominator
``v . dg`` is tiny (a stalled or frozen sample) skips its update instead of dividing by ~0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks
from ._state import write_slot
from .discrete import DiscreteSolver


def _apply_inverse(u, v, x):
    """``H x`` with ``H = -I + sum_i u_i v_i^T``; ``u, v: (B, m, d)``, ``x: (B, d)``."""
    return -x + torch.einsum("bmd,bm->bd", u, torch.einsum("bmd,bd->bm", v, x))


def _apply_inverse_transposed(u, v, x):
    """``H^T x``."""
    return -x + torch.einsum("bmd,bm->bd", v, torch.einsum("bmd,bd->bm", u, x))


@dataclass(frozen=True)
class Broyden(DiscreteSolver):
    """Limited-memory Broyden root finding with ``memory`` rank-one updates."""

    memory: int = 30

    def __post_init__(self):
        super().__post_init__()
        _checks.positive_int("memory", self.memory)

    def init(self, z0, fz0):
        batch, dim = z0.shape
        g = fz0 - z0
        return {
            "u": z0.new_zeros(batch, self.memory, dim),
            "v": z0.new_zeros(batch, self.memory, dim),
            "z": z0,
            "g": g,
            "step": g,  # -H_0 g = g: the first step is a Picard step
            "count": 0,
        }

    def propose(self, state) -> torch.Tensor:
        return state["z"] + state["step"]

    def update(self, state, z, fz, active) -> None:
        u, v = state["u"], state["v"]
        g = fz - z
        dz = z - state["z"]
        dg = g - state["g"]
        v_new = _apply_inverse_transposed(u, v, dz)
        denominator = (v_new * dg).sum(dim=1)
        tiny = torch.finfo(z.dtype).eps * (dz.norm(dim=1) * dg.norm(dim=1))
        usable = active & (denominator.abs() > tiny) & torch.isfinite(denominator)
        safe_denominator = torch.where(usable, denominator, torch.ones_like(denominator))
        u_new = (dz - _apply_inverse(u, v, dg)) / safe_denominator[:, None]
        slot = state["count"] % self.memory
        # A skipped update keeps whatever pair the slot held (zeros while the buffer fills).
        u = write_slot(u, slot, torch.where(usable[:, None], u_new, u[:, slot]))
        v = write_slot(v, slot, torch.where(usable[:, None], v_new, v[:, slot]))
        state["u"], state["v"] = u, v
        state["count"] += 1
        state["step"] = -_apply_inverse(u, v, g)
        state["z"], state["g"] = z, g
