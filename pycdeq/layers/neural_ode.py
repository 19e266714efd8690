"""The Neural ODE baseline: the same ``f`` as a DEQ, integrated over a finite time.

``rhs="f_minus_z"`` (default, DeepEquilibriumNetworks.jl v2): ``dz/dt = f(z, x) - z`` on
``[0, t1]`` from ``z(0) = 0``; the output is ``z(t1)``. This is the continuous DEQ truncated
at ``t1``, which makes the comparison of the paper exact: same ``f``, same right-hand side,
one stops at a steady state (implicit gradient), the other at ``t1`` (gradient through the
solve). ``rhs="f"`` with ``output="f_of_state"`` reproduces the paper-era baseline
(``dz/dt = f(z, x)``, output ``f(z(1), x)``). The benchmarks use the default.

Gradients: ``adjoint="backprop"`` differentiates through the accepted steps (memory grows
with the steps); a continuous adjoint (``"backsolve"``, ``"interpolating"`` or an option
object of :mod:`pycdeq.solvers.ode_adjoint`) integrates the adjoint backwards, with the
parameters of ``f`` and the input ``x`` as its parameters. The paper's baseline is
``NeuralODE(f, VCAB3(rtol=0.05, atol=0.05, max_steps=18), rhs="f", output="f_of_state",
adjoint=InterpolatingAdjoint(seminorm=False), input_gradient="final_call")``
(:func:`pycdeq.models.paper_protocol.protocol_options`).

``input_gradient="final_call"`` hands ``x`` to the integration detached, as the reference's
closure-captured input was: ``x`` then gets gradient only through the final ``f(z(t1), x)``
call (``output="f_of_state"``), and the continuous adjoint carries no accumulator for it.

``fixed_depth > 0`` replaces the integration by ``fixed_depth`` plain applications of ``f``
from ``z(0) = 0`` with backprop (the reference's unrolled pretraining, which it applies to
every model type, the Neural ODE included; the ``output`` option applies after it, as in
the DEQ layer). The trainer sets it during ``TrainConfig.pretrain_steps``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks
from ..solvers import ODEMethod, Status, integrate
from ..solvers.ode_adjoint import resolve_adjoint
from ..solvers.packing import StatePacker
from .base import EquilibriumLayer
from .inputs import check_input, zero_state
from .output import NeuralODEOutput

RHS = ("f_minus_z", "f")
OUTPUTS = ("state", "f_of_state")
INPUT_GRADIENTS = ("implicit", "final_call")


def check_node_options(*, t1: float = 1.0, rhs: str = "f_minus_z", adjoint="backprop",
                       output: str = "state", input_gradient: str = "implicit") -> None:
    """Validate the options of a Neural ODE layer (the one place: layers and model configs call it).
    ``adjoint``: one of ``ADJOINT_NAMES`` or a continuous-adjoint option object."""
    _checks.positive("t1", t1)
    _checks.one_of("rhs", rhs, RHS)
    resolve_adjoint(adjoint)  # validates; kept as given (a name or an option)
    _checks.one_of("output", output, OUTPUTS)
    _checks.one_of("input_gradient", input_gradient, INPUT_GRADIENTS)


class NeuralODE(EquilibriumLayer):
    """Neural ODE over ``[0, t1]`` with the DEQ's ``f``; ``forward(x) -> (z, output)``
    (:class:`~pycdeq.layers.output.NeuralODEOutput`)."""

    variant = "node"

    def __init__(self, f: nn.Module, method: ODEMethod, *, t1: float = 1.0, rhs: str = "f_minus_z",
                 adjoint="backprop", output: str = "state", state_shape=None,
                 input_gradient: str = "implicit", fixed_depth: int = 0):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be a callable nn.Module f(z, x), got {type(f).__name__}")
        if not isinstance(method, ODEMethod):
            raise TypeError(f"method must be an ODE method (Tsit5(), Dopri5(), ...), got {type(method).__name__}")
        check_node_options(t1=t1, rhs=rhs, adjoint=adjoint, output=output, input_gradient=input_gradient)
        self.f = f
        self.g = None
        self.method = method
        self.t1 = float(t1)
        self.rhs = rhs
        self.adjoint = adjoint
        self.output = output
        self.state_shape = state_shape
        self.input_gradient = input_gradient
        self.fixed_depth = fixed_depth

    def forward(self, x: torch.Tensor):
        check_input(x)
        z0 = zero_state(self.state_shape, x)
        x_solve = x.detach() if self.input_gradient == "final_call" else x
        if self.fixed_depth > 0:
            return self._unrolled(z0, x_solve, x)
        subtract = self.rhs == "f_minus_z"
        packer = StatePacker(z0, "z0")

        def rhs(t, z):
            fz = self.f(z, x_solve)
            packer.check_output(fz, "f")
            if not subtract:
                return fz
            if isinstance(z, tuple):
                return tuple(a - b for a, b in zip(fz, z))
            return fz - z

        params = None if self.adjoint == "backprop" else [*self.f.parameters(), x_solve]
        trajectory = integrate(rhs, z0, self.t1, self.method, adjoint=self.adjoint, params=params)
        z, nfe = trajectory.z, trajectory.nfe
        if self.output == "f_of_state":
            z, nfe = self.f(z, x), nfe + 1
        zero = packer.pack(z).new_zeros(())
        return z, NeuralODEOutput(nfe=nfe, status=trajectory.status, skip_loss=zero, jacobian_loss=zero,
                                  trajectory=trajectory)

    def _unrolled(self, z0, x_solve: torch.Tensor, x: torch.Tensor):
        """``fixed_depth`` applications of ``f`` from ``z0`` (pretraining), then the output option;
        ``x_solve`` stands in for the integration's input, as in the DEQ layer's unrolled mode.
        There is no trajectory: ``output.trajectory`` is None and every sample counts as done."""
        z = z0
        for _ in range(self.fixed_depth):
            z = self.f(z, x_solve)
        nfe = self.fixed_depth
        if self.output == "f_of_state":
            z, nfe = self.f(z, x), nfe + 1
        flat = StatePacker(z0, "z0").pack(z)
        zero = flat.new_zeros(())
        status = torch.full((flat.shape[0],), int(Status.CONVERGED), dtype=torch.int8, device=flat.device)
        return z, NeuralODEOutput(nfe=nfe, status=status, skip_loss=zero, jacobian_loss=zero, trajectory=None)
