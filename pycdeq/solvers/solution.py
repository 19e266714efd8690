"""The records a solve returns, and the per-sample status codes.

Two immutable records, each built once:

* :class:`SolverRecord`: what a solver's loop returns, on the flat ``(batch, dim)`` state;
* :class:`Solution`: what :func:`pycdeq.solve` returns: the same fields with ``z`` in the
  user's structure, plus ``z0``, the total ``nfe`` (with the adjoint's extra call) and the
  adjoint's statistics.

Fields that are per sample are tensors of shape ``(batch,)`` that live on the state's
device, so reading them never forces a host sync inside a solve; counters that describe the
whole batch (``nfe``, ``steps``) are plain Python ints counted on the host.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Dict, Optional, Tuple, Union

import torch

if TYPE_CHECKING:  # the adjoints build on the solvers, not the other way round
    from ..adjoints.base import AdjointStats

State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


class Status(enum.IntEnum):
    """Why a sample stopped. Stored per sample as ``torch.int8``."""

    RUNNING = -1  #: internal only: never appears in a returned record
    CONVERGED = 0  #: passed the termination test (integration: reached ``t1``)
    MAX_ITERS = 1  #: ran out of its iteration / step budget without converging
    DIVERGED = 2  #: the divergence guard (``Termination(safe=True)``) stopped it
    NON_FINITE = 3  #: NaN or Inf appeared in its residual
    DT_MIN = 4  #: ODE solvers: the step size underflowed (or became non-finite)


def count_statuses(status: torch.Tensor) -> Dict[str, int]:
    """``{status name: count}`` over a batch of status codes, for logs (one host sync)."""
    counts = torch.bincount(status.long() + 1, minlength=len(Status)).tolist()
    return {s.name.lower(): counts[s.value + 1] for s in Status if counts[s.value + 1]}


class _PerSampleStatus:
    """``converged`` / ``num_nonconverged`` / ``status_counts`` of a record with ``status``."""

    status: torch.Tensor

    @property
    def converged(self) -> torch.Tensor:
        """(batch,) bool: which samples passed the termination test."""
        return self.status == int(Status.CONVERGED)  # a plain int: IntEnum members compare wrongly under torch.compile

    @property
    def num_nonconverged(self) -> int:
        """How many samples did not converge (one host sync)."""
        return int((self.status != int(Status.CONVERGED)).sum().item())

    def status_counts(self) -> Dict[str, int]:
        """``{status name: count}`` over the batch, for logs (one host sync)."""
        return count_statuses(self.status)


@dataclass(frozen=True)
class SolverRecord(_PerSampleStatus):
    """What a solver returns for the flat map ``fn: (batch, dim) -> (batch, dim)``.

    ``z`` is the returned iterate (the point whose residual is reported, not one extra
    application of ``fn``). ``residual`` is ``||fn(z) - z||`` per sample in the norm of the
    termination rule. ``iterations`` is when each sample stopped (solver iterations, or ODE
    steps, accepted and rejected). ``nfe`` counts calls of ``fn`` on the batch; ``steps`` the
    loop's iterations (the slowest sample's).
    """

    z: torch.Tensor
    residual: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor
    nfe: int
    steps: int
    # ODE methods only: per-sample step statistics and the time each sample reached.
    accepted_steps: Optional[torch.Tensor] = None
    rejected_steps: Optional[torch.Tensor] = None
    t: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Solution(SolverRecord):
    """Result of :func:`pycdeq.solve`: the solver's record on the user's state structure.

    ``z`` and ``z0`` have the structure of the initial guess (tensor or tuple). ``nfe``
    includes the one call of ``fn`` that attaches the implicit gradient. ``adjoint`` holds
    the statistics of the backward solve, filled in by the adjoint when ``backward`` runs
    (``None`` when no implicit gradient was attached: under ``torch.no_grad()``, or with
    ``Unrolled``).
    """

    z: State  # type: ignore[assignment]  # the user's structure, not the flat state
    z0: Optional[State] = None
    adjoint: Optional["AdjointStats"] = None

    @classmethod
    def from_record(cls, record: SolverRecord, *, z: State, z0: State, extra_nfe: int = 0,
                    adjoint: Optional["AdjointStats"] = None) -> "Solution":
        """The solution of a solve whose solver returned ``record``."""
        values = {name: getattr(record, name) for name in _RECORD_FIELDS}
        values.update(z=z, nfe=record.nfe + extra_nfe)
        return cls(**values, z0=z0, adjoint=adjoint)


# Read once: torch.compile cannot trace dataclasses.fields on a class (a graph break per solve).
_RECORD_FIELDS = tuple(f.name for f in fields(SolverRecord))
