"""CUDA: the discrete solvers and adjoints give the CPU results, and their hot loops do not
synchronise with the host on every iteration (``Termination.check_interval`` reads the
"any sample running?" flag every 8 iterations there; GMRES every 4 Arnoldi steps).

Skipped without a CUDA device. Host syncs are counted with
``torch.cuda.set_sync_debug_mode("warn")``, which warns on every synchronising call.
"""

from __future__ import annotations


import pytest
import torch

import pycdeq
from pycdeq import GMRES, Anderson, Broyden, FixedPoint, FixedPointAdjoint, Status, Termination
from _cuda_sync import count_syncs  # a sibling module: pytest puts tests/solvers on sys.path

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SOLVERS = {"anderson": Anderson, "broyden": Broyden, "fixed_point": FixedPoint}


def problem(device, dtype=torch.float64, batch=6, dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    w = 0.9 * w / torch.linalg.matrix_norm(w, ord=2)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    scale = torch.linspace(0.3, 1.0, batch, dtype=torch.float64)[:, None]  # samples stop apart
    w, x, scale = (t.to(device, dtype) for t in (w, x, scale))
    return (lambda z: scale * torch.tanh(z @ w.T + x)), torch.zeros(batch, dim, device=device, dtype=dtype)



@pytest.mark.parametrize("name", SOLVERS)
def test_cuda_solve_matches_cpu_per_sample(name):
    solver = SOLVERS[name](max_iter=200, termination=Termination(abstol=1e-10))
    results = {}
    for device in ("cpu", "cuda"):
        fn, z0 = problem(device)
        with torch.no_grad():
            results[device] = pycdeq.solve(fn, z0, solver)
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu.z.device.type == "cuda" and gpu.status.device.type == "cuda"
    assert (gpu.status == Status.CONVERGED).all()
    # Not bitwise (other kernels): each is within abstol / (1 - q) = 1e-9 of the fixed point
    # (q = 0.9 scale <= 0.9), so they are within 2e-9 of each other.
    torch.testing.assert_close(gpu.z.cpu(), cpu.z, rtol=0, atol=2e-9)
    assert (gpu.iterations.cpu() - cpu.iterations).abs().max() <= 1
    # The loop reads the flags every 8 iterations: up to 7 extra batch calls, results unchanged.
    assert cpu.nfe <= gpu.nfe <= cpu.nfe + 7


@pytest.mark.parametrize("name", SOLVERS)
def test_cuda_forward_loop_syncs_only_every_check_interval(name):
    fn, z0 = problem("cuda")
    solver = SOLVERS[name](max_iter=200, termination=Termination(abstol=1e-10))
    with torch.no_grad():
        pycdeq.solve(fn, z0, solver)  # warm-up: kernels, allocator
        sol, syncs = count_syncs(lambda: pycdeq.solve(fn, z0, solver))
    iterations = sol.steps
    assert iterations >= 16, iterations
    # The finite check of z0, one read every 8 iterations and the final one, with slack: far
    # fewer than one per iteration.
    assert syncs <= iterations // 8 + 4 < iterations, (syncs, iterations)


def test_cuda_gmres_backward_syncs_every_few_steps_and_matches_cpu():
    grads = {}
    for device in ("cpu", "cuda"):
        fn, z0 = problem(device)
        w = torch.ones(z0.shape[1], device=device, dtype=z0.dtype, requires_grad=True)
        sol = pycdeq.solve(lambda z: fn(z * w), z0, Anderson(max_iter=200, termination=Termination(abstol=1e-11)),
                           adjoint=GMRES(rtol=1e-11, atol=1e-14, max_iter=60, restart=30))
        loss = (sol.z ** 2).sum()
        if device == "cuda":
            _, syncs = count_syncs(loss.backward)
            steps = int(sol.adjoint.iterations.max())
            assert syncs <= 2 + steps // 4 + 2, (syncs, steps)
        else:
            loss.backward()
        grads[device] = w.grad
    torch.testing.assert_close(grads["cuda"].cpu(), grads["cpu"], rtol=1e-8, atol=1e-10)


def test_cuda_fixed_point_adjoint_matches_cpu():
    grads = {}
    for device in ("cpu", "cuda"):
        fn, z0 = problem(device)
        w = torch.ones(z0.shape[1], device=device, dtype=z0.dtype, requires_grad=True)
        adjoint = FixedPointAdjoint(Anderson(max_iter=200, termination=Termination(abstol=1e-12)))
        sol = pycdeq.solve(lambda z: fn(z * w), z0, Anderson(max_iter=200, termination=Termination(abstol=1e-11)),
                           adjoint=adjoint)
        (sol.z ** 2).sum().backward()
        assert sol.adjoint.converged.all()
        grads[device] = w.grad
    torch.testing.assert_close(grads["cuda"].cpu(), grads["cpu"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", SOLVERS)
def test_cuda_nan_sample_is_non_finite_without_stopping_the_others(name):
    fn, z0 = problem("cuda")

    def bad(z):
        out = fn(z).clone()
        out[2] = float("nan")
        return out

    with torch.no_grad():
        sol = pycdeq.solve(bad, z0, SOLVERS[name](max_iter=200, termination=Termination(abstol=1e-10)))
    assert sol.status[2] == Status.NON_FINITE
    assert (sol.status[[0, 1, 3, 4, 5]] == Status.CONVERGED).all()
    assert torch.isfinite(sol.z).all()
