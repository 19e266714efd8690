"""Maps without a fixed point are never reported converged, whatever the solver.

``z -> z + c`` has no fixed point, but in floating point ``fl(z + c) == z`` once ``|z|`` is
past ``|c| / eps`` (about 2e6 for ``c = 0.1`` in float32): a residual that vanishes only by
rounding. Broyden used to get there in three steps (a secant pair built from rounding noise
made its inverse Jacobian ~``1 / eps``) and reported every sample converged with residual 0.
Every solver must report ``MAX_ITERS`` with the true residual, under the default
termination, with the divergence guard and in relative mode; a rootless sample in a batch
must not disturb the others.
"""

from __future__ import annotations

import math

import pytest
import torch

import pycdeq
from pycdeq import Anderson, Broyden, FixedPoint, Status, Termination

SOLVERS = {"broyden": Broyden, "anderson": Anderson, "fixed_point": FixedPoint}
TERMINATIONS = {"default": Termination(), "safe": Termination(safe=True), "rel": Termination(mode="rel")}


@pytest.mark.parametrize("max_iter", [30, 300])
@pytest.mark.parametrize("termination", TERMINATIONS)
@pytest.mark.parametrize("name", SOLVERS)
def test_shift_map_has_no_fixed_point_and_is_never_called_converged(name, termination, max_iter):
    # The reproduction of the report (float32, max_iter=30), and a longer run: in relative
    # mode a solver thrown 1e4 |c| far by noise would pass ||r|| <= 1e-4 ||fn(z)||.
    sol = pycdeq.solve(lambda z: z + 0.1, torch.zeros(4, 8),
                       SOLVERS[name](max_iter=max_iter, termination=TERMINATIONS[termination]))
    assert sol.status.tolist() == [Status.MAX_ITERS] * 4
    # The true residual is 0.1 * sqrt(8) everywhere; for |z| < 1e3 it is computed to 1e-4
    # relative (float32 ulp of 1e3 is 6e-5, against 0.1).
    torch.testing.assert_close(sol.residual, torch.full((4,), 0.1 * math.sqrt(8)), rtol=1e-3, atol=0)
    # Nothing moves the iterate faster than the residual: a Picard step per iteration
    # reaches |z_i| = 0.1 max_iter.
    assert sol.z.abs().max() <= 0.1 * max_iter * (1 + 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("termination", ["default", "safe"])
def test_broyden_steps_stay_where_a_residual_cannot_round_to_zero(dtype, termination):
    """``z -> z + c (1 + sin(z) / 2)`` has no fixed point (residual >= |c| / 2 per element),
    yet its Jacobian is a real one: a secant model sees the map nearly flat and Newton-like
    steps grow ~30x per iteration, to where ``fl(z + r) == z``. The step cap (``||g|| /
    sqrt(eps)``) keeps ``eps |z|`` below the residual for far more than 300 iterations."""
    gen = torch.Generator().manual_seed(4)
    c = torch.randn(6, 100, generator=gen, dtype=torch.float64).to(dtype)
    z0 = (1e3 * torch.randn(6, 100, generator=gen, dtype=torch.float64)).to(dtype)
    fn = lambda z: z + c * (1 + 0.5 * torch.sin(z))
    with torch.no_grad():
        sol = pycdeq.solve(fn, z0, Broyden(max_iter=300, termination=TERMINATIONS[termination]))
    assert not sol.converged.any(), sol.status
    floor = 0.5 * torch.linalg.vector_norm(c, dim=1)  # ||r|| >= ||c|| / 2, exactly
    assert (sol.residual >= floor * (1 - 1e-3)).all()


def _contractions_and_a_shift(rootless: bool, batch=5, dim=8):
    """Samples 0..3: ``tanh(W z + x_b)`` with ``||W||_2 = 0.8``; sample 4: ``z + 0.1`` (or, with
    ``rootless=False``, the same contraction), all in float32 as in the report."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(dim, dim, generator=gen)
    w = 0.8 * w / torch.linalg.matrix_norm(w, ord=2)
    x = torch.randn(batch, dim, generator=gen)
    inputs = []

    def fn(z):
        inputs.append(z.clone())
        out = torch.tanh(z @ w.T + x)
        if rootless:
            out[-1] = z[-1] + 0.1
        return out

    fn.inputs = inputs
    return fn, torch.zeros(batch, dim)


@pytest.mark.parametrize("termination", TERMINATIONS)
@pytest.mark.parametrize("name", SOLVERS)
def test_one_rootless_sample_is_not_converged_and_the_others_are_untouched(name, termination):
    term = TERMINATIONS[termination]
    make = lambda: SOLVERS[name](max_iter=60, termination=term)
    clean_fn, z0 = _contractions_and_a_shift(rootless=False)
    dirty_fn, _ = _contractions_and_a_shift(rootless=True)
    with torch.no_grad():
        clean = pycdeq.solve(clean_fn, z0, make())
        dirty = pycdeq.solve(dirty_fn, z0, make())
    assert dirty.status[-1] == Status.MAX_ITERS
    assert dirty.residual[-1] >= 0.1 * math.sqrt(8) * (1 - 1e-4)
    assert dirty.converged[:-1].all()
    # Rows do not mix (same machine, same kernels, same batch shape): bitwise the same.
    assert torch.equal(dirty.z[:-1], clean.z[:-1])
    assert torch.equal(dirty.iterations[:-1], clean.iterations[:-1])
    # Each converged sample is frozen from its stop on: fn sees it unchanged.
    for i, k in enumerate(dirty.iterations[:-1].tolist()):
        for later in dirty_fn.inputs[k:]:
            assert torch.equal(later[i], dirty.z[i])


class _Block(torch.nn.Module):
    """``f(z, x) = tanh(W z + x)``, ``||W||_2 = 0.5``: a contraction with factor 0.5. Linear
    and tanh both run in float16 and bfloat16 on CPU (torch >= 2)."""

    def __init__(self, dim):
        super().__init__()
        self.lin = torch.nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.lin.weight.mul_(0.5 / torch.linalg.matrix_norm(self.lin.weight, ord=2))

    def forward(self, z, x):
        return torch.tanh(self.lin(z) + x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_anderson_runs_in_half_precision_and_lands_on_the_fixed_point(dtype):
    dim = 16
    block = _Block(dim).double()
    x = torch.randn(4, dim, dtype=torch.float64)
    eps = torch.finfo(dtype).eps
    # The max-norm residual of a half-precision iterate is a few ulps of |z| < 1 at best.
    term = Termination(norm="max", abstol=4 * eps)
    z, solution = pycdeq.DEQ(block.to(dtype), Anderson(max_iter=50, termination=term))(x.to(dtype))
    assert z.dtype == dtype and solution.converged.all()
    z.float().sum().backward()  # the implicit backward (GMRES) runs too
    assert block.lin.weight.grad.dtype == dtype and torch.isfinite(block.lin.weight.grad).all()
    # Reference: the float64 fixed point of the float64 block (Picard, factor 0.5, 200 steps).
    block = block.double()
    reference = torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(200):
            reference = block(reference, x)
    # z solves the rounded map: z = f(z) + r + d, |r| <= abstol and d the rounding of one
    # half-precision evaluation (the weights, W z + x and tanh, each <= eps/2 relative, of
    # magnitudes <= 1 + |x| + ||W z||): ||z - z*||_2 <= sqrt(dim) (|r| + |d|)_max / (1 - 0.5).
    d = 1.5 * eps * (2 + x.abs().max())
    bound = math.sqrt(dim) * (4 * eps + d) / 0.5
    error = torch.linalg.vector_norm(z.double() - reference, dim=1)
    assert (error <= bound).all(), (error, bound)


def test_anderson_gram_matrix_does_not_overflow_in_float16():
    """||r||^2 of a residual of 1 per element over 2^17 elements is 131072, past float16's
    65504: accumulated in float16 the Gram matrix is inf and every step NaN."""
    z0 = torch.zeros(1, 2 ** 17, dtype=torch.float16)
    eps = torch.finfo(torch.float16).eps
    term = Termination(norm="max", abstol=2 * eps)  # one ulp of the fixed point 2
    with torch.no_grad():
        sol = pycdeq.solve(lambda z: 0.5 * z + 1, z0, Anderson(max_iter=20, termination=term))
    assert sol.status.tolist() == [Status.CONVERGED]
    assert ((sol.z.double() - 2).abs() <= 2 * eps).all()
