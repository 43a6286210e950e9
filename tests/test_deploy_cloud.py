"""Streamlit Community Cloud's entry (deploy/streamlit-cloud/streamlit_app.py) as the host runs it: from the
repository's root, that file as the main script. Every page loads (st.Page and st.page_link paths are
absolute, not relative to the main script's folder), the root's .streamlit/config.toml is the one applied,
packages.txt is where the host reads it, a bad secret is one line on the page, and the requirements file
beside the entry lists pyproject's runtime dependencies with CPU-only torch for Python 3.11."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
import tomllib
from apptest import app_db
from packaging.requirements import Requirement
from packaging.version import Version
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
CLOUD = ROOT / "deploy" / "streamlit-cloud"
ENTRY = CLOUD / "streamlit_app.py"
PAGES = ["home", "train", "sweep", "compare", "week2", "runs", "inspect", "report"]
pytestmark = pytest.mark.usefixtures("no_worker_left_running")


def requirements() -> list[Requirement]:
    lines = [line.strip() for line in (CLOUD / "requirements.txt").read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def test_requirements_are_pyprojects_with_cpu_torch_for_python_311():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    given = {r.name: r for r in requirements()}
    assert set(given) == set(wanted)  # every runtime dependency, nothing else (no test tools)
    for name, req in wanted.items():
        if name in ("torch", "torchvision"):
            pinned = next(iter(req.specifier)).version  # pyproject's ==version
            url = given[name].url or ""
            assert url.startswith("https://download.pytorch.org/whl/cpu/"), name
            assert f"{name}-{pinned}%2Bcpu-cp311-cp311-" in url and url.endswith("_x86_64.whl"), url
            assert given[name].marker.evaluate({"python_version": "3.11", "sys_platform": "linux",
                                                "platform_machine": "x86_64"})
        elif name == "streamlit":  # pinned to the version tested, inside pyproject's range
            pin = str(given[name].specifier)
            assert pin.startswith("==") and Version(pin[2:]) in req.specifier
            from importlib.metadata import version
            assert pin[2:] == version("streamlit"), "pin the Streamlit the tests ran"
        else:
            assert given[name].specifier == req.specifier, name


def test_the_host_finds_this_file_and_the_roots_packages_and_config():
    # Community Cloud reads the dependency file beside the main file first (uv.lock, Pipfile, environment.yml,
    # requirements.txt, pyproject.toml in that order), packages.txt and .streamlit/config.toml at the root only
    assert sorted(p.name for p in CLOUD.iterdir() if p.suffix != ".md" and p.name != "__pycache__") == [
        "requirements.txt", "streamlit_app.py"]
    assert {"g++", "fonts-noto-cjk"} <= set((ROOT / "packages.txt").read_text().split())
    assert (ROOT / ".streamlit" / "config.toml").is_file() and not (CLOUD / ".streamlit").exists()


def test_every_page_reference_is_absolute():
    """A relative "app_pages/x.py" resolves against the main script's folder: deploy/streamlit-cloud/."""
    sources = [ROOT / "streamlit_app.py", *(ROOT / "app_pages").glob("*.py"), *(ROOT / "app_lib").glob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("Page", "page_link", "switch_page"):
                first = node.args[0] if node.args else None
                assert not (isinstance(first, (ast.Constant, ast.JoinedStr))), f"{path.name}:{node.lineno}"


@pytest.fixture
def cloud_env(tmp_path, monkeypatch):
    """The entry writes its settings into os.environ (for its server and workers) and caches its preparation
    per process: both are undone after each test, so no later test runs in the cloud's demo mode."""
    app_db(tmp_path / "results.sqlite", monkeypatch)
    monkeypatch.setenv("MNIST_LAB_EXAMPLES", "off")  # the background builder is start.py's (test_deploy_start)
    for name in ("MNIST_LAB_MODE", "MNIST_LAB_TARGET", "MNIST_LAB_PORT", "PORT", "MNIST_LAB_DATA_DIR"):
        monkeypatch.setenv(name, "")  # recorded, so the value the entry sets is taken back
        monkeypatch.delenv(name)
    saved = dict(os.environ)
    st.cache_resource.clear()
    yield tmp_path
    st.cache_resource.clear()
    os.environ.clear()
    os.environ.update(saved)


def test_a_bad_secret_is_one_line_on_the_page(cloud_env, monkeypatch):
    # before the next test: a refusal is not cached (the next page run checks again), a success is, per process
    monkeypatch.setenv("MNIST_LAB_MODE", "open")
    at = AppTest.from_file(str(ENTRY), default_timeout=60).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["MNIST_LAB_MODE must be one of local, shared, demo; got 'open'."]
    assert not at.title  # nothing else: the app did not start


def test_every_page_loads_from_the_cloud_entry(cloud_env):
    at = AppTest.from_file(str(ENTRY), default_timeout=90).run()
    assert not at.exception, at.exception
    assert any("MNIST CNN Lab" in t.value for t in at.title)
    for name in PAGES[1:]:
        at.switch_page(f"../../app_pages/{name}.py").run()  # relative to the main script, as AppTest wants
        assert not at.exception, (name, at.exception)
        assert not at.error, (name, [e.value for e in at.error])
    assert os.environ["MNIST_LAB_MODE"] == "demo"  # the cloud target's mode, from start.py


def test_a_real_streamlit_run_from_the_root(cloud_env, tmp_path, browser):
    """`streamlit run deploy/streamlit-cloud/streamlit_app.py` with the root as its working directory, as the host
    does: Home and a page it links to render in Chromium, and the config is the root's .streamlit/config.toml."""
    from app_server import CHROMIUM, AppServer

    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make browsers` does it)")
    server = AppServer(cloud_env / "results.sqlite", tmp_path / "streamlit.log", script=ENTRY,
                       env={"MNIST_LAB_EXAMPLES": "off"}).start()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(server.url + "/?lang=en")
        page.get_by_text("MNIST ready", exact=False).first.wait_for(timeout=90_000)
        page.get_by_role("link", name="Inspect a trained network", exact=False).first.click()  # st.page_link
        page.get_by_text("No run can be inspected yet", exact=False).first.wait_for(timeout=60_000)
        assert page.url.rstrip("/").endswith("/inspect?lang=en") or "/inspect" in page.url
    finally:
        page.close()
        server.stop()
    log = (tmp_path / "streamlit.log").read_text()
    assert "Traceback" not in log and "start.py: MNIST from " in log, log[-2000:]
    # Streamlit reads ~/.streamlit, then the working directory's .streamlit (the root's, here and on the host),
    # then one beside the main script, which deploy/streamlit-cloud/ does not have (checked above)
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60).stdout
    root_config = ROOT / ".streamlit" / "config.toml"
    for option in ('primaryColor = "#1f4e99"', "maxUploadSize = 10", 'fileWatcherType = "none"'):
        assert f"# The value below was set in {root_config}\n{option}\n" in shown, option
