"""Gradients of fixed points: see :mod:`pycdeq.adjoints.methods` for the maths."""

from .implicit import attach_implicit_gradient
from .methods import FixedPointAdjoint, GMRES, JFB, Unrolled

__all__ = ["GMRES", "FixedPointAdjoint", "JFB", "Unrolled", "attach_implicit_gradient"]
