"""torch.compile and the CUDA-graph loop against the eager solve, discrete DEQ (Anderson).

Run: ``python -m benchmarks.bench_compile [--quick] [--device cpu|cuda] [--out DIR]``. Writes
``compile.{json,md}`` (rewritten after every model, so an interrupted run keeps what it measured).

Models: the paper's MNIST-dense DEQ (``f(z, x) = relu(Wz z) + relu(Wx x)``, state 128) and, unless
``--quick`` on CPU, the small CIFAR-10 MDEQ (``cifar10-small``), both with Anderson (memory 6,
per-sample L2 residual <= 1e-4, at most 50 iterations), batch 128 (MDEQ on CPU: 16), float32.

Competitors, interleaved (A, B, C, A, B, C, ...), medians:

* ``eager``: ``DEQ(f, Anderson())``;
* ``compiled f``: the layer's ``f`` replaced by ``torch.compile(f)``;
* ``compiled model``: ``torch.compile(model)`` (the solver's step compiles once: docs/compile.md);
* CUDA only: ``graph_block=8`` (the CUDA-graph loop, :mod:`pycdeq.solvers.cuda_graph`), the same with
  the compiled ``f``, and ``torch.compile(model, mode="reduce-overhead")`` (inductor's CUDA graphs).

Columns: ``forward_ms`` (no_grad) and ``train_ms`` (forward + cross-entropy backward with the
GMRES adjoint), their ratios to eager, ``nfe``, the solver ``overhead`` = forward time / (nfe x
one eager ``f`` call), ``compile_s`` (the first call, compilation included) and on CUDA the host
``syncs`` of one forward (``torch.cuda.set_sync_debug_mode``). A competitor that fails is
reported with its error and the others go on.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from pycdeq import Anderson, Termination
from pycdeq.models import build_model

from . import _harness

TOL, MAX_ITER, MEMORY, BLOCK = 1e-4, 50, 6, 8


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MNIST-dense only on CPU, fewer repeats")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per competitor")
    parser.add_argument("--models", nargs="+", default=None, choices=("mnist-dense", "cifar10-small"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser


def solver(graph_block: int = 0) -> Anderson:
    return Anderson(m=MEMORY, max_iter=MAX_ITER, termination=Termination(mode="abs", norm="l2", abstol=TOL),
                    graph_block=graph_block)


def model_and_batch(name: str, batch: int, device: torch.device):
    torch.manual_seed(0)
    input_shape = (784,) if name == "mnist-dense" else None
    model = build_model(name, continuous=False, solver=solver(), input_shape=input_shape,
                        on_nonconvergence="ignore").to(device).eval()
    shape = (batch, 784) if name == "mnist-dense" else (batch, 3, 32, 32)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(shape, generator=gen).to(device)
    labels = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return model, images, labels


def competitors(name, batch, device, backend):
    """name -> the model of each competitor (built lazily: a failure is one row, not the run)."""
    def eager():
        return model_and_batch(name, batch, device)[0]

    def compiled_f(block=0):
        model = eager()
        model.deq.f = torch.compile(model.deq.f, backend=backend)
        model.deq.solver = solver(block)
        return model

    def graph_loop():
        model = eager()
        model.deq.solver = solver(BLOCK)
        return model

    makers = {"eager": eager, "compiled f": compiled_f,
              "compiled model": lambda: torch.compile(eager(), backend=backend)}
    if device.type == "cuda":
        makers.update({f"graph_block={BLOCK}": graph_loop,
                       f"graph_block={BLOCK} + compiled f": lambda: compiled_f(BLOCK),
                       "compiled model, reduce-overhead": lambda: torch.compile(eager(), mode="reduce-overhead")})
    return makers


def one_f_call_ms(model, images, device, repeats):
    """The time of one eager call of the layer's f at the inputs it sees in a solve."""
    seen = {}

    def record(module, args, out):  # returns None: the output is left alone
        seen.setdefault("args", args)

    handle = model.deq.f.register_forward_hook(record)
    with torch.no_grad():
        model(images)
    handle.remove()
    args = seen["args"]
    with torch.no_grad():
        times = _harness.interleaved({"f": lambda: model.deq.f(*args)}, repeats=repeats * 5, warmup=3, device=device)
    return _harness.median(times["f"]) * 1e3


