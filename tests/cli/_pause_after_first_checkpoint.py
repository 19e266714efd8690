"""``python _pause_after_first_checkpoint.py READY ARGS``: ``pycdeq ARGS`` that stops right
after writing its first checkpoint, creates the file READY, and waits there for Ctrl-C.

The Ctrl-C test sends SIGINT once READY exists, so the signal always lands in a run that is
still going (never in one that finished first) and after a checkpoint exists to resume from.
The wait is bounded: without a signal the run fails after ``WAIT_S`` seconds.
"""

import sys
import time
from pathlib import Path

from pycdeq.cli import main
from pycdeq.training import trainer as trainer_module

WAIT_S = 300


def _pause_after_first_save(ready: Path):
    save = trainer_module.Trainer.save

    def save_then_wait(self, path):
        save(self, path)
        if not ready.exists():
            ready.write_text(f"{path}\n")
            time.sleep(WAIT_S)  # SIGINT raises KeyboardInterrupt here, as it would mid-run
            raise RuntimeError(f"no SIGINT within {WAIT_S} s")

    trainer_module.Trainer.save = save_then_wait


if __name__ == "__main__":
    _pause_after_first_save(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
