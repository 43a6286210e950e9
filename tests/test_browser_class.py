"""Shared mode in a real browser (issue 24), as a class meets it: a teacher and two students, each in
a browser of their own (separate Chromium contexts) on a shared server with a teacher token.

- the signed session cookie: a reload and a new tab of the same browser are still signed in, with
  nothing in the URL; the cookie is SameSite=Strict with an expiry; signing out deletes it;
- the issue's "Done when": the teacher imports a class list and reads the one-time codes from the
  page; each student signs in with 学号, 姓名 and code, sets a PIN and trains a tiny Lab-5 job; a
  student's Runs and Inspect links opened in the other student's browser grant nothing; the
  teacher's Runs page and runs.csv name both owners; wrong-PIN and wrong-token floods are slowed
  (never locked out: the owner signs in after the wait); and no page in shared or demo mode (a
  second server on the same database) shows a server path or a traceback in any element.

Skipped without Chromium or playwright, as tests/test_browser.py."""
from __future__ import annotations

import csv
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from app_server import CHROMIUM, AppServer, session_cookies, sign_in_student

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make browsers` does it)",
                allow_module_level=True)

from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.service.identity import TEACHER_KEY, Accounts, server_secret  # noqa: E402

expect = sync_api.expect
TOKEN = "class-test-teacher-token"
SIGN_IN = "Sign in to MNIST CNN Lab"
STUDENTS = {"2024001": "张三", "2024002": "李四"}  # the class list: 学号 -> 姓名
PINS = {"2024001": "13572468", "2024002": "24681357"}
LAB5 = "preset=lab5&train_limit=256&epochs=1"  # 4 iterations of 64 images
PAGES = ["", "train", "sweep", "compare", "week2", "runs", "inspect", "report"]  # every page's url path
THROTTLED = re.compile(r"Too many wrong tries from here or for this account: wait (\d+) s")


def server(tmp, db, mode: str, offset: int = 0, **env) -> AppServer:
    app = AppServer(db, tmp / f"{mode}.log", env={"MNIST_LAB_MODE": mode, **env})
    if port := os.environ.get("MNIST_LAB_TEST_PORT"):  # a port of the caller's choosing (and the next ones)
        app.port = int(port) + offset
        app.url = f"http://127.0.0.1:{app.port}"
    return app


@pytest.fixture(scope="module")
def class_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class")
    app = server(tmp, tmp / "results.sqlite", "shared", MNIST_LAB_TEACHER_TOKEN=TOKEN).start()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def demo_server(class_server):
    """The class's database served in demo mode, started in the background (ready when `.result()` returns)."""
    app = server(class_server.db.parent, class_server.db, "demo", offset=1)
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(app.start)
        app.stop()


def new_browser(browser):
    """A browser of one person: its own cookies, downloads allowed."""
    return browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)


def signed_in_as(page, text: str) -> None:
    expect(page.get_by_test_id("stSidebar").get_by_text(text)).to_be_visible(timeout=30_000)


def settled(page) -> None:
    """Wait until the page's script has drawn its title and finished its run."""
    expect(page.locator("h1").first).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning", timeout=60_000)


def download(page, label: str) -> list[dict]:
    with page.expect_download(timeout=30_000) as info:
        page.get_by_role("button", name=label).click()
    with open(info.value.path(), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main_text(page) -> str:
    return page.get_by_test_id("stMain").inner_text()


def test_the_session_cookie_keeps_a_student_signed_in_until_sign_out(class_server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{class_server.url}/runs?status=finished")  # a deep link, before anyone signed in
    expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=60_000)
    sign_in_student(page, "s1", "Alice", "24682468")
    signed_in_as(page, "Signed in as Alice (s1)")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible(timeout=30_000)  # the link's own page
    assert "status=finished" in page.url

    [cookie] = session_cookies(context)  # written by the page, as it renders
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert 3600 < cookie["expires"] - time.time() <= 13 * 3600  # a class day, not a session cookie (-1)
    assert not cookie["secure"]  # plain http on 127.0.0.1; over https it is Secure
    assert cookie["value"] not in page.url and "ws=" not in page.url  # no URL carries the sign-in

    page.reload()
    signed_in_as(page, "Signed in as Alice (s1)")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible(timeout=30_000)
    tab = context.new_page()  # a new tab of the same browser
    tab.goto(f"{class_server.url}/train")
    signed_in_as(tab, "Signed in as Alice (s1)")
    tab.close()

    other = browser.new_context().new_page()  # another browser: the same URL grants nothing
    other.goto(page.url)
    expect(other.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=60_000)
    other.close()

    page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=30_000)
    session_cookies(context, held=False)
    page.reload()
    expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=60_000)
    assert not re.search(r"Signed in as", page.get_by_test_id("stSidebar").inner_text())
    context.close()


# ---------------------------------------------------------------------------- a class, end to end
def sign_in_teacher(page, token: str) -> None:
    page.get_by_role("tab", name="Teacher").click()
    page.get_by_label("Teacher token").fill(token)
    page.get_by_role("button", name="Sign in as the teacher").click()


def ask_for_pin(page, student_id: str, name: str) -> None:
    """The student tab's first form: 学号 and 姓名; the second form (code or PIN) comes next."""
    page.get_by_label("Student ID").fill(student_id)
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Next").click()
    page.get_by_label("PIN", exact=True).or_(page.get_by_label("One-time code")).wait_for(timeout=30_000)


def first_sign_in(page, student_id: str, name: str, code: str, pin: str) -> None:
    """A student on the class list, the first time: the teacher's one-time code, then a new PIN twice."""
    ask_for_pin(page, student_id, name)
    page.get_by_label("One-time code").fill(code)
    page.get_by_label("New PIN (6 to 12 digits)").fill(pin)
    page.get_by_label("New PIN again").fill(pin)
    page.get_by_role("button", name="Sign in", exact=True).click()


def try_secret(page, field: str, secret: str, button: str) -> None:
    if field == "Teacher token" and not page.get_by_label(field, exact=True).is_visible():
        page.get_by_role("tab", name="Teacher").click()  # a refusal's rerun shows the first tab again
    page.get_by_label(field, exact=True).fill(secret)
    page.get_by_role("button", name=button, exact=True).click()


def train_tiny_lab5(page, url: str) -> None:
    page.goto(f"{url}/train?{LAB5}")
    train = page.get_by_role("button", name="Train", exact=True)
    expect(train).to_be_enabled(timeout=60_000)
    train.click()


def flood(page, accounts: Accounts, key: str, secret: str, field: str, button: str, wrong: str) -> int:
    """Wrong secrets from `page` for the account `key`: the first three are counted and answered
    `wrong`; after the third the page says to wait, and a try within the wait is refused without
    being counted. Then one wrong try each time the wait lapses, until 5 are counted (a wait of 4 s
    to act in). Returns the failures counted."""
    def answered(before: int, or_wait: bool) -> int:
        deadline = time.monotonic() + 30
        while (now := counted(accounts, key)) == before and not (or_wait and page.get_by_text(THROTTLED).count()):
            assert time.monotonic() < deadline, "a wrong try got no answer"
            time.sleep(0.05)
        return now

    for n in range(1, 4):
        try_secret(page, field, secret, button)
        assert answered(n - 1, or_wait=False) == n
        expect(page.get_by_text(wrong)).to_be_visible(timeout=10_000)  # no wait before the third wrong try
    n = 3
    while not page.get_by_text(THROTTLED).count():  # right away after the third: wait N s
        assert n < 10, "ten wrong tries and no wait"
        try_secret(page, field, secret, button)
        n = answered(n, or_wait=True)
    while n < 5:  # each wrong try after a lapsed wait is counted, and doubles the next wait
        time.sleep(accounts.wait_seconds("", None, account=key) + 0.1)
        try_secret(page, field, secret, button)
        n = answered(n, or_wait=False)
    return n


def counted(accounts: Accounts, key: str) -> int:
    return next((f["failures"] for f in accounts.failures() if f["key"] == key), 0)


def leaks(page, folders: list[str]) -> list[str]:
    """Every element's innerText that names a server folder or shows a traceback."""
    return page.evaluate(
        """(folders) => {
            const bad = [...folders, '/home', '/tmp', '/usr', 'site-packages', 'Traceback', 'File "'];
            const found = [];
            for (const el of document.body.querySelectorAll('*')) {
                const text = el.innerText || '';
                const hit = bad.find(b => text.includes(b));
                if (hit && ![...el.children].some(c => (c.innerText || '').includes(hit)))  // the innermost one
                    found.push(`${el.tagName}[${el.getAttribute('data-testid') || ''}]: ${text.slice(0, 200)}`);
            }
            return found;
        }""", folders)


def scan(page, url: str, paths: list[str], folders: list[str], who: str) -> None:
    for path in paths:
        page.goto(f"{url}/{path}")
        settled(page)
        assert not leaks(page, folders), f"{who} on /{path}: {leaks(page, folders)}"


def test_a_class_signs_in_trains_and_sees_only_its_own_runs(class_server, demo_server, browser, tiny_data):
    url, db = class_server.url, class_server.db
    t_start = time.monotonic()

    def mark(what: str) -> None:
        print(f"{time.monotonic() - t_start:6.1f} s  {what}")
    folders = [str(db.parent), str(db.parent.parent)]
    accounts = Accounts(ResultStore(db), server_secret(db))  # the server's own, read from its database

    # The teacher signs in, imports the class list and reads the one-time codes off the Class page.
    teacher = new_browser(browser).new_page()
    teacher.goto(f"{url}/teacher")
    expect(teacher.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=60_000)
    sign_in_teacher(teacher, TOKEN)
    signed_in_as(teacher, "Signed in as the teacher")
    expect(teacher.get_by_role("heading", name="Sign-in and class list", exact=True)).to_be_visible(timeout=30_000)
    roster = "学号,姓名\n" + "".join(f"{i},{n}\n" for i, n in STUDENTS.items())
    teacher.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
        files=[{"name": "class.csv", "mimeType": "text/csv", "buffer": roster.encode("utf-8")}])
    teacher.get_by_role("button", name="Import the class list").click()
    expect(teacher.get_by_text("Class list imported.")).to_be_visible(timeout=30_000)
    codes = {r["student_id"]: r for r in download(teacher, "Codes (CSV)")}
    assert {i: r["student_name"] for i, r in codes.items()} == STUDENTS
    assert all(re.fullmatch(r"[\w-]{6,}", r["code"]) for r in codes.values())

    mark("roster")
    # Each student, in a browser of their own, signs in with the code, sets a PIN and trains.
    pages = {}
    for student_id, name in STUDENTS.items():
        page = new_browser(browser).new_page()
        page.goto(f"{url}/train?{LAB5}")  # the link a teacher hands out: sign in, then this page
        first_sign_in(page, student_id, name, codes[student_id]["code"], PINS[student_id])
        signed_in_as(page, f"Signed in as {name} ({student_id})")
        train = page.get_by_role("button", name="Train", exact=True)
        expect(train).to_be_enabled(timeout=60_000)
        train.click()
        pages[student_id] = page
    a, b = pages.values()
    for page in pages.values():
        expect(page.get_by_text("Finished in")).to_be_visible(timeout=120_000)
    mark("jobs")
    runs = ResultStore(db).runs()
    assert sorted(runs["student_id"]) == sorted(STUDENTS) and set(runs["status"]) == {"finished"}
    run_of = dict(zip(runs["student_id"], runs["run_id"]))
    a_run, b_run = run_of["2024001"], run_of["2024002"]

    # A's links, copied into B's browser, open B's own things: A's run is unknown there.
    b.goto(f"{url}/runs?selected={a_run}")
    expect(b.get_by_text(re.compile(r"^1 run of yours"))).to_be_visible(timeout=30_000)
    settled(b)
    expect(b.get_by_text("This link has values the page cannot use")).to_be_visible()  # the link's value, refused
    compared = b.get_by_test_id("stMultiSelect").filter(has_text="Runs to compare")
    expect(compared).to_contain_text(b_run[-6:], timeout=30_000)  # B's own run is the one compared
    shown = main_text(b)
    assert [line for line in shown.splitlines() if a_run[-6:] in line] == [
        line for line in shown.splitlines() if f"selected={a_run}." in line]  # A's run only as the link's echo
    expect(b.get_by_role("button", name=re.compile("Stop the"))).to_have_count(0)
    assert a_run not in b.url  # the page's own query now names B's selection
    b.goto(f"{url}/inspect?run={a_run}")
    expect(b.get_by_text("This link has values the page cannot use")).to_be_visible(timeout=60_000)
    picked = b.get_by_test_id("stMain").get_by_role("combobox", name="Run")
    expect(picked).to_have_value(re.compile(re.escape(b_run)), timeout=30_000)  # B's run, not A's
    settled(b)
    assert ResultStore(db).runs([a_run])["status"].item() == "finished"  # untouched

    mark("isolation")
    # A reload and a new tab keep each of them signed in.
    for page, who in ((a, "Signed in as 张三 (2024001)"), (b, "Signed in as 李四 (2024002)"),
                      (teacher, "Signed in as the teacher")):
        page.reload()
        signed_in_as(page, who)
        tab = page.context.new_page()
        tab.goto(f"{url}/runs")
        signed_in_as(tab, who)
        tab.close()

    mark("reloads")
    # The teacher sees every run with its owner, and runs.csv says whose each is.
    teacher.goto(f"{url}/runs")
    expect(teacher.get_by_text(re.compile(r"^2 runs on this server"))).to_be_visible(timeout=30_000)
    teacher.get_by_label("Label contains").fill("李四")  # the teacher finds a student's runs by name
    teacher.get_by_label("Label contains").press("Enter")
    expect(teacher.get_by_text(re.compile(r"^1 selected run is hidden by the filters"))).to_be_visible(
        timeout=30_000)
    teacher.goto(f"{url}/runs")
    settled(teacher)
    rows = download(teacher, "runs.csv")
    assert list(rows[0])[-2:] == ["student_id", "student_name"]
    assert {(r["student_id"], r["student_name"]) for r in rows} == set(STUDENTS.items())

    mark("teacher runs")
    # No page shows a server path or a traceback: a student's, the teacher's (with the Class page).
    scan(a, url, [*PAGES[:-2], f"inspect?run={a_run}", "report"], folders, "a student")
    scan(teacher, url, [*PAGES, "teacher"], folders, "the teacher")

    mark("scans")
    # A wrong-PIN flood for A from B's browser is slowed, not a lockout: A signs in after the wait.
    b.get_by_test_id("stSidebar").get_by_role("button", name="Sign out").click()
    expect(b.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=30_000)
    a2 = new_browser(browser).new_page()  # A on another computer, at the PIN form
    a2.goto(f"{url}/runs")
    ask_for_pin(a2, "2024001", "张三")
    ask_for_pin(b, "2024001", "张三")
    t0 = time.monotonic()
    n = flood(b, accounts, "account:2024001", "00000000", "PIN", "Sign in", "The student ID, name or PIN is wrong")
    try_secret(a2, "PIN", PINS["2024001"], "Sign in")  # the right PIN right away: refused, not looked at
    expect(a2.get_by_text(THROTTLED)).to_be_visible(timeout=30_000)
    wait = int(THROTTLED.search(a2.get_by_text(THROTTLED).inner_text()).group(1))
    assert 1 <= wait <= 4 and counted(accounts, "account:2024001") == n  # the refused try was not counted
    time.sleep(accounts.wait_seconds("", "2024001") + 0.1)
    try_secret(a2, "PIN", PINS["2024001"], "Sign in")
    signed_in_as(a2, "Signed in as 张三 (2024001)")
    # A success takes back only its own try: the account keeps its wrong tries (they slow only computers
    # that failed on it; every browser here is on 127.0.0.1, an unknown address, so all of them share it).
    assert counted(accounts, "account:2024001") == n
    flood_s = time.monotonic() - t0

    mark("pin flood")
    # A wrong-token flood is slowed the same way (the teacher too signs in after the wait), and the Class page
    # lists the failures.
    guesser, teacher2 = new_browser(browser).new_page(), new_browser(browser).new_page()
    for page in (guesser, teacher2):
        page.goto(url)
        expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=60_000)
        page.get_by_role("tab", name="Teacher").click()
    flood(guesser, accounts, TEACHER_KEY, "guess", "Teacher token", "Sign in as the teacher",
          "The teacher token is wrong.")
    try_secret(teacher2, "Teacher token", TOKEN, "Sign in as the teacher")  # the right token, within the wait
    expect(teacher2.get_by_text(THROTTLED)).to_be_visible(timeout=30_000)
    teacher.goto(f"{url}/teacher")
    expect(teacher.get_by_text("Repeated wrong PINs or tokens")).to_be_visible(timeout=30_000)
    time.sleep(accounts.wait_seconds("", None, account=TEACHER_KEY) + 0.1)
    try_secret(teacher2, "Teacher token", TOKEN, "Sign in as the teacher")
    signed_in_as(teacher2, "Signed in as the teacher")

    mark("token flood")
    # Demo mode on the same database: a visitor sees this server's examples read-only, and no page says where
    # anything lives. An example: a run of the server's operator (the CLI's workspace).
    from mnist_lab.lab.experiments import run_single
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.runs.recorder import Recorder
    from mnist_lab.training.loop import TrainConfig

    example = run_single(PRESETS["tiny-fc"].model, TrainConfig(epochs=1), tiny_data.config,
                         record=Recorder(ResultStore(db)), data=tiny_data)
    demo = demo_server.result()
    visitor = new_browser(browser).new_page()
    visitor.goto(f"{demo.url}/runs")
    expect(visitor.get_by_text(re.compile(r"^1 run: yours and this server's examples"))).to_be_visible(timeout=60_000)
    scan(visitor, demo.url, [*PAGES[:-2], f"inspect?run={example.run_id}", "report"], folders, "a visitor")
    mark("demo")
    for page in (teacher, a, b, a2, guesser, teacher2, visitor):
        page.context.close()
    print(f"wrong-PIN flood to A's sign-in after the wait: {flood_s:.1f} s")
