"""The demo's start on one core (issue 27's target: interactive in under 20 s once the examples are built;
building them under 3 minutes). Builds the example set with `deploy/start.py --prepare-only` (timed), then
starts `taskset -c 0 python deploy/start.py` (target modelscope, demo mode, no C++ compiler) and times,
from the start, the health answer and Home rendered in Chromium with the examples' line. Everything in a
fresh folder: the store and the data cache (MNIST_LAB_CACHE_DIR) start empty, as in a new image, and the
preparation fills the cache as an image's build step would; each timed start is a new server process.

    python bench/bench_demo_start.py [--scale full|tiny] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from app_server import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402
from test_deploy_start import stop_group  # noqa: E402

EXAMPLES_LINE = "This demo comes with finished example runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", default="full", choices=("full", "tiny"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MNIST_LAB_TARGET": "modelscope", "MNIST_LAB_EXAMPLES": args.scale,
               "MNIST_LAB_DB": f"{tmp}/results.sqlite", "MNIST_LAB_CACHE_DIR": f"{tmp}/cache",
               "MNIST_LAB_ADDRESS": "127.0.0.1", "CXX": "/nonexistent/g++"}
        t0 = time.monotonic()
        subprocess.run(["taskset", "-c", "0", sys.executable, "deploy/start.py", "--prepare-only"], cwd=ROOT, env=env,
                       check=True)
        print(f"examples ({args.scale}) built on one core: {time.monotonic() - t0:.1f} s")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for i in range(args.runs):
                port = free_port()
                t0 = time.monotonic()
                proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "deploy/start.py"], cwd=ROOT,
                                        env={**env, "PORT": str(port)}, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
                try:
                    while True:
                        try:
                            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read():
                                break
                        except OSError:
                            time.sleep(0.1)
                    health = time.monotonic() - t0
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(f"http://127.0.0.1:{port}/?lang=en")
                    page.get_by_text(EXAMPLES_LINE, exact=False).first.wait_for(timeout=120_000)
                    home = time.monotonic() - t0
                    page.screenshot(path=f"{tmp}/home{i}.png")
                    page.close()
                finally:
                    stop_group(proc)
                print(f"start {i + 1}: health {health:.1f} s, Home with the examples {home:.1f} s")
            browser.close()


if __name__ == "__main__":
    main()
