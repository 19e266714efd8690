"""The competitors of ``bench_paper``: the paper's protocol on both sides, and what users pick.

Every competitor is the CIFAR-10 small MDEQ (``pycdeq.models.build_model("cifar10-small")``,
or smaller sizes in ``--quick``) with the same stem, ``f`` and head; they differ in the
equilibrium layer:

==========================  ==========================================================================
key                         layer
==========================  ==========================================================================
``deq-paper``               continuous DEQ, paper protocol (``pycdeq.models.paper_protocol``)
``deq-pycdeq``              continuous DEQ, pycdeq's defaults (per-sample test, GMRES from v, dt0 = 1)
``skipreg-paper``           Skip Reg. continuous DEQ, paper protocol
``node-paper``              the paper's Neural ODE: ``dz/dt = f(z, x)``, VCAB3 0.05 / 18 steps, output
                            ``f(z(1), x)``, interpolating adjoint without seminorm
``torchdiffeq-adjoint``     the same Neural ODE through ``torchdiffeq.odeint_adjoint``: its default
                            method (dopri5) and adjoint options, at the paper's ``rtol = atol = 0.05``
``torchdiffeq-backprop``    the same through ``torchdiffeq.odeint`` (backprop through the steps)
``node-backprop``           pycdeq's Neural ODE, defaults (``dz/dt = f - z``, output ``z(1)``), backprop
``node-backsolve``          pycdeq's Neural ODE, defaults, backsolve adjoint with seminorm
==========================  ==========================================================================

torchdiffeq's default tolerances (``rtol = 1e-7, atol = 1e-9``) are not used: no one trains a
classifier's Neural ODE at them, and the comparison is about the gradient method at the
paper's tolerance. As in the reference, the torchdiffeq layers give the injection ``x`` no
gradient through the solve (``final_call``), only through the final ``f(z(1), x)``.

Pretraining (the first steps, unrolled at depth 5 for every model type) computes the same
function for competitors whose unrolled forward is the same (``pretrain_group``): the
paper-protocol DEQ and every paper-structured Neural ODE (``f`` applied 5 + 1 times,
``x`` detached inside), pycdeq's DEQ and Neural ODEs (5 times, ``x`` attached), and the
Skip Reg. DEQ (its own start ``f(0, x)``). The benchmark pretrains each group once and gives
every member the same weights and optimiser state: what each would have computed itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from pycdeq import GMRES, LayerOutput, Status
from pycdeq.models import build_model, defaults
from pycdeq.models.paper_protocol import protocol_options
from pycdeq.solvers.ode_adjoint import BacksolveAdjoint


@dataclass(frozen=True)
class Competitor:
    label: str
    variant: str
    protocol: str
    pretrain_group: str
    torchdiffeq: Optional[str] = None  # "adjoint" | "backprop": replace the layer by torchdiffeq's
    adjoint: object = None  # overrides the protocol's adjoint
    # Fields replaced in the protocol's solver: (field, value) pairs, where a value may be a
    # function of the architecture.
    solver_changes: tuple = ()


COMPETITORS = {
    "deq-paper": Competitor("continuous DEQ (paper protocol)", "vanilla", "paper", "paper"),
    "deq-pycdeq": Competitor("continuous DEQ (pycdeq defaults)", "vanilla", "pycdeq", "pycdeq"),
    "skipreg-paper": Competitor("Skip Reg. DEQ (paper protocol)", "skip_reg", "paper", "skip_reg"),
    "node-paper": Competitor("Neural ODE (paper: interpolating adjoint)", "node", "paper", "paper"),
    "torchdiffeq-adjoint": Competitor("torchdiffeq odeint_adjoint", "node", "paper", "paper", torchdiffeq="adjoint"),
    "torchdiffeq-backprop": Competitor("torchdiffeq odeint", "node", "paper", "paper", torchdiffeq="backprop"),
    "node-backprop": Competitor("pycdeq Neural ODE (backprop)", "node", "pycdeq", "pycdeq"),
    "node-backsolve": Competitor("pycdeq Neural ODE (backsolve, seminorm)", "node", "pycdeq", "pycdeq",
                                 adjoint=BacksolveAdjoint(seminorm=True)),
}
def _fifth(architecture: str) -> float:
    """pycdeq's integrator tolerance: the paper's steady-state tolerance times 0.2."""
    return defaults.INTEGRATOR_FRACTION * defaults.PAPER_SETTINGS[architecture].tolerance


#: Grounded ways to make the continuous DEQ cheaper (not in the default set; ``--competitors``):
#: each changes one setting of the paper-protocol DEQ, or pycdeq's, and is timed against it.
CHEAPER = {
    # pycdeq's first step (the time scale of the -z term) instead of Hairer's selection.
    "deq-paper-dt0": Competitor("DEQ paper, dt0 = 1", "vanilla", "paper", "paper", solver_changes=(("dt0", 1.0),)),
    # The integrator at the steady-state tolerance / 5 (pycdeq's default) instead of 1e-3 / 1e-6.
    "deq-paper-tol": Competitor("DEQ paper, integrator at tolerance / 5", "vanilla", "paper", "paper",
                                solver_changes=(("rtol", _fifth), ("atol", _fifth))),
    # A capped forward: 10 VCAB3 steps instead of 18.
    "deq-paper-cap10": Competitor("DEQ paper, 10 steps", "vanilla", "paper", "paper",
                                  solver_changes=(("max_steps", 10),)),
    # All three at once.
    "deq-paper-fast": Competitor("DEQ paper, dt0 = 1, integrator at tolerance / 5, 10 steps", "vanilla", "paper",
                                 "paper", solver_changes=(("dt0", 1.0), ("rtol", _fifth), ("atol", _fifth),
                                                          ("max_steps", 10))),
    # pycdeq's defaults with the reference's loose whole-batch backward.
    "deq-pycdeq-loose": Competitor("DEQ pycdeq, reference GMRES rule", "vanilla", "pycdeq", "pycdeq",
                                   adjoint=GMRES(rtol=0.05, atol=0.05, max_iter=20, restart=20, stopping="batch")),
}
COMPETITORS.update(CHEAPER)
DEFAULT_COMPETITORS = tuple(k for k in COMPETITORS if k not in CHEAPER)
#: The baseline every ratio is taken against, and the headline competitor.
PAPER_NODE, PAPER_DEQ = "node-paper", "deq-paper"


def torchdiffeq_available() -> bool:
    try:
        import torchdiffeq  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


class _Field:
    """``dz/dt = f(z, x)`` on a tuple state, counting its calls (a plain callable: ``f`` stays
    registered on the layer, so parameter names match the other competitors')."""

    def __init__(self, f: nn.Module):
        self.f = f
        self.x = None
        self.calls = 0

    def __call__(self, t, z):
        self.calls += 1
        return self.f(z, self.x)


@dataclass(frozen=True)
class TorchdiffeqOutput(LayerOutput):
    """What :class:`TorchdiffeqNODE` returns beside ``z``; ``adjoint``: the backward's cost
    (``{"nfe": callable}`` with the adjoint, read after backward; empty without)."""

    adjoint: dict


class TorchdiffeqNODE(nn.Module):
    """The paper's Neural ODE (``dz/dt = f(z, x)``, ``z(0) = 0``, ``[0, 1]``, output ``f(z(1), x)``)
    integrated by torchdiffeq; ``forward(x) -> (z, TorchdiffeqOutput)`` like pycdeq's layers. With
    the adjoint, ``output.adjoint["nfe"]()`` counts the backward's calls of the field."""

    variant = "node"

    def __init__(self, f: nn.Module, state_shape, *, adjoint: bool, rtol: float, atol: float):
        """``state_shape``: per-sample shapes of a multiscale state, or one shape (a tensor state)."""
        super().__init__()
        self.f = f
        self.field = _Field(f)
        self.multiscale = isinstance(state_shape[0], (tuple, list))
        self.state_shape = tuple(tuple(s) for s in state_shape) if self.multiscale else (tuple(state_shape),)
        self.use_adjoint, self.rtol, self.atol = adjoint, rtol, atol
        self.fixed_depth = 0

    def forward(self, x: torch.Tensor):
        import torchdiffeq  # noqa: PLC0415 - optional peer

        z0 = tuple(x.new_zeros(x.shape[0], *s) for s in self.state_shape)
        z0 = z0 if self.multiscale else z0[0]
        field = self.field
        field.x = x.detach()  # closure-captured, as in the reference: no gradient through the solve
        stats = {}
        if self.fixed_depth > 0:
            z = z0
            for _ in range(self.fixed_depth):
                z = self.f(z, field.x)
            nfe = self.fixed_depth
        else:
            field.calls = 0
            times = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
            if self.use_adjoint:
                path = torchdiffeq.odeint_adjoint(field, z0, times, rtol=self.rtol, atol=self.atol,
                                                  adjoint_params=tuple(self.f.parameters()))
                start = field.calls
                stats = {"nfe": lambda: field.calls - start}  # read after backward
            else:
                path = torchdiffeq.odeint(field, z0, times, rtol=self.rtol, atol=self.atol)
            z = tuple(p[-1] for p in path) if self.multiscale else path[-1]
            nfe = field.calls
        z = self.f(z, x)
        batch = x.shape[0]
        zero = x.new_zeros(())
        status = torch.full((batch,), int(Status.CONVERGED), dtype=torch.int8, device=x.device)
        return z, TorchdiffeqOutput(nfe=nfe + 1, status=status, skip_loss=zero, jacobian_loss=zero, adjoint=stats)


def build_competitor(key: str, *, architecture: str, model_options: dict, num_classes: int,
                     input_shape, device: torch.device, seed: int = 0) -> nn.Module:
    """The model of competitor ``key`` under a fixed seed (same initial weights for every key)."""
    spec = COMPETITORS[key]
    options = {**protocol_options(spec.protocol, architecture, spec.variant), **model_options}
    if spec.adjoint is not None:
        options["adjoint"] = spec.adjoint
    if spec.solver_changes:
        solver = options.get("solver") or defaults.solver(architecture, continuous=True)
        changes = {k: v(architecture) if callable(v) else v for k, v in spec.solver_changes}
        options["solver"] = dataclasses.replace(solver, **changes)
    torch.manual_seed(seed)
    model = build_model(architecture, variant=spec.variant, num_classes=num_classes, input_shape=input_shape,
                        **options)
    if spec.torchdiffeq is not None:
        method = model.config.solver
        shape = (model.config.sizes.width,) if model.config.is_dense else model.config.scales
        model.deq = TorchdiffeqNODE(model.deq.f, shape, adjoint=spec.torchdiffeq == "adjoint",
                                    rtol=method.rtol, atol=method.atol)
    return model.to(device)
