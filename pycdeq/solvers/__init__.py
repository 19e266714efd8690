"""Fixed-point and steady-state solvers, the termination rule and the solution records.

Contracts: :class:`Solver` (what :func:`pycdeq.solve` accepts), with the two families
:class:`DiscreteSolver` and :class:`ODEMethod`; :class:`StepSizeController` for the ODE
methods' step control. Records: :class:`SolverRecord` (a solver's result on the flat state),
:class:`Solution` (what ``solve`` returns), :class:`Trajectory` (what ``integrate`` returns).
"""

from .anderson import Anderson
from .base import Solver
from .broyden import Broyden
from .controller import FixedStep, PIController, StepSizeController
from .discrete import DiscreteSolver
from .fixed_point import FixedPoint
from .integrate import Trajectory, integrate
from .ode import BS3, RK4, VCAB3, AdaptiveMethod, Dopri5, Euler, FixedStepMethod, ODEMethod, Tsit5
from .ode_adjoint import BacksolveAdjoint, InterpolatingAdjoint
from .solution import Solution, SolverRecord, Status
from .termination import Termination

__all__ = ["Solver", "DiscreteSolver", "ODEMethod", "AdaptiveMethod", "FixedStepMethod",
           "Anderson", "Broyden", "FixedPoint", "Tsit5", "Dopri5", "BS3", "VCAB3", "Euler", "RK4",
           "StepSizeController", "PIController", "FixedStep",
           "integrate", "Trajectory", "BacksolveAdjoint", "InterpolatingAdjoint", "Termination", "Solution",
           "SolverRecord", "Status"]
