"""Solver histories: ring-buffer slots and products of one vector per sample with a history.

Anderson, Broyden and GMRES keep their past vectors in preallocated ``(batch, slots, dim)``
buffers; these helpers write one slot and form the two products every such method needs.
"""

from __future__ import annotations

import torch


def write_slot(buffer: torch.Tensor, slot: int, value: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """``buffer[:, slot, :columns] = value``, in place unless autograd needs the old buffer.

    Solvers keep histories in preallocated ring buffers and overwrite one slot per step. When
    they run under autograd (the ``Unrolled`` adjoint) an in-place write would corrupt values
    saved for backward, so the buffer is copied first; without autograd nothing is copied.
    """
    if torch.is_grad_enabled() and (buffer.requires_grad or value.requires_grad):
        buffer = buffer.clone()
    if columns is None:
        buffer[:, slot] = value
    else:
        buffer[:, slot, :columns] = value
    return buffer


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
