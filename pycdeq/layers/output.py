"""What an equilibrium layer returns beside ``z``: its cost, its per-sample outcome, its losses.

Every layer's ``forward(x)`` returns ``(z, output)``. The output is built once, by the layer,
and never changed afterwards:

* :class:`DEQOutput` (``DEQ`` and the Skip variants): the solve's
  :class:`~pycdeq.solvers.Solution`, the skip loss and the Jacobian penalty;
* :class:`NeuralODEOutput`: the integration's :class:`~pycdeq.solvers.Trajectory`.

Both share :class:`LayerOutput`'s fields, so a training loop reads ``nfe``, ``status`` /
``converged``, ``skip_loss`` and ``jacobian_loss`` the same way for every layer (zero losses
where a layer has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..adjoints import AdjointStats
from ..solvers import Solution, Trajectory
from ..solvers.solution import State, _PerSampleStatus


@dataclass(frozen=True)
class LayerOutput(_PerSampleStatus):
    """``nfe``: calls of ``f`` on the batch in this forward (with any output call);
    ``status``: per-sample :class:`~pycdeq.Status` codes; ``skip_loss`` and
    ``jacobian_loss``: scalar tensors to add to the task loss (zero where not applicable)."""

    nfe: int
    status: torch.Tensor
    skip_loss: torch.Tensor
    jacobian_loss: torch.Tensor


@dataclass(frozen=True)
class DEQOutput(LayerOutput):
    """A DEQ layer's output; ``solution`` is the record of its solve."""

    solution: Solution

    @property
    def residual(self) -> torch.Tensor:
        """(batch,) ``||f(z) - z||`` of the solver's iterate, in the termination norm."""
        return self.solution.residual

    @property
    def iterations(self) -> torch.Tensor:
        return self.solution.iterations

    @property
    def z0(self) -> Optional[State]:
        """The initial guess the solve started from (``f(0, x)``, ``g(x)`` or zeros; every
        solve records it, only a hand-built ``Solution`` may lack it)."""
        return self.solution.z0

    @property
    def adjoint(self) -> Optional[AdjointStats]:
        """The backward solve's statistics, once ``backward`` ran (``None`` without an
        implicit gradient)."""
        return self.solution.adjoint


@dataclass(frozen=True)
class NeuralODEOutput(LayerOutput):
    """A Neural ODE's output; ``trajectory`` is the record of its integration
    (``status`` ``CONVERGED`` means the sample reached ``t1``), ``None`` during unrolled
    pretraining (``fixed_depth > 0``), which integrates nothing."""

    trajectory: Optional[Trajectory]
