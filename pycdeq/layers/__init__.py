"""DEQ layers: plain / Skip / Skip Reg. (one ``DEQ`` class), Neural ODE, multiscale."""

from .base import EquilibriumLayer
from .deq import DEQ, NonConvergenceError, NonConvergenceWarning, SkipDEQ, SkipRegDEQ
from .multiscale import (
    MultiScaleDEQ,
    MultiScaleFunction,
    MultiScaleNeuralODE,
    MultiScalePredictor,
    MultiScaleSkipDEQ,
    MultiScaleSkipRegDEQ,
)
from .neural_ode import NeuralODE
from .output import DEQOutput, LayerOutput, NeuralODEOutput
from .regularizers import JacobianRegularization

__all__ = ["EquilibriumLayer", "DEQ", "SkipDEQ", "SkipRegDEQ", "NeuralODE", "JacobianRegularization", "MultiScaleDEQ",
           "MultiScaleSkipDEQ", "MultiScaleSkipRegDEQ", "MultiScaleNeuralODE", "MultiScaleFunction",
           "MultiScalePredictor", "NonConvergenceWarning", "NonConvergenceError", "LayerOutput", "DEQOutput",
           "NeuralODEOutput"]
