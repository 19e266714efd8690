"""The statistics of a backward (adjoint) solve.

:class:`LinearSolveReport` is what an implicit adjoint's linear solve returns;
:class:`AdjointStats` is the record a solve hands out before backward runs, filled in once
by the adjoint's backward pass (and only by it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


class LinearSolveReport(NamedTuple):
    """How the backward linear solve went, per sample."""

    iterations: torch.Tensor  #: (batch,) iterations each sample needed
    residual: torch.Tensor  #: (batch,) final ||(I - J^T) g - v||
    converged: torch.Tensor  #: (batch,) bool
    vjps: int  #: vector-Jacobian products evaluated on the batch


@dataclass
class AdjointStats:
    """Statistics of the backward (adjoint) solve: empty until ``backward`` runs, then
    filled in once by the adjoint (:meth:`record`)."""

    method: str
    iterations: Optional[torch.Tensor] = None  #: (batch,) iterations each sample needed
    residual: Optional[torch.Tensor] = None  #: (batch,) final ||(I - J^T) g - v|| per sample
    converged: Optional[torch.Tensor] = None  #: (batch,) bool
    vjps: int = 0  #: vector-Jacobian products evaluated on the batch

    def record(self, report: LinearSolveReport) -> None:
        """Written by the adjoint's backward pass (again on a second ``backward``)."""
        self.iterations, self.residual, self.converged, self.vjps = report
