"""Where the project's files go on this machine: the cache (decoded datasets, built kernels,
downloads) and the default results database. Each can be moved by an environment variable."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "MNIST_LAB_CACHE_DIR"
DB_ENV = "MNIST_LAB_DB"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "mnist_lab")


def default_db_path() -> Path:
    return Path(os.environ.get(DB_ENV) or default_cache_dir() / "results.sqlite")
