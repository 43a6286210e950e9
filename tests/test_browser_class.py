"""Shared mode in a real browser (issue 24): the signed session cookie. A student signs in; a reload
and a new tab of the same browser are still signed in, with nothing in the URL; the cookie is
SameSite=Strict with an expiry; signing out deletes it and shows the sign-in page again, also after a
reload. Skipped without Chromium or playwright, as tests/test_browser.py."""
from __future__ import annotations

import os
import re
import time

import pytest
from app_server import CHROMIUM, CHROMIUM_ARGS, AppServer, sign_in_student

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make browsers` does it)",
                allow_module_level=True)

from mnist_lab.service.identity import SESSION_COOKIE  # noqa: E402

expect = sync_api.expect
TOKEN = "class-test-teacher-token"
SIGN_IN = "Sign in to MNIST CNN Lab"


@pytest.fixture(scope="module")
def class_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class")
    app = AppServer(tmp / "results.sqlite", tmp / "streamlit.log",
                    env={"MNIST_LAB_MODE": "shared", "MNIST_LAB_TEACHER_TOKEN": TOKEN})
    if port := os.environ.get("MNIST_LAB_TEST_PORT"):  # a port of the caller's choosing
        app.port, app.url = int(port), f"http://127.0.0.1:{port}"
    yield app.start()
    app.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def signed_in_as(page, text: str) -> None:
    expect(page.get_by_test_id("stSidebar").get_by_text(text)).to_be_visible(timeout=30_000)


def test_the_session_cookie_keeps_a_student_signed_in_until_sign_out(class_server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{class_server.url}/runs?status=finished")  # a deep link, before anyone signed in
    expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=60_000)
    sign_in_student(page, "s1", "Alice", "24682468")
    signed_in_as(page, "Signed in as Alice (s1)")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible(timeout=30_000)  # the link's own page
    assert "status=finished" in page.url

    deadline = time.monotonic() + 10  # the cookie is written by the page, as it renders
    while not (cookies := [c for c in context.cookies() if c["name"] == SESSION_COOKIE]):
        assert time.monotonic() < deadline, "no session cookie"
        time.sleep(0.2)
    [cookie] = cookies
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
    deadline = time.monotonic() + 10
    while [c for c in context.cookies() if c["name"] == SESSION_COOKIE]:
        assert time.monotonic() < deadline, "the session cookie outlived the sign-out"
        time.sleep(0.2)
    page.reload()
    expect(page.get_by_role("heading", name=SIGN_IN)).to_be_visible(timeout=60_000)
    assert not re.search(r"Signed in as", page.get_by_test_id("stSidebar").inner_text())
    context.close()
