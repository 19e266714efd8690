"""``pycdeq``: reproduce the paper's experiments from the command line.

    pycdeq run                      # the embedded default: mnist-dense on digits, 4 variants, 2 seeds
    pycdeq run mnist-dense --dataset fashion-mnist --epochs 25 --seeds 3
    pycdeq run my_setup.toml --out runs/mine
    pycdeq run --out runs/x --resume   # continue an interrupted run
    pycdeq list                     # the named setups
    torchrun --nproc-per-node 4 -m pycdeq run cifar10-small --device cuda   # data-parallel (DDP)

Under ``torchrun`` every process trains its share of each batch (``--batch-size`` is per
process) and rank 0 alone prints and writes ``--out`` (docs/distributed.md).

Exit codes: 0 success; 2 bad arguments (an argparse-style message on stderr; also an
unknown experiment, a bad config file, an invalid value found while configuring, a device
this machine does not have, an --out that holds another experiment, nothing to --resume, or
another run holding --out); 1 the run failed (the error on stderr, the traceback too with
--debug; also damaged or foreign files found in --out on --resume, named); 130 interrupted
with Ctrl-C (the last complete checkpoints and partial results stay in --out). Requests are
checked before anything is written, and a failed attempt never replaces a results.json that
holds more finished runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

from .experiments import EXPERIMENTS, ConfigError, Experiment, resolve

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _comma_list(text: str) -> List[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty items, got {text!r}")
    return items


def _seed_list(text: str) -> List[int]:
    try:
        return [int(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``pycdeq`` parser (``args.run_parser`` is its ``run`` subparser after parsing ``run``)."""
    from .. import __version__
    from ..data import DATASETS

    parser = argparse.ArgumentParser(prog="pycdeq", description="Continuous DEQs and Skip DEQs: the paper's "
                                     "experiments (Pal, Edelman, Rackauckas, arXiv 2201.12240).")
    parser.add_argument("--version", action="version", version=f"pycdeq {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("list", help="list the named experiment setups")
    run = commands.add_parser(
        "run", help="train every variant of an experiment and print the paper's table",
        description="Train the variants of an experiment over several seeds; print the paper's table and "
                    "write results.json, results.csv and PNG plots to --out. Without EXPERIMENT: the "
                    "embedded default (mnist-dense on scikit-learn's digits, 4 variants, 3 epochs, 2 seeds).")
    run.add_argument("experiment", nargs="?", metavar="EXPERIMENT",
                     help=f"a setup ({', '.join(EXPERIMENTS)}) or a TOML config file (default: default; "
                          "with --resume: the settings stored in --out)")
    model = run.add_argument_group("model")
    model.add_argument("--variants", type=_comma_list, help="comma-separated subset of vanilla,skip,skip_reg,node")
    mode = model.add_mutually_exclusive_group()
    mode.add_argument("--continuous", dest="continuous", action="store_const", const=True,
                      help="DEQ solved as an ODE to steady state (the paper's continuous DEQ)")
    mode.add_argument("--discrete", dest="continuous", action="store_const", const=False,
                      help="DEQ solved by limited-memory Broyden")
    model.add_argument("--jacobian-reg", nargs="?", type=float, const=1.0, metavar="LAMBDA",
                       help="Jacobian regularization of the DEQ variants with weight LAMBDA (default 1.0, "
                            "the paper's; mnist-dense only)")
    model.add_argument("--lambda-skip", type=float, help="weight of the skip loss")
    data = run.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, help="data set (default: the experiment's)")
    data.add_argument("--data-dir", help="folder of the data files (mnist, fashion-mnist, cifar10)")
    data.add_argument("--download", action="store_const", const=True,
                      help="download the data set with torchvision when its files are missing")
    data.add_argument("--limit-train", type=int, metavar="N", help="train on a class-stratified subset of N")
    data.add_argument("--limit-test", type=int, metavar="N", help="test on a class-stratified subset of N")
    train = run.add_argument_group("training")
    train.add_argument("--epochs", type=int, help="number of epochs")
    train.add_argument("--steps", type=int, help="cap on the number of optimizer steps")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float, help="learning rate")
    seeds = train.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1")
    seeds.add_argument("--seed-list", type=_seed_list, metavar="S1,S2,...", help="run these seeds")
    train.add_argument("--device", help="cpu, cuda or cuda:N")
    train.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: 1 for mnist-dense on cpu, "
                       "where more only add overhead; torch's choice otherwise)")
    output = run.add_argument_group("output")
    output.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: runs/<experiment>-<timestamp>)")
    output.add_argument("--resume", action="store_true",
                        help="continue the experiment in --out: finished runs are loaded, an interrupted "
                             "one continues from its checkpoint")
    output.add_argument("--julia", action="store_true",
                        help="also train each run with the Julia backend and add its rows")
    output.add_argument("--no-progress", action="store_true", help="no progress bars")
    output.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    run.set_defaults(run_parser=run)  # its usage line prefixes run-specific errors
    return parser


