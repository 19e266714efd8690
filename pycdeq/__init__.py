"""pycdeq: Continuous Deep Equilibrium Models and Skip DEQs in PyTorch.

Public API (everything else is internal):

* ``solve(fn, z0, solver, adjoint=...)``: batched fixed point ``z* = fn(z*)`` with
  per-sample termination and implicit gradients (:mod:`pycdeq.equilibrium`).
* Discrete solvers: ``Anderson``, ``Broyden``, ``FixedPoint``; the ``Termination`` rule;
  the ``Solution`` record and per-sample ``Status`` codes (:mod:`pycdeq.solvers`).
* Adjoints: ``GMRES`` (default), ``FixedPointAdjoint``, ``JFB``, ``Unrolled``
  (:mod:`pycdeq.adjoints`).
"""

from .adjoints import FixedPointAdjoint, GMRES, JFB, Unrolled
from .equilibrium import solve
from .solvers import AdjointStats, Anderson, Broyden, FixedPoint, Solution, Status, Termination

__version__ = "0.1.0"

__all__ = [
    "solve",
    "Anderson", "Broyden", "FixedPoint", "Termination", "Solution", "Status", "AdjointStats",
    "GMRES", "FixedPointAdjoint", "JFB", "Unrolled",
]
