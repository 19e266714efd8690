"""Helpers of the CLI tests (a uniquely named module: several test folders have a conftest)."""

import os
import subprocess
import sys

# Tiny settings for the subprocess tests: few samples, one seed, no bars.
TINY = ["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32", "--seeds", "1",
        "--no-progress"]


def run_cli(*args, timeout=300):
    """``python -m pycdeq ARGS`` in a subprocess -> CompletedProcess (text)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pycdeq", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
