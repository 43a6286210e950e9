"""The one end-to-end test in a real browser: `streamlit run` on a free local port, Debian's
Chromium driven by Playwright. A tiny run draws its loss chart and its iterations.csv has one
row per step; a longer run is stopped from the page and keeps what it did."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make browsers` does it)",
                allow_module_level=True)

from mnist_lab.store import DB_ENV, ResultStore  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(base URL, result store path) of a headless `streamlit run` of the dashboard."""
    tmp = tmp_path_factory.mktemp("browser")
    db, port = tmp / "results.sqlite", free_port()
    log = open(tmp / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, DB_ENV: str(db)}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("streamlit did not start:\n" + (tmp / "streamlit.log").read_text()[-3000:])
        time.sleep(0.3)
    yield url, db
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def download_rows(page, label: str) -> list[dict]:
    with page.expect_download(timeout=30_000) as info:
        page.get_by_role("button", name=label).click()
    with open(info.value.path(), newline="") as f:
        return list(csv.DictReader(f))


def test_train_live_chart_stop_and_csv(app, browser):
    url, db = app
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    expect = sync_api.expect

    # A tiny run, set up by a link: Tiny FC on 256 images, 1 epoch = 4 iterations of 64.
    page.goto(f"{url}/train?preset=tiny-fc&train_limit=256&epochs=1")
    train = page.get_by_role("button", name="Train", exact=True)
    expect(train).to_be_enabled(timeout=60_000)
    # the app's own navigation, even when a deep link is the server's first visitor
    expect(page.get_by_test_id("stSidebarNav").get_by_role("link", name="FC vs CNN")).to_be_visible()
    train.click()
    expect(page.get_by_text("Finished in")).to_be_visible(timeout=90_000)
    line = page.locator(".js-plotly-plot .scatterlayer path.js-line").first  # the loss, drawn as SVG
    expect(line).to_be_visible(timeout=30_000)  # drawn after the status line, once plotly.js has loaded
    assert len(line.get_attribute("d")) > 10
    rows = download_rows(page, "iterations.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["loss"]) > 0 for r in rows)
    run_id = rows[0]["run_id"]
    assert ResultStore(db).runs([run_id])["status"].item() == "finished"
    stored = ResultStore(db).iterations([run_id])
    assert [float(r["loss"]) for r in rows] == pytest.approx(list(stored["loss"]), rel=1e-6)  # the store's losses

    # A longer run (60,000 images x 20 epochs), stopped once its chart is live.
    page.goto(f"{url}/train?preset=tiny-fc&train_limit=60000&epochs=20")
    page.get_by_role("button", name="Train", exact=True).click()
    # (the page's own Stop: Streamlit's header shows another "Stop" while a rerun is in flight)
    stop = page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop")
    expect(stop).to_be_visible(timeout=60_000)
    expect(page.locator(".js-plotly-plot .scatterlayer path.js-line").first).to_be_visible(timeout=30_000)
    stop.click()
    expect(page.get_by_text("Stopped (stopped by the user)")).to_be_visible(timeout=10_000)
    rows = download_rows(page, "iterations.csv")
    run = ResultStore(db).runs([rows[0]["run_id"]])
    assert run["status"].item() == "stopped"
    assert 0 < len(rows) < 20 * 938  # partial, and every recorded iteration is in the file
    assert [int(r["iteration"]) for r in rows] == list(range(1, len(rows) + 1))
    stored = ResultStore(db).iterations([rows[0]["run_id"]])
    assert [float(r["loss"]) for r in rows] == pytest.approx(list(stored["loss"]), rel=1e-6)
    page.close()
