"""Helpers of the Julia backend tests: small MNIST-dense models with tight solvers."""

import os

import torch

BRIDGE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "pycdeq", "julia", "PycdeqBridge")
IN_FEATURES, WIDTH, CLASSES = 12, 16, 5


def tight_model(variant: str, continuous: bool, *, seed: int = 0, discrete_solver: str = "anderson"):
    """A small ``pycdeq.models.MNISTDense`` whose solves converge far below float32 noise.

    ``Wz`` is scaled down so that ``f`` is a contraction: both engines then reach the same
    fixed point to ~1e-6, and the parity tolerances (1e-4 / 1e-3) measure the engines, not
    where each happened to stop.
    """
    from pycdeq import GMRES, Anderson, Broyden, Termination
    from pycdeq.models import MNISTDense
    from pycdeq.solvers.ode import Tsit5

    torch.manual_seed(seed)
    adjoint = GMRES(rtol=1e-8, atol=1e-12, max_iter=200)
    if variant == "node":
        solver, adjoint = Tsit5(rtol=1e-6, atol=1e-6, max_steps=4000), "backprop"
    elif continuous:
        solver = Tsit5(rtol=1e-6, atol=1e-6, max_steps=4000,
                       termination=Termination(mode="abs", abstol=5e-6, norm="max"))
    elif discrete_solver == "broyden":
        solver = Broyden(memory=20, max_iter=400, termination=Termination(mode="abs", abstol=1e-6, norm="max"))
    else:
        solver = Anderson(m=5, max_iter=400, termination=Termination(mode="abs", abstol=1e-6, norm="max"))
    model = MNISTDense(in_features=IN_FEATURES, width=WIDTH, num_classes=CLASSES, variant=variant,
                       continuous=continuous, solver=solver, adjoint=adjoint)
    with torch.no_grad():
        model.deq.f.Wz.weight.mul_(0.25)
    return model


def inputs(batch: int = 6, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, IN_FEATURES, generator=generator)
