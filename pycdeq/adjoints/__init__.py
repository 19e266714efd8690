"""Gradients of fixed points: the contract in :mod:`pycdeq.adjoints.base`, the maths and the
options in :mod:`pycdeq.adjoints.methods`."""

from .base import Adjoint, ImplicitAdjoint
from .methods import GMRES, JFB, FixedPointAdjoint, Unrolled
from .stats import AdjointStats, LinearSolveReport

__all__ = ["Adjoint", "ImplicitAdjoint", "AdjointStats", "LinearSolveReport",
           "GMRES", "FixedPointAdjoint", "JFB", "Unrolled"]
