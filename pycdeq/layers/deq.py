"""The DEQ layer: one module whose ``init`` selects plain DEQ, Skip DEQ or Skip Reg. DEQ.

As in DeepEquilibriumNetworks.jl v2, the variant is only the choice of initial guess:

=================  =================  ===============================
variant            ``init``           ``z0``
=================  =================  ===============================
``"vanilla"``      ``"zeros"``        zeros of the state's shape
``"skip_reg"``     ``"skip_reg"``     ``f(0, x)`` (no extra parameters)
``"skip"``         an ``nn.Module``   ``g(x)`` (an explicit predictor)
=================  =================  ===============================

The solver chooses discrete vs continuous: a root finder (``Anderson``, ``Broyden``,
``FixedPoint``) gives a discrete DEQ; an ODE method (``Tsit5``, ...) integrates
``dz/dt = f(z, x) - z`` to steady state (a continuous DEQ). Both get the same implicit
gradient (:mod:`pycdeq.adjoints`), exact w.r.t. the parameters of ``f`` and the injected
input ``x`` (so the stem is trained with its exact gradient, unlike the paper-era code).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .. import _checks
from ..adjoints.methods import Adjoint
from ..equilibrium import solve
from ..solvers._state import StatePacker
from ..solvers.solution import Solution, State, Status
from .regularizers import JacobianRegularization, skip_loss

ShapeSpec = Union[Sequence[int], Sequence[Sequence[int]]]


class NonConvergenceWarning(RuntimeWarning):
    """Some samples of a forward solve did not converge."""


class NonConvergenceError(RuntimeError):
    """Raised with ``on_nonconvergence="raise"`` when samples did not converge."""


def _is_nested(shape) -> bool:
    return len(shape) > 0 and isinstance(shape[0], (tuple, list))


def _zeros(state_shape, x: torch.Tensor) -> State:
    if state_shape is None:
        return torch.zeros_like(x)
    if _is_nested(state_shape):
        return tuple(x.new_zeros(x.shape[0], *s) for s in state_shape)
    return x.new_zeros(x.shape[0], *state_shape)


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the layer input x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"the layer input x must be floating point, got {x.dtype}")
    _checks.finite_tensor("the layer input x", x)


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside pycdeq and torch, so that a warning points at
    the user's line rather than at ``nn.Module.__call__``."""
    import pycdeq

    internal = (os.path.dirname(pycdeq.__file__), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame, level = frame.f_back, level + 1
    return level


def _check_independent(f: nn.Module) -> None:
    """A compacting solver evaluates f on a subset of the batch: refuse an f whose batch norm
    mixes the samples (training mode, or no running statistics)."""
    for name, module in f.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or not module.track_running_stats):
            raise ValueError(f"solver.compact=True needs f to treat samples independently, but f.{name or 'self'} "
                             f"is a {type(module).__name__} using batch statistics; use compact=False")


