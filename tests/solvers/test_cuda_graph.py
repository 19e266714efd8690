"""The CUDA-graph loop (``graph_block=K``): its options, refusals, block schedule and stop
decision, and the iteration body it captures, run eagerly on CPU (``EagerCapture``); then,
on a CUDA device only, the captured loop against the eager one and its host syncs.

On CPU the body runs through the same buffers, schedule and copy-back as a replay, in the
fixed-shape form that a graph captures (``history.fixed_shapes``), so what a replay computes
is checked here against the eager loop; what only CUDA can show (the capture itself, one
sync per block) is in the ``cuda``-marked tests at the end.
"""

from __future__ import annotations

import pytest
import torch

import pycdeq
from pycdeq import GMRES, Anderson, Broyden, FixedPoint, Status, Termination, Unrolled
from pycdeq.layers import DEQ
from pycdeq.solvers import cuda_graph, discrete
from pycdeq.solvers.cuda_graph import EagerCapture, LoopBuffers, plan
from pycdeq.solvers.history import fixed_shapes
from _cuda_sync import count_syncs  # a sibling module: pytest puts tests/solvers on sys.path

SOLVERS = {"anderson": lambda **kw: Anderson(m=3, **kw), "broyden": lambda **kw: Broyden(memory=5, **kw),
           "fixed_point": lambda **kw: FixedPoint(**kw)}
TOL = 1e-10
RATE = 0.9  # the largest per-sample contraction factor of problem()
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def problem(device="cpu", batch=6, dim=16, seed=0):
    """``z = rate_b tanh(W z + x_b)`` with per-sample rates: the samples stop far apart;
    sample 0 (rate 0) is at its fixed point from the start."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    w = w / torch.linalg.matrix_norm(w, ord=2)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    rates = torch.linspace(0.0, RATE, batch, dtype=torch.float64)[:, None]
    w, x, rates = (t.to(device) for t in (w, x, rates))
    return (lambda z: rates * torch.tanh(z @ w.T + x)), torch.zeros(batch, dim, dtype=torch.float64, device=device)


# --- options and refusals --------------------------------------------------------------------

@pytest.mark.parametrize("name", SOLVERS)
def test_graph_block_is_an_opt_in_keyword_option_of_every_discrete_solver(name):
    assert SOLVERS[name]().graph_block == 0
    assert SOLVERS[name](graph_block=8).graph_block == 8
    for bad, error in ((-1, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="graph_block"):
            SOLVERS[name](graph_block=bad)
    with pytest.raises(ValueError, match="graph_block needs fixed shapes"):
        SOLVERS[name](graph_block=4, compact=True)


def test_graph_block_takes_no_positional_slot():
    """A keyword-only field: the solvers' positional options keep their places."""
    assert Anderson(50, Termination(), False, 7).m == 7


def test_graph_loop_refuses_cpu_tensors():
    fn, z0 = problem()
    with torch.no_grad(), pytest.raises(ValueError, match="needs CUDA tensors"):
        pycdeq.solve(fn, z0, Anderson(graph_block=4))


def test_graph_loop_refuses_autograd_through_the_iterations():
    fn, z0 = problem()
    with pytest.raises(RuntimeError, match="not Unrolled"):
        pycdeq.solve(fn, z0, Anderson(graph_block=4), adjoint=Unrolled())


# --- the schedule and the stop decision --------------------------------------------------------

def test_plan_fills_the_budget_with_whole_blocks_and_an_eager_tail():
    assert plan(50, 1, 8) == (6, 1)
    assert plan(17, 1, 8) == (2, 0)
    assert plan(5, 1, 8) == (0, 4)
    assert plan(1, 1, 8) == (0, 0)


class Counting(EagerCapture):
    """The eager stand-in, counting captures and replays."""

    def __init__(self):
        self.captures = self.replays = 0

    def capture(self, body):
        self.captures += 1

        def replay():
            self.replays += 1
            body()
        return replay


