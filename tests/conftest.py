import os

import pytest
import torch

os.environ.setdefault("PYTHON_JULIAPKG_OFFLINE", "yes")

# One intra-op thread per test process. The suite's tensors are tiny, so extra threads only
# add overhead; and under pytest-xdist (a process per core) or on a busy machine, OpenMP
# threads waiting for a descheduled sibling slow small ops (Anderson's batched solve_ex,
# measured) from 0.02 ms to 30 ms. Tests that need more threads set them themselves.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