def configure(args: argparse.Namespace) -> Experiment:
    """The experiment the arguments ask for (``ConfigError`` / ``ValueError`` / ``TypeError``).

    ``--resume`` without an EXPERIMENT continues with the settings stored in ``--out``.
    """
    if args.resume and args.out is None:
        raise ValueError("--resume needs the --out folder of the run to continue")
    stored = args.out / "experiment.json" if args.resume else None
    if stored is not None and not stored.is_file():
        raise ValueError(f"--resume: {args.out} holds no experiment to continue (no {stored.name}); "
                         "run without --resume to start one")
    if args.experiment is None and stored is not None:
        try:
            settings = json.loads(stored.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read the stored settings {stored}: {error}") from error
        experiment = Experiment.from_dict(settings, source=str(stored))
    else:
        experiment = resolve(args.experiment or "default")
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jacobian_reg is not None and args.jacobian_reg <= 0:
        raise ValueError(f"--jacobian-reg LAMBDA must be > 0, got {args.jacobian_reg}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    seeds = tuple(range(args.seeds)) if args.seeds is not None else args.seed_list
    given = dict(variants=args.variants, continuous=args.continuous, dataset=args.dataset, data_dir=args.data_dir,
                 download=args.download, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                 lr=args.lr, lambda_skip=args.lambda_skip, lambda_jac=args.jacobian_reg, seeds=seeds,
                 limit_train=args.limit_train, limit_test=args.limit_test, device=args.device)
    changes = {k: v for k, v in given.items() if v is not None}
    # One length given alone replaces the setup's length (rather than capping it).
    if args.epochs is not None and args.steps is None:
        changes["steps"] = None
    if args.steps is not None and args.epochs is None:
        changes["epochs"] = None
    return experiment.replace(**changes)


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``pycdeq`` console script and ``python -m pycdeq``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse: --help / --version (0) or a usage error (2)
        return stop.code if isinstance(stop.code, int) else EXIT_OK if stop.code is None else EXIT_USAGE
    if args.command == "list":
        width = max(map(len, EXPERIMENTS))
        for name, experiment in EXPERIMENTS.items():
            print(f"{name:{width}s}  {experiment.description}")
        return EXIT_OK
    run_parser = args.run_parser
    try:
        experiment = configure(args)
    except (ConfigError, ValueError, TypeError) as error:
        return _usage_error(run_parser, str(error))
    return _run(run_parser, args, experiment)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, experiment: Experiment) -> int:
    import torch

    threads = args.threads
    if threads is None and experiment.model == "mnist-dense" and experiment.train.device == "cpu":
        # The dense model's (32 x 128) products gain nothing from more threads, and with the
        # cores shared OpenMP's spinning made a 2-thread run 8-20x slower than 1 thread.
        threads = 1
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_experiment(parser, args, experiment)
    finally:  # main() may be called in-process (tests, notebooks): leave torch as found
        torch.set_num_threads(previous_threads)


def _run_experiment(parser: argparse.ArgumentParser, args: argparse.Namespace, experiment: Experiment) -> int:
    from ..julia.errors import JuliaNotAvailableError
    from ..training.distributed import decided_by_main, distributed_initialized, init_from_environment, shutdown
    from .runner import ExperimentInterrupted, ExperimentRunner, UsageError

    joined = not distributed_initialized()
    try:  # under torchrun: join the process group (a single process otherwise)
        ctx = init_from_environment(experiment.train.device)
    except ValueError as error:
        return _usage_error(parser, f"--device {experiment.train.device}: {error}")
    # Rank 0's clock names the folder: the ranks' clocks may straddle a second.
    out = decided_by_main(lambda: args.out or Path("runs") / f"{experiment.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                          ctx)
    runner = ExperimentRunner(experiment, out, resume=args.resume, progress=not args.no_progress, julia=args.julia,
                              distributed=ctx)
    try:
        runner.run()
    except UsageError as error:
        return _usage_error(parser, str(error)) if ctx.is_main else EXIT_USAGE
    except ExperimentInterrupted:
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("pycdeq: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except JuliaNotAvailableError as error:
        print(f"pycdeq: error: --julia: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # noqa: BLE001 - the CLI's job is to report any failure cleanly
        if args.debug:
            traceback.print_exc()
        where = f" (rank {ctx.rank} of {ctx.world_size})" if ctx.is_distributed else ""
        print(f"pycdeq: error{where}: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if joined:  # a process group the caller set up stays up
            shutdown()
    return EXIT_OK

