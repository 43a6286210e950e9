"""Shared fixtures: real MNIST loaded once per session, a small prepared subset for fast
training tests, an isolated cache directory, and the rules that `gpu` tests need CUDA and
`native` tests a C++ compiler."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
from ray_cluster import ray_cluster  # noqa: F401 - one Ray cluster per session for every module (issue 26)

from mnist_lab import paths
from mnist_lab.data import datasets as data


def _compiler() -> str | None:
    """The C++ compiler mnist_lab.native would build with (the same search), or None."""
    found = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    return found if found and shutil.which(found) else None


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    if _compiler() is None:
        skips["native"] = pytest.mark.skip(reason="needs a C++ compiler for the cpu-native kernels "
                                                  "(no g++, c++ or $CXX)")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
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
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(cache))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    return cache


@pytest.fixture
def broken_db(tmp_path):
    """A results database with one page of garbage in the middle (as a failing disk leaves it):
    its header still reads, so SQLite opens it, and only a check or a read finds the damage."""
    import sqlite3

    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.runs.store import ResultStore, run_row
    from mnist_lab.training.loop import TrainConfig

    path = tmp_path / "broken.sqlite"
    store = ResultStore(path)
    for k in range(3):
        store.start_run(run_row(f"run-{k}", PRESETS["tiny-fc"].model, TrainConfig(), data.DataConfig(),
                                status="finished"))
        store.add_iterations(f"run-{k}", 1, [0.5 + k] * 2000, 100)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = path.stat().st_size // 4096
    with open(path, "r+b") as f:
        f.seek(pages // 2 * 4096)
        f.write(bytes(range(256)) * 16)
    assert pages >= 8
    return path


@pytest.fixture(scope="module")
def no_worker_left_running():
    """The worker processes the app started for a module's page tests end with the module
    (`pytestmark = pytest.mark.usefixtures("no_worker_left_running")`)."""
    yield
    from app_lib.shared import spawned_workers

    for proc in spawned_workers().values():
        proc.terminate()
    for proc in spawned_workers().values():
        proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    """One headless Debian Chromium per module of real-browser tests (tests/test_browser*.py, which
    skip, with the reason, where playwright or Chromium is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    from app_server import CHROMIUM, CHROMIUM_ARGS

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
