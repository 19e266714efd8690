import os

import pytest
import torch

os.environ.setdefault("PYTHON_JULIAPKG_OFFLINE", "yes")

# Under pytest-xdist every worker is a process of its own: with torch's default of one
# intra-op thread per core, two workers on two cores oversubscribe the CPU and small ops
# slow down by an order of magnitude. One thread per worker keeps the cores busy.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
