"""The promises the README and CI make to a newcomer, checked."""

import os
import re
import subprocess
import sys
import tomllib
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


def test_ci_lints_and_type_checks_pycdeq_before_the_tests():
    tests = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    lines = ci.splitlines()
    for check in ("python3 -m ruff check pycdeq", "python3 -m mypy pycdeq"):
        assert check in lines
        assert ci.index(check) < ci.index(tests)
    # Both tools come from PyPI by name, pinned in the extra that CI installs.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lint = project["optional-dependencies"]["lint"]
    assert sorted(p.split("==")[0] for p in lint) == ["mypy", "ruff"] and all("==" in p for p in lint)
    assert '-e ".[lint]"' in ci and ci.index('-e ".[lint]"') < ci.index("python3 -m ruff")


def test_the_package_declares_its_inline_types():
    assert (ROOT / "pycdeq" / "py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["pycdeq"]


EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# An example that cannot run here (the Julia comparison without Julia) exits with this code
# and says why on its last stderr line: reported as skipped, not as passed.
EXAMPLE_SKIPPED = 77


#: Far above chance (0.1 for ten classes): a model that reports less did not learn.
LEARNED_ACCURACY = 0.8


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs_and_its_model_learns(example, tmp_path):
    """Every example runs to the end on this checkout's pycdeq. A training example exits
    non-zero when its model did not learn, and every test accuracy it prints is far above chance."""
    env = {"PYTHON_JULIAPKG_OFFLINE": "yes", "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode == EXAMPLE_SKIPPED:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no reason given"
        assert reason.startswith("SKIPPED:"), done.stderr[-3000:]
        pytest.skip(f"{example.name}: {reason}")
    assert done.returncode == 0, done.stderr[-3000:]
    accuracies = [float(a) for a in re.findall(r"test accuracy (\d+\.\d+)", done.stdout)]
    assert all(a >= LEARNED_ACCURACY for a in accuracies), done.stdout[-3000:]
