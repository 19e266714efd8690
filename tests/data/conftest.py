"""The stand-in torchvision used to test the download path without a network."""

import sys
import types
from pathlib import Path

import pytest

from _data_writers import tiny_mnist_arrays, write_cifar_set, write_idx_set


@pytest.fixture
def fake_torchvision(monkeypatch):
    """Installs a stand-in ``torchvision.datasets`` whose classes write tiny files; records calls."""
    calls = []

    def make(cls_name, writer):
        def constructor(root, train=True, download=False):
            calls.append((cls_name, root, train, download))
            writer(root)
        return constructor

    def mnist_writer(sub):
        def writer(root):
            write_idx_set(Path(root) / sub / "raw", tiny_mnist_arrays(), gz=True)
        return writer

    datasets = types.ModuleType("torchvision.datasets")
    datasets.MNIST = make("MNIST", mnist_writer("MNIST"))
    datasets.FashionMNIST = make("FashionMNIST", mnist_writer("FashionMNIST"))
    datasets.CIFAR10 = make("CIFAR10", lambda root: write_cifar_set(Path(root) / "cifar-10-batches-py"))
    package = types.ModuleType("torchvision")
    package.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    return calls
