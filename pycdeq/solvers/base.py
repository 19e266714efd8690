"""The solver contract: what :func:`pycdeq.solve` accepts.

A solver is a frozen dataclass of options that subclasses one of two abstract bases:

* :class:`~pycdeq.solvers.discrete.DiscreteSolver`: a root finder (Anderson, Broyden, damped
  Picard) that implements ``init`` / ``propose`` / ``update``; the loop is written once;
* :class:`~pycdeq.solvers.ode.ODEMethod`: an ODE method (a Butcher tableau or a multistep
  rule plus a step-size controller) that integrates ``dz/dt = fn(z) - z`` to steady state,
  and ``dz/dt = rhs(t, z)`` over a finite time in :func:`pycdeq.integrate`.

Every check "is this a solver?" is ``isinstance(solver, Solver)``; adding a solver is
subclassing one of the two.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Tuple

import torch

from .solution import SolverRecord
from .termination import Termination

#: ``fn(z, *args)``: a map of flat states ``(batch, dim) -> (batch, dim)``; ``args`` are the
#: batch-aligned tensors handed to :func:`pycdeq.solve` (a compacting solver slices them).
FlatMap = Callable[..., torch.Tensor]


class Solver(ABC):
    """A fixed-point solver. Subclasses are frozen dataclasses with a ``termination`` field."""

    termination: Termination
    #: Whether the solver may evaluate ``fn`` on a subset of the batch (compaction); only
    #: discrete solvers do, when asked to.
    compact: bool = False

    @abstractmethod
    def solve_flat(self, fn: FlatMap, z0: torch.Tensor, args: Tuple[torch.Tensor, ...] = ()) -> SolverRecord:
        """Solve ``z = fn(z, *args)`` per sample from the flat initial guess ``z0``."""
