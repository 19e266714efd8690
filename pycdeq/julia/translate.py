"""pycdeq model -> a JSON-able spec for PycdeqBridge (the Julia model, solver and adjoint).

:func:`translate` reads a model built by :mod:`pycdeq.models` (the MNIST-dense model:
``stem = Sequential(Linear, ReLU)``, ``deq`` a DEQ / Skip / Skip Reg. / Neural ODE layer
whose ``f(z, x) = relu(Wz z) + relu(Wx x)``, ``head = Linear``), checks that every option
has a Julia counterpart, and returns a :class:`ModelSpec`. ``ModelSpec.julia_kwargs()`` is
what ``PycdeqBridge.build_model`` takes; :mod:`.params` moves weights (and gradients)
between torch and the flat Lux vector ("and back").

Solver names (pycdeq -> Julia):

==================  ===================================================================
``Broyden``         ``LimitedMemoryBroyden(threshold=memory)`` (NonlinearSolve)
``Anderson``        ``NLsolveJL(method=:anderson, m, beta)`` (NonlinearSolve + NLsolve)
``FixedPoint``      ``NLsolveJL(method=:anderson, m=0, beta=damping)`` (damped Picard)
``Tsit5`` etc.      ``DynamicSS(Tsit5())`` (SteadyStateDiffEq; ``Dopri5`` -> ``DP5``,
                    ``BS3``, ``VCAB3``, ``Euler``, ``RK4`` fixed-step)
Neural ODE          the same method on ``ODEProblem`` over ``(0, 1)``
==================  ===================================================================

Termination ``Termination(mode, abstol, reltol, norm)`` maps to NonlinearSolveBase's
``AbsNorm`` / ``RelNorm`` / ``Norm`` modes with a norm equal to the largest per-sample norm.
What is not exactly the same is recorded in ``ModelSpec.approximations`` (always: Julia
stops the whole batch at once, where pycdeq freezes each sample as it converges; Anderson and
L-Broyden also iterate on the whole batch as one vector, see :data:`BATCH_COUPLED`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from ..solvers import ODEMethod
from .convert import plan_linear_weight, plan_vector
from .errors import TranslationError

SOLVER_NAMES = {"Broyden": "broyden", "Anderson": "anderson", "FixedPoint": "picard",
                "Tsit5": "tsit5", "Dopri5": "dp5", "BS3": "bs3", "VCAB3": "vcab3",
                "Euler": "euler", "RK4": "rk4"}
JULIA_SOLVERS = {"broyden": "LimitedMemoryBroyden", "anderson": "NLsolveJL(:anderson)",
                 "picard": "NLsolveJL(:anderson, m=0)", "tsit5": "Tsit5", "dp5": "DP5",
                 "bs3": "BS3", "vcab3": "VCAB3", "euler": "Euler", "rk4": "RK4"}
FIXED_STEP = ("euler", "rk4")
NLSOLVE = ("anderson", "picard")
# Solvers whose Julia counterpart works on vec(z) of the whole batch (NonlinearSolve's NLsolve
# extension passes vec(u0) to nlsolve; L-Broyden's low-rank inverse Jacobian spans the whole
# state), where pycdeq keeps one history per sample. Damped Picard is elementwise: no coupling.
BATCH_COUPLED = {
    "anderson": "Anderson is batch-coupled: NLsolve solves one least-squares problem for the whole "
                "batch (vec(z)), pycdeq one per sample: iterates and nfe differ, z* agrees within "
                "the solver tolerance",
    "broyden": "L-Broyden is batch-coupled: NonlinearSolve keeps one low-rank inverse Jacobian (and "
               "one initial scaling) for the whole batch (vec(z)), pycdeq one per sample: iterates "
               "and nfe differ, z* agrees within the solver tolerance",
}
ADJOINT_GMRES_NOTE = (
    "adjoint GMRES (KrylovJL_GMRES: same restart, iteration cap and tolerances) solves the whole "
    "batch as one vector from a zero start, stopping at ||r|| <= atol + rtol*||b||; pycdeq stops "
    "each sample at max(atol, rtol*||v_b||), started from v")
# λ_skip of the paper's v4 experiments: `w_skip: 0.01` in every config of
# SciML/DeepEquilibriumNetworks.jl v0.2.6, experiments/{cifar10,imagenet}/*.yml.
SKIP_WEIGHT = 0.01


@dataclass(frozen=True)
class ParamEntry:
    """One parameter array: its torch name/shape and its Lux path/shape."""

    torch_name: str
    lux_path: str
    torch_shape: Tuple[int, ...]
    lux_shape: Tuple[int, ...]
    kind: str  # "linear_weight" | "vector"

    def plan(self):
        return plan_linear_weight(self.torch_shape) if self.kind == "linear_weight" else plan_vector(self.torch_shape)

    @property
    def size(self) -> int:
        return math.prod(self.lux_shape)


@dataclass(frozen=True)
class SolverSpec:
    """Solver settings with Julia names. ``kind``: ``discrete`` | ``continuous`` | ``node``."""

    kind: str
    name: str
    termination: str = "abs"
    norm: str = "max"
    safe: bool = False
    best: bool = False
    abstol: float = 1e-3
    reltol: float = 1e-3
    maxiters: int = 32
    memory: int = 30
    m: int = 5
    beta: float = 1.0
    ode_abstol: float = 1e-6
    ode_reltol: float = 1e-3
    dt: float = 0.0
    dtmin: float = 0.0
    adaptive: bool = True

    @property
    def julia(self) -> str:
        inner = JULIA_SOLVERS[self.name] + "()"
        return f"DynamicSS({inner})" if self.kind == "continuous" else inner


@dataclass(frozen=True)
class AdjointSpec:
    """``steady_state`` (DEQ: GMRES, restarted every ``restart`` iterations), ``gauss`` or
    ``backsolve`` (Neural ODE)."""

    name: str = "steady_state"
    abstol: float = 1e-3
    reltol: float = 1e-3
    maxiters: int = 10
    restart: int = 20


@dataclass(frozen=True)
class ModelSpec:
    """Everything PycdeqBridge needs to rebuild a model (JSON-able via :meth:`to_dict`)."""

    in_features: int
    width: int
    num_classes: int
    variant: str
    solver: SolverSpec
    adjoint: AdjointSpec
    params: Tuple[ParamEntry, ...]
    fixed_depth: int = 0
    architecture: str = "mnist-dense"
    approximations: Tuple[str, ...] = ()

    @property
    def continuous(self) -> bool:
        return self.solver.kind != "discrete"

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params)

    def julia_kwargs(self, *, seed: int = 0) -> Dict[str, object]:
        """Keyword arguments of ``PycdeqBridge.build_model`` (str / int / float / bool only)."""
        s, a = self.solver, self.adjoint
        return {
            "architecture": self.architecture, "in_features": self.in_features, "width": self.width,
            "num_classes": self.num_classes, "variant": self.variant, "solver": s.name,
            "memory": s.memory, "m": s.m, "beta": float(s.beta), "termination": s.termination,
            "norm": s.norm, "safe": s.safe, "best": s.best, "abstol": float(s.abstol),
            "reltol": float(s.reltol), "maxiters": s.maxiters, "ode_abstol": float(s.ode_abstol),
            "ode_reltol": float(s.ode_reltol), "dt": float(s.dt), "dtmin": float(s.dtmin),
            "adaptive": s.adaptive, "adjoint": a.name, "adjoint_abstol": float(a.abstol),
            "adjoint_reltol": float(a.reltol), "adjoint_maxiters": a.maxiters,
            "adjoint_restart": a.restart,
            "fixed_depth": self.fixed_depth, "seed": int(seed),
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        data = dict(data)
        data["solver"] = SolverSpec(**data["solver"])
        data["adjoint"] = AdjointSpec(**data["adjoint"])
        data["params"] = tuple(ParamEntry(**{**p, "torch_shape": tuple(p["torch_shape"]),
                                             "lux_shape": tuple(p["lux_shape"])}) for p in data["params"])
        data["approximations"] = tuple(data.get("approximations", ()))
        return cls(**data)


# --- solvers ---------------------------------------------------------------------------


def translate_termination(termination, *, solver_name: str, state_dim: int,
                          notes: List[str]) -> Dict[str, Any]:
    """``Termination`` -> the solver spec's termination fields (see the module docstring)."""
    mode, norm = termination.mode, termination.norm
    out: Dict[str, Any] = {"termination": mode, "norm": norm, "safe": bool(termination.safe),
           "best": bool(termination.best), "abstol": float(termination.abstol),
           "reltol": float(termination.reltol)}
    if solver_name in NLSOLVE:
        if mode != "abs" or termination.safe or termination.best:
            raise TranslationError(
                f"{solver_name} runs through NLsolve, which only tests max|f(z) - z| <= abstol: "
                f"use Termination(mode='abs') without safe/best (got mode={mode!r}, "
                f"safe={termination.safe}, best={termination.best})")
        if norm == "l2":
            # ||r||_2 <= sqrt(d) max|r|: this abstol guarantees pycdeq's per-sample l2 test.
            out["abstol"] = float(termination.abstol) / math.sqrt(state_dim)
            notes.append(f"NLsolve tests max|r| (whole batch): abstol scaled by 1/sqrt({state_dim}) "
                         "so that every sample's l2 residual is within the original abstol")
    elif mode == "rel":
        notes.append("relative termination compares the batch's largest residual with its largest "
                     "||f(z)||, not each sample's own ratio")
    elif mode == "norm":
        notes.append("termination 'norm' is abs OR rel in NonlinearSolveBase, abs AND rel in pycdeq")
    if termination.safe or termination.best:
        notes.append("safe/best termination uses NonlinearSolveBase's patience and divergence rules")
    if termination.best and mode == "norm":
        raise TranslationError("best=True with mode='norm' has no NonlinearSolveBase counterpart")
    if termination.safe and mode == "norm":
        raise TranslationError("safe=True with mode='norm' has no NonlinearSolveBase counterpart")
    return out


