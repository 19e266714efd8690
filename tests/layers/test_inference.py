"""Inference: under ``torch.no_grad()`` (and ``model.eval()``) no graph and no adjoint exist,
and ``f`` is called exactly ``nfe`` times; the layers run on CUDA tensors (skipped without)."""

from __future__ import annotations

import pytest
import torch

from pycdeq.layers import JacobianRegularization

VARIANTS = ["vanilla", "skip", "skip_reg"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _x(batch=4, in_dim=4, device="cpu"):
    return torch.randn(batch, in_dim, dtype=torch.float64).to(device)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_no_graph_and_no_adjoint_without_autograd(build, variant, context):
    layer = build.dense_layer(variant, build.tight_anderson(abstol=1e-10),
                              jacobian_reg=JacobianRegularization(num_vectors=3)).double()
    layer.eval()
    x = _x()
    calls = layer.f.calls
    with (torch.no_grad() if context == "no_grad" else torch.inference_mode()):
        z, solution = layer(x)
    assert not z.requires_grad and z.grad_fn is None
    assert solution.adjoint is None
    assert not solution.skip_loss.requires_grad
    assert solution.jacobian_loss.item() == 0.0
    # f(0, x) for Skip Reg. plus the solve's own calls; no implicit-gradient call.
    assert layer.f.calls - calls == solution.nfe + (variant == "skip_reg")
    assert bool(solution.converged.all())
    assert (build.flat_residual(layer, z, x) <= 1e-10).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_mode_attaches_the_adjoint_with_one_extra_call(build, variant):
    """The counterpart of the test above: with autograd on, the graph and adjoint exist."""
    layer = build.dense_layer(variant, build.tight_anderson(abstol=1e-10)).double()
    x = _x()
    with torch.no_grad():
        z_inference, s_inference = layer(x)
    z, solution = layer(x)
    assert z.requires_grad and solution.adjoint is not None
    assert solution.nfe == s_inference.nfe + 1
    torch.testing.assert_close(z.detach(), z_inference, atol=0, rtol=0)


def test_multiscale_inference_builds_no_graph(build):
    layer = build.multiscale_layer("skip", build.tight_anderson(abstol=1e-8)).double().eval()
    x = torch.randn(2, *build.scales[0], dtype=torch.float64)
    with torch.no_grad():
        z, solution = layer(x)
    assert all(not part.requires_grad for part in z)
    assert solution.adjoint is None and bool(solution.converged.all())


@cuda
@pytest.mark.parametrize("variant", VARIANTS)
def test_layers_run_on_cuda_and_agree_with_cpu(build, variant):
    torch.manual_seed(11)
    cpu = build.dense_layer(variant, build.tight_anderson(abstol=1e-11), adjoint=build.tight_gmres()).double()
    gpu = build.dense_layer(variant, build.tight_anderson(abstol=1e-11), adjoint=build.tight_gmres()).double()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    x = _x()
    head = torch.randn(6, 3, dtype=torch.float64)
    results = []
    for layer, device in ((cpu, "cpu"), (gpu, "cuda")):
        xd = x.to(device).requires_grad_(True)
        z, solution = layer(xd)
        assert z.device.type == device and solution.residual.device.type == device
        assert bool(solution.converged.all())
        loss = (z @ head.to(device)).sin().sum() + 0.5 * solution.skip_loss
        grads = torch.autograd.grad(loss, [xd, *layer.parameters()])
        results.append([z.detach().cpu(), *(g.cpu() for g in grads)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)
    with torch.no_grad():
        z, solution = gpu(x.cuda())
    assert not z.requires_grad and solution.adjoint is None


@cuda
def test_multiscale_layer_runs_on_cuda(build):
    # float64: cuDNN may run float32 convolutions in TF32, too coarse for a tight residual.
    layer = build.multiscale_layer("skip_reg", build.tight_anderson(abstol=1e-8)).double().cuda()
    x = torch.randn(3, *build.scales[0], device="cuda", dtype=torch.float64)
    z, solution = layer(x)
    assert all(part.device.type == "cuda" for part in z)
    assert bool(solution.converged.all())
    assert (build.flat_residual(layer, z, x) <= 1e-8).all()
    (sum(part.sum() for part in z) + solution.skip_loss).backward()
    assert all(p.grad is not None for p in layer.f.parameters())
