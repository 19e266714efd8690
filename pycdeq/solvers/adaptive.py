"""The time-stepping loop shared by the continuous DEQ solve and finite-time integration.

One loop, per sample: step -> error ratio -> controller -> accept or reject -> commit the
stepper's history -> freeze stopped samples -> step-size underflow. A steady-state solve
(:mod:`.steady_state`) and an integration to ``t1`` (:mod:`.integrate`) differ only in their
*goal* (:class:`Goal`): which samples still run, how long a step may be, where an accepted
step lands, and what is recorded when it does.

Loop invariants, per sample: ``y`` is the last accepted state and ``k = F(t, y)`` its
derivative; a stopped sample steps with ``h = 0`` from then on (``F`` sees exactly its final
state) and its state, step size and controller memory no longer change
(``torch.where(running, new, old)``). The host reads "is any sample still running?" only
every ``interval`` steps: on CUDA every read is a device-to-host sync, and the extra steps
are harmless because stopped samples are frozen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch

from .controller import ErrorOrder, StepSizeController, error_ratio, underflow
from .runge_kutta import FlatField, StepResult


def time_dtype(device: torch.device) -> torch.dtype:
    """Times and step sizes are kept in float64 where the device has it (they are tiny
    ``(batch,)`` vectors; float32 times lose steps near large ``t``)."""
    return torch.float32 if device.type == "mps" else torch.float64


class Goal(ABC):
    """What a run of the loop is for; the loop asks it at fixed points of each step."""

    #: The problem's time scale: a step below ``16 eps`` of it no longer moves ``t``.
    time_scale: float = 1.0
    #: Ask the stepper for its stage-pair stiffness estimate (the steady-state cap).
    stiffness: bool = False

    @abstractmethod
    def running(self) -> torch.Tensor:
        """(batch,) bool: the samples still stepping."""

    def field_time(self, t: torch.Tensor) -> Optional[torch.Tensor]:
        """The time handed to ``F`` (``None``: an autonomous field)."""
        return t

    def step_size(self, t: torch.Tensor, dt: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(h, clipped)``: the step each sample tries, and where it was shortened to land
        on a target (``None``: nowhere)."""
        return dt, None

    def screen(self, accept: torch.Tensor, result: StepResult, running: torch.Tensor) -> torch.Tensor:
        """A last say on acceptance (fixed-step methods have no error estimate to reject on)."""
        return accept

    def limit(self, dt_next: torch.Tensor, dt: torch.Tensor, take: torch.Tensor, clipped: Optional[torch.Tensor],
              result: StepResult, y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The next step size, given the controller's proposal (``y``, ``k``: the state and
        derivative the step started from)."""
        return dt_next

    def land(self, t: torch.Tensor, h: torch.Tensor, take: torch.Tensor,
             clipped: Optional[torch.Tensor]) -> torch.Tensor:
        """The time after the step, for every sample (``t`` where the step was not taken)."""
        return torch.where(take, t + h, t)

    @abstractmethod
    def record(self, step: torch.Tensor, take: torch.Tensor, clipped: Optional[torch.Tensor], y: torch.Tensor,
               k: torch.Tensor, t: torch.Tensor) -> None:
        """Bookkeeping after an accepted or rejected step (``y``, ``k``, ``t``: the new ones;
        ``step``: the steps taken so far, a 0-d device tensor)."""

    @abstractmethod
    def stop(self, mask: torch.Tensor) -> None:
        """Stop the running samples in ``mask``: their step size underflowed (``DT_MIN``)."""


@dataclass(frozen=True)
class LoopResult:
    y: torch.Tensor
    k: torch.Tensor
    t: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor
    nfe: int  #: evaluations of ``F`` in the loop
    steps: int  #: loop iterations (the slowest sample's accepted + rejected steps)


@dataclass(frozen=True)
class Tolerances:
    """The error norm's settings: ``atol + rtol |y|`` per element, over ``columns`` leading
    columns (``None``: all)."""

    rtol: float
    atol: float
    columns: Optional[int] = None


def run(goal: Goal, stepper, controller: StepSizeController, tolerances: Optional[Tolerances],
        error_order: ErrorOrder, field: FlatField, y: torch.Tensor, k: torch.Tensor, t: torch.Tensor,
        dt: torch.Tensor, *, max_steps: int, interval: int) -> LoopResult:
    """Step every running sample until ``goal`` stops it or ``max_steps`` loop iterations ran.

    ``stepper``: a ``RungeKutta`` or ``AdamsBashforth`` made for this run; ``tolerances``:
    ``None`` for fixed-step methods (no error estimate).

    One loop iteration is one call of :func:`step` on device tensors only (the step counter
    included), so under ``torch.compile`` it compiles to one graph, once; the host read of
    the flag every ``interval`` steps is the loop's graph break (``docs/compile.md``).
    """
    stepper.start(k, dt)
    accepted = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)
    carry = Carry(y, k, t, dt, controller.initial_state(dt), accepted, torch.zeros_like(accepted),
                  torch.zeros((), dtype=torch.long, device=y.device))
    nfe = steps = 0
    while steps < max_steps:
        carry, evaluations = step(goal, stepper, controller, tolerances, error_order, field, carry)
        nfe += evaluations
        steps += 1
        if steps % interval == 0 and not bool(goal.running().any()):
            break
    return LoopResult(carry.y, carry.k, carry.t, carry.accepted, carry.rejected, nfe, steps)


class Carry(NamedTuple):
    """What one step of the loop reads and returns (per sample, except ``counter``: the
    number of steps taken, a 0-d device tensor)."""

    y: torch.Tensor
    k: torch.Tensor
    t: torch.Tensor
    dt: torch.Tensor
    prev_ratio: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor
    counter: torch.Tensor


def step(goal: Goal, stepper, controller: StepSizeController, tolerances: Optional[Tolerances],
         error_order: ErrorOrder, field: FlatField, carry: Carry) -> Tuple[Carry, int]:
    """One step of every running sample (stopped ones step with ``h = 0`` and stay frozen);
    returns the new carry and the evaluations of ``field`` it made."""
    y, k, t, dt, prev_ratio, accepted, rejected, counter = carry
    running = goal.running()
    size, clipped = goal.step_size(t, dt)
    h = torch.where(running, size, torch.zeros_like(size))
    result = stepper.step(field, goal.field_time(t), y, k, h, stiffness=goal.stiffness)
    ratio = None
    if result.error is not None and tolerances is not None:
        ratio = error_ratio(result.error, y, result.y, tolerances.rtol, tolerances.atol, tolerances.columns)
    order = error_order if result.error_order is None else result.error_order
    accept, dt_next, prev_next = controller.adapt(h, ratio, prev_ratio, order)
    accept = goal.screen(accept, result, running)
    take = running & accept
    stepper.commit(take)
    dt_next = goal.limit(dt_next, dt, take, clipped, result, y, k)
    y = torch.where(take[:, None], result.y, y)
    k = torch.where(take[:, None], result.k, k)
    t = goal.land(t, h, take, clipped)
    accepted = accepted + take.long()
    rejected = rejected + (running & ~accept).long()
    dt = torch.where(running, dt_next, dt)
    prev_ratio = torch.where(running, prev_next, prev_ratio)
    counter = counter + 1
    goal.record(counter, take, clipped, y, k, t)
    goal.stop(goal.running() & underflow(dt, t, controller.dt_min, goal.time_scale, y.dtype))
    return Carry(y, k, t, dt, prev_ratio, accepted, rejected, counter), result.evaluations