def _ode_fields(method, name: str, notes: List[str]) -> Dict[str, Any]:
    if name in FIXED_STEP:
        return {"adaptive": False, "dt": float(method.dt), "maxiters": int(method.max_steps)}
    fields: Dict[str, Any] = {"ode_abstol": float(method.atol), "ode_reltol": float(method.rtol),
              "maxiters": int(method.max_steps), "dtmin": float(method.controller.dt_min)}
    if method.dt0 is not None:
        fields["dt"] = float(method.dt0)
    notes.append("step-size control is OrdinaryDiffEq's own: one step size for the whole batch (its "
                 "error norm is the RMS over every element), pycdeq one per sample; safety/factor/PI "
                 "settings are not mapped")
    return fields


def translate_solver(solver, *, variant: str, state_dim: int, notes: List[str]) -> SolverSpec:
    """A pycdeq solver object -> :class:`SolverSpec` (raises :class:`TranslationError`)."""
    cls = type(solver).__name__
    name = SOLVER_NAMES.get(cls)
    if name is None:
        raise TranslationError(f"solver {cls} has no Julia counterpart; supported: "
                               f"{', '.join(SOLVER_NAMES)}")
    continuous = isinstance(solver, ODEMethod)
    if continuous != (name not in ("broyden", "anderson", "picard")):
        family = "an ODE method" if continuous else "a discrete solver"
        raise TranslationError(f"solver {cls} is {family}, which does not match its Julia method {name!r}")
    if variant == "node":
        if not continuous:
            raise TranslationError(f"a Neural ODE needs an ODE method, got {cls}")
        return SolverSpec(kind="node", name=name, **_ode_fields(solver, name, notes))
    termination = translate_termination(solver.termination, solver_name=name, state_dim=state_dim,
                                        notes=notes)
    if continuous:
        return SolverSpec(kind="continuous", name=name, **termination, **_ode_fields(solver, name, notes))
    options: Dict[str, Any] = {"maxiters": int(solver.max_iter)}
    if name == "broyden":
        options["memory"] = int(solver.memory)
        notes.append("L-Broyden: NonlinearSolve's initial inverse Jacobian and resets, not -I")
    elif name == "anderson":
        options.update(m=int(solver.m), beta=float(solver.beta))
        notes.append("Anderson: NLsolve's least-squares mixing (pycdeq's regulariser lam is not mapped)")
    else:
        options.update(beta=float(solver.damping))
    if name in BATCH_COUPLED:
        notes.append(BATCH_COUPLED[name])
    return SolverSpec(kind="discrete", name=name, **termination, **options)


