"""The loop shared by all discrete fixed-point solvers (Anderson, Broyden, damped Picard).

A discrete solver is a frozen dataclass of options that subclasses :class:`DiscreteSolver`
and implements three methods:

* ``init(z0, fz0) -> state``: the solver's working memory, built from the first evaluation;
* ``propose(state) -> z_next``: the next iterate for every sample (pure maths, no ``fn``);
* ``update(state, z, fz, active)``: record the evaluated iterate in the working memory.

:func:`iterate` drives them, once for all solvers: it evaluates ``fn``, applies the
termination rule per sample (:class:`~pycdeq.solvers.tracker.SampleTracker`) and freezes
finished samples, so a converged sample's state is bitwise unchanged afterwards and its
iteration count is its own.

One iteration is one call of :func:`step`: propose, evaluate ``fn``, freeze, update, observe,
on device tensors only (the iteration counter included), with the same shapes every time.
The host logic (the budget, reading the "any sample running?" flag, compaction) stays in
:func:`_loop`. So under ``torch.compile`` the step compiles to one graph, once, and the host
reads are the loop's only graph breaks (``docs/compile.md``); and the same step can be
captured as a CUDA graph and replayed (``graph_block``, :mod:`.cuda_graph`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Tuple

import torch

from .. import _checks
from . import cuda_graph
from .base import FlatMap, Solver
from .history import fixed_shapes
from .solution import SolverRecord
from .termination import Termination
from .tracker import SampleTracker


@dataclass(frozen=True)
class DiscreteSolver(Solver):
    """Base of the root finders; subclasses add their own options."""

    max_iter: int = 50
    termination: Termination = field(default_factory=Termination)
    # Remove finished samples from the work: once at most half of the rows still run, the
    # loop continues on those rows only (fn, solver memory and bookkeeping sliced with
    # index_select, and so are the batch-aligned args of fn). Only valid when fn treats
    # samples independently (no BatchNorm with batch statistics).
    compact: bool = False
    # CUDA only, opt-in: run the iterations as a CUDA graph of ``graph_block`` iterations,
    # captured once per solve and replayed until every sample has stopped, with one host read
    # of the stop flag per block (replacing ``termination.check_every``). 0: the eager loop.
    # Needs fixed shapes (no compaction), no host logic in fn, and a solve without autograd
    # (the implicit adjoints; not Unrolled). See :mod:`.cuda_graph`.
    graph_block: int = field(default=0, kw_only=True)

    def __post_init__(self):
        _checks.positive_int("max_iter", self.max_iter, allow_zero=True)
        if not isinstance(self.termination, Termination):
            raise TypeError(f"termination must be a Termination, got {type(self.termination).__name__}")
        if not isinstance(self.compact, bool):
            raise TypeError(f"compact must be a bool, got {type(self.compact).__name__}")
        cuda_graph.check_options(self.graph_block, self.compact)
        self.termination.check_compact(self.compact)

    # --- the three methods a solver implements -------------------------------------------
    @abstractmethod
    def init(self, z0: torch.Tensor, fz0: torch.Tensor) -> Any:
        """The working memory, built from the first evaluation ``fz0 = fn(z0)``."""

    @abstractmethod
    def propose(self, state: Any) -> torch.Tensor:
        """The next iterate of every sample (pure maths: no ``fn`` call)."""

    @abstractmethod
    def update(self, state: Any, z: torch.Tensor, fz: torch.Tensor, active: torch.Tensor) -> None:
        """Record the evaluated iterate ``z`` (``fz = fn(z)``) in the working memory."""

    def select(self, state: Any, rows: torch.Tensor, batch: int) -> Any:
        """The working memory of the batch rows ``rows`` (compaction). The default slices
        every tensor of a dict state whose first dimension is the batch."""
        return {key: value.index_select(0, rows) if torch.is_tensor(value) and value.dim() > 0
                and value.shape[0] == batch else value for key, value in state.items()}

    def solve_flat(self, fn: FlatMap, z0: torch.Tensor, args: Tuple[torch.Tensor, ...] = ()) -> SolverRecord:
        return iterate(self, fn, z0, args)


def iterate(solver: DiscreteSolver, fn: FlatMap, z0: torch.Tensor, args: Tuple[torch.Tensor, ...] = ()) -> SolverRecord:
    """Run ``solver`` on the flat map ``fn(z, *args): (batch, dim) -> (batch, dim)`` from ``z0``.

    Iteration ``k`` evaluates ``fn`` on iterate ``z_k`` (``k = 0`` is the initial guess), so
    ``nfe = iterations + 1`` for the slowest sample. The host reads the "any sample still
    running?" flag only every ``termination.check_interval`` iterations (every
    ``graph_block`` with the CUDA-graph loop): on CUDA the loop otherwise runs without
    device->host syncs, and the extra iterations are harmless because stopped samples are
    frozen by ``torch.where``.
    """
    if solver.graph_block:
        cuda_graph.check_inputs(z0)
        # The state must be built in the form the graph replays (every slot zero-filled).
        with fixed_shapes():
            loop = start(solver, fn, z0, args)
        iteration, nfe = cuda_graph.run(loop, solver.max_iter, solver.graph_block)
        return record(loop, loop.z, iteration, nfe)
    loop = start(solver, fn, z0, args)
    z, iteration, nfe = _loop(loop, iteration=0, nfe=1)
    return record(loop, z, iteration, nfe)


def start(solver: DiscreteSolver, fn: FlatMap, z0: torch.Tensor, args: Tuple[torch.Tensor, ...] = ()) -> "Iteration":
    """The loop before its first iteration: ``fn(z0)`` evaluated, the solver's memory built,
    the initial guess observed (``nfe = 1``)."""
    tracker = SampleTracker(solver.termination, z0)
    fz = fn(z0, *args)
    state = solver.init(z0, fz)
    tracker.observe(0, z0, fz)
    return Iteration(solver, fn, args, state, tracker, z0, fz)


def record(loop: "Iteration", z: torch.Tensor, iteration: int, nfe: int) -> SolverRecord:
    """Close the books of a loop that ran ``iteration`` iterations with ``nfe`` calls and
    ended at the iterates ``z``."""
    z, residual, status = loop.tracker.finish(z, loop.solver.max_iter)
    return SolverRecord(z=z, residual=residual, status=status, iterations=loop.tracker.iterations,
                        nfe=nfe, steps=iteration)


class Iteration:
    """What one iteration reads and writes: the solver's memory, the tracker's books, the
    iterate ``z``, ``fz = fn(z)`` and the iteration counter (a 0-d device tensor, so that the
    step takes no Python number that changes from one iteration to the next)."""

    def __init__(self, solver: DiscreteSolver, fn: FlatMap, args: Tuple[torch.Tensor, ...], state: Any,
                 tracker: SampleTracker, z: torch.Tensor, fz: torch.Tensor, counter: torch.Tensor | None = None):
        self.solver, self.fn, self.args, self.state, self.tracker = solver, fn, args, state, tracker
        self.z, self.fz = z, fz
        self.counter = torch.zeros((), dtype=torch.long, device=z.device) if counter is None else counter

    def step(self) -> None:
        """One iteration of every sample; stopped samples are evaluated and kept frozen."""
        self.z, self.fz, self.counter = step(self.solver, self.fn, self.args, self.state, self.tracker,
                                             self.z, self.fz, self.counter)

    def step_all_running(self) -> None:
        """:meth:`step` for a batch known (on the host) to have every sample running: no
        freezing selects (``where(all True, a, b)`` is ``a``)."""
        self.z, self.fz, self.counter = step_all_running(self.solver, self.fn, self.args, self.state,
                                                         self.tracker, self.z, self.fz, self.counter)

    def running(self) -> int:
        """How many samples still run (a host read: a sync on CUDA)."""
        return int(self.tracker.active.sum())


def _advance(solver, fn, args, state, tracker, z, fz, counter, freeze: bool):
    active = tracker.active
    proposal = solver.propose(state)
    # Finished samples are evaluated at their frozen state: fn sees no garbage proposals.
    z = torch.where(active[:, None], proposal, z) if freeze else proposal
    fz_new = fn(z, *args)
    fz = torch.where(active[:, None], fz_new, fz) if freeze else fz_new
    solver.update(state, z, fz, active)
    counter = counter + 1
    tracker.observe(counter, z, fz)
    return z, fz, counter


# Two functions, not one with a flag: under torch.compile each is one frame compiled once
# (a flag would be a guard, and its flip a recompilation).
def step(solver, fn, args, state, tracker, z, fz, counter):
    """One iteration: ``(z, fz, counter)`` after it; ``state`` and ``tracker`` are updated."""
    return _advance(solver, fn, args, state, tracker, z, fz, counter, True)


def step_all_running(solver, fn, args, state, tracker, z, fz, counter):
    """:func:`step` when every sample runs (no freezing selects)."""
    return _advance(solver, fn, args, state, tracker, z, fz, counter, False)


def _loop(loop: Iteration, *, iteration: int, nfe: int):
    """Iterate from ``iteration`` on; returns the rows' final iterates, the iteration and nfe.

    With ``solver.compact``, once at most half of the rows still run, the loop continues on
    those rows alone (a recursive call on the selected rows, with the rows of ``args``) and
    merges the result back.
    """
    solver = loop.solver
    interval = solver.termination.check_interval(loop.z.device)
    batch = loop.z.shape[0]
    while iteration < solver.max_iter:
        # Where the host reads the flags anyway (every iteration on CPU), a batch with every
        # sample running skips the two freezing selects.
        if iteration % interval == 0:
            running = loop.running()
            if running == 0:
                break
            if solver.compact and running <= batch // 2:
                return _compact(loop, iteration, nfe)
            if running == batch:
                loop.step_all_running()
                iteration, nfe = iteration + 1, nfe + 1
                continue
        loop.step()
        iteration, nfe = iteration + 1, nfe + 1
    return loop.z, iteration, nfe


def _compact(loop: Iteration, iteration: int, nfe: int):
    """Continue on the rows still running only, then merge their books back."""
    batch = loop.z.shape[0]
    rows = loop.tracker.active.nonzero()[:, 0]
    sub = loop.tracker.select(rows)
    rows_loop = Iteration(loop.solver, loop.fn, tuple(a.index_select(0, rows) for a in loop.args),
                          loop.solver.select(loop.state, rows, batch), sub, loop.z.index_select(0, rows),
                          loop.fz.index_select(0, rows), loop.counter)
    z_rows, iteration, nfe = _loop(rows_loop, iteration=iteration, nfe=nfe)
    loop.tracker.merge(rows, sub)
    return loop.z.index_copy(0, rows, z_rows), iteration, nfe
