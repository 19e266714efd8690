"""The ODE method options: defaults, the tolerance rule, validation with clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pycdeq
from pycdeq import BS3, RK4, VCAB3, Dopri5, Euler, Termination, Tsit5
from pycdeq.solvers.ode import DEFAULT_TERMINATION_FACTOR, TOLERANCE_MARGIN


@pytest.mark.parametrize("cls", [Tsit5, Dopri5, BS3, VCAB3, Euler, RK4])
def test_methods_are_frozen_ode_method_options_exported_from_pycdeq(cls):
    method = cls()
    assert isinstance(method, pycdeq.ODEMethod) and isinstance(method, pycdeq.Solver)
    assert not isinstance(method, pycdeq.DiscreteSolver)
    assert getattr(pycdeq, cls.__name__) is cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.max_steps = 3
    assert isinstance(method.termination, Termination)
    assert callable(method.solve_flat)


def test_default_termination_follows_the_integrator_tolerance():
    method = Tsit5(rtol=1e-4, atol=2e-4)
    assert method.termination.mode == "abs" and method.termination.norm == "max"
    assert method.termination.abstol == pytest.approx(DEFAULT_TERMINATION_FACTOR * 2e-4)
    assert Tsit5(rtol=1e-4, atol=2e-4) == method  # still a plain, comparable value


@pytest.mark.parametrize("termination, ok", [
    (Termination(mode="abs", abstol=2e-3), True),
    (Termination(mode="abs", abstol=1.9e-3), False),
    (Termination(mode="rel", reltol=2e-3), True),
    (Termination(mode="rel", reltol=1e-3), False),
    (Termination(mode="norm", abstol=1e-2, reltol=1e-3), False),  # the smaller one binds
    (Termination(mode="norm", abstol=1e-2, reltol=2e-3), True),
])
def test_integrator_must_be_tighter_than_the_steady_state_test(termination, ok):
    assert TOLERANCE_MARGIN == 2.0
    if ok:
        Tsit5(rtol=1e-3, atol=1e-4, termination=termination)
    else:
        with pytest.raises(ValueError, match=r"max\(rtol, atol\) = 0.001 is too loose"):
            Tsit5(rtol=1e-3, atol=1e-4, termination=termination)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rtol=-1.0), ValueError, "rtol"),
    (dict(rtol=0.0, atol=0.0), ValueError, "cannot both be 0"),
    (dict(atol="1e-3"), TypeError, "atol must be a number"),
    (dict(max_steps=2.5), TypeError, "max_steps must be an int"),
    (dict(dt0=0.0), ValueError, "dt0"),
    (dict(controller=dict(pcoeff=0.1)), TypeError, "controller must be a PIController"),
    (dict(safety=0.5), TypeError, "unexpected keyword argument 'safety'"),  # a controller option
    (dict(stability_factor=1.5), ValueError, "stability_factor"),
    (dict(termination="rel"), TypeError, "termination must be a Termination"),
])
def test_adaptive_options_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        Tsit5(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(safety=1.5), ValueError, "safety"),
    (dict(factor_min=1.0), ValueError, "factor_min"),
    (dict(factor_max=0.5), ValueError, "factor_max must be > 1"),
    (dict(icoeff=0.0), ValueError, "icoeff"),
    (dict(pcoeff=-0.1), ValueError, "pcoeff"),
    (dict(dt_min=float("inf")), ValueError, "dt_min"),
    (dict(gain=0.1), TypeError, "unexpected keyword argument 'gain'"),
])
def test_controller_options_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        pycdeq.PIController(**kwargs)


def test_the_controller_is_an_option_object_of_the_method():
    controller = pycdeq.PIController(pcoeff=0.0, icoeff=1.0, safety=0.8)
    method = Tsit5(controller=controller)
    assert method.controller is controller and Tsit5().controller == pycdeq.PIController()
    assert isinstance(Euler().controller, pycdeq.solvers.FixedStep)


@pytest.mark.parametrize("cls", [Euler, RK4])
def test_fixed_step_options_are_validated(cls):
    with pytest.raises(ValueError, match="dt"):
        cls(dt=0.0)
    with pytest.raises(TypeError, match="max_steps"):
        cls(max_steps=None)
    with pytest.raises(TypeError, match="termination"):
        cls(termination=1e-3)
    with pytest.raises(TypeError):
        cls(rtol=1e-3)  # no such option: fixed-step methods take dt


def test_solve_rejects_bad_input_for_ode_methods_too():
    with pytest.raises(ValueError, match="z0 contains NaN"):
        pycdeq.solve(lambda z: z, torch.tensor([[float("nan")]]), Tsit5())
    with pytest.raises(ValueError, match="fn returned"):
        pycdeq.solve(lambda z: z[:, :1], torch.ones(2, 3), Tsit5())