def translate_adjoint(layer, *, variant: str, notes: List[str]) -> AdjointSpec:
    if variant == "node":
        if layer.adjoint == "backsolve":
            return AdjointSpec(name="backsolve")
        notes.append("Neural ODE gradient: GaussAdjoint (continuous adjoint) instead of backprop "
                     "through the steps; the two agree to the integrator's tolerance")
        return AdjointSpec(name="gauss")
    from ..adjoints.methods import GMRES  # noqa: PLC0415 -- keep `pycdeq.julia` import light

    adjoint = GMRES() if layer.adjoint is None else layer.adjoint
    if not isinstance(adjoint, GMRES):
        raise TranslationError(f"adjoint {type(adjoint).__name__} has no Julia counterpart; "
                               "only GMRES maps (to SteadyStateAdjoint with a Krylov solve)")
    notes.append(ADJOINT_GMRES_NOTE)
    return AdjointSpec(name="steady_state", abstol=float(adjoint.atol), reltol=float(adjoint.rtol),
                       maxiters=int(adjoint.max_iter), restart=int(adjoint.restart))


# --- the model --------------------------------------------------------------------------


def _linear(module, name: str, *, bias: bool) -> nn.Linear:
    if not isinstance(module, nn.Linear):
        raise TranslationError(f"{name} must be an nn.Linear, got {type(module).__name__}")
    if (module.bias is not None) != bias:
        raise TranslationError(f"{name} must {'have' if bias else 'not have'} a bias")
    return module


