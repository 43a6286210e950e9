"""What the page tests share (AppTest): the app's entry point, a page opened as a browser would
reach it, and a tmp results database whose worker (if a test starts one) leaves soon after."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from app_lib.shared import WORKER_IDLE_ENV
from mnist_lab.paths import DB_ENV

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def app_db(path: Path, monkeypatch) -> Path:
    """Point the app at `path`; a worker the app starts leaves 5 s after its last job, cold."""
    monkeypatch.setenv(DB_ENV, str(path))
    monkeypatch.setenv(WORKER_IDLE_ENV, "5")  # each test's worker leaves soon after its test
    monkeypatch.setenv("MNIST_LAB_WORKER_WARM", "0")  # tiny jobs: no need to load all of MNIST ahead
    return path


def open_page(page: str, query: dict | None = None) -> AppTest:
    """The app opened (with `query` in its link), then `app_pages/<page>.py`, as a click in the sidebar."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query or {})
    at.run()
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, at.exception
    return at
