"""The paper's protocol, as model options: what the reference ran, on both sides of its claim.

The "2-4x faster than a Neural ODE" of Pal, Edelman & Rackauckas comes from the CIFAR-10
MDEQ runs of DeepEquilibriumNetworks.jl v0.2.6 (``experiments/cifar10/tiny.yml``,
``large.yml``, ``src/solve.jl``, ``src/adjoint.jl``, ``src/layers/neuralode.jl``; tables in
the thesis version of the paper, avik-pal/smthesis). ``protocol_options(protocol,
architecture, variant)`` returns the :func:`pycdeq.models.build_model` options that
reproduce it (``"paper"``) or none (``"pycdeq"``: the package's defaults,
:mod:`pycdeq.models.defaults`). With ``T`` the paper's tolerance and ``S`` its step budget
per architecture (``defaults.PAPER_SETTINGS``: 0.05 and 18 on CIFAR):

Continuous DEQ variants (vanilla, Skip, Skip Reg.)
    * the paper's method (VCAB3 on CIFAR) at OrdinaryDiffEq's default tolerances
      ``rtol = 1e-3, atol = 1e-6`` (the configs' 0.05 never reached the integrator), at most
      ``S`` steps, first step by Hairer's selection (OrdinaryDiffEq's), no stability cap on
      the step (``stability_factor=None``: OrdinaryDiffEq has none);
    * stop when ``||f(u) - u|| <= T ||f(u)||`` with **one 2-norm over the whole batch**
      (``Termination(scope="batch")``; ``best`` on the large model, ``rel_deq_best``);
    * output ``f(u*, x)`` (``output="f_of_iterate"``);
    * backward: GMRES on the whole batch's vector from 0, ``rtol = atol = T``, at most 20
      products, stopping at ``||r|| <= atol + rtol ||b||`` (``GMRES(stopping="batch")``);
      zero iterations, hence the one-step gradient through the final ``f`` call, when
      ``||b|| <= T / (1 - T)``.
Neural ODE (variant ``node``)
    * ``dz/dt = f(z, x)`` (``rhs="f"``), ``z(0) = 0``, ``t`` in ``[0, 1]``, output ``f(z(1), x)``;
    * the same method at ``rtol = atol = T`` (passed to the integrator there), at most ``S`` steps
      (the stability cap plays no part in a finite-time integration);
    * gradient by the **interpolating** continuous adjoint without seminorm
      (``InterpolatingAdjoint(seminorm=False)``): SciMLSensitivity's
      ``InterpolatingAdjoint(autojacvec=ZygoteVJP())``, whose backward solve inherits the
      forward's tolerance and step budget and keeps the parameter gradient in its error norm.
Both sides
    * the input injection ``x`` is captured by the reference's closures, so the solve gives it
      no gradient; it gets gradient only through the final ``f`` call
      (``input_gradient="final_call"``);
    * pretraining: the first steps unrolled at depth 5 for every model type
      (``TrainConfig.pretrain_steps``; 3,000 on the small model) — a training option, not a
      model option.

Not reproduced (pycdeq's own behaviour is kept, and said so): the reference integrated the
whole batch as one ODE (one step size and error norm for the batch); pycdeq steps each
sample with its own step size and error norm on both sides, so a solve's loop runs as long
as its slowest sample. pycdeq's step-size controller (PI, with its gains) is kept. The discrete (Broyden) DEQ is
not part of the claim: with ``continuous=False`` the protocol changes only the termination,
the output, the input gradient and the adjoint.
"""

from __future__ import annotations

from ..adjoints.methods import GMRES
from ..solvers.broyden import Broyden
from ..solvers.ode import VCAB3, Tsit5
from ..solvers.ode_adjoint import InterpolatingAdjoint
from ..solvers.termination import Termination
from . import defaults

PROTOCOLS = ("pycdeq", "paper")
#: OrdinaryDiffEq's default integrator tolerances, which the reference's steady-state solve ran at.
REFERENCE_INTEGRATOR_RTOL = 1e-3
REFERENCE_INTEGRATOR_ATOL = 1e-6


def _method_class(architecture: str):
    return VCAB3 if defaults.PAPER_SETTINGS[architecture].multistep else Tsit5


def paper_termination(architecture: str) -> Termination:
    """The reference's steady-state test: relative, one 2-norm over the whole batch."""
    s = defaults.PAPER_SETTINGS[architecture]
    return Termination(mode="rel", reltol=s.tolerance, norm="l2", best=s.best, scope="batch")


def paper_adjoint(architecture: str) -> GMRES:
    """The reference's GMRES: whole batch from zero, ``atol = rtol = T``, ``itmax`` products."""
    s = defaults.PAPER_SETTINGS[architecture]
    return GMRES(rtol=s.tolerance, atol=s.tolerance, max_iter=s.adjoint_max_iter, restart=s.adjoint_max_iter,
                 stopping="batch")


def paper_deq_solver(architecture: str):
    """The reference's continuous DEQ solve (OrdinaryDiffEq's default tolerances, ``S`` steps)."""
    s = defaults.PAPER_SETTINGS[architecture]
    return _method_class(architecture)(rtol=REFERENCE_INTEGRATOR_RTOL, atol=REFERENCE_INTEGRATOR_ATOL,
                                       max_steps=s.max_steps, termination=paper_termination(architecture),
                                       stability_factor=None)


def paper_node_method(architecture: str):
    """The reference's Neural ODE integration: ``rtol = atol = T``, ``S`` steps."""
    s = defaults.PAPER_SETTINGS[architecture]
    return _method_class(architecture)(rtol=s.tolerance, atol=s.tolerance, max_steps=s.max_steps)


def protocol_options(protocol: str, architecture: str, variant: str, *, continuous: bool = True) -> dict:
    """``build_model`` options of ``variant`` under ``protocol`` (``{}`` for ``"pycdeq"``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(map(repr, PROTOCOLS))}; got {protocol!r}")
    if architecture not in defaults.PAPER_SETTINGS:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of "
                         f"{', '.join(map(repr, defaults.PAPER_SETTINGS))}")
    if protocol == "pycdeq":
        return {}
    if variant == "node":
        return {"solver": paper_node_method(architecture), "adjoint": InterpolatingAdjoint(seminorm=False),
                "rhs": "f", "output": "f_of_iterate", "input_gradient": "final_call"}
    options = {"adjoint": paper_adjoint(architecture), "output": "f_of_iterate", "input_gradient": "final_call"}
    if continuous:
        options["solver"] = paper_deq_solver(architecture)
    else:
        s = defaults.PAPER_SETTINGS[architecture]
        options["solver"] = Broyden(max_iter=s.max_steps, memory=min(s.max_steps, 27),
                                    termination=paper_termination(architecture))
    return options