def _linear_relu(module, name: str) -> nn.Linear:
    if (not isinstance(module, nn.Sequential) or len(module) != 2
            or not isinstance(module[1], nn.ReLU)):
        raise TranslationError(f"{name} must be nn.Sequential(nn.Linear, nn.ReLU), got {module}")
    return _linear(module[0], f"{name}[0]", bias=True)


def _check_injection(f, width: int) -> Tuple[nn.Linear, nn.Linear]:
    """``f.Wz``, ``f.Wx`` after checking numerically that ``f(z, x) = relu(Wz z) + relu(Wx x)``."""
    wz = _linear(getattr(f, "Wz", None), "deq.f.Wz", bias=False)
    wx = _linear(getattr(f, "Wx", None), "deq.f.Wx", bias=False)
    for w, label in ((wz, "Wz"), (wx, "Wx")):
        if tuple(w.weight.shape) != (width, width):
            raise TranslationError(f"deq.f.{label} must be {width}x{width}, got {tuple(w.weight.shape)}")
    generator = torch.Generator().manual_seed(0)
    weight = wz.weight
    z = torch.randn(3, width, generator=generator).to(weight)
    x = torch.randn(3, width, generator=generator).to(weight)
    with torch.no_grad():
        expected = torch.relu(wz(z)) + torch.relu(wx(x))
        got = f(z, x)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(
            got, expected, rtol=1e-5, atol=1e-6):
        raise TranslationError("deq.f is not relu(Wz z) + relu(Wx x): the Julia model could not "
                               "reproduce it")
    return wz, wx