class DEQ(nn.Module):
    """Deep equilibrium layer: ``z* = f(z*, x)``.

    Args:
        f: module called as ``f(z, x)``, returning a ``z``-shaped tensor (or tuple).
        solver: a discrete solver or an ODE method (see module docstring).
        init: ``"zeros"``, ``"skip_reg"`` or a module ``g`` (``z0 = g(x)``).
        state_shape: per-sample state shape (or a tuple of shapes for multiscale) when it
            differs from ``x``'s; zeros and ``f(0, x)`` are built with it.
        adjoint: gradient method (default ``GMRES()``); see :mod:`pycdeq.adjoints`.
        jacobian_reg: ``JacobianRegularization(...)`` to compute ``solution.jacobian_loss``.
        on_nonconvergence: ``"warn"`` (once per call, with the count), ``"raise"`` or ``"ignore"``.
        output: ``"iterate"`` returns the solver's iterate ``u*`` (default; its residual is the
            one reported); ``"f_of_iterate"`` returns ``f(u*, x)``, as the paper-era code did.
        input_gradient: ``"implicit"`` (exact, default) or ``"final_call"``: ``x`` reaches
            the solve detached, so the stem only gets gradient through the final ``f(u*, x)``
            (with ``output="f_of_iterate"``) and ``z0``, reproducing the paper-era code for
            faithful comparisons.
        fixed_depth: when > 0, run ``f`` unrolled ``fixed_depth`` times from ``z0`` with plain
            backprop instead of solving (pretraining / warm-up; settable on a built layer).
    """

    def __init__(self, f: nn.Module, solver, *, init: Union[str, nn.Module] = "zeros",
                 state_shape: Optional[ShapeSpec] = None, adjoint=None,
                 jacobian_reg: Optional[JacobianRegularization] = None,
                 on_nonconvergence: str = "warn", output: str = "iterate",
                 input_gradient: str = "implicit", fixed_depth: int = 0):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be a callable nn.Module f(z, x), got {type(f).__name__}")
        if not callable(getattr(solver, "solve_flat", None)):
            raise TypeError(f"solver must be a pycdeq solver (e.g. Anderson(), Tsit5()), got {type(solver).__name__}")
        if adjoint is not None and not isinstance(adjoint, Adjoint):
            raise TypeError("adjoint must be one of GMRES, FixedPointAdjoint, JFB, Unrolled or None; "
                            f"got {type(adjoint).__name__}")
        if isinstance(init, str):
            _checks.one_of("init", init, ("zeros", "skip_reg"))
        elif not isinstance(init, nn.Module):
            raise TypeError(f"init must be 'zeros', 'skip_reg' or an nn.Module g(x), got {type(init).__name__}")
        if jacobian_reg is not None and not isinstance(jacobian_reg, JacobianRegularization):
            raise TypeError(f"jacobian_reg must be a JacobianRegularization or None, got {type(jacobian_reg).__name__}")
        _checks.one_of("on_nonconvergence", on_nonconvergence, ("warn", "raise", "ignore"))
        _checks.one_of("output", output, ("iterate", "f_of_iterate"))
        _checks.one_of("input_gradient", input_gradient, ("implicit", "final_call"))
        self.f = f
        self.g = init if isinstance(init, nn.Module) else None
        self._init_mode = "skip" if self.g is not None else init
        self.solver = solver
        self.adjoint = adjoint
        self.jacobian_reg = jacobian_reg
        self.on_nonconvergence = on_nonconvergence
        self.output = output
        self.input_gradient = input_gradient
        self.state_shape = state_shape
        self.fixed_depth = fixed_depth

    @property
    def variant(self) -> str:
        return {"zeros": "vanilla", "skip_reg": "skip_reg", "skip": "skip"}[self._init_mode]

    @property
    def fixed_depth(self) -> int:
        return self._fixed_depth

    @fixed_depth.setter
    def fixed_depth(self, depth: int) -> None:
        _checks.positive_int("fixed_depth", depth, allow_zero=True)
        self._fixed_depth = depth

    def initial_state(self, x: torch.Tensor) -> State:
        """``z0`` for this variant (differentiable: ``g`` and ``f`` get gradient through it)."""
        zeros = _zeros(self.state_shape, x)
        if self._init_mode == "zeros":
            return zeros
        if self._init_mode == "skip_reg":
            z0 = self.f(zeros, x)
            StatePacker(zeros, "the state").check_output(z0, "f(0, x)")
            return z0
        z0 = self.g(x)
        StatePacker(zeros, "the state").check_output(z0, "the skip predictor g(x)")
        return z0

    def forward(self, x: torch.Tensor):
        """Returns ``(z_star, solution)``; see :class:`~pycdeq.solvers.Solution`."""
        _check_input(x)
        z0 = self.initial_state(x)
        x_solve = x.detach() if self.input_gradient == "final_call" else x

        if getattr(self.solver, "compact", False):
            _check_independent(self.f)

        def fn(z, index=None):  # a compacting solver passes the rows it evaluates
            return self.f(z, x_solve if index is None else x_solve.index_select(0, index))

        if self.fixed_depth > 0:
            solution = self._unrolled(fn, z0)
        else:
            solution = solve(fn, z0, self.solver, adjoint=self.adjoint)
            self._report_nonconvergence(solution)
        packer = StatePacker(z0, "z0")
        if self.output == "f_of_iterate":
            solution.z = self.f(solution.z, x)
            solution.nfe += 1
        z_star_flat = packer.pack(solution.z)
        solution.skip_loss = (skip_loss(z_star_flat, packer.pack(z0)) if self.variant != "vanilla"
                              else z_star_flat.new_zeros(()))
        if self.jacobian_reg is not None and torch.is_grad_enabled():
            solution.jacobian_loss = self.jacobian_reg(packer.flat_fn(fn), z_star_flat)
        else:
            solution.jacobian_loss = z_star_flat.new_zeros(())
        return solution.z, solution

    def _unrolled(self, fn: Callable[[State], State], z0: State) -> Solution:
        """``fixed_depth`` plain applications of ``f`` from ``z0`` (nfe = depth)."""
        packer = StatePacker(z0, "z0")
        flat_fn = packer.flat_fn(fn)
        previous = z = packer.pack(z0)
        for _ in range(self.fixed_depth):
            previous, z = z, flat_fn(z)
        termination = self.solver.termination
        # The residual of the last step is ||f(z_{d-1}) - z_{d-1}||: no extra f call needed.
        residual = termination.sample_norm(z - previous).detach()
        converged = termination.converged(residual, termination.sample_norm(z).detach())
        status = torch.where(converged, Status.CONVERGED, Status.MAX_ITERS).to(torch.int8)
        iterations = torch.full_like(residual, self.fixed_depth, dtype=torch.long)
        return Solution(z=packer.unpack(z), z0=z0, residual=residual, status=status,
                        iterations=iterations, nfe=self.fixed_depth, steps=self.fixed_depth)

    def _report_nonconvergence(self, solution: Solution) -> None:
        if self.on_nonconvergence == "ignore":
            return
        count = solution.num_nonconverged  # one host sync per forward, only when asked for
        if count == 0:
            return
        message = (f"{count} of {solution.status.shape[0]} samples did not converge "
                   f"({solution.status_counts()}); max residual {float(solution.residual.max()):.3g}")
        if self.on_nonconvergence == "raise":
            raise NonConvergenceError(message)
        warnings.warn(message, NonConvergenceWarning, stacklevel=_caller_stacklevel())

    def extra_repr(self) -> str:
        return f"variant={self.variant}, solver={self.solver}, adjoint={self.adjoint}"


def SkipDEQ(f: nn.Module, g: nn.Module, solver, **kwargs) -> DEQ:
    """Skip DEQ: ``z0 = g(x)`` from the explicit predictor ``g``."""
    if not isinstance(g, nn.Module):
        raise TypeError(f"g must be an nn.Module, got {type(g).__name__}")
    return DEQ(f, solver, init=g, **kwargs)


def SkipRegDEQ(f: nn.Module, solver, **kwargs) -> DEQ:
    """Skip Reg. DEQ: ``z0 = f(0, x)``; no extra parameters."""
    return DEQ(f, solver, init="skip_reg", **kwargs)
