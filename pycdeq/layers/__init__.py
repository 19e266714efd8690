"""DEQ layers: plain / Skip / Skip Reg. (one ``DEQ`` class), Neural ODE, multiscale."""

from .deq import DEQ, NonConvergenceError, NonConvergenceWarning, SkipDEQ, SkipRegDEQ
from .regularizers import JacobianRegularization

__all__ = ["DEQ", "SkipDEQ", "SkipRegDEQ", "JacobianRegularization", "NonConvergenceWarning",
           "NonConvergenceError"]
