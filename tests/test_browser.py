"""End to end in a real browser: `streamlit run` on a free local port (its worker process started
by the app, as in production), Debian's Chromium driven by Playwright. A tiny run draws its
chart and its iterations.csv is the store's; a refresh mid-run finds the same job, its chart
continues and Stop works; a second tab sees the job; a server restart mid-run leaves the run
'interrupted' with its reason and finished epochs; in shared mode two signed-in students neither
see nor stop each other's runs; a week-2 lesson runs from its page; the sidebar's language switch
survives a reload with the page's settings, and a Chinese browser opens in Chinese."""
from __future__ import annotations

import csv
import os
import re
import signal
import time

import pytest
from app_server import CHROMIUM, AppServer, session_cookies, sign_in_student

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make browsers` does it)",
                allow_module_level=True)

from mnist_lab.runs.recorder import Recorder  # noqa: E402
from mnist_lab.runs.store import ResultStore  # noqa: E402

expect = sync_api.expect
LONG = "preset=tiny-fc&train_limit=60000&epochs=20"  # ~938 iterations an epoch: long enough to act on
LINE = ".js-plotly-plot .scatterlayer path.js-line"  # the loss, drawn as SVG


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    app = AppServer(tmp / "results.sqlite", tmp / "streamlit.log").start()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    app = AppServer(tmp / "results.sqlite", tmp / "streamlit.log", env={"MNIST_LAB_MODE": "shared"}).start()
    yield app
    app.stop()


def new_page(browser):
    return browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)


def download_rows(page, label: str) -> list[dict]:
    with page.expect_download(timeout=30_000) as info:
        page.get_by_role("button", name=label).click()
    with open(info.value.path(), newline="") as f:
        return list(csv.DictReader(f))


def page_stop(page):
    # (the page's own Stop: Streamlit's header shows another "Stop" while a rerun is in flight)
    return page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop")


def step_shown(page) -> int:
    """The step the progress bar reports ('step 123 of 18,760')."""
    text = page.get_by_text(re.compile(r"step [\d,]+ of")).first.inner_text()
    return int(re.search(r"step ([\d,]+) of", text).group(1).replace(",", ""))


def click_plot_until(page, plot, fx: float, fy: float, shown) -> None:
    """Click a plotly plot's drag area at (fx, fy) of its width and height until `shown` is visible:
    plotly binds its click handler a moment after the plot is drawn."""
    for _ in range(5):
        expect(plot).to_be_visible(timeout=30_000)
        box = plot.bounding_box()
        if box is None:  # a rerun replaced the plot between the two calls
            continue
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        try:
            expect(shown).to_be_visible(timeout=6_000)
            break
        except AssertionError:
            continue
    expect(shown).to_be_visible(timeout=1_000)


def wait_for_training(page) -> None:
    expect(page.get_by_text(re.compile(r"step [\d,]+ of"))).to_be_visible(timeout=90_000)
    expect(page.locator(LINE).first).to_be_visible(timeout=30_000)


def assert_csv_is_the_store(rows: list[dict], db) -> None:
    stored = ResultStore(db).iterations([rows[0]["run_id"]])
    assert [int(r["iteration"]) for r in rows] == list(range(1, len(rows) + 1))
    assert [float(r["loss"]) for r in rows] == pytest.approx(list(stored["loss"]), rel=1e-6)


def test_a_tiny_run_draws_its_chart_and_its_csv_is_the_store(server, browser):
    page = new_page(browser)
    page.goto(f"{server.url}/train?preset=tiny-fc&train_limit=256&epochs=1")  # 4 iterations of 64
    train = page.get_by_role("button", name="Train", exact=True)
    expect(train).to_be_enabled(timeout=60_000)
    # the app's own navigation, even when a deep link is the server's first visitor
    expect(page.get_by_test_id("stSidebarNav").get_by_role("link", name="FC vs CNN")).to_be_visible()
    train.click()
    expect(page.get_by_text("Finished in")).to_be_visible(timeout=90_000)
    line = page.locator(LINE).first
    expect(line).to_be_visible(timeout=30_000)  # drawn after the status line, once plotly.js has loaded
    assert len(line.get_attribute("d")) > 10
    rows = download_rows(page, "iterations.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4] and all(float(r["loss"]) > 0 for r in rows)
    assert ResultStore(server.db).runs([rows[0]["run_id"]])["status"].item() == "finished"
    assert_csv_is_the_store(rows, server.db)

    # A hostile link: the browser's markdown renderer must show it as text, bare URL included.
    page.goto(f"{server.url}/train?hidden=[clickme](https://evil.example/phish)")
    expect(page.get_by_text("Hidden units must be whole numbers")).to_be_visible(timeout=30_000)
    assert page.locator("a[href*='evil']").count() == 0
    page.close()


def test_refresh_and_a_second_tab_find_the_job_and_stop_works(server, browser):
    page = new_page(browser)
    page.goto(f"{server.url}/train?{LONG}")
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_training(page)
    before = step_shown(page)

    t0 = time.monotonic()
    page.reload()  # a new Streamlit session: nothing of the old one survives but the URL
    wait_for_training(page)
    reattach_s = time.monotonic() - t0
    expect(page.get_by_role("button", name="Train", exact=True)).to_be_disabled()  # no second job
    deadline = time.monotonic() + 30
    while step_shown(page) <= before:  # the same job, still training: its chart goes on
        assert time.monotonic() < deadline, "the refreshed page shows no progress"
        time.sleep(0.5)

    other = new_page(browser)  # a second tab of the same (local) workspace
    other.goto(f"{server.url}/train")
    wait_for_training(other)
    runs = ResultStore(server.db).runs()
    assert (runs["status"] == "running").sum() == 1  # one job, seen from both tabs
    other.close()

    page_stop(page).click()
    expect(page.get_by_text("Stopped (stopped by you)")).to_be_visible(timeout=10_000)
    rows = download_rows(page, "iterations.csv")
    run = ResultStore(server.db).runs([rows[0]["run_id"]])
    assert run["status"].item() == "stopped" and run["stop_reason"].item() == "stopped by you"
    assert 0 < len(rows) < 20 * 938
    assert_csv_is_the_store(rows, server.db)
    print(f"refresh reattached in {reattach_s:.2f} s")
    page.close()


def test_a_server_restart_mid_run_leaves_the_run_interrupted_with_its_reason(server, browser):
    page = new_page(browser)
    page.goto(f"{server.url}/train?{LONG}")
    page.get_by_role("button", name="Train", exact=True).click()
    wait_for_training(page)
    store = ResultStore(server.db)
    deadline = time.monotonic() + 120
    while not store.runs().query("status == 'running'")["epochs_done"].fillna(0).ge(1).any():  # an epoch done
        assert time.monotonic() < deadline
        time.sleep(0.3)
    server.stop(signal.SIGKILL)  # no chance to clean up: the worker notices its server is gone
    server.start()
    page.reload()
    expect(page.get_by_text(re.compile(r"Interrupted \(the server stopped"))).to_be_visible(timeout=60_000)
    run = ResultStore(server.db).runs().iloc[0]  # the newest
    assert run["status"] == "interrupted" and "server stopped" in run["stop_reason"]
    assert run["epochs_done"] >= 1 and run["engine"] == "plain" and run["seconds"] > 0
    assert len(ResultStore(server.db).epochs([run["run_id"]])) == run["epochs_done"]
    page.goto(f"{server.url}/runs")
    expect(page.get_by_text("interrupted").first).to_be_visible(timeout=30_000)
    page.close()
    assert "terminate called" not in server.log.read_text()


def test_two_students_in_shared_mode_neither_see_nor_stop_each_other(shared_server, browser):
    alice, bob = new_page(browser), browser.new_context().new_page()  # two browsers, two sessions
    alice.goto(f"{shared_server.url}/train?{LONG}")
    sign_in_student(alice, "alice", "Alice", "11223344")  # the link's page opens once she is signed in
    alice.get_by_role("button", name="Train", exact=True).click()
    wait_for_training(alice)
    assert "ws=" not in alice.url  # nothing in the address grants access

    bob.goto(alice.url)  # her copied link: the sign-in page, then the same setup for Bob
    sign_in_student(bob, "bob", "Bob", "55667788")
    expect(bob.get_by_role("button", name="Train", exact=True)).to_be_enabled(timeout=60_000)
    expect(bob.get_by_text(re.compile(r"step [\d,]+ of"))).to_have_count(0)  # Alice's job is not Bob's
    session_cookies(bob.context)  # his sign-in is kept by the browser before he opens another address
    bob.goto(f"{shared_server.url}/runs")
    expect(bob.get_by_text("No runs yet")).to_be_visible(timeout=30_000)
    assert "results.sqlite" not in bob.content()  # no server path in shared mode

    store = ResultStore(shared_server.db)
    assert store.runs()["status"].item() == "running"  # untouched by Bob
    alice.goto(f"{shared_server.url}/runs")  # still signed in (the session cookie)
    expect(alice.get_by_text(re.compile(r"^1 run of yours \(other people.s runs"))).to_be_visible(timeout=30_000)
    alice.goto(f"{shared_server.url}/train")
    wait_for_training(alice)  # her job, found again through her sign-in
    page_stop(alice).click()
    expect(alice.get_by_text("Stopped (stopped by you)")).to_be_visible(timeout=15_000)
    assert store.runs()["stop_reason"].item() == "stopped by you"
    alice.close()
    bob.close()


def test_a_lesson_runs_from_the_week2_page(server, browser):
    page = new_page(browser)
    page.goto(f"{server.url}/week2?lesson=softmax&seeds=1&images=256")  # 2 runs of 4 iterations
    run = page.get_by_role("button", name="Run lesson")
    expect(run).to_be_enabled(timeout=60_000)
    run.click()
    expect(page.get_by_text("Finished in")).to_be_visible(timeout=120_000)
    reading = re.compile(r"softmax before CrossEntropyLoss: [\d.]+% test accuracy against [\d.]+% for logits")
    expect(page.get_by_text(reading)).to_be_visible(timeout=30_000)
    expect(page.locator(".js-plotly-plot .barlayer path").first).to_be_visible(timeout=30_000)
    rows = download_rows(page, "Runs (CSV)")
    assert [r["variant"] for r in rows] == ["logits into CrossEntropyLoss", "softmax before CrossEntropyLoss"]
    stored = ResultStore(server.db).runs([r["run_id"] for r in rows])
    assert set(stored["status"]) == {"finished"} and set(stored["experiment"]) == {"lesson"}
    page.close()


def test_the_language_switch_survives_a_reload_with_the_settings(server, browser):
    from dataclasses import replace

    from mnist_lab.nets.model import count_params
    from mnist_lab.nets.presets import PRESETS

    params = f"{count_params(replace(PRESETS['tiny-cnn'].model, kernel_size=3)):,}"
    page = new_page(browser)
    page.goto(f"{server.url}/train?preset=tiny-cnn&kernel=3")
    expect(page.get_by_role("heading", name="Train a network")).to_be_visible(timeout=60_000)
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").click()
    page.get_by_role("option", name="简体中文").click()
    expect(page.get_by_role("heading", name="训练网络")).to_be_visible(timeout=30_000)
    expect(page).to_have_url(re.compile(r"lang=zh_CN"), timeout=10_000)
    assert "kernel=3" in page.url and "preset=tiny-cnn" in page.url
    page.reload()  # a new session: only the URL carries the language and the settings
    expect(page.get_by_role("heading", name="训练网络")).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stMetricValue").first).to_have_text(params)  # kernel 3 of the tiny CNN
    expect(page.get_by_test_id("stSidebarNav").get_by_role("link", name="运行记录")).to_be_visible()
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="运行记录").click()
    expect(page.get_by_role("heading", name="运行记录")).to_be_visible(timeout=30_000)
    assert "lang=zh_CN" in page.url
    page.close()

    chinese = browser.new_page(locale="zh-CN")  # a browser set to Chinese, no lang in the link
    chinese.goto(f"{server.url}/")
    expect(chinese.get_by_role("heading", name="MNIST 卷积神经网络实验")).to_be_visible(timeout=60_000)
    expect(chinese).to_have_url(re.compile(r"lang=zh_CN"), timeout=10_000)
    chinese.close()


def test_a_digit_drawn_on_the_inspect_page_gets_a_prediction(server, browser, tiny_data):
    """The drawing canvas (streamlit-drawable-canvas) with real mouse strokes: a prediction
    appears; a click on a confusion-matrix cell opens its gallery; a click on a unit of the drawing's
    feature map traces it (issue 28); the Runs page links the run."""
    from mnist_lab.lab.experiments import run_single
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.training.loop import TrainConfig

    run = run_single(PRESETS["lab5"].model, TrainConfig(epochs=1), tiny_data.config,
                     record=Recorder(ResultStore(server.db)),
                     data=tiny_data)
    page = new_page(browser)
    page.goto(f"{server.url}/inspect?run={run.run_id}")
    expect(page.get_by_text("Confusion matrix (click a cell)")).to_be_visible(timeout=60_000)
    # the confusion matrix: the first VISIBLE plot (the network's drawing above the tabs is folded away)
    plot = page.locator(".js-plotly-plot .nsewdrag").locator("visible=true").first
    expect(plot).to_be_visible(timeout=30_000)
    gallery = page.get_by_text(re.compile(r"test image\(s\) of class 9 predicted as 4"))
    click_plot_until(page, plot, 0.45, 0.95, gallery)  # true 9 → 4

    page.get_by_role("tab", name="Your own digit").click()
    canvas = page.locator("canvas.upper-canvas").first
    expect(canvas).to_be_visible(timeout=30_000)
    box = canvas.bounding_box()
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + 70, y0 + 50)
    page.mouse.down()
    for k in range(20):  # a 7: the bar, then the stem
        page.mouse.move(x0 + 70 + 4 * k, y0 + 50, steps=2)
    for k in range(30):
        page.mouse.move(x0 + 150 - 2 * k, y0 + 50 + 5 * k, steps=2)
    page.mouse.up()
    expect(page.get_by_text("prepared 28×28")).to_be_visible(timeout=30_000)
    top3 = page.locator(".st-key-insp_top_0")
    expect(top3).to_have_text(re.compile(r"^\d \d+\.\d\d% · \d \d+\.\d\d% · \d \d+\.\d\d%$"), timeout=10_000)

    # issue 28: the same drawing, one unit of conv1 clicked and traced back to it
    page.get_by_role("tab", name="Trace a unit").click()
    page.locator(".st-key-insp_tr_source").get_by_text("your drawing").click()
    expect(page.locator(".st-key-insp_tr_source").get_by_role("radio", name="your drawing")).to_be_checked()
    fmap = page.locator(".st-key-insp_tr_map .nsewdrag").first
    expect(fmap).to_be_visible(timeout=30_000)
    field = page.get_by_text(re.compile(r"^Rows \d+–\d+, columns \d+–\d+: 5×5 pixels")).first
    traced = page.get_by_text(re.compile(r"^Unit \(0, 1[0-9], 1[0-9]\) of conv1")).first  # the map's middle
    click_plot_until(page, fmap, 0.5, 0.5, traced)
    expect(field).to_be_visible()
    expect(page.get_by_text(re.compile(r"The network computed: -?\d+\.\d{4} \(the same number\)"))).to_be_visible()

    page.goto(f"{server.url}/runs")
    expect(page.get_by_text("Inspect").first).to_be_visible(timeout=60_000)
    page.close()
