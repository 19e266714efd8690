"""Limited-memory ("good") Broyden for the root ``g(z) = fn(z) - z = 0``, batched per sample.

The inverse Jacobian of ``g`` is approximated, per sample, as ``H = -I + sum_i u_i v_i^T``
(``H_0 = -I`` assumes ``d fn / dz = 0``, so the first step is a plain Picard step), the form
used by MDEQ and DeepEquilibriumNetworks.jl's L-Broyden. With ``dz = z_k - z_{k-1}`` and
``dg = g_k - g_{k-1}`` the rank-one update is

    v = H^T dz,    u = (dz - H dg) / (v . dg),

and the next step is ``z_{k+1} = z_k - H g_k``. Only the last ``memory`` pairs are kept (a
ring buffer). A sample whose denominator ``v . dg`` is tiny (a stalled or frozen sample)
skips its update instead of dividing by ~0.

Cost per step beyond the ``fn`` call: four passes over the ``n <= memory`` stored pairs
(``U^T dz`` and ``V^T [dg, g]`` reduce, ``V (U^T dz)`` and ``U (V^T [dg, g])`` expand; ``H dg``
and ``H g`` share their passes), as batched matrix products over the filled slots only.
``H_new g`` then follows from ``H g`` by the rank-one change, without another pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks
from ._state import SMALL_PRODUCT, history_combine, history_dot, write_slot
from .discrete import DiscreteSolver

_INF = float("inf")


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
        # The buffers never hold more pairs than there are updates.
        slots = max(1, min(self.memory, self.max_iter))
        return {
            "u": z0.new_empty(batch, slots, dim),  # only slots already written are read
            "v": z0.new_empty(batch, slots, dim),
            "slots": slots,
            "z": z0,
            "g": g,
            "h_g": -g,  # H_0 g = -g: the first step is a Picard step
            "count": 0,
        }

    def propose(self, state) -> torch.Tensor:
        return state["z"] - state["h_g"]  # z - H g

    def update(self, state, z, fz, active) -> None:
        u, v, slots, count = state["u"], state["v"], state["slots"], state["count"]
        n = min(count, slots)  # pairs in H now
        g = fz - z
        dz = z - state["z"]
        dg = g - state["g"]
        if n:
            # H^T dz = -dz + V (U^T dz);  H [dg, g] = -[dg, g] + U (V^T [dg, g]).
            un, vn = u[:, :n], v[:, :n]
            v_new = history_combine(history_dot(un, dz), vn) - dz
            if z.device.type == "cpu" and n * z.shape[1] < SMALL_PRODUCT:  # see history_dot
                h_dg = history_combine(history_dot(vn, dg), un) - dg
                h_g = history_combine(history_dot(vn, g), un) - g
            else:
                pair = torch.stack([dg, g], dim=1)  # (B, 2, d): one pass over V and U for both
                h_pair = torch.bmm(torch.bmm(pair, vn.transpose(1, 2)), un) - pair
                h_dg, h_g = h_pair[:, 0], h_pair[:, 1]
        else:
            v_new, h_dg, h_g = -dz, -dg, -g
        denominator = torch.linalg.vecdot(v_new, dg)
        norms = torch.linalg.vector_norm(dz, dim=1) * torch.linalg.vector_norm(dg, dim=1)
        tiny = torch.finfo(z.dtype).eps * norms
        size = denominator.abs()
        usable = active & (size > tiny) & (size < _INF)  # NaN fails both comparisons
        safe_denominator = torch.where(usable, denominator, 1.0)
        u_new = (dz - h_dg) / safe_denominator[:, None]
        slot = count % slots
        # A skipped update keeps whatever pair the slot held: zeros (no pair) while the ring
        # fills, the oldest pair once it is full.
        if count < slots:
            u_keep = v_keep = None
        else:
            u_keep, v_keep = u[:, slot], v[:, slot]
        if z.device.type == "cpu" and bool(usable.all()):  # host read, free on CPU: no masked select
            u_slot, v_slot = u_new, v_new
        else:
            u_slot = torch.where(usable[:, None], u_new, 0.0 if u_keep is None else u_keep)
            v_slot = torch.where(usable[:, None], v_new, 0.0 if v_keep is None else v_keep)
        # H_new g = H g - u_old (v_old . g) + u_slot (v_slot . g), where (u_old, v_old) is the
        # pair the slot held before (none while the ring fills).
        h_g = torch.addcmul(h_g, u_slot, torch.linalg.vecdot(v_slot, g)[:, None])
        if u_keep is not None:
            h_g = torch.addcmul(h_g, u_keep, torch.linalg.vecdot(v_keep, g)[:, None], value=-1)
        state["u"] = write_slot(u, slot, u_slot)
        state["v"] = write_slot(v, slot, v_slot)
        state["count"] = count + 1
        state["h_g"] = h_g
        state["z"], state["g"] = z, g
