"""Benchmark: the teacher's class pages over a class of realistic size (issue 25's targets).

    python bench/bench_class_page.py                       # 60 students x 100 runs, every iteration kept
    python bench/bench_class_page.py --students 10 --runs 20

Generates tests/class_fixtures.realistic_class(students, runs) once into a temp folder (a shared-mode
store; its size in MB is recorded), then times, as the teacher, with AppTest: the Progress page and
the Class results page rendered whole (the median of 5 after one warm run), and the pooled tables
alone (classwork.class_runs + pooled_grids + pooled_compares, median of 5). Targets: a page under
2 s, the pooled tables under 1 s.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from apptest import TEACHER, open_page  # noqa: E402

from mnist_lab.lab.classwork import class_runs, pooled_compares, pooled_grids  # noqa: E402
from mnist_lab.runs.store import ResultStore  # noqa: E402
from tests.class_fixtures import realistic_class  # noqa: E402

TARGETS = {"Progress page": 2.0, "Class results page": 2.0, "pooled tables": 1.0}  # seconds
REPEATS = 5


def median_s(fn, repeats: int = REPEATS) -> float:
    fn()  # warm: caches, imports, SQLite's pages
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=60)
    parser.add_argument("--runs", type=int, default=100, help="runs per student")
    args = parser.parse_args()
    logging.getLogger("streamlit").setLevel(logging.ERROR)  # AppTest's bare-mode warnings, one per cached call

    with tempfile.TemporaryDirectory(prefix="bench_class_page_") as tmp:
        db = Path(tmp) / "results.sqlite"
        t0 = time.perf_counter()
        store = ResultStore(db)
        realistic_class(store, students=args.students, runs_per_student=args.runs)
        store.close()
        made_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in Path(tmp).glob("results.sqlite*")) / 1e6
        os.environ.update({"MNIST_LAB_DB": str(db), "MNIST_LAB_MODE": "shared",
                           "MNIST_LAB_TEACHER_TOKEN": "bench-teacher-token", "MNIST_LAB_WORKER_IDLE_S": "5",
                           "MNIST_LAB_WORKER_WARM": "0"})
        store = ResultStore(db)
        runs_n = len(store.visible_runs(None))

        def pooled() -> None:
            runs = class_runs(store)
            pooled_grids(runs)
            pooled_compares(runs)

        def page(name: str):
            at = open_page("home", who=TEACHER)  # signed in as the teacher; each render is the page's whole run

            def render() -> None:
                at.switch_page(f"app_pages/{name}.py").run()
                assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
            return render

        figures = {"Progress page": median_s(page("class_progress")),
                   "Class results page": median_s(page("class_pooled")),
                   "pooled tables": median_s(pooled)}
        store.close()

    print(f"# bench_class_page: {args.students} students x {args.runs} runs ({runs_n:,} runs), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"store: {size_mb:.1f} MB (generated in {made_s:.1f} s)")
    print(f"{'what':<20} {'median (s)':>10} {'target (s)':>10}  result")
    for what, seconds in figures.items():
        target = TARGETS[what]
        print(f"{what:<20} {seconds:>10.2f} {target:>10.1f}  {'MET' if seconds < target else 'MISSED'}")
    print("(a page: AppTest, signed in as the teacher, runs the app's script with the page: navigation, "
          "sign-in check and the page whole; median of 5 after one warm run)")


if __name__ == "__main__":
    main()
