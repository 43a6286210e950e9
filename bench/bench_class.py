"""Benchmark: a class of signed-in students on one shared server (issue 24's target). A real
`streamlit run` in shared mode with the worker the app starts, Playwright driving Debian's Chromium.

    python bench/bench_class.py                          # 30 students, 256 images, port 8650
    python bench/bench_class.py --students 10 --images 500 --port 8660

What it proves, in one run:
- sign-in at class size: the class list is imported through mnist_lab.service.identity's API on
  the bench's database; `--form` students (3) sign in through the page's form (code, then a new PIN),
  every other one gets a session opened through the same API, its cookie handed to its own browser
  context (context.add_cookies), as a browser that signed in earlier keeps it;
- every student submits a Lab-5 job (1 epoch on `--images` images) from the Train page, the clicks
  close together as a class does; every job finishes (counted in the database, each run owned by
  its student);
- each page shows its own place in the queue: the places read off the pages right after the clicks
  (pages showing a place, distinct, in the jobs' submission order), then each page's place read again beside its
  job's place in the database's queue;
- `/_stcore/health` latency sampled every 100 ms by a separate thread through the whole run: p50,
  p95 and max (target: p95 under 200 ms); and the total wall time.
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psutil  # noqa: E402
from app_server import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402

from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.service.identity import SESSION_COOKIE, Accounts, server_secret  # noqa: E402
from mnist_lab.service.queue import JobQueue  # noqa: E402

PLACE = re.compile(r"position (\d+) in line")
STARTED = re.compile(r"step [\d,]+ of|preparing data|Finished in")
TARGET_P95_MS = 200.0


class HealthProbe(threading.Thread):
    """GET /_stcore/health every `every_s` until stopped; latencies in ms (a failed probe counts as inf)."""

    def __init__(self, url: str, every_s: float = 0.1):
        super().__init__(daemon=True)
        self.url, self.every_s, self.ms, self.at = f"{url}/_stcore/health", every_s, [], []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            t0 = time.perf_counter()
            self.at.append(time.monotonic())
            try:
                urllib.request.urlopen(self.url, timeout=10).read()
                self.ms.append((time.perf_counter() - t0) * 1000)
            except OSError:
                self.ms.append(float("inf"))
            self.done.wait(max(self.every_s - (time.perf_counter() - t0), 0))

    def summary(self, since: float = 0.0, until: float = float("inf")) -> str:
        ms = sorted(m for m, t in zip(self.ms, self.at) if since <= t <= until)
        p95 = ms[min(int(0.95 * len(ms)), len(ms) - 1)]
        verdict = "meets" if p95 < TARGET_P95_MS else "MISSES"
        return (f"{len(ms)} samples every {self.every_s * 1000:.0f} ms: p50 {statistics.median(ms):.1f} ms, p95 "
                f"{p95:.1f} ms, max {ms[-1]:.1f} ms ({verdict} p95 < {TARGET_P95_MS:.0f} ms)")


def make_class(db: Path, n: int, form: int) -> tuple[list[tuple[str, str]], dict[str, str], dict[str, str]]:
    """The class list (学号, 姓名) imported on `db`; sessions opened for all but the first `form`
    students (who keep their one-time codes). Returns the students, {id: cookie}, {id: code}."""
    accounts = Accounts(ResultStore(db), server_secret(db))
    students = [(f"2024{k:03d}", f"学生{k:03d}") for k in range(1, n + 1)]
    codes = accounts.import_roster("学号,姓名\n" + "".join(f"{i},{name}\n" for i, name in students))
    cookies = {}
    for student_id, name in students[form:]:
        who = accounts.sign_in(student_id, name, codes[student_id], "", new_pin="20242024")
        cookies[student_id] = accounts.open_session(who, "")
    accounts.close()
    return students, cookies, codes


def sign_in_by_form(page, student_id: str, name: str, code: str) -> None:
    """The sign-in page's student tab, a first sign-in: 学号 and 姓名, then the code and a new PIN twice."""
    page.get_by_label("Student ID").fill(student_id)
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Next").click()
    page.get_by_label("One-time code").fill(code)
    page.get_by_label("New PIN (6 to 12 digits)").fill("20242024")
    page.get_by_label("New PIN again").fill("20242024")
    page.get_by_role("button", name="Sign in", exact=True).click()


