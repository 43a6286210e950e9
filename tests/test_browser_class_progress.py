"""The teacher's class pages in a real browser (issue 25's "Done when"): a shared server over a store
of three students' runs (tests/class_fixtures.py, no training: one finished lab 5, one half, one
nothing); the teacher signs in, the Progress page shows exactly that, one student's report (.docx)
downloads and names the student, and the pooled table's CSV from Class results holds the pooled
numbers (classwork.pooled_tables, which the CLI writes too).

Ports: MNIST_LAB_TEST_PORT, else 8600-8649. Skipped without Chromium or playwright, as tests/test_browser.py."""
from __future__ import annotations

import csv
import io
import os
import zipfile

import pytest
from app_server import CHROMIUM, AppServer

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make browsers` does it)",
                allow_module_level=True)

from mnist_lab.lab.classwork import class_runs, pooled_tables  # noqa: E402
from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.service.identity import Accounts, server_secret  # noqa: E402
from tests.class_fixtures import lab5_complete, lab5_half  # noqa: E402

expect = sync_api.expect
TOKEN = "class-progress-teacher-token"
ROSTER = "学号,姓名\n2024001,张三\n2024002,李四\n2024003,王五\n"
PORTS = range(8600, 8650)


def port() -> int:
    """MNIST_LAB_TEST_PORT, else the first free port of this test's range."""
    import socket

    if given := os.environ.get("MNIST_LAB_TEST_PORT"):
        return int(given)
    for p in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    raise RuntimeError("no free port in 8600-8649")


@pytest.fixture(scope="module")
def class_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class25")
    db = tmp / "results.sqlite"
    store = ResultStore(db)
    Accounts(store, server_secret(store.path)).import_roster(ROSTER)
    lab5_complete(store, "2024001", "张三")
    lab5_half(store, "2024002", "李四")
    store.close()
    app = AppServer(db, tmp / "server.log", env={"MNIST_LAB_MODE": "shared", "MNIST_LAB_TEACHER_TOKEN": TOKEN})
    app.port = port()
    app.url = f"http://127.0.0.1:{app.port}"
    yield app.start()
    app.stop()


def settled(page) -> None:
    expect(page.locator("h1").first).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning", timeout=60_000)


def downloaded(page, label: str) -> bytes:
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name=label).click()
    with open(info.value.path(), "rb") as f:
        return f.read()


def test_the_teacher_follows_the_class_and_downloads_a_report_and_the_pooled_table(class_server, browser):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
    page.goto(f"{class_server.url}/class")
    page.get_by_role("tab", name="Teacher").click()
    page.get_by_label("Teacher token").fill(TOKEN)
    page.get_by_role("button", name="Sign in as the teacher").click()
    expect(page.get_by_role("heading", name="Progress", exact=True)).to_be_visible(timeout=60_000)
    settled(page)
    metrics = page.get_by_test_id("stMetric")
    expect(metrics).to_have_count(4)
    assert [m.split() for m in metrics.all_inner_texts()] == [["students", "3"], ["lab", "5", "done", "1"],
                                                             ["under", "way", "1"], ["not", "started", "1"]]

    # the whole table fits a 1400 px window: no column (last activity) cut off at the right
    grid = page.get_by_test_id("stDataFrame").first.locator(".dvn-scroller")
    width, shown = grid.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert width <= shown + 1, (width, shown)

    progress = list(csv.DictReader(io.StringIO(downloaded(page, "Progress (CSV)").decode("utf-8"))))
    assert [(r["student_id"], r["student_name"], r["lab5_done"]) for r in progress] == [
        ("2024001", "张三", "True"), ("2024002", "李四", "False"), ("2024003", "王五", "False")]
    assert [(r["lab_net"], r["depth"], r["kernel"]) for r in progress] == [
        ("done", "done", "done"), ("done", "missing", "missing"), ("missing", "missing", "missing")]

    # one student's report: the .docx a student downloads, with their name and 学号
    page.get_by_test_id("stSelectbox").filter(has_text="Student").click()
    page.get_by_role("option", name="张三 (2024001)").click()
    settled(page)
    docx = downloaded(page, "Report (.docx)")
    with zipfile.ZipFile(io.BytesIO(docx)) as z:
        text = z.read("word/document.xml").decode("utf-8")
    assert "张三" in text and "2024001" in text

    # the pooled table from Class results: the numbers classwork pools (and the CLI writes)
    page.get_by_test_id("stSidebarNav").get_by_text("Class results").click()
    expect(page.get_by_role("heading", name="Class results", exact=True)).to_be_visible(timeout=60_000)
    settled(page)
    rows = list(csv.DictReader(io.StringIO(downloaded(page, "Depth × kernel (CSV)").decode("utf-8"))))
    store = ResultStore(class_server.db)
    try:
        expected = pooled_tables(class_runs(store))["pooled_grid"]
    finally:
        store.close()
    assert len(rows) == len(expected) >= 4  # lab5_complete's 2 × 2 grid
    for row, want in zip(rows, expected.to_dict("records")):
        assert (int(row["conv_layers"]), int(row["kernel_size"]), int(row["n"])) == (
            want["conv_layers"], want["kernel_size"], want["n"])
        assert float(row["mean"]) == pytest.approx(want["mean"])
    assert {int(r["students"]) for r in rows} == {1}  # only 张三 swept
