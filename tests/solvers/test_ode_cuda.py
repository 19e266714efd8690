"""CUDA: the ODE solvers give the CPU results, and their loops read the "any sample still
running?" flag only every ``Termination.check_interval`` steps (8 on CUDA).

Skipped without a CUDA device. Host syncs are counted with
``torch.cuda.set_sync_debug_mode("warn")``, which warns on every synchronising call.
"""

from __future__ import annotations


import pytest
import torch

import pycdeq
from pycdeq import GMRES, VCAB3, Status, Termination, Tsit5
from _cuda_sync import count_syncs  # a sibling module: pytest puts tests/solvers on sys.path

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def problem(device, batch=6, dim=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    w = 0.9 * w / torch.linalg.matrix_norm(w, ord=2)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    scale = torch.linspace(0.3, 1.0, batch, dtype=torch.float64)[:, None]  # samples stop apart
    return tuple(t.to(device) for t in (w, x, scale))



@pytest.mark.parametrize("method_cls", [Tsit5, VCAB3])
def test_cuda_steady_state_matches_cpu_and_syncs_every_eighth_step(method_cls):
    method = method_cls(rtol=1e-9, atol=1e-9, max_steps=3000, termination=Termination(abstol=1e-8))
    results = {}
    for device in ("cpu", "cuda"):
        w, x, scale = problem(device)
        fn = lambda z: scale * torch.tanh(z @ w.T + x)  # noqa: E731
        z0 = torch.zeros_like(x)
        if device == "cuda":
            results[device], syncs = count_syncs(lambda: method.solve_flat(fn, z0))
        else:
            results[device] = method.solve_flat(fn, z0)
    cpu, gpu = results["cpu"], results["cuda"]
    assert bool((gpu.status == Status.CONVERGED).all())
    # Both within residual / (1 - 0.9) of the fixed point, whatever steps rounding picked.
    torch.testing.assert_close(gpu.z.cpu(), cpu.z, rtol=0, atol=2e-7)
    assert syncs <= gpu.steps // 8 + 8, (syncs, gpu.steps)


@pytest.mark.parametrize("adjoint", ["backprop", "backsolve"])
def test_cuda_integrate_and_gradients_match_cpu(adjoint):
    grads = {}
    for device in ("cpu", "cuda"):
        w, x, scale = problem(device)
        w.requires_grad_(True)
        traj = pycdeq.integrate(lambda t, z: scale * torch.tanh(z @ w.T + x) - z, torch.zeros_like(x), 2.0,
                                Tsit5(rtol=1e-9, atol=1e-9), t_eval=[1.0, 2.0], adjoint=adjoint, params=[w])
        assert bool((traj.status == Status.CONVERGED).all())
        grads[device] = (traj.ys.detach().cpu(), torch.autograd.grad(traj.ys.sum(), w)[0].cpu())
    torch.testing.assert_close(grads["cuda"][0], grads["cpu"][0], rtol=0, atol=1e-8)
    torch.testing.assert_close(grads["cuda"][1], grads["cpu"][1], rtol=1e-6, atol=1e-8)


def test_cuda_continuous_deq_implicit_gradient_matches_cpu():
    grads = {}
    for device in ("cpu", "cuda"):
        w, x, scale = problem(device)
        x.requires_grad_(True)
        method = Tsit5(rtol=1e-9, atol=1e-9, max_steps=500, termination=Termination(abstol=1e-8))
        solution = pycdeq.solve(lambda z: scale * torch.tanh(z @ w.T + x), torch.zeros_like(x), method,
                                adjoint=GMRES(rtol=1e-10))
        grads[device] = torch.autograd.grad(solution.z.square().sum(), x)[0].cpu()
    torch.testing.assert_close(grads["cuda"], grads["cpu"], rtol=1e-6, atol=1e-8)
