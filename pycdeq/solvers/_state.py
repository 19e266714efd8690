"""Per-sample bookkeeping shared by every solver: state packing and the sample tracker.

Solvers work on a flat ``(batch, dim)`` view of the state so that their linear algebra is
one batched op whatever the user's state looks like (an image ``(B, C, H, W)`` or a tuple
of per-scale tensors). :class:`StatePacker` converts between the two and checks what ``fn``
returns. :class:`SampleTracker` applies the termination rule per sample, records why and
when each sample stopped and remembers each sample's best iterate.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch

from .solution import State, Status
from .termination import Termination


def _describe(state) -> str:
    if isinstance(state, torch.Tensor):
        return f"tensor of shape {tuple(state.shape)} and dtype {state.dtype}"
    if isinstance(state, (tuple, list)):
        return "tuple of (" + ", ".join(_describe(s) for s in state) + ")"
    return type(state).__name__


class StatePacker:
    """Flattens a state (tensor or tuple of tensors, batch first) to ``(batch, dim)``."""

    def __init__(self, z0: State, name: str = "z0"):
        self.is_tuple = isinstance(z0, (tuple, list))
        parts = tuple(z0) if self.is_tuple else (z0,)
        if not parts or not all(isinstance(p, torch.Tensor) for p in parts):
            raise TypeError(f"{name} must be a tensor or a tuple of tensors, got {_describe(z0)}")
        first = parts[0]
        for i, p in enumerate(parts):
            label = f"{name}[{i}]" if self.is_tuple else name
            if not p.is_floating_point():
                raise TypeError(f"{label} must be a floating-point tensor, got {p.dtype}")
            if p.dim() < 1 or p.shape[0] < 1:
                raise ValueError(f"{label} must have a non-empty batch dimension first, got shape {tuple(p.shape)}")
            if p.shape[0] != first.shape[0] or p.dtype != first.dtype or p.device != first.device:
                raise ValueError(f"all parts of {name} must share batch size, dtype and device; got {_describe(z0)}")
        self.name = name
        self.batch = first.shape[0]
        self.dtype = first.dtype
        self.device = first.device
        self.shapes = tuple(tuple(p.shape[1:]) for p in parts)
        self.sizes = tuple(int(torch.Size(s).numel()) for s in self.shapes)
        self.dim = sum(self.sizes)

    # The batch size is read from the tensors, not fixed at construction: a compacting solver
    # (``compact=True``) evaluates ``fn`` on the rows still running only.
    def pack(self, z: State) -> torch.Tensor:
        if not self.is_tuple:
            return z.reshape(z.shape[0], self.dim)
        return torch.cat([p.reshape(p.shape[0], -1) for p in z], dim=1)

    def unpack(self, flat: torch.Tensor) -> State:
        batch = flat.shape[0]
        if not self.is_tuple:
            return flat.view(batch, *self.shapes[0])
        parts = torch.split(flat, self.sizes, dim=1)
        return tuple(p.reshape(batch, *s) for p, s in zip(parts, self.shapes))

    def check_output(self, out: State, fn_name: str = "fn", batch: int | None = None) -> None:
        """Raise naming both structures if ``out`` is not shaped like the state (of ``batch`` rows)."""
        batch = self.batch if batch is None else batch
        parts = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        ok = (isinstance(out, (tuple, list)) == self.is_tuple and len(parts) == len(self.shapes)
              and all(isinstance(p, torch.Tensor) for p in parts))
        if ok:
            ok = all(tuple(p.shape) == (batch, *s) and p.dtype == self.dtype
                     for p, s in zip(parts, self.shapes))
        if not ok:
            expected = [(batch, *s) for s in self.shapes]
            want = f"shape(s) {expected if self.is_tuple else expected[0]} and dtype {self.dtype}"
            raise ValueError(f"{fn_name} returned a {_describe(out)}, but the state {self.name} "
                             f"needs {want}")

    def flat_fn(self, fn: Callable[..., State], indexed: bool = False) -> Callable[..., torch.Tensor]:
        """``fn`` acting on flat states, checking every output's structure (cheap: no sync).

        With ``indexed=True``, ``fn`` is called as ``fn(z, index)``: ``index`` holds the batch
        rows that ``z`` stands for (``None``: all of them), for a compacting solver.
        """

        def flat(z: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
            out = fn(self.unpack(z), index) if indexed else fn(self.unpack(z))
            self.check_output(out, batch=z.shape[0])
            return self.pack(out)

        return flat


_RUNNING = int(Status.RUNNING)  # a plain int: comparing with an IntEnum is slower to dispatch
_INF = float("inf")


class SampleTracker:
    """Applies a :class:`Termination` per sample and records status, iterations, best iterate.

    Call :meth:`observe` once per iteration with the current iterate ``z`` and ``fz = fn(z)``;
    samples that stop are marked and must be frozen by the caller
    (``torch.where(tracker.active[:, None], new, old)``).
    """

    def __init__(self, termination: Termination, z0: torch.Tensor):
        batch = z0.shape[0]
        self.termination = termination
        self.status = torch.full((batch,), Status.RUNNING, dtype=torch.int8, device=z0.device)
        self.iterations = torch.zeros(batch, dtype=torch.long, device=z0.device)
        self.residual = torch.full((batch,), float("inf"), dtype=z0.dtype, device=z0.device)
        self.best_residual = self.residual.clone()
        self.best_z = z0.clone()
        self.initial_residual: torch.Tensor | None = None
        # fn(z) - z is written here each step: a fresh (batch, dim) tensor per step would be
        # allocated, page-faulted and freed again, which costs more than the subtraction.
        self._difference = torch.empty_like(z0)
        # 0-d status codes: torch.where with them is one op, no full_like per code and step.
        # (Filled on the device: no host-to-device copy.)
        self._codes = {s: torch.full((), int(s), dtype=torch.int8, device=z0.device) for s in Status}

    @property
    def active(self) -> torch.Tensor:
        return self.status == _RUNNING

    def observe(self, iteration: int, z: torch.Tensor, fz: torch.Tensor) -> None:
        term = self.termination
        codes = self._codes
        active = self.active
        recording = torch.is_grad_enabled() and (z.requires_grad or fz.requires_grad or self.best_z.requires_grad)
        difference = fz - z if recording else torch.sub(fz, z, out=self._difference)
        residual = term.sample_norm(difference)
        finite = residual < _INF  # a norm is >= 0: one op where isfinite takes three
        if self.initial_residual is None:
            self.initial_residual = residual
        # The absolute test does not read ||fn(z)||: skip that norm (a pass over the state).
        fz_norm = residual if term.mode == "abs" else term.sample_norm(fz)
        converged = term.converged(residual, fz_norm)
        # Status priority: a NaN is reported as such even if a test happened to pass.
        new_status = codes[Status.RUNNING]
        if term.safe:
            diverged = residual > term.divergence_factor * self.initial_residual
            new_status = torch.where(diverged, codes[Status.DIVERGED], new_status)
        new_status = torch.where(converged, codes[Status.CONVERGED], new_status)
        new_status = torch.where(finite, new_status, codes[Status.NON_FINITE])

        self.status = torch.where(active, new_status, self.status)
        self.iterations = torch.where(active, iteration, self.iterations)
        self.residual = torch.where(active, residual, self.residual)
        # Best iterate: only finite residuals count (NaN < x is False), only running samples move.
        better = active & (residual < self.best_residual)
        self.best_residual = torch.where(better, residual, self.best_residual)
        if recording:
            self.best_z = torch.where(better[:, None], z, self.best_z)
        elif z.device.type == "cpu" and bool(better.all()):
            # The common case, read on the host where that is free: a plain copy, several
            # times cheaper than a masked select over the whole state.
            self.best_z.copy_(z)
        else:  # in place: best_z is the tracker's own copy
            torch.where(better[:, None], z, self.best_z, out=self.best_z)

    _PER_SAMPLE = ("status", "iterations", "residual", "best_residual", "best_z", "initial_residual",
                   "_difference")

    def select(self, rows: torch.Tensor) -> "SampleTracker":
        """A tracker for the batch rows ``rows`` only (compaction), sharing the rule."""
        sub = SampleTracker.__new__(SampleTracker)
        sub.termination, sub._codes = self.termination, self._codes
        for name in self._PER_SAMPLE:
            value = getattr(self, name)
            setattr(sub, name, None if value is None else value.index_select(0, rows))
        return sub

    def merge(self, rows: torch.Tensor, sub: "SampleTracker") -> None:
        """Write the books of ``sub`` (a :meth:`select` of ``rows``) back into this tracker."""
        for name in self._PER_SAMPLE:
            value = getattr(self, name)
            if value is not None and name != "_difference":
                setattr(self, name, value.index_copy(0, rows, getattr(sub, name)))

    def finish(self, z: torch.Tensor, budget: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Close the books: returns ``(z, residual, status)``.

        Samples still running ran out of budget (``MAX_ITERS``, never silently converged).
        Samples that hit NaN/Inf return their best finite iterate; with ``best=True`` every
        sample returns its best iterate.
        """
        running = self.active
        self.status = torch.where(running, torch.full_like(self.status, Status.MAX_ITERS), self.status)
        self.iterations = torch.where(running, torch.full_like(self.iterations, budget), self.iterations)
        use_best = self.status == Status.NON_FINITE
        if self.termination.best:
            use_best = use_best | (self.best_residual < self.residual)
        z = torch.where(use_best[:, None], self.best_z, z)
        residual = torch.where(use_best, self.best_residual, self.residual)
        return z, residual, self.status


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
