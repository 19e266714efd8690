"""``torch.compile`` around a DEQ: each solver's iteration compiles once, whatever the number
of iterations or ring-buffer slots, with a fixed number of graph breaks, and the compiled
model gives the eager results.

Counted with dynamo's own counters (``torch._dynamo.utils.counters``: frames compiled, graphs,
graph breaks) after ``torch._dynamo.reset()``. ``backend="eager"`` runs the captured graphs
op by op: it counts what dynamo does without paying for code generation (slow on 2 cores).
A short and a long solve of the same model must cost the same compilation: a Python int
that changes per iteration (a ring slot, a counter) would compile one more frame per value.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import clear_compilation_metrics, counters, get_compilation_metrics

import pycdeq
from pycdeq import VCAB3, Anderson, Broyden, FixedPoint, Status, Termination, Tsit5
from pycdeq.layers import DEQ

DIM, BATCH = 6, 4
ABSTOL = 1e-9
CONTRACTION = 0.6  # ||W||_2 of f below: tanh is 1-Lipschitz, so f is a contraction

SOLVERS = {  # small memories: the long solve wraps around the ring several times
    "anderson": lambda n: Anderson(m=3, max_iter=n, termination=Termination(abstol=ABSTOL)),
    "broyden": lambda n: Broyden(memory=4, max_iter=n, termination=Termination(abstol=ABSTOL)),
    "fixed_point": lambda n: FixedPoint(max_iter=n, termination=Termination(abstol=ABSTOL)),
    "tsit5": lambda n: Tsit5(rtol=1e-5, atol=1e-5, max_steps=n, termination=Termination(abstol=1e-4)),
    "vcab3": lambda n: VCAB3(rtol=1e-5, atol=1e-5, max_steps=n, termination=Termination(abstol=1e-4)),
}
SHORT = 2
LONG = {"anderson": 40, "broyden": 40, "fixed_point": 100, "tsit5": 100, "vcab3": 300}
HOST_READ = "Unsupported Tensor.item() call"  # dynamo's reason for int(t), bool(t), t.item()


class Dense(torch.nn.Module):
    """``f(z, x) = tanh(W z + x)`` with ``||W||_2 = CONTRACTION``."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64)
        self.w = torch.nn.Parameter(w * CONTRACTION / torch.linalg.matrix_norm(w, ord=2))

    def forward(self, z, x):
        return torch.tanh(z @ self.w.T + x)


def inputs(seed):
    """Sample 0 is at its fixed point from the start (z* = 0 = z0): it stops at iteration 0,
    so every solve runs the loop's masked step, short and long alike."""
    x = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[0] = 0
    return x


def compiled_forward(model, x):
    with torch.no_grad():
        return model(x)


def pycdeq_frames():
    """The frames of pycdeq's code that dynamo compiled (recompilations included). Counted
    from the compilation records, not ``counters["frames"]``, which also counts library
    frames that happen to run inside the compiled region (garbage-collection callbacks)."""
    return [m for m in get_compilation_metrics() if f"{os.sep}pycdeq{os.sep}" in (m.co_filename or "")]


def compile_counts():
    """(pycdeq frames compiled, graphs, graph breaks) since the last reset."""
    return len(pycdeq_frames()), counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def reset():
    torch._dynamo.reset()
    counters.clear()
    clear_compilation_metrics()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    reset()
    yield
    reset()


def fresh_counts(model, x):
    """Compile ``model`` afresh and run it once on ``x``: the counts, the compiled model and its
    output. (The eager model runs first: values computed once and cached, such as a tableau's
    stability boundary, would otherwise be traced by the first compiled run only.)"""
    compiled_forward(model, x)
    reset()
    compiled = torch.compile(model, backend="eager")
    out = compiled_forward(compiled, x)
    return compile_counts(), compiled, out


