"""ODE solvers: the Neural ODE against torchdiffeq / torchode, and the continuous DEQ solve.

Run: ``python -m benchmarks.bench_ode [--quick] [--device cpu|cuda] [--out DIR]`` (about a
minute on 2 quiet cores). Writes ``ode_neural_ode.{json,md}`` and ``ode_steady_state.{json,md}``.

(a) Neural ODE on ``[0, 1]`` with the MNIST-dense ``f(z, x) = relu(Wz z) + relu(Wx x)``
(``pycdeq.models.mnist_dense.DenseInjection``, Glorot weights; state 128, batch 128, float32),
right-hand side ``f(z, x) - z`` from ``z(0) = 0``, ``x = relu(stem(images))`` a leaf that needs
a gradient, loss = cross-entropy of a linear head. Dopri5 and Tsit5 at ``rtol = atol = 1e-3``.
Timed: forward + backward (gradients of Wz, Wx, x and the head). Competitors, interleaved:
pycdeq ``integrate`` (``adjoint="backprop"`` and ``"backsolve"``), ``torchdiffeq.odeint`` and
``odeint_adjoint`` (PyPI 0.2.5 has no tsit5), torchode ``AutoDiffAdjoint`` with its
``IntegralController`` (I control, safety 0.9, growth in [0.2, 10], like torchdiffeq) and
``BacksolveAdjoint``. The peers are benchmark-only extras (``pip install torchdiffeq torchode``);
a missing one is skipped with a message. ``nfe`` counts calls of the right-hand side in the
forward solve (``fwd``) and in the backward pass (``bwd``: the adjoint solves; backprop
through the steps calls no ``f``). Target: pycdeq not slower than the fastest peer with the
same method and gradient kind.

(b) Continuous DEQ forward (no grad) to steady state vs the discrete solvers at the same
per-sample stopping rule ``||f(z) - z|| <= tau ||f(z)||`` (tau = 5e-3 and 1e-4), same ``f``
and ``x``, from ``z0 = 0``: nfe, time, the final relative residual. ODE methods use
``rtol = atol = tau / 5`` (pycdeq's default pairing). No target: it informs the layers'
defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import pycdeq
from pycdeq import Termination
from pycdeq.models.mnist_dense import DenseInjection, _glorot_linear

from . import _harness

try:
    import torchdiffeq
except ImportError:  # benchmark-only extra
    torchdiffeq = None
try:
    import torchode
except ImportError:  # benchmark-only extra
    torchode = None

TOL = 1e-3
BATCH, WIDTH, INPUTS = 128, 128, 784


class Counted:
    """The right-hand side ``f(z, x) - z`` with a call counter (also an ``nn.Module`` for
    ``odeint_adjoint``, which wants one)."""

    def __init__(self, f, x):
        self.f, self.x, self.calls = f, x, 0

    def __call__(self, t, z):
        self.calls += 1
        return self.f(z, self.x) - z


class CountedModule(torch.nn.Module):
    def __init__(self, counted: Counted):
        super().__init__()
        self.counted, self.f = counted, counted.f

    def forward(self, t, z):
        return self.counted(t, z)


def setup(device, seed=0):
    torch.manual_seed(seed)
    f = DenseInjection(WIDTH).to(device)
    stem = torch.nn.Sequential(_glorot_linear(INPUTS, WIDTH), torch.nn.ReLU()).to(device)
    head = _glorot_linear(WIDTH, 10).to(device)
    with torch.no_grad():
        x = stem(torch.rand(BATCH, INPUTS, device=device))
    labels = torch.randint(0, 10, (BATCH,), device=device)
    return f, head, x.requires_grad_(True), labels


def neural_ode_competitors(device):
    f, head, x, labels = setup(device)
    rhs = Counted(f, x)
    params = [*f.parameters(), *head.parameters(), x]
    z0 = torch.zeros(BATCH, WIDTH, device=device)

    def step(solve):
        """forward + backward; returns (forward nfe, backward nfe, z(1))."""
        def run():
            for p in params:
                p.grad = None
            rhs.calls = 0
            z1 = solve()
            forward = rhs.calls
            F.cross_entropy(head(z1), labels).backward()
            return forward, rhs.calls - forward, z1.detach()
        return run

    competitors, skipped = {}, []
    for method, cls in (("dopri5", pycdeq.Dopri5), ("tsit5", pycdeq.Tsit5)):
        for adjoint in ("backprop", "backsolve"):
            competitors[("pycdeq", method, adjoint)] = step(
                lambda cls=cls, adjoint=adjoint: pycdeq.integrate(
                    rhs, z0, 1.0, cls(rtol=TOL, atol=TOL), adjoint=adjoint, params=[*f.parameters(), x]).z)
    if torchdiffeq is None:
        skipped.append("torchdiffeq (not installed: pip install torchdiffeq)")
    else:
        module, times = CountedModule(rhs), torch.tensor([0.0, 1.0], device=device)
        for method in ("dopri5", "tsit5"):
            try:
                torchdiffeq.odeint(module, z0, times, rtol=TOL, atol=TOL, method=method)
            except (AssertionError, KeyError, ValueError) as error:
                skipped.append(f"torchdiffeq {torchdiffeq.__version__} {method} ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:60]})")
                continue
            competitors[("torchdiffeq", method, "backprop")] = step(
                lambda method=method: torchdiffeq.odeint(module, z0, times, rtol=TOL, atol=TOL, method=method)[-1])
            competitors[("torchdiffeq", method, "backsolve")] = step(
                lambda method=method: torchdiffeq.odeint_adjoint(
                    module, z0, times, rtol=TOL, atol=TOL, method=method, adjoint_params=[*f.parameters(), x])[-1])
    if torchode is None:
        skipped.append("torchode (not installed: pip install torchode)")
    else:
        term = torchode.ODETerm(rhs)
        problem = torchode.InitialValueProblem(y0=z0, t_start=torch.zeros(BATCH, device=device),
                                               t_end=torch.ones(BATCH, device=device))
        for method, step_cls in (("dopri5", torchode.Dopri5), ("tsit5", torchode.Tsit5)):
            controller = torchode.IntegralController(atol=TOL, rtol=TOL, term=term)
            solver = torchode.AutoDiffAdjoint(step_cls(term=term), controller)
            competitors[("torchode", method, "backprop")] = step(
                lambda solver=solver: solver.solve(problem).ys[:, -1])
            try:
                module_term = torchode.ODETerm(CountedModule(rhs))
                backsolve = torchode.BacksolveAdjoint(
                    module_term, step_cls(term=module_term),
                    torchode.IntegralController(atol=TOL, rtol=TOL, term=module_term))
                step(lambda: backsolve.solve(problem).ys[:, -1])()
            except Exception as error:  # noqa: BLE001 - a peer's failure is reported, not fatal
                skipped.append(f"torchode {method} BacksolveAdjoint ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:60]})")
                continue
            competitors[("torchode", method, "backsolve")] = step(
                lambda backsolve=backsolve: backsolve.solve(problem).ys[:, -1])
    return competitors, skipped


def tight_reference(device) -> torch.Tensor:
    """``z(1)`` in float64 at rtol = atol = 1e-10 (agrees with torchdiffeq's to ~4e-7, the
    accuracy the relu kinks of ``f`` allow)."""
    f, _, x, _ = setup(device)
    f, x = f.double(), x.detach().double()
    with torch.no_grad():
        return pycdeq.integrate(lambda t, z: f(z, x) - z, torch.zeros(BATCH, WIDTH, dtype=torch.float64, device=device),
                                1.0, pycdeq.Dopri5(rtol=1e-10, atol=1e-10, max_steps=10_000)).z


def bench_neural_ode(device, repeats):
    competitors, skipped = neural_ode_competitors(device)
    counts = {key: run() for key, run in competitors.items()}
    times = _harness.interleaved({key: run for key, run in competitors.items()}, repeats=repeats, device=device)
    reference = tight_reference(device)
    rows = []
    for key, (forward, backward, z1) in counts.items():
        library, method, gradient = key
        ms = 1e3 * _harness.median(times[key])
        peers = [1e3 * _harness.median(times[k]) for k in competitors
                 if k[0] != "pycdeq" and k[1] == method and k[2] == gradient]
        row = {"library": library, "method": method, "gradient": gradient, "phase": f"{library} {gradient}",
               "fwd+bwd ms": ms,
               "nfe fwd": forward, "nfe bwd": backward,
               "max |z(1) - z*|": float((z1.double() - reference).abs().max())}
        if library == "pycdeq" and peers:
            row["vs fastest peer"] = ms / min(peers)
            row["target"] = "<= 1.0 x fastest peer"
            row["target_met"] = bool(ms <= min(peers))
        rows.append(row)
    notes = ("Forward + backward of one batch, median of %d interleaved rounds. `gradient`: `backprop` "
             "differentiates through the solver's steps (torchdiffeq `odeint`, torchode `AutoDiffAdjoint`); "
             "`backsolve` is the continuous adjoint (`odeint_adjoint`, `BacksolveAdjoint`). `vs fastest peer`: "
             "time over the fastest peer with the same method and gradient. `z*`: float64 solve at "
             "rtol = atol = 1e-10 (the accuracy each solver bought with its evaluations). pycdeq takes fewer evaluations from `z(0) = 0` "
             "because its initial step selection refines Hairer's estimate (from a zero state plain Hairer "
             "starts at h = 1e-4 and the controller spends four steps growing it)." % repeats)
    if skipped:
        notes += " Skipped: " + "; ".join(skipped) + "."
    return rows, notes


def bench_steady_state(device, repeats):
    f, _, x, _ = setup(device)
    x = x.detach()
    rows = []
    for tau in (5e-3, 1e-4):
        term = Termination(mode="rel", reltol=tau)
        tol = tau / 5
        solvers = {
            "Anderson (m=5)": pycdeq.Anderson(m=5, max_iter=300, termination=term),
            "FixedPoint": pycdeq.FixedPoint(max_iter=1000, termination=term),
            "Tsit5": pycdeq.Tsit5(rtol=tol, atol=tol, termination=term, max_steps=1000),
            "Tsit5 (dt0=1)": pycdeq.Tsit5(rtol=tol, atol=tol, termination=term, max_steps=1000, dt0=1.0),
            "Dopri5": pycdeq.Dopri5(rtol=tol, atol=tol, termination=term, max_steps=1000),
            "BS3": pycdeq.BS3(rtol=tol, atol=tol, termination=term, max_steps=3000),
            "VCAB3 (dt0=1)": pycdeq.VCAB3(rtol=tol, atol=tol, termination=term, max_steps=5000, dt0=1.0),
        }
        z0 = torch.zeros(BATCH, WIDTH, device=device)

        def forward(solver):
            def run():
                with torch.no_grad():
                    return pycdeq.solve(lambda z: f(z, x), z0, solver)
            return run

        competitors = {name: forward(solver) for name, solver in solvers.items()}
        solutions = {name: run() for name, run in competitors.items()}
        times = _harness.interleaved(competitors, repeats=repeats, device=device)
        anderson = _harness.median(times["Anderson (m=5)"])
        for name, solution in solutions.items():
            with torch.no_grad():
                relative = solution.residual / torch.linalg.vector_norm(f(solution.z, x), dim=1)
            ms = 1e3 * _harness.median(times[name])
            rows.append({
                "tau": tau, "solver": name, "nfe": solution.nfe, "ms": ms, "vs Anderson": ms / (1e3 * anderson),
                "converged": f"{int(solution.converged.sum())}/{BATCH}",
                "max rel. residual": float(relative.max()), "mean rel. residual": float(relative.mean()),
                "steps (slowest)": solution.steps,
                "mean t": float(solution.t.mean()) if solution.t is not None else "",
            })
    notes = ("Forward solve only (no grad), median of %d interleaved rounds per tolerance. All solvers stop "
             "each sample on the same rule `||f(z) - z|| <= tau ||f(z)||`; ODE methods integrate "
             "`dz/dt = f(z) - z` with `rtol = atol = tau / 5`. `mean t`: the time at which the samples reached "
             "steady state. FixedPoint is Euler with `dt = 1`. VCAB3 spends one evaluation per step, but on this "
             "small f a step's bookkeeping costs more than the evaluation, so it is slower than Tsit5 at fewer "
             "evaluations; it pays where f is expensive (the CIFAR MDEQ)." % repeats)
    return rows, notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per competitor")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    repeats = args.repeats or (3 if args.quick else 9)

    rows, notes = bench_neural_ode(device, repeats)
    print(_harness.write_results(
        "ode_neural_ode", rows,
        ["library", "method", "gradient", "fwd+bwd ms", "nfe fwd", "nfe bwd", "vs fastest peer", "target_met",
         "max |z(1) - z*|"],
        title="Neural ODE (MNIST-dense f, batch 128, state 128, t in [0, 1], rtol = atol = 1e-3): "
              "forward + backward", notes=notes, out_dir=args.out))
    rows, notes = bench_steady_state(device, repeats)
    print(_harness.write_results(
        "ode_steady_state", rows,
        ["tau", "solver", "nfe", "ms", "vs Anderson", "converged", "max rel. residual", "mean rel. residual",
         "steps (slowest)", "mean t"],
        title="Continuous DEQ forward to steady state vs discrete solvers (MNIST-dense f, batch 128)",
        notes=notes, out_dir=args.out))


if __name__ == "__main__":
    main()
