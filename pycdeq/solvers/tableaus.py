"""Butcher tableaux of the explicit Runge-Kutta methods, as data.

An ``s``-stage explicit method advances ``y' = F(t, y)`` by one step ``h`` as

    k_i   = F(t + c_i h, y + h * sum_{j<i} a_ij k_j)        i = 1..s
    y_new = y + h * sum_i b_i k_i
    err   = h * sum_i e_i k_i          (e = b - b_hat, the embedded lower-order pair)

``order`` is the order of ``y_new``; ``error_order`` is the power of ``h`` in the local error
estimate (``embedded order + 1``), which sets the step-size controller's exponent. A tableau
whose last stage is evaluated at ``y_new`` (``a[-1] == b``, ``c[-1] == 1``) is *first same as
last* (FSAL): that stage is the next step's ``k_1``, so a step costs ``s - 1`` evaluations.

Adding a method is adding a tableau here and a three-line options class in ``ode.py``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class ButcherTableau:
    name: str
    c: Tuple[float, ...]
    a: Tuple[Tuple[float, ...], ...]  # row i holds a_i1 .. a_i(i-1); row 0 is empty
    b: Tuple[float, ...]
    error: Optional[Tuple[float, ...]]  # b - b_hat, or None for fixed-step methods
    order: int
    error_order: Optional[int]

    def __post_init__(self):
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s or (self.error is not None and len(self.error) != s):
            raise ValueError(f"{self.name}: c, a, b and error must all have {s} stages")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"{self.name}: row {i} of a must have {i} entries, has {len(row)}")
            # Consistency c_i = sum_j a_ij: each stage is evaluated at the time it claims.
            if not math.isclose(sum(row), self.c[i], rel_tol=1e-12, abs_tol=1e-12):
                raise ValueError(f"{self.name}: row {i} of a sums to {sum(row)}, not c_{i} = {self.c[i]}")
        if not math.isclose(sum(self.b), 1.0, rel_tol=1e-12):
            raise ValueError(f"{self.name}: weights b sum to {sum(self.b)}, not 1")
        if self.error is not None and abs(sum(self.error)) > 1e-12:
            raise ValueError(f"{self.name}: error weights must sum to 0 (b - b_hat)")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """The last stage is ``F(t + h, y_new)``: reuse it as the next step's first stage."""
        return self.stages > 1 and self.c[-1] == 1.0 and tuple(self.a[-1]) == tuple(self.b[:-1]) \
            and self.b[-1] == 0.0

    @functools.cached_property
    def stability_boundary(self) -> float:
        """Largest ``x`` with ``|R(-u)| <= 1`` for all ``0 <= u <= x``, where
        ``R(z) = 1 + z b^T (I - z A)^{-1} 1`` is the stability function: a step ``h`` is stable
        for a real eigenvalue ``-lam`` of the Jacobian when ``h lam <= stability_boundary``.
        (Tsit5 3.51, Dopri5 3.31, BS3 2.51, RK4 2.79, Euler 2.)"""
        s = self.stages
        a = np.zeros((s, s))
        for i, row in enumerate(self.a):
            a[i, :len(row)] = row
        # R is a polynomial for explicit methods: R(z) = sum_j z^j b^T A^(j-1) 1.
        coefficients, power = [1.0], np.ones(s)
        for _ in range(s):
            coefficients.append(float(np.dot(self.b, power)))
            power = a @ power
        u = np.linspace(0.0, 2.0 * s + 2.0, 200_001)
        values = np.abs(np.polynomial.polynomial.polyval(-u, coefficients))
        unstable = np.nonzero(values > 1.0 + 1e-12)[0]
        return float(u[unstable[0] - 1]) if unstable.size else float(u[-1])


# Tsitouras (2011), "Runge-Kutta pairs of order 5(4) satisfying only the first column
# simplifying assumption". The error weights are those of the published pair with the sign of
# the last one corrected (the paper's sign is a known misprint); only |err| matters.
TSIT5 = ButcherTableau(
    name="tsit5",
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
         -0.028269050394068383),
        (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
         2.324710524099774),
    ),
    b=(0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
       2.324710524099774, 0.0),
    error=(-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995,
           -0.1447110071732629, 0.5823571654525552, -0.45808210592918697, 1.0 / 66.0),
    order=5,
    error_order=5,
)

# Dormand & Prince (1980), the 5(4) pair of scipy's RK45 and torchdiffeq's default.
_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DOPRI5_B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5 = ButcherTableau(
    name="dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DOPRI5_B[:-1],
    ),
    b=_DOPRI5_B,
    error=tuple(b - bh for b, bh in zip(_DOPRI5_B, _DOPRI5_B_HAT)),
    order=5,
    error_order=5,
)

# Bogacki & Shampine (1989), the 3(2) pair of scipy's RK23 (torchdiffeq's "bosh3").
_BS3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_BS3_B_HAT = (7 / 24, 1 / 4, 1 / 3, 1 / 8)
BS3 = ButcherTableau(
    name="bs3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), _BS3_B[:-1]),
    b=_BS3_B,
    error=tuple(b - bh for b, bh in zip(_BS3_B, _BS3_B_HAT)),
    order=3,
    error_order=3,
)

# Fixed-step methods (no error estimate), for checks and for users who want a fixed budget.
EULER = ButcherTableau(name="euler", c=(0.0,), a=((),), b=(1.0,), error=None, order=1, error_order=None)

RK4 = ButcherTableau(
    name="rk4",
    c=(0.0, 1 / 2, 1 / 2, 1.0),
    a=((), (1 / 2,), (0.0, 1 / 2), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    error=None,
    order=4,
    error_order=None,
)
