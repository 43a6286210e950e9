"""The executor choice (service/executors.py) without Ray: the local worker by default, the flag over
$MNIST_LAB_EXECUTOR, a bad name refused with the choices (on an app page: one line, checked once);
'ray' without Ray installed is one translated refusal naming the extra, before anything is written
(worker, CLI); an address nothing answers at, or something that is no Ray head, is refused in
seconds, a join that does not end after JOIN_S, Ray's own stderr held aside, the process's signal
handlers kept; with Ray, limits and estimates use the cluster's device and this machine's data and
memory are not asked; spawn_worker and the app pass the choice on."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import types

import pytest

from mnist_lab import i18n
from mnist_lab.cli.main import main
from mnist_lab.data import datasets
from mnist_lab.errors import ConfigError
from mnist_lab.service import executors, jobs, ray_executor, worker
from mnist_lab.service.worker import Worker, WorkerConfig, spawn_worker
from mnist_lab.training.preflight import resolve_device


@pytest.fixture
def no_ray(monkeypatch):
    """This process as one without Ray installed (`import ray` fails), whatever the environment has."""
    monkeypatch.setitem(sys.modules, "ray", None)


@pytest.fixture
def fake_ray(monkeypatch):
    """Ray 'installed' but never joined: what connect() checks before it asks Ray."""
    monkeypatch.setattr(ray_executor, "import_ray", lambda: object())
    joined = []
    monkeypatch.setattr(ray_executor, "connect", joined.append)
    return joined


def test_the_choice_is_the_flag_then_the_environment_then_local(monkeypatch):
    monkeypatch.delenv(executors.EXECUTOR_ENV, raising=False)
    assert executors.choose() == "local"
    monkeypatch.setenv(executors.EXECUTOR_ENV, "ray")
    assert executors.choose() == "ray"
    assert executors.choose("local") == "local"  # a flag wins over the environment
    monkeypatch.setenv(executors.EXECUTOR_ENV, " ")
    assert executors.choose() == "local"


def test_an_unknown_executor_is_refused_with_the_choices_in_both_languages(monkeypatch):
    monkeypatch.setenv(executors.EXECUTOR_ENV, "da\tsk")
    with pytest.raises(ConfigError) as info:
        executors.choose()
    assert info.value.field == "executor"
    assert str(info.value) == r"Unknown executor 'da\tsk' (from MNIST_LAB_EXECUTOR): choose one of local, ray."
    assert "MNIST_LAB_EXECUTOR" in i18n.render(info.value, "zh_CN") and "未知" in i18n.render(info.value, "zh_CN")
    with pytest.raises(ConfigError, match="from --executor"):
        executors.choose("bogus")


def test_local_is_jobs_execute_and_joins_nothing(monkeypatch, fake_ray):
    monkeypatch.delenv(executors.EXECUTOR_ENV, raising=False)
    assert executors.executor() is jobs.execute
    assert executors.executor("local", None) is jobs.execute
    executors.connect("local", "10.0.0.1:6379")
    assert fake_ray == []
    with pytest.raises(ConfigError, match="only for the Ray executor"):
        executors.check_address("local", "10.0.0.1:6379")
    executors.check_address("ray", "10.0.0.1:6379")
    executors.check_address("local", None)


def test_ray_without_ray_installed_names_the_extra(no_ray):
    for call in (executors.executor, executors.connect):
        with pytest.raises(ConfigError) as info:
            call("ray", None)
        assert "pip install 'mnist-lab[ray]'" in str(info.value) and "ray==2.60.0" in str(info.value)
        assert "可选依赖" in i18n.render(info.value, "zh_CN")


def test_ray_executor_is_a_closure_over_ray_executor_execute(monkeypatch, fake_ray):
    calls = []
    monkeypatch.setattr(ray_executor, "execute", lambda *a, **kw: calls.append((a, kw)) or "result")
    execute = executors.executor("ray", "10.0.0.1:6379")
    assert execute("spec", "store", cancel="flag") == "result"
    assert calls == [(("spec", "store"), dict(cancel="flag", on_progress=None, address="10.0.0.1:6379"))]


def test_an_address_nothing_answers_at_is_refused_in_seconds(fake_ray, monkeypatch):
    monkeypatch.setattr(executors, "REACH_S", 1.0)
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConfigError, match=f"Nothing answers at the Ray address 127.0.0.1:{port}"):
        executors.connect("ray", f"127.0.0.1:{port}")
    for bad in ("127.0.0.1", "host:port", ":6379", "h:0", "h:70000"):
        with pytest.raises(ConfigError, match="is not HOST:PORT"):
            executors.connect("ray", bad)
    assert fake_ray == []  # Ray was never asked (it would wait a minute and more)


@contextlib.contextmanager
def answering(reply: bytes | None):
    """A server on 127.0.0.1 that sends `reply` to whoever connects (None: reads, says nothing); yields
    its address. A gRPC server (a Ray head) answers an HTTP/2 opening with a SETTINGS frame."""
    server = socket.create_server(("127.0.0.1", 0))
    conns = []

    def serve():
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                conns.append(conn)
                if reply is not None:
                    conn.sendall(reply)
    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # ends the accept() under way (close alone would not)
        server.close()
        for conn in conns:
            conn.close()


GRPC_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # an empty HTTP/2 SETTINGS frame


def test_a_cluster_that_refuses_the_driver_is_one_line(fake_ray, monkeypatch):
    def refuse(address):
        raise ConnectionError("Authentication failed: the token does not match\n  (a long Ray explanation)")

    monkeypatch.setattr(ray_executor, "connect", refuse)
    with answering(GRPC_SETTINGS) as address:  # it answers as a gRPC server: Ray itself is asked
        with pytest.raises(ConfigError) as info:
            executors.connect("ray", address)
    assert str(info.value).startswith(f"Could not join the Ray cluster at {address} (Authentication failed")
    assert "long Ray explanation" not in str(info.value) and "RAY_AUTH_TOKEN" in str(info.value)
    monkeypatch.setenv(executors.ADDRESS_ENV, address)  # the environment's address when none is given
    with pytest.raises(ConfigError, match="Nothing answers"):
        executors.connect("ray", None)


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", None, b""])
def test_an_address_that_answers_but_not_as_a_ray_head_is_refused_in_seconds(reply, fake_ray, monkeypatch):
    monkeypatch.setattr(executors, "REACH_S", 1.0)
    started = time.monotonic()
    with answering(reply) as address:
        with pytest.raises(ConfigError) as info:
            executors.connect("ray", address)
    assert time.monotonic() - started < 3.0 and fake_ray == []  # Ray, which retries for minutes, never asked
    assert str(info.value).startswith(f"Something answers at {address}, but not as a Ray cluster's head")
    assert "\n" not in str(info.value) and "Ray" in i18n.render(info.value, "zh_CN")
    assert "头节点" in i18n.render(info.value, "zh_CN")


def test_rays_own_stderr_is_held_aside_and_a_refused_token_is_said_in_one_line(fake_ray, monkeypatch, capfd):
    def c_core_join(address):  # what Ray's C++ core does: a line per retry on file descriptor 2
        for _ in range(3):
            os.write(2, b"[2026-12-07 19:25:46,014 W 1 2] gcs_client.cc:210: Failed to get cluster ID from GCS "
                        b"server: Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing\n")
        raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379")

    monkeypatch.setattr(ray_executor, "connect", c_core_join)
    with answering(GRPC_SETTINGS) as address:
        with pytest.raises(ConfigError) as info:
            executors.connect("ray", address)
    assert capfd.readouterr().err == ""
    assert str(info.value).startswith(f"The Ray cluster at {address} refused this machine's token")
    assert "令牌" in i18n.render(info.value, "zh_CN")
    monkeypatch.setattr(ray_executor, "connect", lambda address: os.write(2, b"[I] a joined driver's notes\n"))
    with answering(GRPC_SETTINGS) as address:
        executors.connect("ray", address)
    assert capfd.readouterr().err == ""
    print("after the join", file=sys.stderr)  # file descriptor 2 is this process's again
    assert capfd.readouterr().err == "after the join\n"


def test_a_join_that_does_not_end_is_refused_after_join_s(fake_ray, monkeypatch):
    monkeypatch.setattr(executors, "JOIN_S", 0.3)
    release = threading.Event()
    monkeypatch.setattr(ray_executor, "connect", lambda address: release.wait(10))
    try:
        with answering(GRPC_SETTINGS) as address:
            with pytest.raises(ConfigError, match=r"did not let this machine join within 0.3 s") as info:
                executors.connect("ray", address)
    finally:
        release.set()
    assert "0.3" in i18n.render(info.value, "zh_CN")


def test_joining_leaves_this_processs_signal_handlers_as_they_were(fake_ray, monkeypatch):
    """ray.init (on the main thread) makes SIGTERM a sys.exit: a killed CLI run would be 'failed'."""
    def ray_like_join(address):
        with contextlib.suppress(ValueError):  # off the main thread Ray sets nothing (nor can it)
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        fake_ray.append(address)

    monkeypatch.setattr(ray_executor, "connect", ray_like_join)
    mine = lambda signum, frame: None  # noqa: E731
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGINT, mine)
        with answering(GRPC_SETTINGS) as address:
            executors.connect("ray", address)
        assert fake_ray == [address]
        assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM] and signal.getsignal(signal.SIGINT) is mine
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_ray_worker_without_ray_is_refused_before_the_database_is_opened(no_ray, tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    with pytest.raises(ConfigError, match="mnist-lab"):
        Worker(WorkerConfig(db=str(db), executor="ray"))
    assert main(["worker", "--executor", "ray", "--db", str(db), "--lang", "zh"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("错误") and "mnist-lab[ray]" in err and "Traceback" not in err
    assert not db.exists()


@pytest.mark.parametrize("command", [["train"], ["sweep", "--seeds", "1"], ["compare", "--seeds", "1"],
                                     ["lesson", "softmax"]])
def test_the_cli_with_ray_but_without_ray_is_one_error_line_and_writes_nothing(command, no_ray, tmp_path, capsys):
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    code = main([*command, "--executor", "ray", "--device", "cpu", "--quiet", "--db", str(db), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: The Ray executor needs Ray") and err.count("\n") == 1, err
    assert not db.exists() and not out.exists()


def test_the_cli_refuses_a_bogus_executor_and_an_address_without_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(executors.EXECUTOR_ENV, raising=False)
    db = tmp_path / "r.sqlite"
    assert main(["sweep", "--executor", "bogus", "--db", str(db)]) == 2
    assert "invalid choice: 'bogus' (choose from 'local', 'ray')" in capsys.readouterr().err
    assert main(["train", "--ray-address", "10.0.0.1:6379", "--device", "cpu", "--db", str(db)]) == 2
    assert "--ray-address '10.0.0.1:6379' is only for the Ray executor" in capsys.readouterr().err
    assert main(["worker", "--executor", "ray", "--device", "cpu", "--db", str(db)]) == 2
    assert "a Ray worker's runs train on the device their node picks" in capsys.readouterr().err
    monkeypatch.setenv(executors.EXECUTOR_ENV, "spark")
    assert main(["worker", "--db", str(db)]) == 2
    assert "Unknown executor 'spark' (from MNIST_LAB_EXECUTOR)" in capsys.readouterr().err
    assert not db.exists()


def test_spawn_worker_passes_the_executor_on(monkeypatch, tmp_path):
    started = []
    monkeypatch.setattr(worker.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))
    spawn_worker(tmp_path / "r.sqlite")
    spawn_worker(tmp_path / "r.sqlite", executor="ray", ray_address="10.0.0.1:6379")
    local, ray = started
    assert "--executor" not in local and "--ray-address" not in local  # the child reads the environment
    assert ray[ray.index("--executor") + 1] == "ray" and ray[ray.index("--ray-address") + 1] == "10.0.0.1:6379"
    assert WorkerConfig().executor == "local" and WorkerConfig().ray_address is None


def _ensure_workers_script():
    from app_lib.shared import ensure_workers

    ensure_workers()


@pytest.mark.parametrize("executor, workers, expected", [("ray", None, 4), ("ray", "2", 2), ("local", None, 1)])
def test_the_app_spawns_its_workers_with_the_environments_executor(executor, workers, expected, tmp_path,
                                                                   monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.apptest import app_db

    app_db(tmp_path / "app.sqlite", monkeypatch)
    monkeypatch.setenv(executors.EXECUTOR_ENV, executor)
    if workers:
        monkeypatch.setenv("MNIST_LAB_WORKERS", workers)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    spawned = []

    class Running:
        def poll(self):
            return None

    monkeypatch.setattr("app_lib.shared.spawn_worker", lambda db, slot, device, **kw: spawned.append(
        (slot, device, kw["executor"], kw["log"].name)) or Running())
    at = AppTest.from_function(_ensure_workers_script, default_timeout=30)
    try:
        at.run()
    finally:  # no stand-in left in the server's cache for conftest's no_worker_left_running to stop
        from app_lib.shared import spawned_workers

        for key in [k for k in spawned_workers() if k[0] == str(tmp_path / "app.sqlite")]:
            del spawned_workers()[key]
    assert not at.exception, at.exception
    device = "auto" if executor == "ray" else "cpu"  # a Ray driver's runs: the node's device
    assert spawned == [(slot, device, executor, "worker.log") for slot in range(expected)]


def test_a_bad_executor_in_the_servers_environment_is_one_line_on_the_page_checked_once(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app_lib.shared import checked_executor
    from tests.apptest import app_db

    app_db(tmp_path / "app.sqlite", monkeypatch)
    monkeypatch.setenv(executors.EXECUTOR_ENV, "spark")
    checks = []
    choose = executors.choose
    monkeypatch.setattr(executors, "choose", lambda name=None: checks.append(name) or choose(name))
    spawned = []
    monkeypatch.setattr("app_lib.shared.spawn_worker", lambda *a, **kw: spawned.append(a))
    checked_executor.clear()
    at = AppTest.from_function(_ensure_workers_script, default_timeout=30)
    try:
        at.run()
        at.run()  # a second page run: the value is not checked again
    finally:
        checked_executor.clear()
    assert not at.exception, at.exception
    [line] = [e.value.replace("\\", "") for e in at.error]  # markdown's escapes (app_lib.text.plain) off
    assert line.startswith("No job trains until this is fixed: Unknown executor 'spark' (from MNIST_LAB_EXECUTOR)")
    assert "\n" not in line and checks == [None] and spawned == []


@pytest.fixture
def cluster(monkeypatch, fake_ray):
    """A joined Ray 'cluster' whose resources the test sets; counts how often it is asked."""
    state = {"resources": {"CPU": 8.0, "GPU": 2.0}, "asked": 0}

    def resources():
        state["asked"] += 1
        return dict(state["resources"])
    monkeypatch.setattr(ray_executor, "import_ray", lambda: types.SimpleNamespace(cluster_resources=resources))
    monkeypatch.delenv(executors.ADDRESS_ENV, raising=False)
    monkeypatch.setattr(executors, "_clusters", {})
    return state


def test_limits_and_estimates_use_the_clusters_device_with_ray_and_this_machines_locally(cluster, monkeypatch):
    here = resolve_device("auto").type
    assert executors.device_type("auto", "local") == here and executors.device_type("cpu", "local") == "cpu"
    assert cluster["asked"] == 0  # the local executor asks no cluster
    assert executors.device_type("auto", "ray") == "cuda"  # a node has a GPU, whatever this machine has
    assert executors.device_type("cuda:1", "ray") == "cuda" and executors.device_type("cpu", "ray") == "cpu"
    cluster["resources"] = {"CPU": 8.0}  # the GPU box leaves: seen once the kept answer is CLUSTER_CACHE_S old
    assert executors.device_type("auto", "ray") == "cuda" and cluster["asked"] == 1
    monkeypatch.setattr(executors, "CLUSTER_CACHE_S", 0.0)
    assert executors.device_type("auto", "ray") == "cpu" and cluster["asked"] == 2

    def refuse(address):
        raise ConnectionError("no cluster")
    monkeypatch.setattr(ray_executor, "connect", refuse)
    assert executors.cluster_device() is None and executors.device_type("auto", "ray") == here  # as before


def test_a_ray_server_checks_its_jobs_against_the_cluster_not_itself(cluster, tmp_path, monkeypatch):
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.runs.store import ResultStore
    from mnist_lab.service.policy import ServerPolicy
    from mnist_lab.training.loop import TrainConfig

    spec = jobs.JobSpec("train", TrainConfig(epochs=50), DataConfig(), model=PRESETS["lab5"].model)
    policy = ServerPolicy(mode="shared", max_epochs=50, max_job_seconds=60)
    policy.check(spec, executors.device_type("auto", "ray"))  # 50 epochs of lab5 on the cluster's GPU: in time
    with pytest.raises(ValueError, match="would train for about"):
        policy.check(spec, "cpu")  # what a CPU-only class server estimated for itself before
    store = ResultStore(tmp_path / "r.sqlite")

    def this_machine(*configs):
        raise ConfigError("batch_size", 64, "Training this network needs more memory than this machine has.")
    monkeypatch.setattr(jobs, "preflight", this_machine)  # training.preflight: this machine's device memory
    assert jobs.StoreRunner(store, remote=True).submit(spec)  # the nodes check their own
    with pytest.raises(ConfigError, match="than this machine has"):
        jobs.StoreRunner(store).submit(spec)  # locally: exactly as before


@pytest.mark.parametrize("command", [["sweep", "--seeds", "1"], ["lesson", "softmax"]])
def test_the_cli_with_ray_leaves_the_device_and_the_data_to_the_nodes(command, cluster, tmp_path, monkeypatch,
                                                                     capsys):
    """No data here (nor this machine's memory asked): the job reaches the cluster."""
    asked = []

    def on_the_cluster(spec, store, cancel=None, on_progress=None):
        asked.append(spec)
        raise ConfigError("executor", "ray", "The cluster says no.")
    on_the_cluster.remote = True
    monkeypatch.setattr(executors, "executor", lambda name=None, address=None: on_the_cluster)
    monkeypatch.setattr(executors, "connect", lambda name=None, address=None: None)
    empty = tmp_path / "no-data"
    empty.mkdir()
    code = main([*command, "--executor", "ray", "--data-dir", str(empty), "--quiet",
                 "--db", str(tmp_path / "r.sqlite")])
    out, err = capsys.readouterr()
    assert code == 2 and err == "error: The cluster says no.\n", err
    [spec] = asked
    assert spec.train.device == "auto" and spec.data.data_dir == str(empty)
    if command[0] == "lesson":  # its estimate is the cluster's, said as such (not "here")
        assert "of training on the Ray cluster's GPU" in out and " here." not in out
    with pytest.raises(datasets.DataUnavailableError):
        datasets.load_raw(spec.data)  # what a local run would have been refused with
