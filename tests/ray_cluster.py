"""A local Ray cluster for the tests (and benches) of issue 26, safe on a machine that other people's
clusters share: every node on 127.0.0.1, token authentication, no dashboard, 1 CPU and a small object
store per node, its own short temp dir, and `stop()` ends only this cluster's processes (never `ray
stop`, which ends every Ray process of the user).

The `ray_cluster` session fixture (one cluster per pytest run) is registered in tests/conftest.py: a
test module just names it as an argument. Do not import it into a test module: pytest would make
that module its own fixture, hence a second cluster.

`start_cluster(nodes, cpus, object_store_mb)` starts one by hand. Each node is a `ray start` with its
own --temp-dir under the cluster's, so its processes are found by that path in their command lines
(`pids`): killing one node's raylet or the whole cluster touches nothing else. (ray.cluster_utils.Cluster
was tried first: its in-process head left `ray.init(address=...)` waiting forever under token auth here.)"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED", "PYTHONPATH")


class LocalCluster:
    """A head and worker nodes on 127.0.0.1 under token authentication (see start_cluster), each
    started by `ray start` in its own session directory under this cluster's temp dir."""

    def __init__(self, nodes: int = 2, cpus: int = 1, object_store_mb: int = 100):
        self.token = os.environ["RAY_AUTH_TOKEN"]
        self.cpus, self.object_store_mb = cpus, object_store_mb
        self.temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: unix socket paths stay < 100 chars
        self.address = f"127.0.0.1:{_free_port()}"
        self.nodes: list[str] = []  # each node's temp dir (its processes name it in their command lines)
        self.stopped = False
        try:
            for _ in range(nodes):
                self.add_node()
        except BaseException:
            self.stop()
            raise

    def add_node(self) -> str:
        """Start one more node (the first one is the head) and wait until it has joined."""
        node_dir = os.path.join(self.temp_dir, str(len(self.nodes)))
        os.makedirs(node_dir)
        args = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus), "--num-gpus", "0",
                "--object-store-memory", str(self.object_store_mb << 20), "--disable-usage-stats",
                "--temp-dir", node_dir]
        if self.nodes:
            args += ["--address", self.address]
        else:
            args += ["--head", "--port", self.address.split(":")[1], "--include-dashboard", "false"]
        self.nodes.append(node_dir)  # before it starts: stop() ends what a failed start left
        done = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "start", *args], env=self.env(),
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed: {done.stderr[-2000:]}")
        return node_dir

    def pids(self, i: int | None = None, name: str = "") -> list[int]:
        """The processes of node `i` (all nodes: None) whose command line has `name`."""
        dirs = self.nodes if i is None else [self.nodes[i]]
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if name in cmd and any(d + "/" in cmd or cmd.rstrip().endswith(d) for d in dirs):
                found.append(int(proc.name))
        return found

    def kill_node(self, i: int) -> None:
        """SIGKILL node `i`'s raylet (i >= 1: never the head), as when a machine dies under its tasks."""
        if i < 1:
            raise ValueError("kill_node: the head node (0) stays up")
        for pid in self.pids(i, "raylet/raylet"):
            _kill(pid)

    def env(self) -> dict[str, str]:
        """This process's environment for a subprocess that drives this cluster (a worker,
        `python -m mnist_lab ... --executor ray`): the token and a PYTHONPATH that finds mnist_lab and Ray."""
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": _pythonpath()}

    def stop(self) -> None:
        """End this cluster's processes (only them: found by its temp dir) and remove the dir; again: nothing."""
        if self.stopped:
            return
        self.stopped = True
        for _ in range(3):  # processes that a dying raylet was starting appear late
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                _kill(pid)
            time.sleep(0.3)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pythonpath() -> str:
    """The worktree under test and Ray's site directory first, then what was there."""
    import ray

    ray_root = str(Path(ray.__file__).resolve().parents[1])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in (str(ROOT), ray_root)]
    return os.pathsep.join([str(ROOT), ray_root, *rest])


def start_cluster(nodes: int = 2, cpus: int = 1, object_store_mb: int = 100) -> LocalCluster:
    """Start a LocalCluster. Sets RAY_AUTH_MODE/RAY_AUTH_TOKEN (a fresh token, unless one is set),
    RAY_USAGE_STATS_ENABLED=0 and PYTHONPATH (so the nodes' workers import this worktree's mnist_lab)
    in os.environ: they must be there before Ray is first imported, for this process to drive it."""
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    os.environ.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    os.environ["PYTHONPATH"] = _pythonpath()
    return LocalCluster(nodes, cpus, object_store_mb)


_SHARED: list = []  # [cluster, users, saved env]: one cluster even where a module imports the fixture too


@pytest.fixture(scope="session")
def ray_cluster():
    """One 2-node cluster for every Ray test of the pytest run, this process its driver
    (ray_executor.connect); skipped with the reason where Ray is not installed. (A module that imports
    this fixture gets its own pytest fixture, but still this one cluster: it is counted, not restarted.)"""
    if not _SHARED:
        saved = {k: os.environ.get(k) for k in AUTH_ENV}
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0")
        try:
            import ray  # noqa: F401 - after the token is in the environment
        except ImportError:
            _restore(saved)
            pytest.skip("Ray is not installed (the optional extra 'ray': ray==2.60.0)")
        try:
            cluster = start_cluster()
        except BaseException:
            _restore(saved)
            raise
        _SHARED.extend([cluster, 0, saved])
    _SHARED[1] += 1
    try:
        from mnist_lab.service import ray_executor

        ray_executor.connect(_SHARED[0].address)
        yield _SHARED[0]
    finally:
        _SHARED[1] -= 1
        if _SHARED[1] == 0:
            _end_shared()


def _end_shared() -> None:
    import ray

    cluster, _, saved = _SHARED
    _SHARED.clear()
    if ray.is_initialized():
        ray.shutdown()
    cluster.stop()
    _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
