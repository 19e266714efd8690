"""The Neural ODE baseline: the same ``f`` as a DEQ, integrated over a finite time.

``rhs="f_minus_z"`` (default, DeepEquilibriumNetworks.jl v2): ``dz/dt = f(z, x) - z`` on
``[0, t1]`` from ``z(0) = 0``; the output is ``z(t1)``. This is the continuous DEQ truncated
at ``t1``, which makes the comparison of the paper exact: same ``f``, same right-hand side,
one stops at a steady state (implicit gradient), the other at ``t1`` (gradient through the
solve). ``rhs="f"`` with ``output="f_of_state"`` reproduces the paper-era baseline
(``dz/dt = f(z, x)``, output ``f(z(1), x)``). The benchmarks use the default.

Gradients: ``adjoint="backprop"`` differentiates through the accepted steps (memory grows
with the steps); ``adjoint="backsolve"`` integrates the continuous adjoint backwards
(constant memory), with the parameters of ``f`` and the input ``x`` as its parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks
from ..solvers import ODEMethod, integrate
from ..solvers.packing import StatePacker
from .inputs import check_input, zero_state
from .output import NeuralODEOutput

RHS = ("f_minus_z", "f")
ADJOINTS = ("backprop", "backsolve")
OUTPUTS = ("state", "f_of_state")


def check_node_options(*, t1: float = 1.0, rhs: str = "f_minus_z", adjoint: str = "backprop",
                       output: str = "state") -> None:
    """Validate the options of a Neural ODE layer (the one place: layers and model configs call it)."""
    _checks.positive("t1", t1)
    _checks.one_of("rhs", rhs, RHS)
    if not isinstance(adjoint, str):
        raise TypeError(f"adjoint of a Neural ODE must be one of {ADJOINTS}, got {type(adjoint).__name__}")
    _checks.one_of("adjoint", adjoint, ADJOINTS)
    _checks.one_of("output", output, OUTPUTS)


class NeuralODE(nn.Module):
    """Neural ODE over ``[0, t1]`` with the DEQ's ``f``; ``forward(x) -> (z, output)``
    (:class:`~pycdeq.layers.output.NeuralODEOutput`)."""

    variant = "node"

    def __init__(self, f: nn.Module, method: ODEMethod, *, t1: float = 1.0, rhs: str = "f_minus_z",
                 adjoint: str = "backprop", output: str = "state", state_shape=None):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be a callable nn.Module f(z, x), got {type(f).__name__}")
        if not isinstance(method, ODEMethod):
            raise TypeError(f"method must be an ODE method (Tsit5(), Dopri5(), ...), got {type(method).__name__}")
        check_node_options(t1=t1, rhs=rhs, adjoint=adjoint, output=output)
        self.f = f
        self.g = None
        self.method = method
        self.t1 = float(t1)
        self.rhs = rhs
        self.adjoint = adjoint
        self.output = output
        self.state_shape = state_shape

    def forward(self, x: torch.Tensor):
        check_input(x)
        z0 = zero_state(self.state_shape, x)
        subtract = self.rhs == "f_minus_z"
        packer = StatePacker(z0, "z0")

        def rhs(t, z):
            fz = self.f(z, x)
            packer.check_output(fz, "f")
            if not subtract:
                return fz
            if isinstance(z, tuple):
                return tuple(a - b for a, b in zip(fz, z))
            return fz - z

        params = [*self.f.parameters(), x] if self.adjoint == "backsolve" else None
        trajectory = integrate(rhs, z0, self.t1, self.method, adjoint=self.adjoint, params=params)
        z, nfe = trajectory.z, trajectory.nfe
        if self.output == "f_of_state":
            z, nfe = self.f(z, x), nfe + 1
        zero = packer.pack(z).new_zeros(())
        return z, NeuralODEOutput(nfe=nfe, status=trajectory.status, skip_loss=zero, jacobian_loss=zero,
                                  trajectory=trajectory)
