"""Finite-time integration ``z(t0) -> z(t1)`` (the Neural ODE path), with two gradients.

``integrate(rhs, z0, t1, method)`` solves ``dz/dt = rhs(t, z)`` per sample: every sample has
its own time, step size, accept/reject decisions and status, and lands exactly on ``t1`` and on
each requested ``t_eval`` time (steps are shortened to hit them; no interpolation).

Gradients:

* ``adjoint="backprop"`` (default): autograd through the accepted steps
  (discretise-then-optimise, as ``torchdiffeq.odeint``). Exact for the computed solution
  with the step sizes held fixed; memory grows with the number of steps.
* ``adjoint="backsolve"``: the continuous adjoint (optimise-then-discretise, as
  ``torchdiffeq.odeint_adjoint``), memory independent of the steps, in :mod:`._backsolve`.
* ``adjoint="interpolating"``: the continuous adjoint reading ``z(t)`` from the forward
  pass's dense output (SciMLSensitivity's ``InterpolatingAdjoint``). Options of both
  (``seminorm``) in :mod:`.ode_adjoint`.

Status per sample: ``CONVERGED`` means "reached ``t1``"; ``MAX_ITERS`` the step budget ran
out; ``DT_MIN`` the step size underflowed or became non-finite (the usual end of a blow-up
with an adaptive method); ``NON_FINITE`` a fixed-step method produced NaN/Inf. A sample that
did not reach ``t1`` returns its last accepted state and its ``t``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch

from .. import _checks
from . import adaptive
from .controller import initial_step
from .dense_output import DenseOutput
from .ode import ODEMethod
from .ode_adjoint import resolve_adjoint
from .packing import StatePacker
from .solution import State, Status


@dataclass
class Trajectory:
    """Result of :func:`integrate`. Per-sample fields are ``(batch,)`` tensors."""

    z: State  #: state at ``t1`` (same structure as ``z0``)
    ys: Optional[State]  #: states at ``t_eval``, stacked on a new leading dim, or None
    t: torch.Tensor  #: time each sample reached (``t1`` unless it stopped early), float64
    status: torch.Tensor  #: ``Status`` codes, int8
    accepted_steps: torch.Tensor
    rejected_steps: torch.Tensor
    nfe: int  #: calls of ``rhs`` on the batch (forward)
    steps: int  #: loop iterations (the slowest sample's accepted + rejected steps)
    t_eval: Optional[torch.Tensor] = None
    #: filled in by the backsolve adjoint's backward pass: nfe, steps, status of the
    #: backward integration (a batch-global solve).
    adjoint: dict = field(default_factory=dict)

    @property
    def reached_t1(self) -> torch.Tensor:
        return self.status == int(Status.CONVERGED)


@dataclass
class _Run:
    """What one flat solve returns (internal)."""

    y: torch.Tensor
    ys: Optional[torch.Tensor]
    t: torch.Tensor
    status: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor
    nfe: int
    steps: int


def _eval_times(t_eval, t0: float, t1: float, device) -> Optional[torch.Tensor]:
    if t_eval is None:
        return None
    times = torch.as_tensor(t_eval, dtype=torch.float64).detach().cpu()
    if times.dim() != 1 or times.numel() == 0:
        raise ValueError(f"t_eval must be a non-empty 1-D sequence of times, got shape {tuple(times.shape)}")
    if not bool(torch.isfinite(times).all()):
        raise ValueError("t_eval contains NaN or Inf values")
    if times.numel() > 1 and not bool((times[1:] > times[:-1]).all()):
        raise ValueError("t_eval must be strictly increasing")
    if float(times[0]) < t0 or float(times[-1]) > t1:
        raise ValueError(f"t_eval must lie in [t0, t1] = [{t0}, {t1}], got [{float(times[0])}, {float(times[-1])}]")
    return times.to(device)


class Integration(adaptive.Goal):
    """The goal of :func:`integrate_flat`: every sample steps onto each target time in turn
    (the ``t_eval`` times after ``t0``, then ``t1``), shortening the step that would pass
    it, and records the state there; it is done (``CONVERGED``) on ``t1``."""

    def __init__(self, y0: torch.Tensor, t0: float, t1: float, t_eval: Optional[torch.Tensor], tdtype,
                 fixed_step: bool):
        batch, device = y0.shape[0], y0.device
        self.time_scale = t1 - t0
        self.fixed_step = fixed_step
        self.ys = None
        slot_of_target, target_times = [], []
        if t_eval is not None:
            ys = y0.new_zeros((t_eval.numel(),) + tuple(y0.shape))
            at_start = (t_eval == t0)[:, None, None]
            self.ys = torch.where(at_start, y0[None], ys)
            later = [(i, float(v)) for i, v in enumerate(t_eval.tolist()) if v > t0]
            slot_of_target = [i for i, _ in later]
            target_times = [v for _, v in later]
        if not target_times or target_times[-1] < t1:
            target_times.append(t1)
            slot_of_target.append(-1)
        self.targets = torch.tensor(target_times, dtype=tdtype, device=device)
        self.slots = torch.tensor(slot_of_target, dtype=torch.long, device=device)
        self.last_target = len(target_times) - 1
        self.slot_range = torch.arange(self.ys.shape[0], device=device)[:, None] if self.ys is not None else None
        self.target_index = torch.zeros(batch, dtype=torch.long, device=device)
        self.status = torch.full((batch,), Status.RUNNING, dtype=torch.int8, device=device)
        self._target = None
        self.dense: Optional[DenseOutput] = None  # records every step when set (integrate_flat)

    def running(self) -> torch.Tensor:
        return self.status == int(Status.RUNNING)  # a plain int: IntEnum members compare wrongly under torch.compile

    def step_size(self, t, dt):
        self._target = self.targets[self.target_index]
        remaining = self._target - t
        clipped = dt >= remaining
        return torch.where(clipped, remaining, dt), clipped

    def screen(self, accept, result, running):
        if not self.fixed_step:
            return accept
        # Without an error estimate, a NaN/Inf is only seen in the new derivative.
        finite = torch.isfinite(result.k).all(dim=1)
        self.status = torch.where(running & ~finite, torch.full_like(self.status, Status.NON_FINITE), self.status)
        return accept & finite

    def limit(self, dt_next, dt, take, clipped, result, y, k):
        # A step shortened to hit a target says little about the next one: keep the larger of
        # the controller's proposal and the step it had proposed before shortening.
        return torch.where(take & clipped, torch.maximum(dt_next, dt), dt_next)

    def land(self, t, h, take, clipped):
        # Land exactly on the target (t + h may round past it).
        return torch.where(take, torch.where(clipped, self._target, t + h), t)

    def record(self, step, take, clipped, y, k, t) -> None:
        hit = take & clipped
        if self.ys is not None:
            slot = self.slots[self.target_index]
            self.ys = torch.where(((self.slot_range == slot[None]) & hit[None])[:, :, None], y[None], self.ys)
        done = hit & (self.target_index == self.last_target)
        self.status = torch.where(done, torch.full_like(self.status, Status.CONVERGED), self.status)
        self.target_index = torch.where(hit & ~done, self.target_index + 1, self.target_index)
        if self.dense is not None:  # the interpolating adjoint reads z(t) from the accepted steps
            self.dense.record(t, y, k)

    def stop(self, mask: torch.Tensor) -> None:
        self.status = torch.where(mask, torch.full_like(self.status, Status.DT_MIN), self.status)


def integrate_flat(method, rhs: Callable, y0: torch.Tensor, t0: float, t1: float,
                   t_eval: Optional[torch.Tensor] = None, error_columns: Optional[int] = None,
                   dense: Optional[DenseOutput] = None) -> _Run:
    """Integrate the flat field ``rhs(t, y)`` (``t`` per sample, ``y``'s dtype) from ``t0`` to ``t1``.

    Runs under whatever autograd mode the caller chose. ``t_eval`` (float64, in ``[t0, t1]``,
    increasing) are the times to record; ``error_columns`` restricts the error norm to the
    leading columns (the continuous adjoints' seminorm); ``dense`` records every sample's
    accepted points for the interpolating adjoint.
    """
    batch, device = y0.shape[0], y0.device
    tdtype = adaptive.time_dtype(device)
    tolerances = method.tolerances()
    if tolerances is not None and error_columns is not None:
        tolerances = replace(tolerances, columns=error_columns)
    goal = Integration(y0, t0, t1, t_eval, tdtype, fixed_step=tolerances is None)
    t = torch.full((batch,), float(t0), dtype=tdtype, device=device)
    k = rhs(t.to(y0.dtype), y0)
    nfe = 1
    if dense is not None:
        dense.record(t, y0, k)
    if method.initial_dt is None:
        dt, evaluations = initial_step(rhs, t.to(y0.dtype), y0, k, rtol=tolerances.rtol, atol=tolerances.atol,
                                       error_order=method.error_order, time_dtype=tdtype,
                                       columns=tolerances.columns)
        nfe += evaluations
    else:
        dt = torch.full((batch,), float(method.initial_dt), dtype=tdtype, device=device)
    dt = torch.clamp(dt, max=t1 - t0)
    goal.dense = dense
    loop = adaptive.run(goal, method.stepper(), method.controller, tolerances, method.error_order, rhs, y0, k,
                        t, dt, max_steps=method.max_steps, interval=method.termination.check_interval(device))
    status = torch.where(goal.running(), torch.full_like(goal.status, Status.MAX_ITERS), goal.status)
    return _Run(loop.y, goal.ys, loop.t, status, loop.accepted, loop.rejected, nfe + loop.nfe, loop.steps)


def _time(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar time, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def integrate(rhs: Callable[[torch.Tensor, State], State], z0: State, t1: float, method, *,
              t0: float = 0.0, t_eval=None, adjoint="backprop",
              params: Optional[Sequence[torch.Tensor]] = None) -> Trajectory:
    """Integrate ``dz/dt = rhs(t, z)`` from ``z(t0) = z0`` to ``t1``, per sample.

    ``rhs(t, z)`` gets the per-sample times ``t`` (shape ``(batch,)``, the state's dtype) and
    the state ``z`` (a tensor or tuple of tensors, batch first) and returns ``dz/dt`` shaped
    like ``z``. ``method`` is an ODE method (``Tsit5(rtol=..., atol=...)``, ...; its
    ``termination`` is not used here). ``t_eval``: increasing times in ``[t0, t1]`` at which
    to also return the state (``Trajectory.ys``, stacked on a new leading dimension).

    ``adjoint="backprop"`` differentiates through the steps. A continuous adjoint
    (``"backsolve"``, ``"interpolating"``, or a :class:`~pycdeq.solvers.ode_adjoint.BacksolveAdjoint`
    / :class:`~pycdeq.solvers.ode_adjoint.InterpolatingAdjoint` with its options) integrates
    the adjoint backwards; it must be told every tensor ``rhs`` depends on that needs a
    gradient (module parameters, and a captured input such as an injection ``x``) in
    ``params``: tensors captured by ``rhs`` but not listed get no gradient. ``params`` is not
    needed with ``"backprop"``.
    """
    if not isinstance(method, ODEMethod):
        raise TypeError(f"method must be an ODE method (Tsit5(), Dopri5(), BS3(), Euler(), RK4()), "
                        f"got {type(method).__name__}")
    if not callable(rhs):
        raise TypeError(f"rhs must be callable rhs(t, z), got {type(rhs).__name__}")
    t0, t1 = _time("t0", t0), _time("t1", t1)
    if t1 <= t0:
        raise ValueError(f"t1 must be greater than t0 (forward integration only), got t0={t0}, t1={t1}")
    adjoint = resolve_adjoint(adjoint)
    packer = StatePacker(z0, "z0")
    for i, part in enumerate(z0 if packer.is_tuple else (z0,)):
        _checks.finite_tensor(f"z0[{i}]" if packer.is_tuple else "z0", part)
    if params is not None:
        params = tuple(params)
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"params[{i}] must be a tensor, got {type(p).__name__}")
    if adjoint != "backprop" and params is None:
        raise ValueError(f"adjoint={adjoint.name!r} needs params: the tensors rhs depends on that need "
                         "gradients (e.g. [*f.parameters(), x]); pass params=() if there are none")
    times = _eval_times(t_eval, t0, t1, packer.device)

    def flat_rhs(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = rhs(t, packer.unpack(y))
        packer.check_output(out, "rhs")
        return packer.pack(out)

    y0 = packer.pack(z0)
    if adjoint != "backprop":
        from ._backsolve import continuous_adjoint
        assert params is not None  # checked above: a continuous adjoint needs params
        run, adjoint_stats = continuous_adjoint(adjoint, method, flat_rhs, y0, t0, t1, times, params)
    else:
        run, adjoint_stats = integrate_flat(method, flat_rhs, y0, t0, t1, times), {}
    short = run.status != Status.CONVERGED
    if bool(short.any()):  # one host sync per solve: a truncated trajectory must not pass silently
        counts = torch.bincount(run.status[short].long(), minlength=len(Status)).tolist()
        reasons = ", ".join(f"{Status(i).name.lower()}: {n}" for i, n in enumerate(counts) if n)
        warnings.warn(f"integrate: {int(short.sum())} of {packer.batch} samples did not reach t1 "
                      f"({reasons}); see Trajectory.status and Trajectory.t", RuntimeWarning, stacklevel=2)
    ys = None if run.ys is None else _stack_unpack(packer, run.ys)
    return Trajectory(z=packer.unpack(run.y), ys=ys, t=run.t, status=run.status,
                      accepted_steps=run.accepted, rejected_steps=run.rejected, nfe=run.nfe,
                      steps=run.steps, t_eval=times, adjoint=adjoint_stats)


def _stack_unpack(packer: StatePacker, ys: torch.Tensor) -> State:
    """``(n, batch, dim)`` -> the state's structure with a leading ``n``."""
    n = ys.shape[0]
    if not packer.is_tuple:
        return ys.reshape(n, packer.batch, *packer.shapes[0])
    parts = torch.split(ys, list(packer.sizes), dim=2)
    return tuple(p.reshape(n, packer.batch, *s) for p, s in zip(parts, packer.shapes))
