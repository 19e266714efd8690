"""The record a solve returns, and the per-sample status codes.

Every solver in pycdeq (discrete root finders and ODE integrators alike) returns a
:class:`Solution`. Fields that are per sample are tensors of shape ``(batch,)`` that live on
the state's device, so reading them never forces a host sync inside a solve; counters that
describe the whole batch (``nfe``, ``steps``) are plain Python ints counted on the host.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import torch

State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class Status(enum.IntEnum):
    """Why a sample stopped. Stored per sample as ``torch.int8`` in ``Solution.status``."""

    RUNNING = -1  #: internal only: never appears in a returned Solution
    CONVERGED = 0  #: passed the termination test
    MAX_ITERS = 1  #: ran out of its iteration / step budget without converging
    DIVERGED = 2  #: the divergence guard (``Termination(safe=True)``) stopped it
    NON_FINITE = 3  #: NaN or Inf appeared in its residual
    DT_MIN = 4  #: ODE solvers: the step size underflowed (or became non-finite)


@dataclass
class AdjointStats:
    """Statistics of the backward (adjoint) solve, filled in when ``backward`` runs."""

    method: str
    iterations: Optional[torch.Tensor] = None  #: (batch,) iterations each sample needed
    residual: Optional[torch.Tensor] = None  #: (batch,) final ||(I - J^T) g - v|| per sample
    converged: Optional[torch.Tensor] = None  #: (batch,) bool
    vjps: int = 0  #: vector-Jacobian products evaluated on the batch


@dataclass
class Solution:
    """Result of a fixed-point / steady-state solve.

    ``z`` is the returned iterate (the point whose residual is reported, not one extra
    application of ``fn``). ``residual`` is ``||fn(z) - z||`` per sample in the norm of the
    termination rule. ``iterations`` is when each sample stopped (solver iterations, or ODE
    steps, accepted and rejected). ``nfe`` counts calls of ``fn`` on the batch.
    """

    z: State
    z0: State
    residual: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    nfe: int
    steps: int
    # ODE solvers only: per-sample step statistics and the time each sample reached.
    accepted_steps: Optional[torch.Tensor] = None
    rejected_steps: Optional[torch.Tensor] = None
    t: Optional[torch.Tensor] = None
    # Filled in by the implicit adjoint's backward pass.
    adjoint: Optional[AdjointStats] = None
    # Filled in by the layers (zero tensors when the feature is off).
    skip_loss: Optional[torch.Tensor] = None
    jacobian_loss: Optional[torch.Tensor] = None
    extra: dict = field(default_factory=dict)

    @property
    def converged(self) -> torch.Tensor:
        """(batch,) bool: which samples passed the termination test."""
        return self.status == Status.CONVERGED

    @property
    def num_nonconverged(self) -> int:
        """How many samples did not converge (one host sync)."""
        return int((self.status != Status.CONVERGED).sum().item())

    def status_counts(self) -> dict:
        """``{status name: count}`` over the batch, for logs (one host sync)."""
        counts = torch.bincount(self.status.long() + 1, minlength=len(Status)).tolist()
        return {s.name.lower(): counts[s.value + 1] for s in Status if counts[s.value + 1]}
