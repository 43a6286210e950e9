"""What the page tests share (AppTest): the app's entry point, a page opened as a browser would
reach it (signed in as someone, in shared mode), and a tmp results database whose worker (if a test
starts one) leaves soon after."""
from __future__ import annotations

import os
from pathlib import Path

from streamlit.testing.v1 import AppTest

from app_lib.session import KEY as SESSION_KEY
from app_lib.shared import WORKER_IDLE_ENV
from mnist_lab.paths import DB_ENV
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.identity import Accounts, Identity, server_secret

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def app_db(path: Path, monkeypatch) -> Path:
    """Point the app at `path`; a worker the app starts leaves 5 s after its last job, cold."""
    monkeypatch.setenv(DB_ENV, str(path))
    monkeypatch.setenv(WORKER_IDLE_ENV, "5")  # each test's worker leaves soon after its test
    monkeypatch.setenv("MNIST_LAB_WORKER_WARM", "0")  # tiny jobs: no need to load all of MNIST ahead
    return path


def student(student_id: str, name: str = "") -> Identity:
    """A signed-in student, as identity.Accounts makes one."""
    return Identity("student", f"student:{student_id}", student_id, name or f"Student {student_id}")


TEACHER = Identity("teacher", "teacher", "", "")


def session_for(who: Identity) -> str:
    """The session cookie a sign-in of `who` leaves (on the app's database, $MNIST_LAB_DB). AppTest
    sends no cookies, so a test hands it to the session the way the app keeps it (app_lib.session.KEY)."""
    store = ResultStore(os.environ[DB_ENV])
    try:
        # a teacher's session holds the server's token it signed in with ($MNIST_LAB_TEACHER_TOKEN)
        return Accounts(store, server_secret(store.path)).open_session(
            who, "", teacher_token=os.environ.get("MNIST_LAB_TEACHER_TOKEN") or None)
    finally:
        store.close()


def open_page(page: str, query: dict | None = None, who: Identity | None = None) -> AppTest:
    """The app opened (with `query` in its link, signed in as `who`), then `app_pages/<page>.py`, as a
    click in the sidebar."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query or {})
    if who is not None:
        at.session_state[SESSION_KEY] = session_for(who)
    at.run()
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def result_charts(at: AppTest) -> list:
    """The page's plotly charts of results: every chart but the network's drawing (issue 28: the Train and
    Inspect pages draw the architecture, keys *_arch_chart)."""
    return [c for c in at.get("plotly_chart") if "_arch_chart" not in str(c.proto.id)]
