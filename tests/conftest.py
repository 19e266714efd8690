import os

import pytest
import torch
from hypothesis import settings

os.environ.setdefault("PYTHON_JULIAPKG_OFFLINE", "yes")

# Every property-based test draws the same inputs on every run and machine: derandomize
# seeds hypothesis from each test's own source (and implies no example database), so a
# failure reproduces with the plain test command. No deadline: a solve's wall time depends
# on the machine, never on correctness. Tests that pass their own @settings keep these
# defaults for what they do not set.
settings.register_profile("pycdeq", derandomize=True, deadline=None)
settings.load_profile("pycdeq")

# One intra-op thread per test process. The suite's tensors are tiny, so extra threads only
# add overhead; and under pytest-xdist (a process per core) or on a busy machine, OpenMP
# threads waiting for a descheduled sibling slow small ops (Anderson's batched solve_ex,
# measured) from 0.02 ms to 30 ms. Tests that need more threads set them themselves.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
