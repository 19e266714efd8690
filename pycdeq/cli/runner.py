"""Runs an :class:`Experiment`: every (variant, seed), with checkpoints, resume and Ctrl-C.

Output folder layout::

    .pycdeq.lock                  held (flock) by the run writing here; a second run is refused
    experiment.json               the settings (checked against on --resume)
    checkpoints/<variant>-seed<k>.pt   the trainer's atomic per-epoch checkpoint
    runs/<variant>-seed<k>.json   a finished run's record (a resumed experiment loads it)
    results.json, results.csv, history.csv, table.txt, accuracy.png, nfe.png, train_time.png

Each run seeds torch with its seed before the model is built and the trainer re-seeds at
the start of ``fit`` (or restores every RNG from the checkpoint), so a resumed run repeats
the uninterrupted one batch for batch; the data split is drawn with seed 0 for every run.

Every request is checked before anything is written (device, settings against the folder,
data, model options); on ``--resume`` the folder's run records and checkpoints are checked
too (readable, and of this experiment's variant, seed, settings and number of processes)
before training starts. A failed or interrupted attempt never replaces a ``results.json``
that holds more finished runs than it does.

Under ``torchrun`` every rank runs the same experiment on its share of the batches; rank 0
alone takes the folder's lock, reads the folder, decides (the other ranks learn its
decisions and errors), prints and writes (docs/distributed.md).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, TextIO, Tuple

import torch
from tqdm.auto import tqdm

from ..data import DatasetFormatError, load_dataset
from ..models import build_model, make_config
from ..models.paper_protocol import protocol_options
from ..training import FolderLock, FolderLockedError, Trainer, atomic_write_text, check_device, load_checkpoint
from ..training.checkpoint import check_identity, run_identity
from ..training.distributed import DistributedContext, decided_by_main, main_process_first, shard_size
from .experiments import VARIANT_NAMES, ConfigError, Experiment
from .report import RunRecord, completed_runs, format_table, read_results, write_plots, write_results

#: Settings that may differ between a run and its --resume (they do not change the numbers).
_RESUME_IGNORED = ("name", "description", "device")


class UsageError(ValueError):
    """A problem with the request itself (exit code 2), found before any training."""


class ExperimentInterrupted(Exception):
    """Ctrl-C: partial results were written; the process should exit with code 130."""


class OutputFolderError(RuntimeError):
    """A file in the output folder is damaged or belongs to another run (found on --resume)."""


class ExperimentRunner:
    def __init__(self, experiment: Experiment, out: Path, *, resume: bool = False, progress: bool = True,
                 julia: bool = False, stream: Optional[TextIO] = None,
                 distributed: Optional[DistributedContext] = None):
        self.experiment = experiment
        self.distributed = distributed or DistributedContext.single()
        self.main = self.distributed.is_main
        self.out = Path(out)
        self.resume = resume
        self.progress = progress and self.main
        self.julia = julia
        self.stream = stream
        self.records: List[RunRecord] = []
        self._finished: Dict[Tuple[str, int], RunRecord] = {}

    # --- setup ---------------------------------------------------------------------------
    def check_device(self) -> None:
        """The device must exist on this machine (exit 2), before anything is written. Under
        torchrun the context's device was checked when the process joined (cuda:LOCAL_RANK)."""
        if self.distributed.is_distributed:
            return
        try:
            check_device(self.experiment.train.device)
        except ValueError as error:
            raise UsageError(str(error)) from error

    def check_output(self) -> None:
        """The output folder must be new, or hold the same experiment when resuming (exit 2)."""
        settings = self.out / "experiment.json"
        if not settings.exists():
            if self.resume:
                raise UsageError(f"--resume: {self.out} holds no experiment to continue (no {settings.name}); "
                                 "run without --resume to start one")
            return
        if not self.resume:
            raise UsageError(f"output folder {self.out} already holds an experiment; pass --resume to "
                             "continue it or choose another --out")
        try:
            stored = Experiment.from_dict(json.loads(settings.read_text()), source=str(settings)).to_dict()
        except (OSError, json.JSONDecodeError) as error:
            raise UsageError(f"cannot read the stored settings {settings}: {error}") from error
        except ConfigError as error:
            raise UsageError(str(error)) from error
        current = self.experiment.to_dict()
        differing = sorted(k for k in set(stored) | set(current)
                           if k not in _RESUME_IGNORED and stored.get(k) != current.get(k))
        if differing:
            details = "; ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in differing)
            raise UsageError(f"--resume with settings that differ from the run in {self.out}: {details}")

    def load_data(self):
        """The data set; a bad option or limit is a usage error, missing or corrupt files a failure."""
        e = self.experiment
        try:
            with main_process_first(self.distributed):  # one download per node
                return load_dataset(e.dataset, data_dir=e.data_dir, download=e.download, seed=0,
                                    limit_train=e.limit_train, limit_test=e.limit_test, **dict(e.dataset_options))
        except DatasetFormatError:
            raise
        except (TypeError, ValueError) as error:
            raise UsageError(f"dataset {e.dataset!r}: {error}") from error

    def _model_kwargs(self, variant: str, data) -> dict:
        e = self.experiment
        options = {**protocol_options(e.protocol, e.model, variant, continuous=e.continuous), **dict(e.model_options)}
        if e.train.lambda_jac > 0 and variant != "node":
            from ..layers.regularizers import JacobianRegularization

            options.setdefault("jacobian_reg", JacobianRegularization())
        return dict(variant=variant, continuous=e.continuous, num_classes=data.num_classes,
                    input_shape=data.input_shape, **options)

    def check_models(self, data) -> None:
        """Validate every variant's model options against the data before training (exit 2)."""
        for variant in self.experiment.variants:
            try:
                make_config(self.experiment.model, **self._model_kwargs(variant, data))
            except (TypeError, ValueError) as error:
                raise UsageError(f"model {self.experiment.model!r}, variant {variant!r}: {error}") from error

    def check_resumable(self, data, epochs: int) -> Dict[Tuple[str, int], RunRecord]:
        """On --resume: every run record must be readable and of its run, every checkpoint of
        an unfinished run readable and of this experiment and number of processes (errors name
        the file; exit 1). Returns the finished runs' records by (variant, seed)."""
        finished: Dict[Tuple[str, int], RunRecord] = {}
        if not self.resume:
            return finished
        for variant in self.experiment.variants:
            for seed in self.experiment.seeds:
                record_path = self.out / "runs" / f"{variant}-seed{seed}.json"
                if record_path.exists():
                    record = _read_record(record_path, variant, seed)
                    if record.status == "complete":
                        finished[variant, seed] = record
                        continue
                checkpoint = self._checkpoint_path(variant, seed)
                if checkpoint.exists():
                    config = make_config(self.experiment.model, **self._model_kwargs(variant, data))
                    expected = run_identity(config, self.experiment.train_config(seed=seed, epochs=epochs),
                                            world_size=self.distributed.world_size)
                    check_identity(checkpoint, load_checkpoint(checkpoint).get("identity"), expected)
        return finished

    def _checkpoint_path(self, variant: str, seed: int) -> Path:
        return self.out / "checkpoints" / f"{variant}-seed{seed}.pt"

    def _epochs(self, data) -> int:
        t = self.experiment.train
        batches = math.ceil(shard_size(len(data.train), self.distributed) / t.batch_size)  # per process
        if t.steps is None:
            assert t.epochs is not None, "TrainConfig sets epochs or steps"
            return t.epochs
        by_steps = math.ceil(t.steps / batches)
        return by_steps if t.epochs is None else min(t.epochs, by_steps)

    # --- running -------------------------------------------------------------------------
    def run(self) -> List[dict]:
        # Everything that can reject the request runs before anything is written.
        self.check_device()
        decided_by_main(self.check_output, self.distributed)
        data = self.load_data()
        self.check_models(data)
        if self.julia and self.distributed.is_distributed:
            raise UsageError("--julia is not supported under torchrun; run the Julia rows in a single process")
        if self.julia:
            from .julia_rows import check_available

            check_available()
        lock = self._lock_output()
        try:
            return self._run_locked(data)
        finally:
            if lock is not None:
                lock.release()

    def _lock_output(self) -> Optional[FolderLock]:
        """Rank 0 takes the output folder's lock and checks the folder again, now that no other
        run can change it; it returns the held lock. The other ranks take no lock (``None``):
        they learn rank 0's outcome, a refusal included (exit 2 on every rank)."""
        held: List[FolderLock] = []

        def take() -> None:
            lock = FolderLock(self.out)
            try:
                lock.acquire()
            except FolderLockedError as error:
                raise UsageError(str(error)) from None
            try:
                self.check_output()
            except BaseException:
                lock.release()
                raise
            held.append(lock)

        decided_by_main(take, self.distributed)
        return held[0] if held else None

    def _run_locked(self, data) -> List[dict]:
        e = self.experiment
        epochs = self._epochs(data)
        self._finished = decided_by_main(lambda: self.check_resumable(data, epochs), self.distributed)
        if self.main:
            atomic_write_text(self.out / "experiment.json", json.dumps(e.to_dict(), indent=2) + "\n")
        self._say(f"{e.name}: {e.model} on {data.name} ({len(data.train)} train / {len(data.test)} test), "
                  f"variants {', '.join(e.variants)}, seeds {', '.join(map(str, e.seeds))}, "
                  f"{epochs} epoch(s), {'continuous' if e.continuous else 'discrete'}; output in {self.out}"
                  + (f"; {self.distributed.world_size} processes, batch {e.train.batch_size} each"
                     if self.distributed.is_distributed else ""))
        try:
            for variant in e.variants:
                for seed in e.seeds:
                    self.records.append(self._run_one(variant, seed, data, epochs))
            if self.julia:
                from .julia_rows import julia_records

                self.records.extend(julia_records(e, data, epochs, self._model_kwargs, self._say))
        except KeyboardInterrupt:
            self._write_partial(interrupted=True)
            self._say(f"interrupted: partial results in {self.out / 'results.json'}; "
                      f"continue with: pycdeq run --out {self.out} --resume")
            raise ExperimentInterrupted() from None
        except Exception as error:
            self._write_partial(error=f"{type(error).__name__}: {error}")
            raise
        if not self.main:
            return []
        rows = write_results(self.out, e, self.records)
        write_plots(self.out, self.records, rows)
        self._say("")
        self._say(format_table(rows, title=f"{e.name}: {e.model} on {data.name}, "
                               f"{'continuous' if e.continuous else 'discrete'}, {epochs} epoch(s)"))
        self._say(f"\nresults: {self.out / 'results.json'}, {self.out / 'results.csv'}; "
                  f"plots: accuracy.png, nfe.png, train_time.png")
        return rows

    def _write_partial(self, **outcome) -> None:
        """results.json for a failed or interrupted attempt, unless the one there is better
        (rank 0 only: it alone writes)."""
        if not self.main:
            return
        previous = read_results(self.out / "results.json")
        done = sum(r.status == "complete" for r in self.records)
        if previous is not None and (previous.get("complete") is True or completed_runs(previous) > done):
            self._say(f"kept {self.out / 'results.json'}: it holds more finished runs than this attempt")
            return
        write_results(self.out, self.experiment, self.records, **outcome)

    def _run_one(self, variant: str, seed: int, data, epochs: int) -> RunRecord:
        record_path = self.out / "runs" / f"{variant}-seed{seed}.json"
        if (variant, seed) in self._finished:
            self._say(f"{VARIANT_NAMES[variant]} seed {seed}: finished earlier, loaded from {record_path}")
            return self._finished[variant, seed]
        e = self.experiment
        torch.manual_seed(seed)
        model = build_model(e.model, **self._model_kwargs(variant, data))
        bar = tqdm(total=epochs, desc=f"{VARIANT_NAMES[variant]} seed {seed}", unit="epoch", leave=True,
                   disable=not self.progress, dynamic_ncols=True, file=sys.stderr)

        def on_epoch(metrics) -> None:
            bar.n = metrics.epoch
            bar.set_postfix(loss=f"{metrics.train_loss:.3f}", acc=f"{metrics.test.accuracy:.3f}",
                            nfe=f"{metrics.test.nfe:.1f}")

        trainer = Trainer(model, e.train_config(seed=seed, epochs=epochs, progress=self.progress),
                          checkpoint_path=self._checkpoint_path(variant, seed), on_epoch=on_epoch,
                          distributed=self.distributed)
        began = time.perf_counter()
        try:
            result = trainer.fit(data.train, data.test, resume=self.resume)
        except BaseException as stop:  # keep the completed epochs in the partial results
            status = "interrupted" if isinstance(stop, KeyboardInterrupt) else "failed"
            self.records.append(RunRecord(variant, seed, trainer.result.parameters,
                                          [h.flat() for h in trainer.result.history], status=status,
                                          world_size=self.distributed.world_size))
            raise
        finally:
            bar.close()
        record = RunRecord(variant, seed, result.parameters, [h.flat() for h in result.history],
                           world_size=result.world_size)
        if self.main:
            atomic_write_text(record_path, json.dumps(record.to_dict(), indent=2) + "\n")
        if not self.progress:  # the bar said it otherwise
            m = record.metrics()
            self._say(f"{VARIANT_NAMES[variant]} seed {seed}: acc {m['accuracy']:.2f}%, nfe {m['nfe']:.1f}, "
                      f"train {m['train_time']:.1f}s ({time.perf_counter() - began:.1f}s wall)")
        return record

    def _say(self, text: str) -> None:
        if not self.main:
            return
        print(text, file=self.stream or sys.stdout, flush=True)  # sys.stdout as it is now


def _read_record(path: Path, variant: str, seed: int) -> RunRecord:
    """A finished run's record; :class:`OutputFolderError` naming ``path`` if damaged or foreign."""
    advice = "delete it to train that run again (from its checkpoint, if any), or choose another --out"
    try:
        record = RunRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise OutputFolderError(f"run record {path} is damaged ({type(error).__name__}: {error}); {advice}") from None
    if (record.variant, record.seed, record.backend) != (variant, seed, "pytorch"):
        raise OutputFolderError(f"run record {path} belongs to another run ({record.backend} {record.variant} "
                                f"seed {record.seed}); {advice}")
    return record
