"""Parity harness: the same model, weights and inputs on the torch engine and on Julia.

``compare(model, x)`` runs pycdeq's model and its DeepEquilibriumNetworks.jl translation
and reports, for ``z*``, the logits and the gradient of ``sum(logits * w)`` w.r.t. every
parameter (``w`` a fixed random cotangent), the largest absolute difference and the
relative one ``max|a - b| / max|a|``, together with both solvers' nfe.

Documented tolerances (:data:`DEFAULT_TOLERANCES`, float32): ``z*`` and logits agree to
1e-4 relative, gradients to 1e-3 relative, **when both solves converge tightly** (residual
well below 1e-5, e.g. ``Termination(mode="abs", abstol=1e-6)`` with enough iterations, and
a GMRES rtol <= 1e-6): the two engines stop at different iterates, so with the paper's
loose tolerances (5e-3) the differences are of the order of those tolerances instead.

nfe (:func:`expected_nfe`): with ``fixed_depth = d`` both engines make exactly ``d`` calls
of ``f`` and must both report ``d``. Otherwise the nfe's are reported, not compared: Julia
stops the whole batch together, pycdeq each sample, and Anderson / L-Broyden iterate on the
whole batch as one vector in Julia (``ModelSpec.approximations``, which the report carries).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

import torch

from .translate import translate


@dataclass(frozen=True)
class Tolerances:
    z_star: float = 1e-4
    logits: float = 1e-4
    gradients: float = 1e-3


DEFAULT_TOLERANCES = Tolerances()


@dataclass(frozen=True)
class ParityReport:
    z_star_max_abs: float
    z_star_rel: float
    logits_max_abs: float
    logits_rel: float
    gradient_max_abs: Dict[str, float]
    gradient_rel: Dict[str, float]
    nfe_torch: int
    nfe_julia: int
    tolerances: Tolerances = field(default_factory=Tolerances)
    nfe_expected: Optional[int] = None  #: what both nfe's must be (None: not compared)
    approximations: Tuple[str, ...] = ()  #: the translation's ``ModelSpec.approximations``

    @property
    def worst_gradient_rel(self) -> float:
        return max(self.gradient_rel.values(), default=0.0)

    @property
    def nfe_as_expected(self) -> bool:
        return self.nfe_expected is None or self.nfe_torch == self.nfe_julia == self.nfe_expected

    @property
    def passed(self) -> bool:
        t = self.tolerances
        return (self.z_star_rel <= t.z_star and self.logits_rel <= t.logits
                and self.worst_gradient_rel <= t.gradients and self.nfe_as_expected)

    def summary(self) -> str:
        t = self.tolerances
        lines = [
            f"z*        max|diff| {self.z_star_max_abs:.3e}  rel {self.z_star_rel:.3e}  (tol {t.z_star:g})",
            f"logits    max|diff| {self.logits_max_abs:.3e}  rel {self.logits_rel:.3e}  (tol {t.logits:g})",
        ]
        for name in self.gradient_rel:
            lines.append(f"grad {name:<24} max|diff| {self.gradient_max_abs[name]:.3e}  "
                         f"rel {self.gradient_rel[name]:.3e}  (tol {t.gradients:g})")
        expectation = ("not compared" if self.nfe_expected is None
                       else f"both must be {self.nfe_expected}")
        lines.append(f"nfe       torch {self.nfe_torch}  julia {self.nfe_julia}  ({expectation})")
        lines += [f"approx.   {note}" for note in self.approximations]
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def expected_nfe(spec) -> Optional[int]:
    """The nfe both engines must report for ``spec``: ``fixed_depth`` when the DEQ is unrolled
    (exactly that many calls of ``f``); ``None`` when a solve decides, because the engines stop
    and, for Anderson / L-Broyden, iterate differently (see the module docstring)."""
    return spec.fixed_depth if spec.fixed_depth > 0 else None


def difference(reference: torch.Tensor, other: torch.Tensor):
    """``(max|a - b|, max|a - b| / max|a|)`` in float64 (the shapes must agree)."""
    a = reference.detach().to("cpu", torch.float64)
    b = other.detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() == 0:
        return 0.0, 0.0
    max_abs = float((a - b).abs().max())
    scale = float(a.abs().max())
    return max_abs, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))


def torch_side(model: torch.nn.Module, x: torch.Tensor, cotangent: torch.Tensor, names):
    """z*, logits, gradients and nfe of the torch model (its submodules applied in order)."""
    features = x.reshape(x.shape[0], -1)
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    stem, deq, head = (model.get_submodule(name) for name in ("stem", "deq", "head"))
    z_star, solution = deq(stem(features))
    logits = head(z_star)
    (logits * cotangent).sum().backward()
    gradients = {}
    for name in names:
        grad = params[name].grad
        gradients[name] = torch.zeros_like(params[name]) if grad is None else grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return z_star.detach(), logits.detach(), gradients, int(solution.nfe)


def _check_same_spec(spec, session_spec) -> None:
    """A reused session must have been built from the model as it is now (e.g. the same
    ``fixed_depth``), or the two engines would compute different things."""
    if spec != session_spec:
        fields = [f for f in spec.__dataclass_fields__ if getattr(spec, f) != getattr(session_spec, f)]
        raise ValueError(f"julia_model was built from a different model or settings (differs in: "
                         f"{', '.join(fields)}): rebuild it with JuliaModel.from_torch(model)")


def compare(model: torch.nn.Module, x: torch.Tensor, *, cotangent: Optional[torch.Tensor] = None,
            seed: int = 0, julia_model=None, tolerances: Tolerances = DEFAULT_TOLERANCES) -> ParityReport:
    """Run both backends on ``x`` with ``model``'s weights; see the module docstring.

    ``julia_model`` defaults to ``JuliaModel.from_torch(model)`` (which starts Julia and may
    raise :class:`~pycdeq.julia.JuliaNotAvailableError`); pass one to reuse a session.
    """
    spec = translate(model)
    if julia_model is None:
        from .backend import JuliaModel  # noqa: PLC0415

        julia_model = JuliaModel.from_torch(model)
    else:
        _check_same_spec(spec, julia_model.spec)
        julia_model.load_from(model)
    if cotangent is None:
        generator = torch.Generator().manual_seed(seed)
        cotangent = torch.randn(x.shape[0], spec.num_classes, generator=generator).to(x)
    names = [p.torch_name for p in spec.params]
    z_torch, logits_torch, grads_torch, nfe_torch = torch_side(model, x, cotangent, names)
    forward = julia_model.forward(x)
    _, grads_julia = julia_model.gradients(x, cotangent)
    z_abs, z_rel = difference(z_torch, forward.z_star)
    l_abs, l_rel = difference(logits_torch, forward.logits)
    grad_abs, grad_rel = {}, {}
    for name in names:
        grad_abs[name], grad_rel[name] = difference(grads_torch[name], grads_julia[name])
    return ParityReport(z_star_max_abs=z_abs, z_star_rel=z_rel, logits_max_abs=l_abs, logits_rel=l_rel,
                        gradient_max_abs=grad_abs, gradient_rel=grad_rel, nfe_torch=nfe_torch,
                        nfe_julia=forward.nfe, tolerances=tolerances, nfe_expected=expected_nfe(spec),
                        approximations=spec.approximations)
