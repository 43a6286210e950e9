"""The Done-when of issue 26 in a real browser: the app (`streamlit run`, its worker a Ray driver:
MNIST_LAB_EXECUTOR=ray) on the tests' 2-node local Ray cluster; a sweep started on the Sweep page
trains as Ray tasks, the page follows it live (the step count goes on, the loss is drawn), and its
Stop ends it: what finished is kept, nothing is left running. Skipped without Chromium, Playwright or
Ray (the `ray_cluster` fixture says why)."""
from __future__ import annotations

import os
import re
import time

import pytest
from app_server import CHROMIUM, AppServer

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make browsers` does it)",
                allow_module_level=True)

from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.service.queue import JobQueue  # noqa: E402

expect = sync_api.expect
# 2 networks x 1 seed, 5 epochs of 10,000 images (batch 64: 157 iterations an epoch): long enough to watch and stop
SWEEP = "layers=1,2&kernels=3&seeds=1&epochs=5&train_limit=10000"
STEP = re.compile(r"step ([\d,]+) of")


@pytest.fixture(scope="module")
def ray_app(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray_app")
    env = {**ray_cluster.env(), "MNIST_LAB_EXECUTOR": "ray", "MNIST_LAB_RAY_ADDRESS": ray_cluster.address,
           "MNIST_LAB_WORKERS": "1"}
    app = AppServer(tmp / "results.sqlite", tmp / "streamlit.log", env=env).start()
    app.ray_address = ray_cluster.address
    yield app
    app.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def step_shown(page) -> int:
    return int(STEP.search(page.get_by_text(STEP).first.inner_text()).group(1).replace(",", ""))


def test_the_sweep_page_follows_a_ray_sweep_live_and_stops_it(ray_app, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{ray_app.url}/sweep?{SWEEP}")
    page.get_by_role("button", name="Run sweep").click()
    expect(page.get_by_text(STEP).first).to_be_visible(timeout=120_000)  # a node's first run loads its data
    expect(page.locator(".js-plotly-plot .scatterlayer path.js-line").first).to_be_visible(timeout=30_000)
    first = step_shown(page)
    deadline = time.monotonic() + 30
    while step_shown(page) <= first:  # live: the page follows the task's streamed losses
        assert time.monotonic() < deadline, "the page shows no progress of the Ray run"
        time.sleep(0.5)
    store = ResultStore(ray_app.db)
    workers = JobQueue(store).live_workers()
    assert [w["device"] for w in workers] == [f"Ray {ray_app.ray_address}"], workers  # a Ray driver
    page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop").click()
    t0 = time.monotonic()
    expect(page.get_by_text("Stopped (stopped by you)").first).to_be_visible(timeout=15_000)
    stopped_s = time.monotonic() - t0
    runs = store.runs()
    assert "running" not in set(runs["status"]) and "stopped" in set(runs["status"])
    assert 0 < len(store.iterations()) < 2 * 5 * 157
    print(f"Stop shown after {stopped_s:.2f} s")
    page.close()
