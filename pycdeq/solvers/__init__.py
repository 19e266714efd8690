"""Fixed-point and steady-state solvers, the termination rule and the solution record."""

from .anderson import Anderson
from .broyden import Broyden
from .discrete import DiscreteSolver
from .fixed_point import FixedPoint
from .solution import AdjointStats, Solution, Status
from .termination import Termination

__all__ = ["Anderson", "Broyden", "FixedPoint", "DiscreteSolver", "Termination", "Solution",
           "Status", "AdjointStats"]