def count_syncs(run) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def measure(name, batch, device, backend, repeats):
    eager_model, images, labels = model_and_batch(name, batch, device)
    f_ms = one_f_call_ms(eager_model, images, device, repeats)
    models, rows, nfe = {}, {}, {}
    for label, make in competitors(name, batch, device, backend).items():
        row = rows[label] = {"model": name, "batch": batch, "competitor": label}
        try:
            start = time.perf_counter()
            model = make()
            with torch.no_grad():
                _, out = model(images)
            _harness.synchronize(device)
            row["compile_s"] = time.perf_counter() - start
            models[label] = model
            nfe[label] = out.nfe
        except Exception as error:  # a failing competitor is a result, not the end of the run
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"

    def forward(model, label):
        def run():
            with torch.no_grad():
                nfe[label] = model(images)[1].nfe
        return run

    def train(model):
        def run():
            logits, _ = model(images)
            F.cross_entropy(logits, labels).backward()
            model.zero_grad(set_to_none=True)
        return run

    for phase, make_run in (("forward_ms", forward), ("train_ms", None)):
        runs = {}
        for label, model in models.items():
            runs[label] = forward(model, label) if make_run else train(model)
        ok = {}
        for label, run in runs.items():  # one untimed call each: a failure drops the competitor
            try:
                run()
                ok[label] = run
            except Exception as error:
                rows[label].setdefault("error", f"{phase}: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
        times = _harness.interleaved(ok, repeats=repeats, warmup=1, device=device)
        for label in ok:
            rows[label][phase] = _harness.median(times[label]) * 1e3
    base = rows["eager"]
    for label, row in rows.items():
        if label in nfe:
            row["nfe"] = nfe[label]
        for phase in ("forward_ms", "train_ms"):
            if phase in row and phase in base:
                row[phase.replace("_ms", "_vs_eager")] = row[phase] / base[phase]
        if "forward_ms" in row and label in nfe:
            row["f_ms"] = f_ms
            row["overhead"] = row["forward_ms"] / (nfe[label] * f_ms)
        if device.type == "cuda" and label in models:
            try:
                row["syncs"] = count_syncs(forward(models[label], label))
            except Exception as error:
                row.setdefault("error", f"syncs: {type(error).__name__}")
    return list(rows.values())


COLUMNS = ["model", "batch", "competitor", "forward_ms", "forward_vs_eager", "train_ms", "train_vs_eager", "nfe",
           "overhead", "f_ms", "compile_s", "syncs", "error"]


def main(argv=None):
    args = make_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 15)
    quick_cpu = args.quick and device.type == "cpu"
    names = args.models or (["mnist-dense"] if quick_cpu else ["mnist-dense", "cifar10-small"])
    batches = {"mnist-dense": 128, "cifar10-small": 128 if device.type == "cuda" else 16}
    title = f"torch.compile and the CUDA-graph loop vs eager, Anderson, float32, {device.type}"
    notes = (f"Interleaved, medians of {repeats}. Anderson m={MEMORY}, L2 residual <= {TOL:g} per sample, "
             f"<= {MAX_ITER} iterations; backend {args.backend!r}. overhead = forward time / (nfe x one eager f "
             f"call); compile_s: the first call. train: forward + cross-entropy backward (GMRES adjoint).")
    rows = []
    for name in names:
        rows += measure(name, batches[name], device, args.backend, repeats)
        print(_harness.write_results("compile", rows, COLUMNS, title=title, notes=notes, out_dir=args.out))


if __name__ == "__main__":
    main()