def status_of(page, timeout: float = 60) -> int:
    """The page's job as it shows it after the click: its queue place, or 0 once it trains or is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = page.get_by_test_id("stMain").inner_text()
        if found := PLACE.search(text):
            return int(found.group(1))
        if STARTED.search(text):
            return 0
        time.sleep(0.1)
    raise TimeoutError("the page showed no status for its job")


def wait_all(db: Path, n: int, timeout: float) -> None:
    queue = JobQueue(ResultStore(db))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = queue.jobs(limit=10_000)
        if len(jobs) >= n and all(j["status"] not in ("queued", "running") for j in jobs):
            return
        time.sleep(0.5)
    raise TimeoutError("jobs did not finish")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--images", type=int, default=256, help="training images of each Lab-5 job (1 epoch)")
    parser.add_argument("--form", type=int, default=3, help="students who sign in through the page's form")
    parser.add_argument("--port", type=int, default=8650)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for every job")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    job = f"preset=lab5&train_limit={args.images}&epochs=1"
    print(f"# {date.today()} · {platform.processor() or platform.machine()} · {psutil.cpu_count()} cores · "
          f"python {platform.python_version()}")
    print(f"{args.students} students ({args.form} through the sign-in form, the rest by session cookie), each one "
          f"Lab-5 job: 1 epoch on {args.images:,} training images, tested on the 10,000 test images")
    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        tmp = Path(d)
        db = tmp / "class.sqlite"
        students, cookies, codes = make_class(db, args.students, args.form)
        app = AppServer(db, tmp / "streamlit.log", env={"MNIST_LAB_MODE": "shared"})
        app.port, app.url = args.port, f"http://127.0.0.1:{args.port}"
        t_start = time.monotonic()
        app.start()
        probe = HealthProbe(app.url)
        probe.start()
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pages = []
            for student_id, name in students:
                context = browser.new_context(viewport={"width": 1200, "height": 900})
                if student_id in cookies:
                    context.add_cookies([dict(name=SESSION_COOKIE, value=cookies[student_id], url=app.url,
                                              sameSite="Strict")])
                page = context.new_page()
                page.goto(f"{app.url}/train?{job}")
                if student_id not in cookies:
                    sign_in_by_form(page, student_id, name, codes[student_id])
                page.get_by_test_id("stSidebar").get_by_text(f"Signed in as {name} ({student_id})").wait_for(
                    timeout=120_000)
                page.get_by_role("button", name="Train", exact=True).wait_for(timeout=120_000)
                pages.append(page)
            ready_s = time.monotonic() - t_start
            t_click = time.monotonic()
            for page in pages:  # all clicks close together, as a class does
                page.get_by_role("button", name="Train", exact=True).click()
            clicks_s = time.monotonic() - t_click
            places = [status_of(page) for page in pages]  # in click order, each as soon as it shows one
            queue = JobQueue(ResultStore(db))
            matches, submitted = [], []  # a second pass: each page's place beside its job's place in the queue
            for page, (student_id, _name) in zip(pages, students):
                [row] = queue.jobs(workspace=f"student:{student_id}", limit=1)
                shown, true = status_of(page), queue.queue_position(row["job_id"]) if row["status"] == "queued" else 0
                matches.append(shown == true or 0 < true <= shown)  # a page redraws a waiting place every 3 s
                submitted.append(row["seq"])
            wait_all(db, args.students, args.timeout)
            jobs_s = time.monotonic() - t_click
        finally:
            probe.done.set()
            browser.close()
            app.stop()
        total_s = time.monotonic() - t_start

        jobs = JobQueue(ResultStore(db)).jobs(limit=10_000)
        runs = ResultStore(db).runs()
        finished = sum(j["status"] == "finished" for j in jobs)
        owned = runs[runs["status"] == "finished"]["student_id"].nunique()
        by_submission = [k for _seq, k in sorted(zip(submitted, places))]  # the server queues in its own order
        queued = [k for k in by_submission if k > 0]
        ordered = queued == sorted(queued)
        print(f"pages ready (signed in, Train page drawn): {ready_s:.1f} s after the server started; "
              f"{args.students} clicks in {clicks_s:.1f} s")
        print(f"jobs: {finished} of {len(jobs)} finished ({args.students} submitted), runs of {owned} distinct "
              f"students; all done {jobs_s:.1f} s after the first click "
              f"(median run {runs['seconds'].median():.2f} s)")
        print(f"queue places shown right after the clicks, in submission order: {by_submission} (0: training or done); "
              f"{len(queued)} pages showed a place, {len(set(queued))} distinct, "
              f"{'in' if ordered else 'NOT in'} submission order; read again beside the queue: {sum(matches)} of "
              f"{len(matches)} pages showed their job's place (or the place it had at most one 3-s redraw ago)")
        print(f"/_stcore/health, the whole run: {probe.summary()}")
        print(f"/_stcore/health, {args.students} pages opening and signing in: {probe.summary(until=t_click)}")
        print(f"/_stcore/health, first click to every job done: {probe.summary(since=t_click, until=t_click + jobs_s)}")
        print(f"total wall time {total_s:.1f} s")


if __name__ == "__main__":
    main()
