"""The loop shared by all discrete fixed-point solvers (Anderson, Broyden, damped Picard).

A discrete solver is a frozen dataclass of options plus three methods:

* ``init(z0, fz0) -> state``: the solver's working memory, built from the first evaluation;
* ``propose(state) -> z_next``: the next iterate for every sample (pure maths, no ``fn``);
* ``update(state, z, fz, active)``: record the evaluated iterate in the working memory.

:func:`iterate` drives them, once for all solvers: it evaluates ``fn``, applies the
termination rule per sample (:class:`~pycdeq.solvers._state.SampleTracker`) and freezes
finished samples, so a converged sample's state is bitwise unchanged afterwards and its
iteration count is its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import _checks
from ._state import SampleTracker
from .solution import Solution
from .termination import Termination


@dataclass(frozen=True)
class DiscreteSolver:
    """Base of the root finders; subclasses add their own options."""

    max_iter: int = 50
    termination: Termination = field(default_factory=Termination)
    # Remove finished samples from the work: once at most half of the rows still run, the
    # loop continues on those rows only (fn, solver memory and bookkeeping sliced with
    # index_select). Only valid when fn treats samples independently (no BatchNorm in
    # training mode); fn is then called as fn(z, index) with the rows' batch indices.
    compact: bool = False

    kind = "discrete"

    def __post_init__(self):
        _checks.positive_int("max_iter", self.max_iter, allow_zero=True)
        if not isinstance(self.termination, Termination):
            raise TypeError(f"termination must be a Termination, got {type(self.termination).__name__}")
        if not isinstance(self.compact, bool):
            raise TypeError(f"compact must be a bool, got {type(self.compact).__name__}")
        self.termination.check_compact(self.compact)

    # --- the three methods a solver implements -------------------------------------------
    def init(self, z0: torch.Tensor, fz0: torch.Tensor) -> Any:
        raise NotImplementedError

    def propose(self, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def update(self, state: Any, z: torch.Tensor, fz: torch.Tensor, active: torch.Tensor) -> None:
        raise NotImplementedError

    def select(self, state: Any, rows: torch.Tensor, batch: int) -> Any:
        """The working memory of the batch rows ``rows`` (compaction). The default slices
        every tensor of a dict state whose first dimension is the batch."""
        return {key: value.index_select(0, rows) if torch.is_tensor(value) and value.dim() > 0
                and value.shape[0] == batch else value for key, value in state.items()}

    def solve_flat(self, fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor) -> Solution:
        return iterate(self, fn, z0)


def iterate(solver: DiscreteSolver, fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor) -> Solution:
    """Run ``solver`` on the flat map ``fn: (batch, dim) -> (batch, dim)`` from ``z0``.

    Iteration ``k`` evaluates ``fn`` on iterate ``z_k`` (``k = 0`` is the initial guess), so
    ``nfe = iterations + 1`` for the slowest sample. The host reads the "any sample still
    running?" flag only every ``termination.check_interval`` iterations: on CUDA the loop
    otherwise runs without device->host syncs, and the extra iterations are harmless because
    stopped samples are frozen by ``torch.where``.
    """
    tracker = SampleTracker(solver.termination, z0)
    fz = fn(z0)
    state = solver.init(z0, fz)
    z, iteration, nfe = _loop(solver, fn, z0, fz, state, tracker, iteration=0, nfe=1, observed=False)
    z, residual, status = tracker.finish(z, solver.max_iter)
    return Solution(z=z, z0=z0, residual=residual, status=status, iterations=tracker.iterations,
                    nfe=nfe, steps=iteration)


def _loop(solver, fn, z, fz, state, tracker, *, iteration: int, nfe: int, observed: bool):
    """Iterate from ``iteration`` on; returns the rows' final iterates, the iteration and nfe.

    With ``solver.compact``, once at most half of the rows still run, the loop continues on
    those rows alone (a recursive call on the selected rows) and merges the result back.
    """
    interval = solver.termination.check_interval(z.device)
    batch = z.shape[0]
    while True:
        if not observed:
            tracker.observe(iteration, z, fz)
        observed = False
        if iteration >= solver.max_iter:
            break
        active = tracker.active
        # Where the host reads the flags anyway (every iteration on CPU), a batch with every
        # sample running skips the two freezing copies below: where(all True, a, b) is a.
        all_running = False
        if iteration % interval == 0:
            running = int(active.sum())
            if running == 0:
                break
            if solver.compact and running <= batch // 2:
                rows = active.nonzero()[:, 0]
                sub = tracker.select(rows)

                def sub_fn(z_rows, index=None, rows=rows):
                    return fn(z_rows, rows if index is None else rows[index])

                z_rows, iteration, nfe = _loop(
                    solver, sub_fn, z.index_select(0, rows), fz.index_select(0, rows),
                    solver.select(state, rows, batch), sub, iteration=iteration, nfe=nfe, observed=True)
                tracker.merge(rows, sub)
                return z.index_copy(0, rows, z_rows), iteration, nfe
            all_running = running == batch
        # Finished samples are evaluated at their frozen state: fn sees no garbage proposals.
        proposal = solver.propose(state)
        z = proposal if all_running else torch.where(active[:, None], proposal, z)
        fz_new = fn(z)
        fz = fz_new if all_running else torch.where(active[:, None], fz_new, fz)
        nfe += 1
        iteration += 1
        solver.update(state, z, fz, active)
    return z, iteration, nfe
