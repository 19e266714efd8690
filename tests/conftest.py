import os

import pytest
import torch

os.environ.setdefault("PYTHON_JULIAPKG_OFFLINE", "yes")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
