"""Fixed-point and steady-state solvers, the termination rule and the solution record."""

from .anderson import Anderson
from .broyden import Broyden
from .discrete import DiscreteSolver
from .fixed_point import FixedPoint
from .integrate import Trajectory, integrate
from .ode import BS3, RK4, VCAB3, Dopri5, Euler, Tsit5
from .solution import AdjointStats, Solution, Status
from .termination import Termination

__all__ = ["Anderson", "Broyden", "FixedPoint", "DiscreteSolver", "Tsit5", "Dopri5", "BS3", "VCAB3", "Euler", "RK4",
           "integrate", "Trajectory", "Termination", "Solution", "Status", "AdjointStats"]
