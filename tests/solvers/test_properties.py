"""Property-based checks (hypothesis, derandomized) over random contractive problems.

``fn(z) = q_b * tanh(W z + c_b)`` on the flattened state, ``||W||_2 = 1``, so sample ``b``
is a contraction with factor ``q_b`` and ``||z - z*|| <= ||fn(z) - z|| / (1 - q_b)``. Shapes
cover vectors, conv-like ``(B, C, H, W)`` images and tuples of both; dtypes float32 and
float64; batch sizes 1..5; all three solvers.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pycdeq
from _rounding import assert_same_stop, state_bound  # a sibling module: tests/solvers is on sys.path
from pycdeq import Anderson, Broyden, FixedPoint, Status, Termination

SHAPES = [((7,),), ((2, 3, 4),), ((5,), (1, 2, 3)), ((3, 2, 2), (4,))]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
SOLVERS = {"anderson": Anderson, "broyden": Broyden, "fixed_point": FixedPoint}


def build(shapes, batch, factors, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    sizes = [math.prod(s) for s in shapes]
    dim = sum(sizes)
    w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    w = w / torch.linalg.matrix_norm(w, ord=2)
    c = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    q = torch.tensor(factors, dtype=torch.float64)[:, None]

    def flat_map(flat, w=w, c=c, q=q):
        return q.to(flat.dtype) * torch.tanh(flat @ w.to(flat.dtype).T + c.to(flat.dtype))

    def unflatten(flat):
        parts = torch.split(flat, sizes, dim=1)
        return tuple(p.reshape(batch, *s) for p, s in zip(parts, shapes))

    def flatten(state):
        return torch.cat([p.reshape(batch, -1) for p in state], dim=1)

    tuple_state = len(shapes) > 1

    def fn(state):
        out = unflatten(flat_map(flatten(state if tuple_state else (state,))))
        return out if tuple_state else out[0]

    reference = torch.zeros(batch, dim, dtype=torch.float64)
    for _ in range(2000):
        nxt = flat_map(reference)
        if torch.linalg.vector_norm(nxt - reference, dim=1).max() < 1e-15:
            break
        reference = nxt
    z0 = unflatten(torch.zeros(batch, dim, dtype=dtype))
    return fn, (z0 if tuple_state else z0[0]), reference, flatten


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    shapes=st.sampled_from(SHAPES),
    batch=st.integers(1, 5),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    solver=st.sampled_from(sorted(SOLVERS)),
    seed=st.integers(0, 2 ** 16),
    data=st.data(),
)
def test_random_contractions_converge_to_the_fixed_point_per_sample(shapes, batch, dtype, solver, seed, data):
    factors = data.draw(st.lists(st.floats(0.05, 0.8), min_size=batch, max_size=batch))
    fn, z0, reference, flatten = build(shapes, batch, factors, seed, dtype)
    tol = TOL[dtype]
    with torch.no_grad():
        sol = pycdeq.solve(fn, z0, SOLVERS[solver](max_iter=300, termination=Termination(abstol=tol)))
    # Structure is preserved.
    if isinstance(z0, tuple):
        assert isinstance(sol.z, tuple) and [p.shape for p in sol.z] == [p.shape for p in z0]
    else:
        assert sol.z.shape == z0.shape
    assert all(p.dtype == dtype for p in (sol.z if isinstance(sol.z, tuple) else (sol.z,)))
    assert sol.residual.shape == sol.status.shape == sol.iterations.shape == (batch,)
    # Every sample converged, to the requested tolerance and near the true fixed point.
    assert (sol.status == Status.CONVERGED).all()
    assert (sol.residual <= tol).all()
    z = flatten(sol.z if isinstance(sol.z, tuple) else (sol.z,)).double()
    error = torch.linalg.vector_norm(z - reference, dim=1)
    q = torch.tensor(factors, dtype=torch.float64)
    slack = 1e-5 if dtype == torch.float32 else 1e-13
    assert (error <= tol / (1 - q) + slack).all(), (error, tol / (1 - q))
    assert sol.nfe == int(sol.iterations.max()) + 1


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    batch=st.integers(2, 5),
    solver=st.sampled_from(sorted(SOLVERS)),
    seed=st.integers(0, 2 ** 16),
    data=st.data(),
)
def test_batch_results_match_each_sample_solved_alone(batch, solver, seed, data):
    """Per-sample independence: a sample's iterations and fixed point do not depend on
    which other samples share its batch. A batch and a single sample run other kernels, so
    this holds to rounding (see ``_rounding``): same stop unless a residual lands within
    rounding of the tolerance, and fixed points within the rounding bound."""
    factors = data.draw(st.lists(st.floats(0.05, 0.9), min_size=batch, max_size=batch))
    fn, z0, _, _ = build(((6,),), batch, factors, seed, torch.float64)
    tol = 1e-9
    make = lambda: SOLVERS[solver](max_iter=300, termination=Termination(abstol=tol))
    q = torch.tensor(factors, dtype=torch.float64)

    def recorded(map_):
        history = []

        def wrapped(z):
            out = map_(z)
            history.append(torch.linalg.vector_norm(out - z, dim=1))
            return out

        return wrapped, history

    with torch.no_grad():
        together_fn, together_history = recorded(fn)
        together = pycdeq.solve(together_fn, z0, make())
        bound = state_bound(together.z, q, terms=z0.shape[1])
        for i in range(batch):
            single_fn, history = recorded(lambda z, i=i: fn(z.expand(batch, -1))[i:i + 1])
            alone = pycdeq.solve(single_fn, z0[i:i + 1], make())
            band = float((1 + q[i]) * bound[i])
            assert_same_stop(alone.iterations.item(), together.iterations[i].item(),
                             [r[0] for r in history], [r[i] for r in together_history], tol, band)
            if alone.iterations.item() == together.iterations[i].item():
                assert torch.linalg.vector_norm(alone.z[0] - together.z[i]) <= bound[i]
