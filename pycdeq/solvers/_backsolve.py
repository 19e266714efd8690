"""The continuous adjoints of :func:`pycdeq.integrate` (options in :mod:`.ode_adjoint`).

For ``dy/dt = f(t, y; theta)`` on ``[t0, t1]`` and a loss ``L(y(t1))``, the adjoint
``a(t) = dL/dy(t)`` and the parameter gradient satisfy (Pontryagin; Chen et al. 2018)

    da/dt = -a^T df/dy,      dL/dtheta = int_{t0}^{t1} a^T df/dtheta dt,

with ``a(t1) = dL/dy(t1)``. The backward pass integrates, in reversed time ``s = t_hi - t``,
``da/ds = a^T df/dy`` and ``dg/ds = a^T df/dtheta`` from ``t1`` back to ``t0``, one
vector-Jacobian product of ``f`` per stage; a ``t_eval`` time splits it into segments and
adds ``dL/dy(t_eval)`` to ``a``. Where ``y(t)`` comes from is the adjoint's choice:

* backsolve: ``y`` joins the backward system (``dy/ds = -f``) from ``y(t1)``; nothing is
  stored per step (constant memory), but on unstable dynamics the recomputed ``y`` may drift;
* interpolating: the forward pass kept its dense output (:mod:`.dense_output`) and the
  backward system reads ``y(t)`` from it: no drift, one state fewer in the backward system.

The forward pass runs per sample; the backward pass is **one system for the whole batch** (a
single time and step size): the parameters are shared by the samples, so their gradient
``g`` couples them. Its error norm is the RMS over the whole batch's ``(y, a)`` components
with ``seminorm=True`` (``g`` left out, Kidger, Chen & Lyons 2021: it never feeds back into
the dynamics), over ``(y, a, g)`` with ``seminorm=False`` (torchdiffeq's and
SciMLSensitivity's default, the paper's baseline). Tolerances, step budget and controller are
the method's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .dense_output import DenseOutput
from .integrate import integrate_flat
from .ode_adjoint import ContinuousAdjoint
from .solution import Status


@dataclass
class _Setup:
    adjoint: ContinuousAdjoint
    method: Any  # an ODEMethod
    rhs: Callable
    t0: float
    t1: float
    t_eval: Optional[torch.Tensor]
    params: Sequence[torch.Tensor]
    run: Any = None  # the forward integration's record, once run
    dense: Optional[DenseOutput] = None
    stats: Dict[str, Any] = field(default_factory=dict)


class _ContinuousAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, setup: _Setup, y0: torch.Tensor, *params: torch.Tensor):
        setup.dense = DenseOutput() if setup.adjoint.interpolating else None
        run = integrate_flat(setup.method, setup.rhs, y0, setup.t0, setup.t1, setup.t_eval, dense=setup.dense)
        setup.run = run
        ctx.setup = setup
        ctx.save_for_backward(run.y)
        if run.ys is None:
            return run.y.clone()
        return run.y.clone(), run.ys.clone()

    @staticmethod
    def backward(ctx, grad_y1, grad_ys=None):
        setup = ctx.setup
        (y1,) = ctx.saved_tensors
        with torch.no_grad():
            grad_y0, grad_params = _adjoint_solve(setup, y1, grad_y1, grad_ys)
        setup.dense = None  # the forward states are no longer needed
        return (None, grad_y0, *grad_params)


def _vjp(setup: _Setup, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor, diff_params, sizes):
    """``(f(t, y), a^T df/dy, [a^T df/dtheta_i flattened])``."""
    with torch.enable_grad():
        leaf = y.detach().requires_grad_(True)
        f = setup.rhs(t, leaf)
        grads = torch.autograd.grad(f, [leaf, *diff_params], a, allow_unused=True)
    da = grads[0] if grads[0] is not None else torch.zeros_like(a)
    dg = [gr.reshape(-1).to(a.dtype) if gr is not None else a.new_zeros(size)
          for gr, size in zip(grads[1:], sizes)]
    return f.detach(), da, dg


def _adjoint_solve(setup: _Setup, y1: torch.Tensor, grad_y1, grad_ys):
    batch, dim = y1.shape
    n = batch * dim
    wanted = [i for i, p in enumerate(setup.params) if p.requires_grad]
    diff_params = [setup.params[i] for i in wanted]
    sizes = [p.numel() for p in diff_params]
    dense = setup.dense
    y = y1.detach()
    a = torch.zeros_like(y) if grad_y1 is None else grad_y1.detach().clone()
    g = y.new_zeros(sum(sizes))
    # Leading columns of the backward state: (y, a, g) for backsolve, (a, g) when interpolating.
    carried = 1 if dense is not None else 2
    error_columns = carried * n if setup.adjoint.seminorm else None
    stats: Dict[str, Any] = {"method": setup.adjoint.name, "nfe": 0, "steps": 0, "status": Status.CONVERGED}

    def segment(t_hi: float, t_lo: float):
        nonlocal y, a, g

        def augmented(s: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
            time = t_hi - s
            if dense is None:
                ys_, as_ = state[0, :n].view(batch, dim), state[0, n:2 * n].view(batch, dim)
            else:
                ys_, as_ = dense(time), state[0, :n].view(batch, dim)
            f, da, dg = _vjp(setup, time.expand(batch), ys_, as_, diff_params, sizes)
            head = [-f.reshape(-1)] if dense is None else []
            return torch.cat([*head, da.reshape(-1), *dg])[None]

        parts = ([y.reshape(-1)] if dense is None else []) + [a.reshape(-1), g]
        run = integrate_flat(setup.method, augmented, torch.cat(parts)[None], 0.0, t_hi - t_lo,
                             error_columns=error_columns)
        stats["nfe"] += run.nfe
        stats["steps"] += run.steps
        if int(run.status[0]) != Status.CONVERGED:
            stats["status"] = Status(int(run.status[0]))
        out = run.y[0]
        if dense is None:
            y, out = out[:n].view(batch, dim), out[n:]
        a, g = out[:n].view(batch, dim), out[n:]

    current = setup.t1
    times = [] if setup.t_eval is None else setup.t_eval.tolist()
    for j in reversed(range(len(times))):
        if times[j] < current:
            segment(current, times[j])
            current = times[j]
        if grad_ys is not None:
            a = a + grad_ys[j]
    if current > setup.t0:
        segment(current, setup.t0)
    setup.stats.update(stats)
    if stats["status"] != Status.CONVERGED:
        warnings.warn(f"{setup.adjoint.name} adjoint: the backward integration stopped early "
                      f"({stats['status'].name}); the gradients are inaccurate. Raise max_steps or "
                      f"loosen rtol/atol.", RuntimeWarning, stacklevel=3)
    grad_params: List[Optional[torch.Tensor]] = [None] * len(setup.params)
    for i, chunk, p in zip(wanted, torch.split(g, sizes), diff_params):
        grad_params[i] = chunk.view_as(p).to(p.dtype)
    return a, grad_params


def continuous_adjoint(adjoint, method, rhs: Callable, y0: torch.Tensor, t0: float, t1: float,
                       t_eval: Optional[torch.Tensor], params: Sequence[torch.Tensor]):
    """Forward solve whose gradient is the continuous ``adjoint`` (a ``BacksolveAdjoint`` or
    ``InterpolatingAdjoint``); returns ``(run, stats)`` where ``stats`` is filled in by the
    backward pass."""
    setup = _Setup(adjoint, method, rhs, t0, t1, t_eval, tuple(params), stats={})
    out = _ContinuousAdjoint.apply(setup, y0, *params)
    run = setup.run
    if run.ys is None:
        run.y = out
    else:
        run.y, run.ys = out
    return run, setup.stats
