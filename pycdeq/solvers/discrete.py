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

    kind = "discrete"

    def __post_init__(self):
        _checks.positive_int("max_iter", self.max_iter, allow_zero=True)
        if not isinstance(self.termination, Termination):
            raise TypeError(f"termination must be a Termination, got {type(self.termination).__name__}")

    # --- the three methods a solver implements -------------------------------------------
    def init(self, z0: torch.Tensor, fz0: torch.Tensor) -> Any:
        raise NotImplementedError

    def propose(self, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def update(self, state: Any, z: torch.Tensor, fz: torch.Tensor, active: torch.Tensor) -> None:
        raise NotImplementedError

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
    termination = solver.termination
    tracker = SampleTracker(termination, z0)
    interval = termination.check_interval(z0.device)
    batch = z0.shape[0]
    z = z0
    fz = fn(z)
    nfe = 1
    state = solver.init(z, fz)
    iteration = 0
    while True:
        tracker.observe(iteration, z, fz)
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
            all_running = running == batch
        # Finished samples are evaluated at their frozen state: fn sees no garbage proposals.
        proposal = solver.propose(state)
        z = proposal if all_running else torch.where(active[:, None], proposal, z)
        fz_new = fn(z)
        fz = fz_new if all_running else torch.where(active[:, None], fz_new, fz)
        nfe += 1
        iteration += 1
        solver.update(state, z, fz, active)
    z, residual, status = tracker.finish(z, solver.max_iter)
    return Solution(z=z, z0=z0, residual=residual, status=status, iterations=tracker.iterations,
                    nfe=nfe, steps=iteration)
