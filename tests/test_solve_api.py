"""``pycdeq.solve`` and the option dataclasses reject bad input early, naming what is wrong."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pycdeq
from pycdeq import GMRES, JFB, Anderson, Broyden, FixedPoint, FixedPointAdjoint, Termination, Unrolled


def contraction(z):
    return 0.5 * z + 1.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_initial_guess_is_a_value_error_naming_z0(bad):
    z0 = torch.zeros(3, 4)
    z0[1, 2] = bad
    with pytest.raises(ValueError, match="z0"):
        pycdeq.solve(contraction, z0, Anderson())


def test_non_finite_part_of_a_tuple_initial_guess_is_named_by_index():
    z0 = (torch.zeros(2, 3), torch.zeros(2, 2))
    z0[1][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"z0\[1\]"):
        pycdeq.solve(lambda s: (0.5 * s[0], 0.5 * s[1]), z0, FixedPoint())


def test_fn_returning_wrong_shape_names_both_shapes():
    with pytest.raises(ValueError) as info:
        pycdeq.solve(lambda z: torch.zeros(3, 5), torch.zeros(3, 4), Anderson())
    assert "(3, 5)" in str(info.value) and "(3, 4)" in str(info.value)


def test_fn_dropping_the_batch_dimension_is_caught():
    with pytest.raises(ValueError) as info:
        pycdeq.solve(lambda z: z.sum(0), torch.zeros(3, 4), Anderson())
    assert "(4,)" in str(info.value) and "(3, 4)" in str(info.value)


def test_fn_returning_wrong_dtype_names_both_dtypes():
    with pytest.raises(ValueError) as info:
        pycdeq.solve(lambda z: z.double(), torch.zeros(3, 4), Broyden())
    assert "float64" in str(info.value) and "float32" in str(info.value)


def test_fn_returning_wrong_structure_is_caught():
    with pytest.raises(ValueError, match="tuple"):
        pycdeq.solve(lambda z: (z, z), torch.zeros(3, 4), FixedPoint())
    with pytest.raises(ValueError):
        pycdeq.solve(lambda s: s[0], (torch.zeros(3, 4), torch.zeros(3, 2)), FixedPoint())
    with pytest.raises(ValueError, match="NoneType"):
        pycdeq.solve(lambda z: None, torch.zeros(3, 4), FixedPoint())


def test_fn_shape_error_also_raised_in_the_gradient_pass():
    """The forward solve runs without autograd; the extra evaluation at z* (with autograd)
    is checked the same way."""
    def fn(z):
        return torch.zeros(2, 2) if torch.is_grad_enabled() else 0.5 * z

    with torch.no_grad():
        assert pycdeq.solve(fn, torch.zeros(3, 4), FixedPoint()).converged.all()
    with pytest.raises(ValueError) as info:
        pycdeq.solve(fn, torch.zeros(3, 4), FixedPoint())
    assert "(2, 2)" in str(info.value) and "(3, 4)" in str(info.value)


@pytest.mark.parametrize("z0,error,match", [
    (torch.zeros(3, 4, dtype=torch.long), TypeError, "floating"),
    (torch.tensor(1.0), ValueError, "batch"),
    (torch.zeros(0, 4), ValueError, "batch"),
    ([1.0, 2.0], TypeError, "tensor"),
    (None, TypeError, "z0"),
])
def test_bad_initial_guess_type_or_shape(z0, error, match):
    with pytest.raises(error, match=match):
        pycdeq.solve(contraction, z0, Anderson())


def test_solver_and_adjoint_must_be_pycdeq_objects():
    with pytest.raises(TypeError, match="solver"):
        pycdeq.solve(contraction, torch.zeros(2, 2), "anderson")
    with pytest.raises(TypeError, match="adjoint"):
        pycdeq.solve(contraction, torch.zeros(2, 2), Anderson(), adjoint="gmres")
    with pytest.raises(TypeError, match="adjoint"):
        pycdeq.solve(contraction, torch.zeros(2, 2), Anderson(), adjoint=Anderson())


@pytest.mark.parametrize("make,error,match", [
    (lambda: Anderson(m=0), ValueError, "m"),
    (lambda: Anderson(m=-2), ValueError, "m"),
    (lambda: Anderson(m=2.5), TypeError, "m"),
    (lambda: Anderson(m=True), TypeError, "m"),
    (lambda: Anderson(beta=0.0), ValueError, "beta"),
    (lambda: Anderson(beta=1.5), ValueError, "beta"),
    (lambda: Anderson(beta="1"), TypeError, "beta"),
    (lambda: Anderson(lam=-1e-4), ValueError, "lam"),
    (lambda: Anderson(lam=0.0), ValueError, "lam"),
    (lambda: Anderson(max_iter=-1), ValueError, "max_iter"),
    (lambda: Anderson(max_iter=10.0), TypeError, "max_iter"),
    (lambda: Anderson(termination="abs"), TypeError, "termination"),
    (lambda: Anderson(termination=None), TypeError, "termination"),
    (lambda: Broyden(memory=0), ValueError, "memory"),
    (lambda: Broyden(memory=None), TypeError, "memory"),
    (lambda: Broyden(max_iter=-3), ValueError, "max_iter"),
    (lambda: FixedPoint(damping=0.0), ValueError, "damping"),
    (lambda: FixedPoint(damping=1.01), ValueError, "damping"),
    (lambda: FixedPoint(damping=float("nan")), ValueError, "damping"),
    (lambda: GMRES(rtol=-1e-5), ValueError, "rtol"),
    (lambda: GMRES(atol=float("inf")), ValueError, "atol"),
    (lambda: GMRES(rtol=0.0, atol=0.0), ValueError, "rtol and atol"),
    (lambda: GMRES(max_iter=0), ValueError, "max_iter"),
    (lambda: GMRES(restart=0), ValueError, "restart"),
    (lambda: GMRES(restart=2.0), TypeError, "restart"),
    (lambda: GMRES(check_every=0), ValueError, "check_every"),
    (lambda: FixedPointAdjoint(solver=GMRES()), TypeError, "solver"),
    (lambda: FixedPointAdjoint(solver="anderson"), TypeError, "solver"),
])
def test_bad_options_fail_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("cls", [Anderson, Broyden, FixedPoint, Termination, GMRES, FixedPointAdjoint, JFB, Unrolled])
def test_unknown_keyword_to_an_options_dataclass_is_a_type_error(cls):
    with pytest.raises(TypeError):
        cls(f_anderson_m=5)  # TorchDEQ issue #12: a misspelt key must never be ignored


@pytest.mark.parametrize("cls", [Anderson, Broyden, FixedPoint, Termination, GMRES, FixedPointAdjoint, JFB, Unrolled])
def test_options_are_frozen(cls):
    options = cls()
    field = dataclasses.fields(options)[0].name if dataclasses.fields(options) else "name"
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError)):
        setattr(options, field, None)


def test_valid_edge_options_are_accepted():
    Anderson(m=1, beta=1.0, max_iter=0)
    Broyden(memory=1)
    FixedPoint(damping=1.0)
    GMRES(rtol=0.0, atol=1e-12)
    GMRES(rtol=1e-6, atol=0.0)


def test_public_api_is_importable_from_the_top_level():
    for name in ["solve", "Anderson", "Broyden", "FixedPoint", "Termination", "Solution", "Status",
                 "AdjointStats", "GMRES", "FixedPointAdjoint", "JFB", "Unrolled"]:
        assert hasattr(pycdeq, name), name


def test_solution_reports_are_consistent():
    with torch.no_grad():
        sol = pycdeq.solve(contraction, torch.zeros(4, 3, dtype=torch.float64),
                           Anderson(termination=Termination(abstol=1e-10)))
    assert sol.converged.all() and sol.num_nonconverged == 0
    assert sol.status_counts() == {"converged": 4}
    torch.testing.assert_close(sol.z, torch.full((4, 3), 2.0, dtype=torch.float64), rtol=0, atol=1e-9)
