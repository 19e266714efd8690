"""The ``pycdeq`` command line: the paper's experiments, their table, results files and plots.

``main(argv) -> int`` (:mod:`.main`), the setups and TOML configs (:mod:`.experiments`), the
experiment runner with checkpoints and resume (:mod:`.runner`), the report (:mod:`.report`).
"""

from .experiments import EXPERIMENTS, ConfigError, Experiment, load_toml, resolve
from .main import main

__all__ = ["main", "Experiment", "EXPERIMENTS", "ConfigError", "load_toml", "resolve"]
