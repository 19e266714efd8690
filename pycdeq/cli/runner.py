"""Runs an :class:`Experiment`: every (variant, seed), with checkpoints, resume and Ctrl-C.

Output folder layout::

    experiment.json               the settings (checked against on --resume)
    checkpoints/<variant>-seed<k>.pt   the trainer's atomic per-epoch checkpoint
    runs/<variant>-seed<k>.json   a finished run's record (a resumed experiment loads it)
    results.json, results.csv, history.csv, table.txt, accuracy.png, nfe.png, train_time.png

Each run seeds torch with its seed before the model is built and the trainer re-seeds at
the start of ``fit`` (or restores every RNG from the checkpoint), so a resumed run repeats
the uninterrupted one batch for batch; the data split is drawn with seed 0 for every run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import List, Optional, TextIO

import torch
from tqdm.auto import tqdm

from ..data import DatasetFormatError, load_dataset
from ..models import build_model, make_config
from ..models.paper_protocol import protocol_options
from ..training import Trainer
from ..training.checkpoint import atomic_write_bytes
from .experiments import VARIANT_NAMES, Experiment
from .report import RunRecord, format_table, write_plots, write_results

#: Settings that may differ between a run and its --resume (they do not change the numbers).
_RESUME_IGNORED = ("name", "description", "device")


class UsageError(ValueError):
    """A problem with the request itself (exit code 2), found before any training."""


class ExperimentInterrupted(Exception):
    """Ctrl-C: partial results were written; the process should exit with code 130."""


class ExperimentRunner:
    def __init__(self, experiment: Experiment, out: Path, *, resume: bool = False, progress: bool = True,
                 julia: bool = False, stream: Optional[TextIO] = None):
        self.experiment = experiment
        self.out = Path(out)
        self.resume = resume
        self.progress = progress
        self.julia = julia
        self.stream = stream
        self.records: List[RunRecord] = []

    # --- setup ---------------------------------------------------------------------------
    def check_output(self) -> None:
        """The output folder must be new, or hold the same experiment when resuming (exit 2)."""
        settings = self.out / "experiment.json"
        if not settings.exists():
            return
        if not self.resume:
            raise UsageError(f"output folder {self.out} already holds an experiment; pass --resume to "
                             "continue it or choose another --out")
        stored = json.loads(settings.read_text())
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
            return load_dataset(e.dataset, data_dir=e.data_dir, download=e.download, seed=0,
                                limit_train=e.limit_train, limit_test=e.limit_test, **dict(e.dataset_options))
        except DatasetFormatError:
            raise
        except (TypeError, ValueError) as error:
            raise UsageError(f"dataset {e.dataset!r}: {error}") from error

    def _model_kwargs(self, variant: str, data) -> dict:
        e = self.experiment
        options = {**protocol_options(e.protocol, e.model, variant, continuous=e.continuous), **dict(e.model_options)}
        if e.lambda_jac > 0 and variant != "node":
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

    # --- running -------------------------------------------------------------------------
    def run(self) -> List[dict]:
        # Everything that can reject the request runs before anything is written.
        self.check_output()
        data = self.load_data()
        self.check_models(data)
        if self.julia:
            from .julia_rows import check_available

            check_available()
        self.out.mkdir(parents=True, exist_ok=True)
        settings = json.dumps(self.experiment.to_dict(), indent=2) + "\n"
        atomic_write_bytes(self.out / "experiment.json", settings.encode())
        e = self.experiment
        batches = math.ceil(len(data.train) / e.batch_size)
        epochs = e.epochs if e.steps is None else min(e.epochs or math.inf, math.ceil(e.steps / batches))
        self._say(f"{e.name}: {e.model} on {data.name} ({len(data.train)} train / {len(data.test)} test), "
                  f"variants {', '.join(e.variants)}, seeds {', '.join(map(str, e.seeds))}, "
                  f"{epochs} epoch(s), {'continuous' if e.continuous else 'discrete'}; output in {self.out}")
        try:
            for variant in e.variants:
                for seed in e.seeds:
                    self.records.append(self._run_one(variant, seed, data, epochs))
            if self.julia:
                from .julia_rows import julia_records

                self.records.extend(julia_records(e, data, epochs, self._model_kwargs, self._say))
        except KeyboardInterrupt:
            write_results(self.out, e, self.records, interrupted=True)
            self._say(f"interrupted: partial results in {self.out / 'results.json'}; "
                      f"continue with: pycdeq run --out {self.out} --resume")
            raise ExperimentInterrupted() from None
        except Exception as error:
            write_results(self.out, e, self.records, error=f"{type(error).__name__}: {error}")
            raise
        rows = write_results(self.out, e, self.records)
        write_plots(self.out, self.records, rows)
        self._say("")
        self._say(format_table(rows, title=f"{e.name}: {e.model} on {data.name}, "
                               f"{'continuous' if e.continuous else 'discrete'}, {epochs} epoch(s)"))
        self._say(f"\nresults: {self.out / 'results.json'}, {self.out / 'results.csv'}; "
                  f"plots: accuracy.png, nfe.png, train_time.png")
        return rows

    def _run_one(self, variant: str, seed: int, data, epochs: int) -> RunRecord:
        record_path = self.out / "runs" / f"{variant}-seed{seed}.json"
        if self.resume and record_path.exists():
            record = RunRecord.from_dict(json.loads(record_path.read_text()))
            if record.status == "complete":
                self._say(f"{VARIANT_NAMES[variant]} seed {seed}: finished earlier, loaded from {record_path}")
                return record
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
                          checkpoint_path=self.out / "checkpoints" / f"{variant}-seed{seed}.pt", on_epoch=on_epoch)
        began = time.perf_counter()
        try:
            result = trainer.fit(data.train, data.test, resume=self.resume)
        except BaseException as stop:  # keep the completed epochs in the partial results
            status = "interrupted" if isinstance(stop, KeyboardInterrupt) else "failed"
            self.records.append(RunRecord(variant, seed, trainer.result.parameters,
                                          [h.flat() for h in trainer.result.history], status=status))
            raise
        finally:
            bar.close()
        record = RunRecord(variant, seed, result.parameters, [h.flat() for h in result.history])
        atomic_write_bytes(record_path, (json.dumps(record.to_dict(), indent=2) + "\n").encode())
        if not self.progress:  # the bar said it otherwise
            m = record.metrics()
            self._say(f"{VARIANT_NAMES[variant]} seed {seed}: acc {m['accuracy']:.2f}%, nfe {m['nfe']:.1f}, "
                      f"train {m['train_time']:.1f}s ({time.perf_counter() - began:.1f}s wall)")
        return record

    def _say(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)  # sys.stdout as it is now
