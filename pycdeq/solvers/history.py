"""Solver histories: ring-buffer slots and products of one vector per sample with a history.

Anderson, Broyden and GMRES keep their past vectors in preallocated ``(batch, slots, dim)``
buffers; these helpers write and read one slot and form the two products every such method
needs.

Fixed shapes. Anderson and Broyden keep their ring position as a device tensor
(:func:`ring_slot`), and their buffers hold zeros in the slots not yet written. Where the
position can be read for free (a CPU tensor in eager mode) they work on the written slots
only, as a host int (:func:`filled`); elsewhere (CUDA, where a read is a sync; under
``torch.compile``, where it is a graph break and a changing int a recompilation; in a CUDA
graph, which replays fixed shapes) they work on every slot, masking the unwritten ones where
a zero would not do (Anderson's bordered system). There one iteration is the same
computation with the same shapes from the first to the last: ``torch.compile`` compiles it
once and a CUDA graph can replay it (:mod:`.cuda_graph`). :func:`fixed_shapes` forces the
second form on any device (the CUDA-graph loop's body, run eagerly in tests on CPU).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

_FIXED_SHAPES = contextvars.ContextVar("pycdeq_fixed_shapes", default=False)


@contextlib.contextmanager
def fixed_shapes():
    """Within this context the solvers never read their ring position on the host."""
    token = _FIXED_SHAPES.set(True)
    try:
        yield
    finally:
        _FIXED_SHAPES.reset(token)


def ring_slot(count: torch.Tensor, slots: int) -> torch.Tensor:
    """The slot the ``count``-th entry of a ring of ``slots`` goes to (``count``: ``(1,)`` long)."""
    return torch.remainder(count, slots)


def host_index(index: torch.Tensor) -> int | None:
    """``index`` as a Python int where reading it is free (a CPU tensor, eager mode, not
    :func:`fixed_shapes`), else None.

    On CPU a strided copy into ``buffer[:, k]`` is about 3x faster than ``index_copy_`` for
    large states, and products over the written slots only are cheaper than over all; on
    CUDA reading the slot would be a device-to-host sync, and under ``torch.compile`` a graph
    break, so the slot stays a tensor there."""
    if index.device.type == "cpu" and not torch.compiler.is_compiling() and not _FIXED_SHAPES.get():
        return int(index)
    return None


def history_buffer(like: torch.Tensor, count: torch.Tensor, *shape: int,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """A ring buffer of ``shape`` for a solve whose entry count is ``count``: zeros where the
    products run over every slot (unwritten slots must add exact zeros), uninitialised where
    the count is read on the host (:func:`host_index`) and only written slots are ever read,
    which saves filling a buffer of ``slots`` states (measured: about 1 ms of a 10 ms
    MNIST-dense Broyden solve)."""
    if host_index(count) is None:
        return like.new_zeros(shape, dtype=dtype)
    return like.new_empty(shape, dtype=dtype)


def filled(count: torch.Tensor, slots: int) -> int | None:
    """How many slots of a ring of ``slots`` that received ``count`` entries are written, as
    a host int where that read is free; ``None`` elsewhere: work on every slot."""
    index = host_index(count)
    return None if index is None else min(index, slots)


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
        index = host_index(slot)
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


def read_slot(buffer: torch.Tensor, slot: int | torch.Tensor) -> torch.Tensor:
    """``buffer[:, slot]`` for an int or a ``(1,)`` long tensor ``slot``: a view where the slot
    can be read for free (an int, or CPU in eager mode), else a gathered copy."""
    index = slot if isinstance(slot, int) else host_index(slot)
    if index is None:
        assert isinstance(slot, torch.Tensor)  # an int slot is its own index
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
