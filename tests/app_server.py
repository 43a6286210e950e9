"""A real `streamlit run` of the dashboard on a free local port, for the browser tests and the
session benchmark (bench/bench_sessions.py): start, stop (any signal), restart on the same port; and
a student's sign-in on a shared server's page (playwright)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    def __init__(self, db: Path, log: Path, env: dict[str, str] | None = None,
                 script: Path = ROOT / "streamlit_app.py"):
        self.db, self.log, self.env, self.script = db, log, env or {}, script
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> AppServer:
        out = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(self.script), "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env={**os.environ, "MNIST_LAB_DB": str(self.db), **self.env}, stdout=out,
            stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2).read() == b"ok":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("streamlit did not start:\n" + self.log.read_text()[-3000:])
            time.sleep(0.3)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)


def sign_in_student(page, student_id: str, name: str, pin: str) -> None:
    """A playwright `page` showing the sign-in page: the student tab's two forms. Without a roster,
    the first sign-in claims the ID with a new PIN (typed twice); later ones ask for the PIN."""
    page.get_by_label("Student ID").fill(student_id)
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Next").click()
    new = page.get_by_label("New PIN again")
    page.get_by_label("PIN", exact=True).or_(page.get_by_label("New PIN (6 to 12 digits)")).wait_for()
    if new.count():
        page.get_by_label("New PIN (6 to 12 digits)").fill(pin)
        new.fill(pin)
    else:
        page.get_by_label("PIN", exact=True).fill(pin)
    page.get_by_role("button", name="Sign in", exact=True).click()


def session_cookies(context, held: bool = True, within_s: float = 10.0) -> list[dict]:
    """The playwright browser `context`'s session cookies once it holds one (held=True) or none
    (held=False): the page writes or deletes it as it renders, so a test that opens another address
    right after a sign-in or sign-out waits for it, as a person's next click comes later anyway."""
    from mnist_lab.service.identity import SESSION_COOKIE

    deadline = time.monotonic() + within_s
    while bool(cookies := [c for c in context.cookies() if c["name"] == SESSION_COOKIE]) != held:
        assert time.monotonic() < deadline, "no session cookie" if held else "the session cookie outlived the sign-out"
        time.sleep(0.2)
    return cookies
