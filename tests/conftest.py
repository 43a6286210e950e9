"""Shared fixtures: real MNIST loaded once per session, a small prepared subset for fast
training tests, an isolated cache directory, and the rule that `gpu` tests need CUDA."""
from __future__ import annotations

import pytest
import torch

from mnist_lab import data


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist_raw() -> data.RawSplits:
    """Real MNIST through the product's own source chain (user cache included: ~3 s the
    first time on a machine, well under a second after)."""
    return data.load_mnist()


@pytest.fixture(scope="session")
def tiny_data(mnist_raw) -> data.TensorData:
    """The first 512 training images and 1,000 test images, normalised, on the CPU.
    Shared by many tests: never modify its tensors in place."""
    return data.prepare_data(data.DataConfig(train_limit=512, test_limit=1000), device="cpu", raw=mnist_raw)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Point the decoded-MNIST cache at an empty temporary directory (and forget any
    MNIST_LAB_DATA_DIR), so a test neither reads nor writes the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(cache))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    return cache
