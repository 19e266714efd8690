"""pycdeq: Continuous Deep Equilibrium Models and Skip DEQs in PyTorch.

The public API (everything else is internal; the README's "Concepts" table gives a tour):

Solving
    ``solve(fn, z0, solver, args=..., adjoint=...)``: batched fixed point ``z* = fn(z*, *args)``
    with per-sample termination and implicit gradients; ``unroll`` for fixed-depth warm-up.
    Every solver is a ``Solver``: discrete solvers (``DiscreteSolver``) ``Anderson``,
    ``Broyden``, ``FixedPoint``; ODE methods (``ODEMethod``) ``Tsit5``, ``Dopri5``, ``BS3``,
    ``VCAB3``, ``Euler``, ``RK4`` (a continuous DEQ integrates ``dz/dt = fn(z) - z`` to steady
    state), their step control ``PIController``. ``integrate(rhs, z0, t1, method)``:
    finite-time integration (the Neural ODE baseline). ``Termination``, ``Solution``,
    ``Status``, ``Trajectory``.
Gradients
    ``GMRES`` (default), ``FixedPointAdjoint``, ``JFB``, ``Unrolled``; every one an ``Adjoint``.
Layers
    ``DEQ`` (``init`` selects plain / Skip / Skip Reg.), ``SkipDEQ``, ``SkipRegDEQ``,
    ``NeuralODE``, ``MultiScaleDEQ``, ``MultiScaleSkipDEQ``, ``MultiScaleSkipRegDEQ``,
    ``MultiScaleNeuralODE``, ``JacobianRegularization``. ``forward(x)`` returns ``(z, output)``:
    a ``DEQOutput`` or ``NeuralODEOutput`` (both ``LayerOutput``).
Subpackages
    ``pycdeq.models`` (the paper's architectures), ``pycdeq.data`` (data sets),
    ``pycdeq.training`` (``Trainer``, ``TrainConfig``, ``DEQClassifier``), ``pycdeq.julia``
    (the Julia backend; imported only on demand, never by ``import pycdeq``).
"""

from .adjoints import GMRES, JFB, Adjoint, AdjointStats, FixedPointAdjoint, ImplicitAdjoint, Unrolled
from .equilibrium import solve, unroll
from .layers import (
    DEQ,
    DEQOutput,
    JacobianRegularization,
    LayerOutput,
    MultiScaleDEQ,
    MultiScaleNeuralODE,
    MultiScaleSkipDEQ,
    MultiScaleSkipRegDEQ,
    NeuralODE,
    NeuralODEOutput,
    NonConvergenceError,
    NonConvergenceWarning,
    SkipDEQ,
    SkipRegDEQ,
)
from .solvers import (
    BS3,
    RK4,
    VCAB3,
    Anderson,
    BacksolveAdjoint,
    Broyden,
    DiscreteSolver,
    Dopri5,
    Euler,
    FixedPoint,
    InterpolatingAdjoint,
    ODEMethod,
    PIController,
    Solution,
    Solver,
    Status,
    Termination,
    Trajectory,
    Tsit5,
    integrate,
)

__version__ = "0.1.0"

__all__ = [
    "solve", "unroll", "integrate",
    "Solver", "DiscreteSolver", "ODEMethod", "PIController",
    "Anderson", "Broyden", "FixedPoint", "Tsit5", "Dopri5", "BS3", "VCAB3", "Euler", "RK4",
    "Termination", "Solution", "Status", "AdjointStats", "Trajectory", "BacksolveAdjoint", "InterpolatingAdjoint",
    "Adjoint", "ImplicitAdjoint", "GMRES", "FixedPointAdjoint", "JFB", "Unrolled",
    "LayerOutput", "DEQOutput", "NeuralODEOutput",
    "DEQ", "SkipDEQ", "SkipRegDEQ", "NeuralODE", "MultiScaleDEQ", "MultiScaleSkipDEQ",
    "MultiScaleSkipRegDEQ", "MultiScaleNeuralODE", "JacobianRegularization",
    "NonConvergenceWarning", "NonConvergenceError",
]