def check_matches_eager(model, compiled_out, x):
    z, out = compiled_out
    z_eager, eager = compiled_forward(model, x)
    assert torch.equal(out.status, eager.status) and bool(out.solution.converged.all())
    assert torch.equal(out.solution.iterations, eager.solution.iterations)
    # Both are iterates that passed ||f(z) - z|| <= tol of a contraction with factor q: each
    # lies within tol / (1 - q) of the fixed point. (The compiled solver works on fixed-size
    # histories, the eager one on the written slots: they differ by rounding.)
    tol = out.solution.residual.max().item() + eager.solution.residual.max().item()
    torch.testing.assert_close(z, z_eager, rtol=0, atol=tol / (1 - CONTRACTION))


@pytest.mark.parametrize("name", SOLVERS)
def test_compiled_model_compiles_each_step_once_and_matches_eager(name):
    x = inputs(1)
    short, _, (_, out) = fresh_counts(DEQ(Dense(), SOLVERS[name](SHORT), on_nonconvergence="ignore"), x)
    assert out.solution.steps == SHORT
    model = DEQ(Dense(), SOLVERS[name](LONG[name]), on_nonconvergence="ignore")
    long, compiled, out = fresh_counts(model, x)
    assert out[1].solution.steps > 4 * SHORT
    # A solve through many iterations and ring slots compiles exactly what a 2-step one does.
    assert short == long, (short, long)
    assert not [m.co_name for m in pycdeq_frames() if m.recompile_reason]
    # Every graph break is a host read (the stop flag, the input checks): docs/compile.md.
    assert all(reason.startswith(HOST_READ) for reason in counters["graph_break"]), list(counters["graph_break"])
    check_matches_eager(model, out, x)
    first = len(pycdeq_frames())
    for seed in (2, 3, 4):  # other inputs: other iteration counts
        x = inputs(seed) * (1 + seed / 2)
        check_matches_eager(model, compiled_forward(compiled, x), x)
    # Later solves compile nothing but, once, the code after the solve that reads the batch's
    # nfe (a Python int: specialised on its first value, made dynamic when it first changes).
    later = pycdeq_frames()[first:]
    assert len(later) <= 3 and all("nfe" in m.recompile_reason for m in later), [m.co_name for m in later]


def test_compiled_f_compiles_once_per_autograd_mode():
    f = torch.compile(Dense(), backend="eager")
    model = DEQ(f, SOLVERS["anderson"](LONG["anderson"]), on_nonconvergence="ignore")
    for seed in (1, 2):
        z, _ = model(inputs(seed))  # the solve without autograd, the implicit gradient's call with it
        z.sum().backward()
        compiled_forward(model, inputs(seed))
    frames, graphs, breaks = compile_counts()
    assert [m.co_name for m in get_compilation_metrics()] == ["forward", "forward"]
    assert (graphs, breaks) == (2, 0)


def test_compiled_solve_reports_a_non_finite_sample_as_the_eager_one():
    """A sample that goes NaN is reported, and returns its best finite iterate, as in eager mode."""
    f, solver = Dense(), SOLVERS["anderson"](LONG["anderson"])
    x = inputs(1)
    x[2] = float("nan")

    def solve(x):
        with torch.no_grad():
            return pycdeq.solve(f, torch.zeros_like(x), solver, args=(x,))

    eager, compiled = solve(x), torch.compile(solve, backend="eager")(x)
    assert eager.status.tolist() == [Status.CONVERGED, Status.CONVERGED, Status.NON_FINITE, Status.CONVERGED]
    assert torch.equal(compiled.status, eager.status) and torch.equal(compiled.iterations, eager.iterations)
    assert torch.equal(compiled.z[2], torch.zeros(DIM, dtype=torch.float64))  # its best finite iterate: z0
    tol = compiled.residual[eager.converged].max().item() + eager.residual[eager.converged].max().item()
    torch.testing.assert_close(compiled.z, eager.z, rtol=0, atol=tol / (1 - CONTRACTION))
