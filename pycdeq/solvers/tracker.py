"""The per-sample tracker every solver loop uses: termination, status, iterations, best iterate.

:class:`SampleTracker` applies the termination rule per sample, records why and when each
sample stopped and remembers each sample's best iterate. The loops freeze stopped samples
themselves (``torch.where(tracker.active[:, None], new, old)``).
"""

from __future__ import annotations

from typing import Tuple

import torch

from .solution import Status
from .termination import Termination

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
        elif z.device.type == "cpu" and not torch.compiler.is_compiling() and bool(better.all()):
            # The common case, read on the host where that is free: a plain copy, several
            # times cheaper than a masked select over the whole state.
            self.best_z.copy_(z)
        else:  # in place: best_z is the tracker's own copy
            torch.where(better[:, None], z, self.best_z, out=self.best_z)

    _PER_SAMPLE = ("status", "iterations", "residual", "best_residual", "best_z", "initial_residual",
                   "_difference")

    @classmethod
    def per_sample_books(cls) -> Tuple[str, ...]:
        """The names of the per-sample tensors the tracker updates (the CUDA-graph loop
        keeps them in static buffers)."""
        return cls._PER_SAMPLE

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
        # Plain ints, not Status members: torch.compile (2.13) turns ``tensor == IntEnum``
        # into a Python bool.
        self.status = torch.where(running, torch.full_like(self.status, int(Status.MAX_ITERS)), self.status)
        self.iterations = torch.where(running, torch.full_like(self.iterations, budget), self.iterations)
        use_best = self.status == int(Status.NON_FINITE)
        if self.termination.best:
            use_best = use_best | (self.best_residual < self.residual)
        z = torch.where(use_best[:, None], self.best_z, z)
        residual = torch.where(use_best, self.best_residual, self.residual)
        return z, residual, self.status
