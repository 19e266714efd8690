"""The adjoint contract: how :func:`pycdeq.solve` gets the gradient of a fixed point.

An adjoint is a frozen dataclass of options that subclasses :class:`Adjoint` and implements
one method, :meth:`Adjoint.attach`: run the forward solve and return ``z*`` carrying this
adjoint's gradient. Two families:

* :class:`ImplicitAdjoint` (``GMRES``, ``FixedPointAdjoint``, ``JFB``): the forward solve runs
  without autograd, and the gradient comes from the implicit function theorem, one linear
  solve ``(I - J)^T g = dL/dz*`` in backward (:meth:`ImplicitAdjoint.solve`);
* ``Unrolled``: autograd through every solver iteration.

Adding an implicit adjoint is subclassing :class:`ImplicitAdjoint` and writing ``solve``.
The statistics of the backward solve live here (:class:`~pycdeq.adjoints.stats.AdjointStats`): the record a solve
returns holds one, and only the adjoint's backward pass writes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, NamedTuple, Optional, Tuple

import torch

from ..solvers.base import FlatMap, Solver
from ..solvers.solution import SolverRecord
from .implicit import attach_implicit_gradient
from .stats import AdjointStats, LinearSolveReport

VJP = Callable[[torch.Tensor], torch.Tensor]


class Attached(NamedTuple):
    """What :meth:`Adjoint.attach` returns."""

    record: SolverRecord  #: the forward solve's record
    z: torch.Tensor  #: ``z*`` (flat) carrying the adjoint's gradient
    stats: Optional[AdjointStats]  #: filled in by backward; ``None`` if nothing is recorded
    extra_nfe: int  #: calls of ``fn`` the adjoint made beyond the solver's


class Adjoint(ABC):
    """How a fixed point gets its gradient. Subclasses are frozen dataclasses of options."""

    name: ClassVar[str]

    @abstractmethod
    def attach(self, solver: Solver, fn: FlatMap, start: torch.Tensor,
               args: Tuple[torch.Tensor, ...]) -> Attached:
        """Solve ``z = fn(z, *args)`` from ``start`` (autograd is on) and return ``z*``
        differentiable w.r.t. everything ``fn`` depends on."""


class ImplicitAdjoint(Adjoint):
    """Implicit gradient: solve without autograd, then one linear solve in backward."""

    def attach(self, solver: Solver, fn: FlatMap, start: torch.Tensor,
               args: Tuple[torch.Tensor, ...]) -> Attached:
        with torch.no_grad():
            record = solver.solve_flat(fn, start, args)
        z, stats = attach_implicit_gradient(fn, record.z, args, self)
        return Attached(record, z, stats, extra_nfe=1)

    @abstractmethod
    def solve(self, vjp: VJP, v: torch.Tensor) -> Tuple[torch.Tensor, LinearSolveReport]:
        """Solve ``(I - J^T) g = v`` per sample, ``vjp(u) = J^T u`` (``v``: ``(batch, dim)``)."""
