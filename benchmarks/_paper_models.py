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

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from pycdeq import Solution, Status
from pycdeq.models import build_model
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


class TorchdiffeqNODE(nn.Module):
    """The paper's Neural ODE (``dz/dt = f(z, x)``, ``z(0) = 0``, ``[0, 1]``, output ``f(z(1), x)``)
    integrated by torchdiffeq; ``forward(x) -> (z, Solution)`` like pycdeq's layers. With the
    adjoint, ``solution.extra["adjoint"]["nfe"]()`` counts the backward's calls of the field."""

    variant = "node"

    def __init__(self, f: nn.Module, state_shape, *, adjoint: bool, rtol: float, atol: float):
        super().__init__()
        self.f = f
        self.field = _Field(f)
        self.state_shape = tuple(tuple(s) for s in state_shape)
        self.use_adjoint, self.rtol, self.atol = adjoint, rtol, atol
        self.fixed_depth = 0

    def forward(self, x: torch.Tensor):
        import torchdiffeq  # noqa: PLC0415 - optional peer

        z0 = tuple(x.new_zeros(x.shape[0], *s) for s in self.state_shape)
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
            z = tuple(p[-1] for p in path)
            nfe = field.calls
        z = self.f(z, x)
        batch = x.shape[0]
        zero = x.new_zeros(())
        solution = Solution(z=z, z0=z0, residual=x.new_full((batch,), float("nan")),
                            status=torch.full((batch,), int(Status.CONVERGED), dtype=torch.int8, device=x.device),
                            iterations=torch.zeros(batch, dtype=torch.long, device=x.device), nfe=nfe + 1,
                            steps=0, skip_loss=zero, jacobian_loss=zero)
        solution.extra["adjoint"] = stats
        return z, solution


def build_competitor(key: str, *, architecture: str, model_options: dict, num_classes: int,
                     input_shape, device: torch.device, seed: int = 0) -> nn.Module:
    """The model of competitor ``key`` under a fixed seed (same initial weights for every key)."""
    spec = COMPETITORS[key]
    options = {**protocol_options(spec.protocol, architecture, spec.variant), **model_options}
    if spec.adjoint is not None:
        options["adjoint"] = spec.adjoint
    torch.manual_seed(seed)
    model = build_model(architecture, variant=spec.variant, num_classes=num_classes, input_shape=input_shape,
                        **options)
    if spec.torchdiffeq is not None:
        method = model.config.solver
        model.deq = TorchdiffeqNODE(model.deq.f, model.config.scales, adjoint=spec.torchdiffeq == "adjoint",
                                    rtol=method.rtol, atol=method.atol)
    return model.to(device)
