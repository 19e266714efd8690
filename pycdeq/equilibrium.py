"""``solve``: find ``z* = fn(z*, *args)`` for a batch, with the chosen solver and gradient.

The data path: the state is packed into one flat ``(batch, dim)`` tensor
(:class:`~pycdeq.solvers.packing.StatePacker`); the adjoint runs the solver on it
(:meth:`Adjoint.attach <pycdeq.adjoints.Adjoint.attach>`: without autograd for an implicit
gradient, through the iterations for ``Unrolled``); the solver returns its
:class:`~pycdeq.solvers.SolverRecord`; and the :class:`~pycdeq.solvers.Solution` is built
from it once, here, in the user's state structure.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch

from . import _checks
from .adjoints import GMRES, Adjoint
from .solvers import Solution, Solver, SolverRecord, Status, Termination
from .solvers.base import FlatMap
from .solvers.packing import StatePacker
from .solvers.solution import State


def _checked_args(args: Sequence[torch.Tensor], batch: int) -> Tuple[torch.Tensor, ...]:
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of tensors, got {type(args).__name__}")
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor) or a.dim() < 1 or a.shape[0] != batch:
            got = f"shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(f"args[{i}] must be a tensor with the batch ({batch}) as its first "
                             f"dimension, got {got}; capture other inputs in fn instead")
    return tuple(args)


def _prepare(fn: Callable[..., State], z0: State, args: Sequence[torch.Tensor]
             ) -> Tuple[StatePacker, FlatMap, torch.Tensor, Tuple[torch.Tensor, ...]]:
    """Check the inputs; returns the packer, the flat map, the flat start and the args."""
    if not callable(fn):
        raise TypeError(f"fn must be callable fn(z, *args), got {type(fn).__name__}")
    packer = StatePacker(z0, "z0")
    for i, part in enumerate(z0 if packer.is_tuple else (z0,)):
        _checks.finite_tensor(f"z0[{i}]" if packer.is_tuple else "z0", part)
    return packer, packer.flat_fn(fn), packer.pack(z0).detach(), _checked_args(args, packer.batch)


def solve(fn: Callable[..., State], z0: State, solver: Solver, *, args: Sequence[torch.Tensor] = (),
          adjoint: Adjoint | None = None) -> Solution:
    """Solve ``z = fn(z, *args)`` per sample from the initial guess ``z0``.

    ``fn`` acts on a batch (batch first); the state may be a tensor or a tuple of tensors
    (multiscale). ``args`` are batch-aligned tensors (an injected input ``x``, say) passed to
    every call of ``fn``; a compacting solver (``compact=True``) evaluates ``fn`` on the rows
    still running and hands it the same rows of ``args``, so ``fn`` must treat samples
    independently. ``solver`` is a discrete solver (``Anderson``, ``Broyden``,
    ``FixedPoint``) or an ODE method, which integrates ``dz/dt = fn(z) - z`` to steady state.

    Gradients: when autograd is enabled, the returned ``solution.z`` is differentiable with
    respect to ``args`` and everything ``fn`` depends on, through ``adjoint`` (default
    :class:`~pycdeq.GMRES`). ``z0`` receives no gradient through the solve (as in
    DeepEquilibriumNetworks.jl); layers that need one (the skip loss) use ``z0`` directly.
    Under ``torch.no_grad()`` no graph is built and no extra ``fn`` call is made.
    """
    adjoint = GMRES() if adjoint is None else adjoint
    if not isinstance(adjoint, Adjoint):
        raise TypeError(f"adjoint must be a pycdeq Adjoint (GMRES, FixedPointAdjoint, JFB, Unrolled), "
                        f"got {type(adjoint).__name__}")
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a pycdeq Solver (e.g. Anderson(), Tsit5()), got {type(solver).__name__}")
    packer, flat_fn, start, batch_args = _prepare(fn, z0, args)
    if torch.is_grad_enabled():
        record, z, stats, extra_nfe = adjoint.attach(solver, flat_fn, start, batch_args)
    else:
        record = solver.solve_flat(flat_fn, start, batch_args)
        z, stats, extra_nfe = record.z, None, 0
    return Solution.from_record(record, z=packer.unpack(z), z0=z0, extra_nfe=extra_nfe, adjoint=stats)


def unroll(fn: Callable[..., State], z0: State, depth: int, termination: Termination, *,
           args: Sequence[torch.Tensor] = ()) -> Solution:
    """``depth`` plain applications of ``fn`` from ``z0``, differentiated by backprop
    (pretraining / warm-up: ``nfe = depth``). The reported residual is that of the last step,
    ``||fn(z_{d-1}) - z_{d-1}||`` (no extra call), and a sample counts as converged if it
    passes ``termination`` there."""
    _checks.positive_int("depth", depth)
    packer, flat_fn, _, batch_args = _prepare(fn, z0, args)
    previous = z = packer.pack(z0)
    for _ in range(depth):
        previous, z = z, flat_fn(z, *batch_args)
    residual = termination.sample_norm(z - previous).detach()
    converged = termination.converged(residual, termination.sample_norm(z).detach())
    status = torch.where(converged, Status.CONVERGED, Status.MAX_ITERS).to(torch.int8)
    iterations = torch.full_like(residual, depth, dtype=torch.long)
    record = SolverRecord(z=z, residual=residual, status=status, iterations=iterations, nfe=depth, steps=depth)
    return Solution.from_record(record, z=packer.unpack(z), z0=z0)
