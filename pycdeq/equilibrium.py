"""``solve``: find ``z* = fn(z*)`` for a batch, with the chosen solver and gradient."""

from __future__ import annotations

from typing import Callable

import torch

from . import _checks
from .adjoints.implicit import attach_implicit_gradient
from .adjoints.methods import GMRES, Adjoint, Unrolled
from .solvers._state import StatePacker
from .solvers.solution import Solution, State


def solve(fn: Callable[[State], State], z0: State, solver, *, adjoint=None) -> Solution:
    """Solve ``z = fn(z)`` per sample from the initial guess ``z0``.

    ``fn`` acts on a batch (batch first); the state may be a tensor or a tuple of tensors
    (multiscale). ``solver`` is a discrete solver (``Anderson``, ``Broyden``, ``FixedPoint``)
    or an ODE method, which integrates ``dz/dt = fn(z) - z`` to steady state.

    Gradients: when autograd is enabled, the returned ``solution.z`` is differentiable with
    respect to everything ``fn`` depends on, through ``adjoint`` (default :class:`GMRES`).
    With ``solver.compact=True`` (discrete solvers), ``fn`` is called as ``fn(z, index)``,
    ``index`` being the batch rows ``z`` stands for (``None``: all), so that finished samples
    leave the work; ``fn`` must treat samples independently.

    ``z0`` receives no gradient through the solve (as in DeepEquilibriumNetworks.jl); layers
    that need one (the skip loss) use ``solution.z0`` directly. Under ``torch.no_grad()`` no
    graph is built and no extra ``fn`` call is made.
    """
    adjoint = GMRES() if adjoint is None else adjoint
    if not isinstance(adjoint, Adjoint):
        raise TypeError("adjoint must be one of GMRES, FixedPointAdjoint, JFB, Unrolled; "
                        f"got {type(adjoint).__name__}")
    if not callable(getattr(solver, "solve_flat", None)):
        raise TypeError(f"solver must be a pycdeq solver (e.g. Anderson(), Tsit5()), got {type(solver).__name__}")
    packer = StatePacker(z0, "z0")
    for i, part in enumerate(z0 if packer.is_tuple else (z0,)):
        _checks.finite_tensor(f"z0[{i}]" if packer.is_tuple else "z0", part)
    # A compacting solver evaluates fn on the rows still running: fn(z, index).
    flat_fn = packer.flat_fn(fn, indexed=getattr(solver, "compact", False))
    start = packer.pack(z0).detach()

    differentiable = torch.is_grad_enabled()
    if differentiable and isinstance(adjoint, Unrolled):
        solution = solver.solve_flat(flat_fn, start)
        z = solution.z
    else:
        with torch.no_grad():
            solution = solver.solve_flat(flat_fn, start)
        z = solution.z
        if differentiable:
            z, solution.adjoint = attach_implicit_gradient(flat_fn, z, adjoint)
            solution.nfe += 1
    solution.z = packer.unpack(z)
    solution.z0 = z0
    return solution
