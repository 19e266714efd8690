"""Every model runs forward and backward in every variant, continuous and discrete.

The solvers are cut to a few steps to keep this quick (convergence of the layers is tested
in tests/layers); what is checked here is the wiring: shapes, the solution record, and that
gradients reach the stem, ``f``, the head and (Skip only) the predictor ``g``. The large
CIFAR model runs with reduced widths but its full structure (4 scales, weight norm, 3-step
downsampling, stage0 stem).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pycdeq
from pycdeq.models import build_model
from pycdeq.solvers.ode import Tsit5

BATCH = 2
MODELS = {
    # name: (input shape, size overrides)
    "mnist-dense": ((1, 28, 28), {"width": 16}),
    "mnist-conv": ((1, 28, 28), {}),
    "cifar10-small": ((3, 32, 32), {}),
    "cifar10-large": ((3, 32, 32), {"channels": (4, 8, 16, 32), "head_channels": (2, 2, 4, 4),
                                    "final_channels": 16, "expansion": 2}),
}
CASES = [(v, c) for v in ("vanilla", "skip", "skip_reg") for c in (True, False)] + [("node", True)]


def fast_solver(variant, continuous):
    if variant == "node":
        return Tsit5(rtol=0.05, atol=0.05, max_steps=2)
    if continuous:
        return Tsit5(rtol=1e-3, atol=1e-3, max_steps=2)
    return pycdeq.Broyden(max_iter=3)


def fast_model(name, variant, continuous, **options):
    shape, sizes = MODELS[name]
    adjoint = None if variant == "node" else pycdeq.GMRES(rtol=1e-2, max_iter=3)
    extra = {} if variant == "node" else {"on_nonconvergence": "ignore"}
    model = build_model(name, variant=variant, continuous=continuous, solver=fast_solver(variant, continuous),
                        adjoint=adjoint, **sizes, **extra, **options)
    return model, torch.randn(BATCH, *shape)


def _has_gradient(module) -> bool:
    grads = [p.grad for p in module.parameters()]
    return bool(grads) and all(g is not None and torch.isfinite(g).all() for g in grads) and \
        any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("variant, continuous", CASES)
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_reaches_every_part(name, variant, continuous):
    model, x = fast_model(name, variant, continuous)
    logits, solution = model(x)
    assert logits.shape == (BATCH, 10)
    assert solution.nfe > 0
    assert solution.skip_loss.shape == () and solution.jacobian_loss.shape == ()
    if variant in ("vanilla", "node"):
        assert float(solution.skip_loss) == 0.0
    else:
        assert float(solution.skip_loss.detach()) > 0.0
    loss = F.cross_entropy(logits, torch.arange(BATCH)) + 0.01 * solution.skip_loss
    loss.backward()
    assert _has_gradient(model.stem), "stem"
    assert _has_gradient(model.deq.f), "f"
    assert _has_gradient(model.head), "head"
    if variant == "skip":
        assert _has_gradient(model.deq.g), "g"
    else:
        assert model.deq.g is None


@pytest.mark.parametrize("name", ["mnist-dense", "cifar10-small"])
def test_skip_predictor_is_trained_only_by_the_skip_loss(name):
    model, x = fast_model(name, "skip", continuous=False)
    logits, solution = model(x)
    F.cross_entropy(logits, torch.arange(BATCH)).backward(retain_graph=True)
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.deq.g.parameters())
    solution.skip_loss.backward()
    assert _has_gradient(model.deq.g)


@pytest.mark.parametrize("name", ["mnist-dense", "cifar10-small"])
def test_skip_reg_starts_from_f_of_zero(name):
    model, x = fast_model(name, "skip_reg", continuous=False)
    model.eval()  # deterministic f: no dropout; BN uses batch statistics either way
    with torch.no_grad():
        _, solution = model(x)
        features = model.stem(x.flatten(1) if model.config.is_dense else x)
        if model.config.is_dense:
            expected, got = (model.deq.f(torch.zeros_like(features), features),), (solution.z0,)
        else:
            expected = model.deq.f(tuple(torch.zeros(BATCH, *s) for s in model.config.scales), features)
            got = solution.z0
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    assert float(sum(a.abs().sum() for a in got)) > 0


def test_default_dense_model_reaches_a_fixed_point():
    torch.manual_seed(0)
    model = build_model("mnist-dense", input_shape=(64,), continuous=False)
    x = torch.rand(8, 64)
    with torch.no_grad():
        features = model.stem(x)
        z_star, solution = model.deq(features)
        fz = model.deq.f(z_star, features)
    assert bool(solution.converged.all())
    relative = (fz - z_star).norm(dim=1) / fz.norm(dim=1)
    assert float(relative.max()) <= 5e-3  # the paper's rel. termination 5e-3, per sample


@pytest.mark.parametrize("name", ["mnist-dense", "mnist-conv"])
def test_jacobian_regularization_is_differentiable(name):
    model, x = fast_model(name, "vanilla", continuous=False,
                          jacobian_reg=pycdeq.layers.JacobianRegularization())
    _, solution = model(x)
    assert float(solution.jacobian_loss.detach()) > 0
    solution.jacobian_loss.backward()
    # Not every parameter of f enters df/dz (e.g. Wx of the dense f), but the penalty trains f.
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.deq.f.parameters())


def test_dense_stem_gets_the_exact_implicit_gradient():
    """Against backprop through a long unrolled iteration of a contractive f (float64)."""
    torch.manual_seed(0)
    solver = pycdeq.Broyden(max_iter=100, termination=pycdeq.Termination(mode="abs", abstol=1e-12))
    model = build_model("mnist-dense", input_shape=(5,), width=6, num_classes=3, continuous=False,
                        solver=solver, adjoint=pycdeq.GMRES(rtol=1e-12, atol=1e-14, max_iter=50)).double()
    with torch.no_grad():
        model.deq.f.Wz.weight.mul_(0.5 / torch.linalg.matrix_norm(model.deq.f.Wz.weight, 2))
    x = torch.randn(4, 5, dtype=torch.float64)
    logits, _ = model(x)
    (implicit,) = torch.autograd.grad(logits.square().sum(), model.stem[0].weight)

    features = model.stem(x)
    z = torch.zeros_like(features)
    for _ in range(200):
        z = model.deq.f(z, features)
    (unrolled,) = torch.autograd.grad(model.head(z).square().sum(), model.stem[0].weight)
    torch.testing.assert_close(implicit, unrolled, rtol=1e-8, atol=1e-10)


def test_dropout_mask_is_shared_within_a_forward_and_redrawn_between():
    model, x = fast_model("cifar10-small", "vanilla", continuous=False)
    dropout = model.deq.f.main[0].dropout
    model(x)
    first = dropout._mask.clone()
    features = model.stem(x)
    z = tuple(torch.randn(BATCH, *s) for s in model.config.scales)
    with torch.no_grad():
        a, b = model.deq.f(z, features), model.deq.f(z, features)
    assert all(torch.equal(p, q) for p, q in zip(a, b))  # one map per training step
    assert torch.equal(dropout._mask, first)
    model(x)
    assert not torch.equal(dropout._mask, first)


def test_batch_statistics_couple_the_samples_of_a_batch():
    """Documented behaviour: BN inside f makes a sample's output depend on its batch mates."""
    model, x = fast_model("cifar10-small", "vanilla", continuous=False)
    model.eval()
    with torch.no_grad():
        alone, _ = model(x)
        x_other = x.clone()
        x_other[1] = torch.randn_like(x_other[1])
        together, _ = model(x_other)
    assert not torch.allclose(alone[0], together[0])


def test_inference_builds_no_graph():
    model, x = fast_model("mnist-conv", "skip_reg", continuous=True)
    model.eval()
    with torch.no_grad():
        logits, solution = model(x)
    assert not logits.requires_grad and solution.adjoint is None


def test_wrong_input_shape_is_rejected_naming_both():
    model, _ = fast_model("cifar10-small", "vanilla", continuous=False)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\).*\(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    dense, _ = fast_model("mnist-dense", "vanilla", continuous=False)
    with pytest.raises(ValueError, match="784"):
        dense(torch.randn(2, 64))
