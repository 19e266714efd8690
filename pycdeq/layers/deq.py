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

import warnings
from typing import Optional, Union

import torch
from torch import nn

from .. import _checks
from ..adjoints import Adjoint
from ..equilibrium import solve, unroll
from ..solvers import Solution, Solver
from ..solvers.packing import StatePacker
from ..solvers.solution import State
from .base import EquilibriumLayer
from .inputs import ShapeSpec, check_input, zero_state
from .output import DEQOutput
from .regularizers import JacobianRegularization, skip_loss

OUTPUTS = ("iterate", "f_of_iterate")
INPUT_GRADIENTS = ("implicit", "final_call")
ON_NONCONVERGENCE = ("warn", "raise", "ignore")

# BatchNorm layers that normalise with batch statistics in training mode (or always, without
# running statistics): they mix the samples of a batch.
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class NonConvergenceWarning(RuntimeWarning):
    """Some samples of a forward solve did not converge."""


class NonConvergenceError(RuntimeError):
    """Raised with ``on_nonconvergence="raise"`` when samples did not converge."""


def check_layer_options(*, adjoint=None, jacobian_reg=None, on_nonconvergence: str = "warn",
                        output: str = "iterate", input_gradient: str = "implicit") -> None:
    """Validate the options of a DEQ layer (the one place: layers and model configs call it)."""
    if adjoint is not None and not isinstance(adjoint, Adjoint):
        raise TypeError(f"adjoint must be a pycdeq Adjoint (GMRES, FixedPointAdjoint, JFB, Unrolled) or None; "
                        f"got {type(adjoint).__name__}")
    if jacobian_reg is not None and not isinstance(jacobian_reg, JacobianRegularization):
        raise TypeError(f"jacobian_reg must be a JacobianRegularization or None, got {type(jacobian_reg).__name__}")
    _checks.one_of("on_nonconvergence", on_nonconvergence, ON_NONCONVERGENCE)
    _checks.one_of("output", output, OUTPUTS)
    _checks.one_of("input_gradient", input_gradient, INPUT_GRADIENTS)


def _check_independent(f: nn.Module) -> None:
    """A compacting solver evaluates f on a subset of the batch: refuse an f whose batch norm
    mixes the samples (training mode, or no running statistics)."""
    for name, module in f.named_modules():
        if isinstance(module, _BATCH_NORMS) and (module.training or not module.track_running_stats):
            raise ValueError(f"solver.compact=True needs f to treat samples independently, but f.{name or 'self'} "
                             f"is a {type(module).__name__} using batch statistics; use compact=False")


class DEQ(EquilibriumLayer):
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

    def __init__(self, f: nn.Module, solver: Solver, *, init: Union[str, nn.Module] = "zeros",
                 state_shape: Optional[ShapeSpec] = None, adjoint: Optional[Adjoint] = None,
                 jacobian_reg: Optional[JacobianRegularization] = None,
                 on_nonconvergence: str = "warn", output: str = "iterate",
                 input_gradient: str = "implicit", fixed_depth: int = 0):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be a callable nn.Module f(z, x), got {type(f).__name__}")
        if not isinstance(solver, Solver):
            raise TypeError(f"solver must be a pycdeq Solver (e.g. Anderson(), Tsit5()), got {type(solver).__name__}")
        if isinstance(init, str):
            _checks.one_of("init", init, ("zeros", "skip_reg"))
        elif not isinstance(init, nn.Module):
            raise TypeError(f"init must be 'zeros', 'skip_reg' or an nn.Module g(x), got {type(init).__name__}")
        check_layer_options(adjoint=adjoint, jacobian_reg=jacobian_reg, on_nonconvergence=on_nonconvergence,
                            output=output, input_gradient=input_gradient)
        self.f = f
        self.g = init if isinstance(init, nn.Module) else None
        self._init_mode = "skip" if isinstance(init, nn.Module) else init
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

    def initial_state(self, x: torch.Tensor) -> State:
        """``z0`` for this variant (differentiable: ``g`` and ``f`` get gradient through it)."""
        zeros = zero_state(self.state_shape, x)
        if self._init_mode == "zeros":
            return zeros
        if self._init_mode == "skip_reg":
            z0 = self.f(zeros, x)
            StatePacker(zeros, "the state").check_output(z0, "f(0, x)")
            return z0
        assert self.g is not None, "init mode 'skip' holds the predictor g"
        z0 = self.g(x)
        StatePacker(zeros, "the state").check_output(z0, "the skip predictor g(x)")
        return z0

    def forward(self, x: torch.Tensor):
        """Returns ``(z_star, output)``; see :class:`~pycdeq.layers.output.DEQOutput`."""
        check_input(x)
        z0 = self.initial_state(x)
        x_solve = x.detach() if self.input_gradient == "final_call" else x
        if self.solver.compact:  # checked per call: f may switch between train and eval
            _check_independent(self.f)
        if self.fixed_depth > 0:
            solution = unroll(self.f, z0, self.fixed_depth, self.solver.termination, args=(x_solve,))
        else:
            solution = solve(self.f, z0, self.solver, args=(x_solve,), adjoint=self.adjoint)
            self._report_nonconvergence(solution)
        z_star, nfe = solution.z, solution.nfe
        if self.output == "f_of_iterate":
            z_star, nfe = self.f(z_star, x), nfe + 1
        packer = StatePacker(z0, "z0")
        z_star_flat = packer.pack(z_star)
        zero = z_star_flat.new_zeros(())
        skip = skip_loss(z_star_flat, packer.pack(z0)) if self.variant != "vanilla" else zero
        jacobian = zero
        if self.jacobian_reg is not None and torch.is_grad_enabled():
            jacobian = self.jacobian_reg(packer.flat_fn(self.f), z_star_flat, (x_solve,))
        return z_star, DEQOutput(nfe=nfe, status=solution.status, skip_loss=skip, jacobian_loss=jacobian,
                                 solution=solution)

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
        # Points at the line that called the layer: this method, forward, and nn.Module's
        # two call wrappers lie in between.
        warnings.warn(message, NonConvergenceWarning, stacklevel=5)

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