def _check_layer_options(layer, variant: str) -> None:
    if variant == "node":
        if getattr(layer, "rhs", "f_minus_z") != "f_minus_z":
            raise TranslationError("Neural ODE rhs='f' has no counterpart: DeepEquilibriumNetworks "
                                   "integrates dz/dt = f(z, x) - z")
        if getattr(layer, "output", "state") != "state":
            raise TranslationError("Neural ODE output='f_of_state' has no Julia counterpart")
        if float(getattr(layer, "t1", 1.0)) != 1.0:
            raise TranslationError(f"Neural ODE t1={layer.t1}: DeepEquilibriumNetworks integrates "
                                   "over (0, 1) only")
        return
    if getattr(layer, "output", "iterate") != "iterate":
        raise TranslationError("DEQ output='f_of_iterate' has no Julia counterpart "
                               "(DeepEquilibriumNetworks v2 returns the solver's iterate)")
    if getattr(layer, "input_gradient", "implicit") != "implicit":
        raise TranslationError("DEQ input_gradient='final_call' has no Julia counterpart "
                               "(DeepEquilibriumNetworks v2 gives x its implicit gradient)")
    if getattr(layer, "jacobian_reg", None) is not None:
        raise TranslationError("Jacobian regularization is not translated: DeepEquilibriumNetworks "
                               "v2 estimates the trace v'Jv (src/utils.jl, estimate_jacobian_trace), "
                               "pycdeq the Frobenius norm (docs/julia.md)")
    if getattr(layer, "state_shape", None) is not None:
        raise TranslationError("an explicit state_shape is not supported by the Julia MNIST-dense model")


def translate(model: nn.Module) -> ModelSpec:
    """Spec of a pycdeq MNIST-dense model (see the module docstring); raises
    :class:`TranslationError` naming the first option that has no Julia counterpart."""
    for part in ("stem", "deq", "head"):
        if not hasattr(model, part):
            raise TranslationError(f"model has no .{part}: only the MNIST-dense model "
                                   "(stem, deq, head) translates to the Julia backend")
    stem = _linear_relu(model.stem, "stem")
    head = _linear(model.head, "head", bias=True)
    layer = model.deq
    if not isinstance(layer, nn.Module):
        raise TranslationError(f"model.deq must be a pycdeq equilibrium layer, got {type(layer).__name__}")
    variant = getattr(layer, "variant", None)
    if variant not in ("vanilla", "skip", "skip_reg", "node"):
        raise TranslationError(f"deq.variant must be vanilla, skip, skip_reg or node, got {variant!r}")
    width = stem.out_features
    if head.in_features != width:
        raise TranslationError(f"head takes {head.in_features} features but the state has {width}")
    wz, wx = _check_injection(layer.f, width)
    _check_layer_options(layer, variant)
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise TranslationError(f"the Julia backend computes in Float32; the model has parameters of "
                               f"dtype {sorted(map(str, dtypes))}: convert it with model.float()")
    notes: List[str] = [] if variant == "node" else [
        "Julia stops the whole batch at once; pycdeq freezes each sample as it converges"]
    solver = layer.method if variant == "node" else layer.solver
    solver_spec = translate_solver(solver, variant=variant, state_dim=width, notes=notes)
    adjoint_spec = translate_adjoint(layer, variant=variant, notes=notes)
    names = {id(p): n for n, p in model.named_parameters()}

    def entry(param: torch.Tensor, lux_path: str) -> ParamEntry:
        kind = "linear_weight" if param.dim() == 2 else "vector"
        shape = tuple(param.shape)
        return ParamEntry(names[id(param)], lux_path, shape, shape, kind)

    params = [entry(stem.weight, "layer_1.weight"), entry(stem.bias, "layer_1.bias"),
              entry(wz.weight, "layer_2.model.layer_1.weight"),
              entry(wx.weight, "layer_2.model.layer_2.weight")]
    if variant == "skip":
        g = _linear_relu(layer.g, "deq.g")
        if (g.in_features, g.out_features) != (width, width):
            raise TranslationError(f"deq.g must map {width} -> {width} features")
        params += [entry(g.weight, "layer_2.init.weight"), entry(g.bias, "layer_2.init.bias")]
    params += [entry(head.weight, "layer_3.weight"), entry(head.bias, "layer_3.bias")]
    fixed_depth = 0 if variant == "node" else int(getattr(layer, "fixed_depth", 0))
    return ModelSpec(in_features=stem.in_features, width=width, num_classes=head.out_features,
                     variant=variant, solver=solver_spec, adjoint=adjoint_spec, params=tuple(params),
                     fixed_depth=fixed_depth, approximations=tuple(dict.fromkeys(notes)))
