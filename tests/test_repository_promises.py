"""The promises the README and CI make to a newcomer, checked."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_starts_with_the_main_job_and_the_test_command():
    main_job, tests = _readme_commands()[:2]
    assert "pycdeq run" in main_job and "pip install" in main_job
    assert "pytest" in tests and "pip install" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    tests = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()
    assert "PYTHON_JULIAPKG_OFFLINE=yes" in ci
    assert ci.index("pip install -q torch==2.13.0\n") < ci.index(tests)


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# An example that cannot run here (the Julia comparison without Julia) exits with this code
# and says why on its last stderr line: reported as skipped, not as passed.
EXAMPLE_SKIPPED = 77


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example, tmp_path):
    """Every example runs to the end (with PYCDEQ_EXAMPLE_QUICK=1: a reduced budget)."""
    env = {"PYCDEQ_EXAMPLE_QUICK": "1", "PYTHON_JULIAPKG_OFFLINE": "yes", "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MPLBACKEND": "Agg"}
    if "PYTHONPATH" in os.environ:  # the checkout under test, when it is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode == EXAMPLE_SKIPPED:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no reason given"
        assert reason.startswith("SKIPPED:"), done.stderr[-3000:]
        pytest.skip(f"{example.name}: {reason}")
    assert done.returncode == 0, done.stderr[-3000:]
