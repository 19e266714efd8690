"""Limited-memory ("good") Broyden for the root ``g(z) = fn(z) - z = 0``, batched per sample.

The inverse Jacobian of ``g`` is approximated, per sample, as ``H = -I + sum_i u_i v_i^T``
(``H_0 = -I`` assumes ``d fn / dz = 0``, so the first step is a plain Picard step), the form
used by MDEQ and DeepEquilibriumNetworks.jl's L-Broyden. With ``dz = z_k - z_{k-1}`` and
``dg = g_k - g_{k-1}`` the rank-one update is

    v = H^T dz,    u = (dz - H dg) / (v . dg),

and the next step is ``z_{k+1} = z_k - H g_k``. Only the last ``memory`` pairs are kept (a
ring buffer).

Two guards keep rounding from posing as convergence. A residual ``fn(z) - z`` can round to
0 far from any fixed point (for ``z -> z + 0.1`` in float32, once ``|z| > 2e6``); a
quasi-Newton step that is ``1 / eps`` times the residual gets there at once.

* A sample skips its update (keeps ``H``) when ``dg`` is within the rounding noise of ``g``,
  ``eps (||fn(z)|| + ||fn(z_old)||)`` (``fn``'s outputs are rounded to the dtype), while
  ``dz`` is not: such a pair says ``dg / dz ~ 0`` on no evidence (a map with no fixed point
  such as ``z + c``), and the secant condition ``H dg = dz`` would make ``H`` of size about
  ``1 / eps``. A pair wholly at the rounding scale is kept: ``H`` changes by ``O(1)``, and
  such pairs still lead to an exact floating-point fixed point when the tolerance asks for
  one. It also skips when the denominator ``v . dg`` is tiny against ``||dz|| ||dg||`` (a
  stalled or frozen sample): no division by ~0.
* The step ``-H g`` is capped at ``||g|| / sqrt(eps)`` (scaled down, not dropped). After
  ``k`` steps ``eps ||z_k - z_0|| <= k sqrt(eps) max ||g||``: the rounding scale of ``z``
  stays below the residual for ``k`` well under ``1 / sqrt(eps)`` (2896 in float32), so
  the residual cannot vanish by rounding; a legitimate step that long needs
  ``||(I - dfn/dz)^-1|| > 1 / sqrt(eps)``, a problem too ill-conditioned for the dtype, and
  is only slowed down (several capped steps in the same direction).

Cost per step beyond the ``fn`` call: four products with the ``n <= memory`` stored pairs,
each a pass over ``U`` or ``V`` with one vector per sample: ``V^T g`` and ``V (U^T dz)``, then
``U (V^T g)`` and ``U^T dz'``, where ``dz'`` is the step just proposed. Every running sample
takes exactly that step, so the next update finds its ``U^T dz`` computed; ``H dg = H g -
H g_old`` needs no product of its own (``H g_old`` is kept from the previous step), and
``H_new g`` follows from ``H g`` by the rank-one change. On CPU without autograd the update
runs over blocks of rows (:data:`ROW_BYTES` per state vector): the temporaries stay in cache
instead of being state-sized fresh allocations, and the two products with ``V`` (and the two
with ``U``) run on one block in turn, so the second can find the block still in cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _checks
from .discrete import DiscreteSolver
from .history import history_buffer, history_combine, history_dot, host_index, read_slot, ring_slot, write_slot

_INF = float("inf")

# Bytes of one state vector per block of rows (CPU, no autograd). A state-sized temporary is
# a fresh allocation (often page-faulted anew) that goes through memory rather than cache;
# blocks of about this size keep the update's dozen temporaries in cache and let the
# allocator recycle them. Much smaller blocks cost more in per-op overhead than they save.
ROW_BYTES = 512 << 10


@dataclass(frozen=True)
class Broyden(DiscreteSolver):
    """Limited-memory Broyden root finding with ``memory`` rank-one updates."""

    memory: int = 30

    def __post_init__(self):
        super().__post_init__()
        _checks.positive_int("memory", self.memory)

    def init(self, z0, fz0):
        batch, dim = z0.shape
        h_g = z0 - fz0  # H_0 g = -g: the first step is a Picard step
        # The buffers never hold more pairs than there are updates.
        slots = max(1, min(self.memory, self.max_iter))
        count = torch.zeros(1, dtype=torch.long, device=z0.device)  # pairs written so far
        return {
            # Fixed shapes (history.py): slots not yet written hold zeros, a pair (0, 0) that
            # changes nothing in the products below (unless only written slots are read).
            "u": history_buffer(z0, count, batch, slots, dim),
            "v": history_buffer(z0, count, batch, slots, dim),
            "slots": slots,
            "z": z0,
            "fz": fz0,  # g = fz - z is formed per block of rows, never stored
            "h_g": h_g,  # H g; the solver's own tensor, overwritten in place without autograd
            "proposal": z0 - h_g,
            "u_dz": z0.new_zeros(batch, slots),  # U^T (proposal - z)
            "fz_norm": torch.linalg.vector_norm(fz0, dim=1),  # per sample: g's rounding scale
            "count": count,
        }

    def propose(self, state) -> torch.Tensor:
        return state["proposal"]  # z - H g, formed by the update

    def update(self, state, z, fz, active) -> None:
        u, v, count, slots = state["u"], state["v"], state["count"], state["slots"]
        # Where the count can be read for free (CPU, eager): the slot as an int, the products
        # over the written pairs only, and no old pair to remove while the ring fills. Else
        # (CUDA, torch.compile) the slot stays a tensor and the products run over every slot
        # (unwritten slots hold the pair (0, 0)); see history.py.
        written = host_index(count)
        if written is None:
            slot, pairs, full = ring_slot(count, slots), None, True
        else:
            slot, pairs, full = written % slots, min(written, slots), written >= slots
        old = (state["z"], state["fz"], state["h_g"], state["u_dz"], state["fz_norm"])
        batch, dim = z.shape
        rows = batch
        # Blocks write in place (CPU, no autograd); under torch.compile the compiler fuses instead.
        if z.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            rows = max(1, ROW_BYTES // (dim * z.element_size()))
        if rows >= batch:
            u, v, h_g, proposal, u_dz, fz_norm = _update_rows(u, v, slot, pairs, full, z, fz, *old, active)
        else:
            h_g, proposal, parts = state["h_g"], torch.empty_like(z), []
            for start in range(0, batch, rows):
                r = slice(start, start + rows)
                z_old, fz_old, h_g_old, u_dz_old, fz_norm_old = (x[r] for x in old)
                parts.append(_update_rows(u[r], v[r], slot, pairs, full, z[r], fz[r], z_old, fz_old, h_g_old,
                                          u_dz_old, fz_norm_old, active[r], out=proposal[r])[-2:])
            u_dz, fz_norm = (torch.cat(p) for p in zip(*parts))
        state.update(u=u, v=v, h_g=h_g, proposal=proposal, u_dz=u_dz, count=count + 1, z=z, fz=fz,
                     fz_norm=fz_norm)


def _update_rows(u, v, slot, pairs, full, z, fz, z_old, fz_old, h_g_old, u_dz, fz_norm_old, active, out=None):
    """The update of a block of rows (or of all rows): the new pair goes to ``slot`` (over the
    oldest pair once the ring is ``full``); the products run over the first ``pairs`` slots
    (``None``: every slot; unwritten ones hold the pair (0, 0)); ``h_g_old = H g_old``,
    ``u_dz = U^T dz`` (over the same slots) and ``fz_norm_old = ||fz_old||`` per sample.
    Returns ``u``, ``v`` (see :func:`write_slot`), ``H_new g``, the next iterate
    ``z - H_new g`` (into ``out`` if given), ``U_new^T`` times its step and ``||fz||``.
    Without autograd ``H_new g`` overwrites ``h_g_old``."""
    # Without autograd, results overwrite temporaries that are no longer needed: fresh
    # memory for each would be slower than memory still in cache.
    reuse = (lambda t: None) if torch.is_grad_enabled() else (lambda t: t)
    g = fz - z
    dz = z - z_old
    dg = fz_old - z_old  # g_old, formed exactly as the previous update formed it
    dg = torch.sub(g, dg, out=reuse(dg))
    width = u.shape[1] if pairs is None else pairs
    un, vn = u[:, :width], v[:, :width]
    # The pass over V: V^T g, and H^T dz = -dz + V (U^T dz). (Unwritten pairs add exact zeros.)
    vt_g = history_dot(vn, g)
    v_new = history_combine(u_dz[:, :width], vn)
    v_new = torch.sub(v_new, dz, out=reuse(v_new))
    # The pass over U: H g = -g + U (V^T g); H dg = H g - H g_old.
    h_g = history_combine(vt_g, un)
    h_g = torch.sub(h_g, g, out=reuse(h_g))
    h_dg = h_g - h_g_old
    denominator = torch.linalg.vecdot(v_new, dg)
    eps = torch.finfo(z.dtype).eps
    dz_norm = torch.linalg.vector_norm(dz, dim=1)
    dg_norm = torch.linalg.vector_norm(dg, dim=1)
    fz_norm = torch.linalg.vector_norm(fz, dim=1)
    # An informative pair (see the module docstring), and no division by ~0.
    noise = eps * (fz_norm + fz_norm_old)
    informative = (dg_norm > noise) | (dz_norm <= noise)
    size = denominator.abs()
    usable = active & informative & (size > eps * dz_norm * dg_norm) & (size < _INF)  # NaN: False
    safe_denominator = torch.where(usable, denominator, 1.0)
    u_new = torch.sub(dz, h_dg, out=reuse(dz))
    u_new = torch.div(u_new, safe_denominator[:, None], out=reuse(u_new))
    # A skipped update keeps whatever pair the slot held: zeros (no pair) while the ring
    # fills, the oldest pair once it is full. (Copies where the slot is a device tensor:
    # taken before the slot is overwritten below.)
    u_keep, v_keep = (read_slot(u, slot), read_slot(v, slot)) if full else (None, None)
    # Host read, free on CPU (eager): no masked select.
    if z.device.type == "cpu" and not torch.compiler.is_compiling() and bool(usable.all()):
        u_slot, v_slot = u_new, v_new
    else:
        u_slot = torch.where(usable[:, None], u_new, 0.0 if u_keep is None else u_keep)
        v_slot = torch.where(usable[:, None], v_new, 0.0 if v_keep is None else v_keep)
    # H_new g = H g - u_old (v_old . g) + u_slot (v_slot . g), where (u_old, v_old) is the
    # pair the slot held before (none while the ring fills). Read before the slot is written.
    h_g = torch.addcmul(h_g, u_slot, torch.linalg.vecdot(v_slot, g)[:, None], out=reuse(h_g_old))
    if u_keep is not None and v_keep is not None:
        h_g = torch.addcmul(h_g, u_keep, torch.linalg.vecdot(v_keep, g)[:, None], value=-1, out=reuse(h_g))
    u = write_slot(u, slot, u_slot)
    v = write_slot(v, slot, v_slot)
    # The step -H g, capped at ||g|| / sqrt(eps) (see the module docstring). A capped step
    # is scaled, not dropped; scale 1 leaves the step bitwise as it was.
    g_norm = torch.linalg.vector_norm(g, dim=1)
    step_norm = torch.linalg.vector_norm(h_g, dim=1)
    limit = g_norm * (1 / eps) ** 0.5
    scale = torch.where(step_norm > limit, limit / step_norm, 1.0)  # NaN: scale 1, stays NaN
    proposal = torch.addcmul(z, h_g, scale[:, None], value=-1, out=out)
    # A running sample's next dz is exactly proposal - z (the loop evaluates the proposal):
    # its U^T dz is computed now, while this block of U is likely still in cache.
    step = torch.sub(proposal, z, out=reuse(g))
    # Over the pairs the next update's products run over: every slot, or the written ones,
    # now one more.
    u_dz = history_dot(u if pairs is None else u[:, :min(pairs + 1, u.shape[1])], step)
    return u, v, h_g, proposal, u_dz, fz_norm
