"""deploy/start.py, the one start of every deployment: each target's settings (ModelScope's port 7860, a
container's 0.0.0.0, the mode and examples each target defaults to), every bad variable refused in one
line with exit code 2 and nothing written, the dry run's command, two starts on one store building the
examples once (the lock), and one end to end: the ModelScope start on one core without a C++ compiler,
its health, and Home, Train and Inspect in Chromium with the example runs there."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "deploy" / "start.py"
spec = importlib.util.spec_from_file_location("mnist_lab_deploy_start", START)
start = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = start
spec.loader.exec_module(start)

VARIABLES = [*start.ENV.values(), "MNIST_LAB_TEACHER_TOKEN", "MNIST_LAB_MAX_EPOCHS"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean environment for start.py: none of its variables set, the store in tmp."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MNIST_LAB_DB", str(tmp_path / "store" / "results.sqlite"))
    return tmp_path


@pytest.mark.parametrize("target, port, address, mode, examples, details", [
    ("local", 8501, "127.0.0.1", "local", "off", "full"),
    ("docker", 8501, "0.0.0.0", "shared", "off", "none"),
    ("modelscope", 7860, "0.0.0.0", "demo", "full", "none"),  # ModelScope serves a Docker app's port 7860 only
    ("cloud", 8501, "127.0.0.1", "demo", "full", "none"),
])
def test_each_target_defaults(env, target, port, address, mode, examples, details):
    s = start.resolve(target=target)
    assert (s.target, s.port, s.address, s.mode, s.examples, s.error_details) == (
        target, port, address, mode, examples, details)
    assert s.db == env / "store" / "results.sqlite"


def test_target_from_the_environment_and_the_flag_wins(env, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_TARGET", "modelscope")
    assert start.resolve().port == 7860
    assert start.resolve(target="docker").target == "docker"


def test_relative_store_and_data_folder_are_made_absolute_before_the_server_changes_folder(env, monkeypatch):
    """The examples are built where the operator's folder says; the server then runs from the repository's
    root, and must open the same file."""
    (env / "mnist").mkdir()
    monkeypatch.chdir(env)
    monkeypatch.setenv("MNIST_LAB_DB", "demo.sqlite")
    monkeypatch.setenv("MNIST_LAB_DATA_DIR", "mnist")
    s = start.resolve(target="local")
    assert s.db == env / "demo.sqlite" and s.data_dir == str(env / "mnist")
    assert s.environment({})["MNIST_LAB_DB"] == str(env / "demo.sqlite")


def test_container_store_default_is_the_volume(env, monkeypatch):
    if os.geteuid() != 0 and not os.access("/", os.W_OK):  # outside its container: no /data to write
        pytest.skip("the container's /data cannot be made by this user here")
    monkeypatch.delenv("MNIST_LAB_DB")
    assert start.resolve(target="docker").db == Path("/data/results.sqlite")
    assert start.resolve(target="modelscope").db == Path("/data/results.sqlite")


def test_port_address_mode_examples_from_the_environment(env, monkeypatch):
    monkeypatch.setenv("PORT", "9000")  # what a host sets
    assert start.resolve(target="modelscope").port == 9000
    assert any("7860" in note for note in start.resolve(target="modelscope").notes)  # said, not refused
    monkeypatch.setenv("MNIST_LAB_PORT", "9100")  # ours wins over the host's
    monkeypatch.setenv("MNIST_LAB_ADDRESS", "::1")
    monkeypatch.setenv("MNIST_LAB_MODE", "Demo")
    monkeypatch.setenv("MNIST_LAB_EXAMPLES", "tiny")
    s = start.resolve(target="local")
    assert (s.port, s.address, s.mode, s.examples, s.error_details) == (9100, "::1", "demo", "tiny", "none")
    env_out = s.environment({})
    assert env_out["MNIST_LAB_MODE"] == "demo" and env_out["MNIST_LAB_EXAMPLES"] == "tiny"
    assert env_out["MNIST_LAB_DB"] == str(env / "store" / "results.sqlite")


def test_shared_without_teacher_token_is_a_note(env):
    assert any("MNIST_LAB_TEACHER_TOKEN" in n for n in start.resolve(target="docker").notes)


REFUSED = [  # (variable, value, what the line must name)
    ("MNIST_LAB_TARGET", "moon", "MNIST_LAB_TARGET"),
    ("PORT", "0", "PORT"),
    ("PORT", "65536", "PORT"),
    ("MNIST_LAB_PORT", "80a", "MNIST_LAB_PORT"),
    ("MNIST_LAB_PORT", "８０８０", "MNIST_LAB_PORT"),  # full-width digits: not a port
    ("MNIST_LAB_PORT", "-1", "MNIST_LAB_PORT"),
    ("MNIST_LAB_ADDRESS", "every interface", "MNIST_LAB_ADDRESS"),
    ("MNIST_LAB_ADDRESS", "-bad-.host", "MNIST_LAB_ADDRESS"),
    ("MNIST_LAB_MODE", "public", "MNIST_LAB_MODE"),
    ("MNIST_LAB_EXAMPLES", "some", "MNIST_LAB_EXAMPLES"),
    ("MNIST_LAB_DATA_DIR", "/nonexistent/mnist", "MNIST_LAB_DATA_DIR"),
    ("MNIST_LAB_MAX_EPOCHS", "many", "MNIST_LAB_MAX_EPOCHS"),  # the server's own variables, checked here too
]


@pytest.mark.parametrize("name, value, named", REFUSED)
def test_a_bad_setting_is_refused_naming_it(env, monkeypatch, name, value, named):
    monkeypatch.setenv(name, value)
    with pytest.raises(start.SettingError) as err:
        start.resolve()
    line = str(err.value)
    assert named in line and value in line and "\n" not in line


def test_store_that_is_a_folder_is_refused(env, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_DB", str(env))
    with pytest.raises(start.SettingError, match="MNIST_LAB_DB must name a database file"):
        start.resolve()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write any folder")
def test_store_in_a_read_only_folder_is_refused(env, monkeypatch):
    folder = env / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    monkeypatch.setenv("MNIST_LAB_DB", str(folder / "new" / "results.sqlite"))
    with pytest.raises(start.SettingError, match="MNIST_LAB_DB"):
        start.resolve()


def test_a_refused_start_is_one_line_exit_2_and_writes_nothing(env):
    store = env / "store"
    run = subprocess.run([sys.executable, str(START), "--target", "modelscope"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "MNIST_LAB_DB": str(store / "results.sqlite"), "MNIST_LAB_EXAMPLES": "all"})
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines == [lines[-1]] and "MNIST_LAB_EXAMPLES must be one of full, tiny, off; got 'all'." in lines[0]
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert not store.exists()


@pytest.mark.parametrize("target, flags", [
    ("modelscope", ["--server.port", "7860", "--server.address", "0.0.0.0", "--client.showErrorDetails", "none"]),
    ("docker", ["--server.port", "8501", "--server.address", "0.0.0.0", "--client.showErrorDetails", "none"]),
    ("local", ["--server.port", "8501", "--server.address", "127.0.0.1", "--client.showErrorDetails", "full"]),
])
def test_dry_run_prints_the_command_and_touches_nothing(env, capsys, target, flags):
    assert start.main(["--dry-run", "--target", target]) == 0
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    command = out["command"].split()
    assert command[1:5] == ["-m", "streamlit", "run", "streamlit_app.py"]
    for flag, value in zip(flags[::2], flags[1::2]):
        assert command[command.index(flag) + 1] == value
    assert ["--server.headless", "true"] == command[command.index("--server.headless"):][:2]
    assert ["--browser.gatherUsageStats", "false"] == command[command.index("--browser.gatherUsageStats"):][:2]
    assert out["target"] == target and not (env / "store").exists()


def test_the_operators_own_streamlit_options_come_last_so_they_win(env, capsys):
    """`run.py app -- --server.port 8502` passes its options on through the start module."""
    assert start.main(["--dry-run", "--target", "local", "--", "--server.port", "8502"]) == 0
    command = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())["command"].split()
    assert command[-2:] == ["--server.port", "8502"] and command.count("--server.port") == 2


def test_dry_run_of_the_cloud_target_runs_the_hosts_main_file(env, capsys):
    assert start.main(["--dry-run", "--target", "cloud"]) == 0
    assert "streamlit run deploy/streamlit-cloud/streamlit_app.py" in capsys.readouterr().out


def test_two_starts_on_one_store_build_the_examples_once(env):
    """Two `--prepare-only` starts at once on one store (two containers on one volume; an image's build step
    and its first start): one trains the tiny example set, the other waits on the store's lock and finds it."""
    pytest.importorskip("mnist_lab.service.examples", reason="the example runs are not in this checkout")
    from mnist_lab.service.examples import examples_ready

    db = env / "store" / "results.sqlite"
    run_env = {**os.environ, "MNIST_LAB_TARGET": "modelscope", "MNIST_LAB_EXAMPLES": "tiny", "MNIST_LAB_DB": str(db),
               "CXX": "/nonexistent/g++"}
    procs = [subprocess.Popen([sys.executable, str(START), "--prepare-only"], cwd=ROOT, env=run_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = sorted(line for out, _err in outs for line in out.splitlines() if "example runs" in line)
    assert said == ["start.py: example runs (tiny) already in the store", "start.py: example runs (tiny) built"]
    assert all("start.py: MNIST from " in out for out, _err in outs)
    assert examples_ready(db, "tiny") and not examples_ready(db, "full")
    assert not any("Uvicorn" in out or "streamlit" in out.lower() for out, _err in outs)  # --prepare-only: no server


# ------------------------------------------------------------------------------ end to end

def _path_without_a_compiler(tmp_path: Path) -> str:
    """$PATH with every folder holding a C++ compiler replaced by a copy (links) without one."""
    folders = []
    for i, folder in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        names = ("g++", "c++", "gcc", "cc", "clang++", "clang")
        if not any((Path(folder) / n).exists() for n in names):
            folders.append(folder)
            continue
        copy = tmp_path / f"bin{i}"
        copy.mkdir()
        for entry in Path(folder).iterdir():
            if not entry.name.startswith(names) and not entry.name.endswith(("-g++", "-c++", "-gcc")):
                (copy / entry.name).symlink_to(entry)
        folders.append(str(copy))
    return os.pathsep.join(folders)


@pytest.fixture
def modelscope_server(tmp_path):
    """`taskset -c 0 python deploy/start.py` as the ModelScope image runs it (its target, demo mode), on a
    free local port, with tiny examples, no C++ compiler (the plain engine) and an empty store."""
    from app_server import CHROMIUM, free_port

    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; `make browsers` does it)")
    if importlib.util.find_spec("mnist_lab.service.examples") is None:
        pytest.skip("mnist_lab.service.examples (the example runs) is not in this checkout")
    if shutil.which("taskset") is None:
        pytest.skip("no taskset (util-linux): the one-core start cannot be pinned")
    port, log = free_port(), tmp_path / "start.log"
    env = {**os.environ, "MNIST_LAB_TARGET": "modelscope", "PORT": str(port), "MNIST_LAB_ADDRESS": "127.0.0.1",
           "MNIST_LAB_EXAMPLES": "tiny", "MNIST_LAB_DB": str(tmp_path / "data" / "results.sqlite"),
           "CXX": "/nonexistent/g++", "PATH": _path_without_a_compiler(tmp_path), "MNIST_LAB_WORKER_IDLE_S": "30"}
    for name in ("MNIST_LAB_MODE", "MNIST_LAB_PORT", "MNIST_LAB_DATA_DIR"):
        env.pop(name, None)
    with open(log, "w") as out:
        proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(START)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # its own group: server + workers
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # the tiny examples are built first, on one core
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url, log, tmp_path
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the server's process group (the server and the workers it started), SIGKILL to what is
    left after `timeout`; returns when the group is gone."""
    group = proc.pid  # start_new_session: the group's id is the leader's pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(group, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.3)


def test_the_modelscope_start_on_one_core_serves_the_examples(modelscope_server, browser):
    url, log, tmp = modelscope_server
    said = log.read_text()
    assert "start.py: MNIST from " in said and "example runs (tiny) built" in said, said[-2000:]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    shots = tmp / "screenshots"
    try:
        page.goto(url + "/?lang=en")
        page.get_by_role("heading", name="MNIST CNN Lab").first.wait_for(timeout=60_000)
        page.get_by_text("example", exact=False).first.wait_for(timeout=60_000)  # Home marks the example runs
        page.screenshot(path=str(shots / "home.png"), full_page=True)
        page.goto(url + "/train?lang=en")
        page.get_by_role("button", name="Train").first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "train.png"), full_page=True)
        page.goto(url + "/inspect?lang=en")
        page.get_by_text("Run", exact=True).first.wait_for(timeout=60_000)  # a run to pick: an example's weights
        assert page.get_by_text("No run can be inspected yet").count() == 0
        page.screenshot(path=str(shots / "inspect.png"), full_page=True)
    finally:
        page.close()
    assert (shots / "inspect.png").stat().st_size > 0
