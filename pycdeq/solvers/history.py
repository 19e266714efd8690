"""Solver histories: ring-buffer slots and products of one vector per sample with a history.

Anderson, Broyden and GMRES keep their past vectors in preallocated ``(batch, slots, dim)``
buffers; these helpers write and read one slot and form the two products every such method
needs.

Fixed shapes. Anderson and Broyden keep their ring position as a device tensor
(:func:`ring_slot`) and always work on the whole buffer: slots not yet written hold zeros
and are masked where a zero would not do (Anderson's bordered system). So one iteration is
the same computation with the same shapes from the first to the last, which is what
``torch.compile`` needs to compile it once (a Python-int slot is a constant to dynamo: one
recompilation per slot) and what a CUDA graph needs to replay it (:mod:`.cuda_graph`).
"""

from __future__ import annotations

import torch


def ring_slot(count: torch.Tensor, slots: int) -> torch.Tensor:
    """The slot the ``count``-th entry of a ring of ``slots`` goes to (``count``: ``(1,)`` long)."""
    return torch.remainder(count, slots)


def _host_index(slot: torch.Tensor) -> int | None:
    """``slot`` as a Python int where reading it is free (a CPU tensor, eager mode), else None.

    On CPU a strided copy into ``buffer[:, k]`` is about 3x faster than ``index_copy_`` for
    large states; on CUDA reading the slot would be a device-to-host sync, and under
    ``torch.compile`` a graph break, so the slot stays a tensor there."""
    if slot.device.type == "cpu" and not torch.compiler.is_compiling():
        return int(slot)
    return None


def write_slot(buffer: torch.Tensor, slot: int | torch.Tensor, value: torch.Tensor, columns: int | None = None,
               *, dim: int = 1) -> torch.Tensor:
    """``buffer[:, slot, :columns] = value`` (``dim=2``: ``buffer[:, :, slot] = value``), in
    place unless autograd needs the old buffer. ``slot``: an int or a ``(1,)`` long tensor.

    Solvers keep histories in preallocated ring buffers and overwrite one slot per step. When
    they run under autograd (the ``Unrolled`` adjoint) an in-place write would corrupt values
    saved for backward, so the buffer is copied first; without autograd nothing is copied.
    """
    if torch.is_grad_enabled() and (buffer.requires_grad or value.requires_grad):
        buffer = buffer.clone()
    if torch.is_tensor(slot):
        index = _host_index(slot)
        if index is None:
            if columns is not None:
                raise ValueError("write_slot: columns needs an int slot")
            return buffer.index_copy_(dim, slot, value.unsqueeze(dim))
        slot = index
    target = buffer.select(dim, slot)
    if columns is not None:
        target = target[:, :columns]
    target.copy_(value)
    return buffer


def read_slot(buffer: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """``buffer[:, slot]`` for a ``(1,)`` long tensor ``slot``: a view where the slot can be
    read for free (CPU, eager), else a gathered copy."""
    index = _host_index(slot)
    if index is None:
        return buffer.index_select(1, slot)[:, 0]
    return buffer[:, index]


# Products of one vector per sample with a stored history (Anderson, Broyden, GMRES). On CPU,
# torch.bmm hands products with fewer than 400 multiply-adds per sample to a per-sample loop
# that is several times slower than the elementwise form; larger ones go to batched BLAS,
# which beats the elementwise form by far. (On CUDA bmm is always the fast choice.)
SMALL_PRODUCT = 400


def history_dot(history: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``(B, n, d) . (B, d) -> (B, n)``: the vector against every stored one."""
    if history.device.type == "cpu" and history.shape[1] * history.shape[2] < SMALL_PRODUCT:
        return (history * vector[:, None, :]).sum(dim=2)
    return torch.bmm(vector[:, None, :], history.transpose(1, 2))[:, 0]


def history_combine(weights: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """``(B, n) x (B, n, d) -> (B, d)``: ``sum_i weights_i history_i`` per sample."""
    if history.device.type == "cpu" and history.shape[1] * history.shape[2] < SMALL_PRODUCT:
        return (weights[:, :, None] * history).sum(dim=1)
    # Solver outputs (solve_ex, solve_triangular) come column-major, a layout that also
    # sends bmm to its per-sample loop: make the (B, n) weights row-major first (cheap).
    return torch.bmm(weights.contiguous()[:, None, :], history)[:, 0]
