"""How the gradient of a fixed point is computed: the adjoint options.

By the implicit function theorem, at ``z* = f(z*, theta)`` the gradient of a loss ``L`` is

    dL/dtheta = g^T  df/dtheta (z*),   where   (I - J)^T g = dL/dz*,   J = df/dz (z*),

so the backward pass is one linear solve with vector-Jacobian products ``u -> J^T u`` and
one VJP of ``f`` w.r.t. its parameters and inputs. The options here choose how to solve it:

* :class:`GMRES`: matrix-free Krylov solve, one Krylov space per sample (the default);
* :class:`FixedPointAdjoint`: iterate ``g <- J^T g + dL/dz*`` with any discrete solver
  (plain Neumann series with ``FixedPoint``, or ``Anderson`` / ``Broyden`` on it);
* :class:`JFB`: Jacobian-free backprop, ``g = dL/dz*`` (the zeroth Neumann term; cheap,
  approximate, with the *correct* sign, unlike the reference's unused ``:jfb`` branch);
* :class:`Unrolled`: no implicit gradient at all: autograd through every solver iteration
  (for pretraining and as a check of the others; memory grows with the iterations).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Tuple

import torch

from .. import _checks
from ..solvers import Anderson, DiscreteSolver, Solver, Termination
from ..solvers.base import FlatMap
from .base import VJP, Adjoint, Attached, ImplicitAdjoint
from .gmres import batched_gmres, whole_batch_gmres
from .stats import LinearSolveReport


@dataclass(frozen=True)
class GMRES(ImplicitAdjoint):
    """Solve ``(I - J^T) g = v`` with restarted GMRES, started from ``g = v``.

    A sample stops when ``||v - (I - J^T) g|| <= max(atol, rtol * ||v||)``; ``max_iter``
    bounds the VJPs on the batch, restarts included.

    ``stopping="batch"`` is the reference's rule instead (DeepEquilibriumNetworks.jl v0.2.6
    with Krylov.jl, :func:`~pycdeq.adjoints.gmres.whole_batch_gmres`): one Krylov space for
    the whole batch as a single vector, started from ``g = 0``, stopped when
    ``||v - (I - J^T) g|| <= atol + rtol * ||v||`` in the whole batch's 2-norm. When
    ``||v|| <= atol / (1 - rtol)`` (0.0526 at the paper's 0.05 / 0.05) it does no VJP and
    returns ``g = 0``: the solve then passes **no** gradient to ``f``'s parameters and input,
    so with the layer option ``output="f_of_iterate"`` the gradient is exactly the one-step
    gradient through the final ``f(u*, x)`` call (the reference's behaviour), and with
    ``output="iterate"`` it is zero. The stats then repeat the batch's values per sample.
    """

    rtol: float = 1e-5
    atol: float = 1e-10
    max_iter: int = 40
    restart: int = 20
    check_every: int | None = None
    stopping: str = "sample"

    name: ClassVar[str] = "gmres"

    def __post_init__(self):
        _checks.positive("rtol", self.rtol, allow_zero=True)
        _checks.positive("atol", self.atol, allow_zero=True)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol cannot both be 0")
        _checks.positive_int("max_iter", self.max_iter)
        _checks.positive_int("restart", self.restart)
        if self.check_every is not None:
            _checks.positive_int("check_every", self.check_every)
        _checks.one_of("stopping", self.stopping, ("sample", "batch"))

    def solve(self, vjp: VJP, v: torch.Tensor) -> Tuple[torch.Tensor, LinearSolveReport]:
        check_every = self.check_every or (1 if v.device.type == "cpu" else 4)
        # Under mixed precision the cotangent can be float16/bfloat16: Givens rotations and
        # the triangular solve need float32 (and have no half kernels), so the Krylov
        # arithmetic runs in float32 while the VJPs see the model's own dtype.
        work = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype

        def operator(u: torch.Tensor) -> torch.Tensor:
            return u - vjp(u.to(v.dtype)).to(work)

        if self.stopping == "batch":
            g, residual, iterations, converged, products = whole_batch_gmres(
                operator, v.to(work), rtol=self.rtol, atol=self.atol, max_iter=self.max_iter,
                restart=self.restart, check_every=check_every)
            return g.to(v.dtype), LinearSolveReport(iterations, residual, converged, products)
        g, residual, iterations, converged, products = batched_gmres(
            operator, v.to(work), v.to(work), rtol=self.rtol, atol=self.atol,
            max_iter=self.max_iter, restart=self.restart, check_every=check_every)
        return g.to(v.dtype), LinearSolveReport(iterations, residual, converged, products)


@dataclass(frozen=True)
class FixedPointAdjoint(ImplicitAdjoint):
    """Solve ``g = J^T g + v`` with a discrete fixed-point solver, started from ``g = v``.

    The solver's termination rule applies to ``||J^T g + v - g||`` per sample.
    """

    solver: DiscreteSolver = field(default_factory=lambda: Anderson(
        m=5, max_iter=40, termination=Termination(mode="abs", abstol=1e-8)))

    name: ClassVar[str] = "fixed_point"

    def __post_init__(self):
        if not isinstance(self.solver, DiscreteSolver):
            raise TypeError(f"solver must be a discrete solver (Anderson, Broyden, FixedPoint), "
                            f"got {type(self.solver).__name__}")

    def solve(self, vjp: VJP, v: torch.Tensor) -> Tuple[torch.Tensor, LinearSolveReport]:
        record = self.solver.solve_flat(lambda g: vjp(g) + v, v)
        return record.z, LinearSolveReport(record.iterations, record.residual, record.converged, record.nfe)


@dataclass(frozen=True)
class JFB(ImplicitAdjoint):
    """Jacobian-free backprop: ``g = dL/dz*`` (Fung et al. 2022). No VJPs in the solve."""

    name: ClassVar[str] = "jfb"

    def solve(self, vjp: VJP, v: torch.Tensor) -> Tuple[torch.Tensor, LinearSolveReport]:
        zeros = torch.zeros(v.shape[0], device=v.device)
        return v, LinearSolveReport(zeros.long(), zeros.to(v.dtype), zeros.bool(), 0)


@dataclass(frozen=True)
class Unrolled(Adjoint):
    """Backpropagate through the solver's iterations (no implicit gradient; memory grows
    with the iterations)."""

    name: ClassVar[str] = "unrolled"

    def attach(self, solver: Solver, fn: FlatMap, start: torch.Tensor,
               args: Tuple[torch.Tensor, ...]) -> Attached:
        record = solver.solve_flat(fn, start, args)
        return Attached(record, record.z, None, extra_nfe=0)