def graph_solve(solver, fn, z0, capture):
    """``iterate`` with the graph loop on CPU: the eager stand-in instead of a CUDA graph, and a
    count of the host reads of the stop flag."""
    calls = []
    with fixed_shapes():  # as discrete.iterate builds it for a graph: every slot zero-filled
        loop = discrete.start(solver, lambda z: (calls.append(1), fn(z))[1], z0)
    reads = []
    running = loop.running
    loop.running = lambda: (reads.append(1), running())[1]
    iteration, nfe = cuda_graph.run(loop, solver.max_iter, solver.graph_block, capture=capture)
    assert nfe == len(calls)
    return discrete.record(loop, loop.z, iteration, nfe), len(reads)


def eager_solve(solver, fn, z0):
    with torch.no_grad():
        return discrete.iterate(solver, fn, z0)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("block", [1, 3, 8])
def test_replayed_blocks_give_the_eager_loops_per_sample_results(name, block):
    fn, z0 = problem()
    solver = SOLVERS[name](max_iter=200, termination=Termination(abstol=TOL))
    eager = eager_solve(solver, fn, z0)
    capture = Counting()
    with torch.no_grad():
        graph, reads = graph_solve(SOLVERS[name](max_iter=200, termination=Termination(abstol=TOL), graph_block=block),
                                   fn, z0, capture)
    assert eager.status.tolist()[0] == Status.CONVERGED and bool(eager.converged.all())
    assert torch.equal(graph.status, eager.status) and torch.equal(graph.iterations, eager.iterations)
    # Stopped at the same iteration, both iterates pass ||f(z) - z|| <= TOL of a contraction
    # with factor <= RATE: each within TOL / (1 - RATE) of the fixed point. (They differ at
    # most by the rounding of the fixed-size histories against the eager loop's written slots.)
    torch.testing.assert_close(graph.z, eager.z, rtol=0, atol=2 * TOL / (1 - RATE))
    torch.testing.assert_close(graph.residual, eager.residual, rtol=0, atol=2 * TOL)
    # The schedule: one eager warm-up iteration, then whole blocks until every sample has
    # stopped: the batch runs past the eager loop's stop by less than a block.
    last = int(eager.iterations.max())
    blocks = -(-(last - 1) // block)
    assert capture.captures == 1 and capture.replays == blocks
    assert graph.steps == 1 + blocks * block and eager.steps <= graph.steps < eager.steps + block
    assert graph.nfe == graph.steps + 1
    # The stop flag is read before the warm-up, after it and once per block.
    assert reads == 2 + blocks


def test_budget_ends_in_an_eager_tail_without_reading_the_flag_again():
    fn, z0 = problem()
    capture = Counting()
    with torch.no_grad():
        graph, reads = graph_solve(FixedPoint(max_iter=12, termination=Termination(abstol=1e-300), graph_block=5),
                                   fn, z0, capture)
    # 1 warm-up + 2 blocks of 5 + a tail of 1: exactly the budget, never beyond it.
    assert capture.replays == 2 and graph.steps == 12 and graph.nfe == 13 and reads == 4
    assert graph.status.tolist()[1:] == [Status.MAX_ITERS] * 5
    eager = eager_solve(FixedPoint(max_iter=12, termination=Termination(abstol=1e-300)), fn, z0)
    assert torch.equal(graph.z, eager.z) and torch.equal(graph.status, eager.status)


def test_a_batch_done_before_the_loop_captures_nothing():
    fn, z0 = problem(batch=1)  # sample 0 alone: at its fixed point from the start
    capture = Counting()
    with torch.no_grad():
        graph, reads = graph_solve(Anderson(max_iter=50, graph_block=4), fn, z0, capture)
    assert capture.captures == 0 and graph.nfe == 1 and graph.steps == 0 and reads == 1


# --- the static buffers ------------------------------------------------------------------------

class FakeLoop:
    def __init__(self, state):
        self.z = self.fz = torch.zeros(2, 3)
        self.counter = torch.zeros((), dtype=torch.long)
        self.state = state
        self.tracker = type("Tracker", (), {"per_sample_books": staticmethod(lambda: ())})()


def test_buffers_copy_a_blocks_results_back_and_keep_shared_tensors_shared():
    shared = torch.zeros(2)
    loop = FakeLoop({"a": shared, "b": shared, "c": torch.zeros(2)})
    buffers = LoopBuffers(loop)
    new = torch.ones(2)
    loop.state.update(a=new, b=new, c=torch.full((2,), 2.0))
    loop.z = loop.fz = torch.full((2, 3), 3.0)
    buffers.store(loop)
    buffers.restore(loop)
    assert loop.state["a"] is shared and loop.state["b"] is shared and shared.eq(1).all()
    assert loop.state["c"].eq(2).all() and loop.z is loop.fz and loop.z.eq(3).all()


def test_buffers_refuse_a_block_that_splits_shared_tensors():
    shared = torch.zeros(2)
    loop = FakeLoop({"a": shared, "b": shared})
    buffers = LoopBuffers(loop)
    loop.state.update(a=torch.ones(2), b=torch.ones(2))
    with pytest.raises(RuntimeError, match="one tensor"):
        buffers.store(loop)


# --- on a CUDA device ---------------------------------------------------------------------------

@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("name", SOLVERS)
def test_cuda_graph_loop_matches_the_eager_cuda_loop(name):
    fn, z0 = problem("cuda")
    results = {}
    for block in (0, 4):
        with torch.no_grad():
            results[block] = pycdeq.solve(fn, z0, SOLVERS[name](max_iter=200, termination=Termination(abstol=TOL),
                                                                graph_block=block))
    eager, graph = results[0], results[4]
    assert torch.equal(graph.status, eager.status) and torch.equal(graph.iterations, eager.iterations)
    assert bool(eager.converged.all())
    # Both loops run the same fixed-shape kernels on CUDA: equal up to rounding at most.
    scale = float(eager.z.abs().max())
    torch.testing.assert_close(graph.z, eager.z, rtol=0, atol=8 * torch.finfo(torch.float64).eps * scale)


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("name", SOLVERS)
def test_cuda_graph_loop_syncs_once_per_block(name):
    fn, z0 = problem("cuda")
    solver = SOLVERS[name](max_iter=200, termination=Termination(abstol=TOL), graph_block=8)
    with torch.no_grad():
        pycdeq.solve(fn, z0, solver)  # warm-up: kernels, handles, allocator
        sol, syncs = count_syncs(lambda: pycdeq.solve(fn, z0, solver))
    blocks = (sol.steps - 1) // 8
    assert blocks >= 2, sol.steps
    # The finite check of z0, the reads before and after the warm-up iteration, one per block,
    # and slack for the capture's own bookkeeping: far fewer than one per iteration.
    assert syncs <= blocks + 6 and syncs < sol.steps // 2, (syncs, sol.steps)


@pytest.mark.cuda
@CUDA
def test_cuda_graph_loop_trains_with_the_implicit_gradient_of_the_eager_loop():
    torch.manual_seed(0)
    f = Injected().cuda()
    x = torch.randn(8, 16, device="cuda", dtype=torch.float64)
    grads = {}
    for block in (0, 4):
        solver = Anderson(max_iter=100, termination=Termination(abstol=1e-11), graph_block=block)
        z, _ = DEQ(f, solver, adjoint=GMRES(rtol=1e-11))(x)
        grads[block] = torch.autograd.grad(z.square().sum(), f.linear.weight)[0]
    # The same fixed point to rounding, so the same gradient to the adjoint's tolerance.
    torch.testing.assert_close(grads[4], grads[0], rtol=1e-8, atol=1e-10)


class Injected(torch.nn.Module):
    """``f(z, x) = tanh(W z + x)`` with ``||W||_2 = 0.5``."""

    def __init__(self, dim=16):
        super().__init__()
        self.linear = torch.nn.Linear(dim, dim, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.mul_(0.5 / torch.linalg.matrix_norm(self.linear.weight, ord=2))

    def forward(self, z, x):
        return torch.tanh(self.linear(z) + x)


@pytest.mark.cuda
@CUDA
def test_cuda_graph_capture_of_a_syncing_fn_is_refused_with_the_cause():
    fn, z0 = problem("cuda")

    def syncing(z):
        if float(z.abs().max()) > 1e6:  # a host read: a sync, impossible in a capture
            raise AssertionError("unreachable")
        return fn(z)

    with torch.no_grad(), pytest.raises(RuntimeError, match="must not synchronise"):
        pycdeq.solve(syncing, z0, Anderson(max_iter=50, termination=Termination(abstol=TOL), graph_block=4))
