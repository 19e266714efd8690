"""pycdeq: Continuous Deep Equilibrium Models and Skip DEQs in PyTorch.

The public API (everything else is internal; the README's "Concepts" table gives a tour):

Solving
    ``solve(fn, z0, solver, adjoint=...)``: batched fixed point ``z* = fn(z*)`` with per-sample
    termination and implicit gradients. Discrete solvers ``Anderson``, ``Broyden``,
    ``FixedPoint``; ODE methods ``Tsit5``, ``Dopri5``, ``BS3``, ``VCAB3``, ``Euler``, ``RK4`` (a continuous
    DEQ integrates ``dz/dt = fn(z) - z`` to steady state). ``integrate(rhs, z0, t1, method)``:
    finite-time integration (the Neural ODE baseline). ``Termination``, ``Solution``,
    ``Status``, ``Trajectory``.
Gradients
    ``GMRES`` (default), ``FixedPointAdjoint``, ``JFB``, ``Unrolled``.
Layers
    ``DEQ`` (``init`` selects plain / Skip / Skip Reg.), ``SkipDEQ``, ``SkipRegDEQ``,
    ``NeuralODE``, ``MultiScaleDEQ``, ``MultiScaleSkipDEQ``, ``MultiScaleSkipRegDEQ``,
    ``MultiScaleNeuralODE``, ``JacobianRegularization``.
Subpackages
    ``pycdeq.models`` (the paper's architectures), ``pycdeq.data`` (data sets),
    ``pycdeq.training`` (``Trainer``, ``TrainConfig``, ``DEQClassifier``), ``pycdeq.julia``
    (the Julia backend; imported only on demand, never by ``import pycdeq``).
"""

from .adjoints import FixedPointAdjoint, GMRES, JFB, Unrolled
from .equilibrium import solve
from .layers import (DEQ, JacobianRegularization, MultiScaleDEQ, MultiScaleNeuralODE, MultiScaleSkipDEQ,
                     MultiScaleSkipRegDEQ, NeuralODE, NonConvergenceError, NonConvergenceWarning, SkipDEQ,
                     SkipRegDEQ)
from .solvers import (BS3, RK4, VCAB3, AdjointStats, Anderson, Broyden, Dopri5, Euler, FixedPoint, Solution,
                      Status,
                      Termination, Trajectory, Tsit5, integrate)

__version__ = "0.1.0"

__all__ = [
    "solve", "integrate",
    "Anderson", "Broyden", "FixedPoint", "Tsit5", "Dopri5", "BS3", "VCAB3", "Euler", "RK4",
    "Termination", "Solution", "Status", "AdjointStats", "Trajectory",
    "GMRES", "FixedPointAdjoint", "JFB", "Unrolled",
    "DEQ", "SkipDEQ", "SkipRegDEQ", "NeuralODE", "MultiScaleDEQ", "MultiScaleSkipDEQ",
    "MultiScaleSkipRegDEQ", "MultiScaleNeuralODE", "JacobianRegularization",
    "NonConvergenceWarning", "NonConvergenceError",
]
