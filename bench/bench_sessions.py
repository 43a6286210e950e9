"""Benchmark: the dashboard serving several browser sessions at once (a class on one server).
A real `streamlit run` in shared mode (each session its own workspace) with the worker process
the app starts, Playwright driving Debian's Chromium.

    python bench/bench_sessions.py                # 1 vs 5 sessions, 20 polling, app vs CLI epoch
    python bench/bench_sessions.py --sessions 5 --many 0
    python bench/bench_sessions.py --many 0 --browser-nice 10   # browsers yield to the server, as on
                                                                 # students' own machines

Measures, in one run:
- each job's training time (the run's own seconds in the store) with 1 session and with N
  sessions each starting the same job (Lab-5, 20,000 images, 3 epochs), and the ratio to the
  median of the 1-session runs; `--trials` rounds of both, interleaved;
- the server process's CPU (% of one core) and RSS while N sessions poll their jobs;
- `--many` sessions polling queued jobs: every page shows its own queue position, every job ends;
- refresh mid-run (once per trial, while the Tiny FC net trains on the plain engine and while
  Lab-5 trains on cpu-native): seconds until the reloaded page shows the job again; Stop: seconds until the
  run is 'stopped' in the store;
- a Lab-5 epoch through the app's worker (no browser) against the CLI's, same run, same machine.
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psutil  # noqa: E402
from app_server import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402

from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.service.queue import JobQueue  # noqa: E402

JOB = "preset=lab5&train_limit=20000&epochs=3"
PROGRESS = re.compile(r"step [\d,]+ of")


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def start_jobs(browser, url: str, n: int, query: str) -> list:
    pages = []
    for _ in range(n):
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.goto(f"{url}/train?{query}")
        page.get_by_role("button", name="Train", exact=True).wait_for(timeout=90_000)
        pages.append(page)
    for page in pages:  # all clicks close together, as a class does
        page.get_by_role("button", name="Train", exact=True).click()
    return pages


def wait_all(db: Path, n: int, timeout: float = 900) -> None:
    queue = JobQueue(ResultStore(db))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = queue.jobs(limit=1000)
        if len(jobs) >= n and all(j["status"] not in ("queued", "running") for j in jobs):
            return
        time.sleep(0.5)
    raise TimeoutError("jobs did not finish")


def sessions(browser, n: int, tmp: Path, env: dict, tag: str = "") -> dict:
    """n sessions each start JOB; training seconds per run, server CPU and RSS while polling."""
    server = AppServer(tmp / f"s{n}{tag}.sqlite", tmp / f"s{n}{tag}.log", env=env).start()
    proc = psutil.Process(server.proc.pid)
    try:
        warm = start_jobs(browser, server.url, 1, "preset=tiny-fc&train_limit=256&epochs=1")  # worker up, warm
        wait_all(server.db, 1)
        for page in warm:
            page.context.close()
        pages = start_jobs(browser, server.url, n, JOB)
        time.sleep(3)  # the pages are polling now
        c0, t0 = cpu_seconds(proc), time.monotonic()
        wait_all(server.db, n + 1)
        cpu = (cpu_seconds(proc) - c0) / (time.monotonic() - t0) * 100
        rss = proc.memory_info().rss / 2**20
        for page in pages:
            page.context.close()
        runs = ResultStore(server.db).runs()
        runs = runs[runs["epochs"] == 3]  # not the warm-up run
        epochs = ResultStore(server.db).epochs(list(runs["run_id"]))
        return dict(seconds=sorted(runs["seconds"]), epoch_s=statistics.median(epochs["seconds"]),
                    acc=list(runs["final_test_acc"]), cpu=cpu, rss=rss)
    finally:
        server.stop()


def many(browser, n: int, tmp: Path, env: dict) -> dict:
    """n sessions each queue a small job and poll it: positions shown, every job ends."""
    server = AppServer(tmp / "many.sqlite", tmp / "many.log", env=env).start()
    proc = psutil.Process(server.proc.pid)
    try:
        browser_ctx = [browser.new_context(viewport={"width": 1200, "height": 900}) for _ in range(n)]
        pages = []
        for ctx in browser_ctx:
            page = ctx.new_page()
            page.goto(f"{server.url}/train?preset=tiny-fc&train_limit=20000&epochs=2")
            page.get_by_role("button", name="Train", exact=True).wait_for(timeout=90_000)
            pages.append(page)
        for page in pages:
            page.get_by_role("button", name="Train", exact=True).click()
        time.sleep(5)
        c0, t0 = cpu_seconds(proc), time.monotonic()
        positions = []
        for page in pages:
            text = page.locator("body").inner_text()
            found = re.search(r"position (\d+) in line", text)
            positions.append(int(found.group(1)) if found else (0 if PROGRESS.search(text) or "Finished" in text
                                                                  else None))
        wait_all(server.db, n)
        cpu = (cpu_seconds(proc) - c0) / (time.monotonic() - t0) * 100
        statuses = [j["status"] for j in JobQueue(ResultStore(server.db)).jobs(limit=1000)]
        for ctx in browser_ctx:
            ctx.close()
        return dict(positions=positions, statuses=statuses, cpu=cpu, rss=proc.memory_info().rss / 2**20)
    finally:
        server.stop()


REFRESH_JOBS = {"Tiny FC, plain engine": "preset=tiny-fc&train_limit=60000&epochs=20",
                "Lab-5, cpu-native": "preset=lab5&train_limit=60000&epochs=20"}


def refresh_and_stop(browser, tmp: Path, env: dict, tag: str = "",
                     query: str = REFRESH_JOBS["Tiny FC, plain engine"]) -> dict:
    server = AppServer(tmp / f"refresh{tag}.sqlite", tmp / f"refresh{tag}.log", env=env).start()
    try:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.goto(f"{server.url}/train?{query}")
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text(PROGRESS).first.wait_for(timeout=90_000)
        time.sleep(2)
        t0 = time.monotonic()
        page.reload()
        page.get_by_text(PROGRESS).first.wait_for(timeout=30_000)
        page.locator(".js-plotly-plot .scatterlayer path.js-line").first.wait_for(timeout=30_000)
        reattach = time.monotonic() - t0
        time.sleep(1)
        store = ResultStore(server.db)
        stop = page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop")
        t0 = time.monotonic()
        stop.click()
        while store.runs()["status"].item() == "running":
            time.sleep(0.02)
        stopped = time.monotonic() - t0
        page.context.close()
        return dict(reattach=reattach, stop=stopped)
    finally:
        server.stop()


def app_vs_cli(tmp: Path, epochs: int) -> dict:
    """Lab-5 on all 60,000 images: per-epoch seconds through a worker vs the CLI."""
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.service.jobs import JobSpec, StoreRunner
    from mnist_lab.service.worker import spawn_worker
    from mnist_lab.training.loop import TrainConfig

    out = {}
    cli_db = tmp / "cli.sqlite"
    subprocess.run([sys.executable, "-m", "mnist_lab", "train", "--preset", "lab5", "--epochs", str(epochs),
                    "--device", "cpu", "--quiet", "--db", str(cli_db)], cwd=ROOT, check=True, capture_output=True)
    out["cli"] = list(ResultStore(cli_db).epochs()["seconds"])
    app_db = tmp / "app.sqlite"
    store = ResultStore(app_db)
    import os

    worker = spawn_worker(app_db, parent_pid=os.getpid(), log=tmp / "worker.log")  # as the app starts it
    runner = StoreRunner(store)
    job = runner.submit(JobSpec("train", TrainConfig(epochs=epochs, device="cpu"), DataConfig(),
                                model=PRESETS["lab5"].model))
    runner.wait(job, timeout=600)
    worker.terminate()
    worker.wait(30)
    out["app"] = list(store.epochs()["seconds"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--many", type=int, default=20, help="sessions polling queued jobs (0: skip)")
    parser.add_argument("--epochs", type=int, default=3, help="Lab-5 epochs for the app-vs-CLI comparison")
    parser.add_argument("--baseline", type=int, default=1,
                        help="1-session runs per trial; the median of all is the baseline")
    parser.add_argument("--trials", type=int, default=3,
                        help="rounds of 1-session and N-session runs (and of the refresh), interleaved: this "
                             "shared 2-core machine's speed drifts by 20-30%% from minute to minute")
    parser.add_argument("--browser-nice", type=int, default=0,
                        help="run Chromium at this nice level (10: the browsers stand in for students' own machines)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    env = {"MNIST_LAB_MODE": "shared", "MNIST_LAB_QUEUE_LIMIT": "2"}
    print(f"# {date.today()} · {platform.processor() or platform.machine()} · {psutil.cpu_count()} cores · "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        tmp = Path(d)
        executable = CHROMIUM
        if args.browser_nice:
            executable = tmp / "chromium-niced"
            executable.write_text(f'#!/bin/sh\nexec nice -n {args.browser_nice} {CHROMIUM} "$@"\n')
            executable.chmod(0o755)
            print(f"Chromium at nice {args.browser_nice}")
        browser = p.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        # trials interleave 1-session and N-session runs, so a slow spell of the machine hits both
        ones, fives = [], []
        for t in range(args.trials):
            ones += [sessions(browser, 1, tmp, env, tag=f"t{t}b{i}") for i in range(args.baseline)]
            fives.append(sessions(browser, args.sessions, tmp, env, tag=f"t{t}"))
        base = statistics.median(o["seconds"][0] for o in ones)
        each = ", ".join(f"{o['seconds'][0]:.2f}" for o in ones)
        print(f"1 session:  runs {each} s, median {base:.2f} s "
              f"(epoch {statistics.median(o['epoch_s'] for o in ones):.2f} s), server CPU "
              f"{statistics.median(o['cpu'] for o in ones):.1f}% of a core, RSS {ones[-1]['rss']:.0f} MiB")
        for t, five in enumerate(fives):
            ratios = [x / base for x in five["seconds"]]
            print(f"{args.sessions} sessions, trial {t + 1}: runs {', '.join(f'{x:.2f}' for x in five['seconds'])} s "
                  f"(mean {statistics.mean(ratios):.2f}x, worst {max(ratios):.2f}x one session), server CPU "
                  f"{five['cpu']:.1f}% of a core while they poll, RSS {five['rss']:.0f} MiB")
        ratios = [x / base for five in fives for x in five["seconds"]]
        within = sum(r <= 1.5 for r in ratios)
        print(f"{args.sessions} sessions, all {len(ratios)} jobs: mean {statistics.mean(ratios):.2f}x, median "
              f"{statistics.median(ratios):.2f}x, worst {max(ratios):.2f}x; {within} of {len(ratios)} within 1.5x")
        if args.many:
            m = many(browser, args.many, tmp, env)
            print(f"{args.many} sessions polling: queue positions shown {m['positions']}, jobs "
                  f"{dict((s, m['statuses'].count(s)) for s in set(m['statuses']))}, server CPU {m['cpu']:.1f}% "
                  f"of a core, RSS {m['rss']:.0f} MiB")
        for name, query in REFRESH_JOBS.items():
            rs = [refresh_and_stop(browser, tmp, env, tag=f"{name[:4]}{t}", query=query) for t in range(args.trials)]
            reattach = ", ".join(f"{r['reattach']:.2f}" for r in rs)
            stops = ", ".join(f"{r['stop']:.2f}" for r in rs)
            print(f"refresh mid-run ({name}) reattached in {reattach} s (median "
                  f"{statistics.median(r['reattach'] for r in rs):.2f}); Stop honoured in {stops} s")
        browser.close()
        c = app_vs_cli(tmp, args.epochs)
        ratio = statistics.median(c["app"]) / statistics.median(c["cli"])
        print(f"Lab-5 epoch, all 60,000 images: CLI {', '.join(f'{s:.2f}' for s in c['cli'])} s, app worker "
              f"{', '.join(f'{s:.2f}' for s in c['app'])} s: app/CLI {ratio:.2f}x")


if __name__ == "__main__":
    main()
