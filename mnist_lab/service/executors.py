"""Which executor trains a job: the local worker's own process (jobs.execute, the default and all a
laptop needs) or a Ray cluster (ray_executor.execute, this process its driver). One choice per entry
point (the worker, the CLI's training commands, the app's workers), from a flag or $MNIST_LAB_EXECUTOR.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from mnist_lab.errors import ConfigError, shorten
from mnist_lab.i18n import N_
from mnist_lab.service.jobs import JobSpec, execute
from mnist_lab.training.preflight import resolve_device

EXECUTOR_ENV = "MNIST_LAB_EXECUTOR"  # 'local' (default) or 'ray'
ADDRESS_ENV = "MNIST_LAB_RAY_ADDRESS"  # the cluster a Ray driver joins (ray_executor.ADDRESS_ENV, read there too)
EXECUTORS = ("local", "ray")
REACH_S = 3.0  # how long joining waits for the cluster's head to answer before it is refused
JOIN_S = 60.0  # how long ray.init may take once the head answers as a gRPC server (a live cluster: seconds)
# An HTTP/2 client's opening (its preface and an empty SETTINGS frame): a Ray head (a gRPC server) answers
# with its own SETTINGS frame at once; anything else (a web server, ssh, a database) does not.
CLUSTER_CACHE_S = 60.0  # how long what the Ray cluster has (a GPU or not) is kept before it is asked again
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4
# How many times ray.init asks the head before it gives up (Ray's default: 20, one a second, each a line on
# stderr); a live head answers the first. An operator's own RAY_gcs_server_port_wait_time_s wins.
_GCS_TRIES = ("RAY_gcs_server_port_wait_time_s", "5")

Execute = Callable[..., Any]  # jobs.execute's signature: (spec, store, cancel=None, on_progress=None) -> result

_UNKNOWN = N_("Unknown executor {value} (from {source}): choose one of {choices}.")
_NO_ADDRESS = N_("--ray-address {value} is only for the Ray executor, so it would change nothing here: add "
                 "--executor ray (or set MNIST_LAB_EXECUTOR=ray), or leave --ray-address out.")
_BAD_ADDRESS = N_("The Ray address {value} is not HOST:PORT (e.g. 10.0.0.1:6379, the head's `ray start --head` "
                  "address): set --ray-address or MNIST_LAB_RAY_ADDRESS.")
_UNREACHABLE = N_("Nothing answers at the Ray address {value} ({detail}): start the cluster's head there (ray start "
                  "--head), or fix --ray-address / MNIST_LAB_RAY_ADDRESS.")
_NOT_RAY = N_("Something answers at {value}, but not as a Ray cluster's head (no gRPC answer within {seconds} s): "
              "give the head's address (the one `ray start --head` printed), or fix --ray-address / "
              "MNIST_LAB_RAY_ADDRESS.")
_SLOW = N_("The Ray cluster at {value} did not let this machine join within {seconds} s: check that it is the head's "
           "address, that RAY_AUTH_MODE=token and RAY_AUTH_TOKEN are the cluster's, and the cluster's Ray version.")
_BAD_TOKEN = N_("The Ray cluster at {value} refused this machine's token: set RAY_AUTH_MODE=token and the cluster's "
                "RAY_AUTH_TOKEN (the one its head was started with) in this machine's environment.")
_REFUSED = N_("Could not join the Ray cluster at {value} ({detail}): check that RAY_AUTH_MODE=token and "
              "RAY_AUTH_TOKEN are the cluster's, and that this machine runs the cluster's Ray version.")


def choose(name: str | None = None) -> str:
    """The executor: `name` (a flag), else $MNIST_LAB_EXECUTOR, else 'local'; anything else is a
    ConfigError naming the choices."""
    source = "--executor"
    if name is None:
        name, source = os.environ.get(EXECUTOR_ENV, "").strip() or "local", EXECUTOR_ENV
    if name not in EXECUTORS:
        raise ConfigError("executor", shorten(name), _UNKNOWN, source=source, choices=", ".join(EXECUTORS))
    return name


def check_address(name: str, address: str | None) -> None:
    """A Ray address given to the local executor would be ignored: refused, naming the flag."""
    if address is not None and name != "ray":
        raise ConfigError("ray_address", shorten(address), _NO_ADDRESS)


def executor(name: str | None = None, address: str | None = None) -> Execute:
    """What trains a job, with jobs.execute's signature: jobs.execute itself for 'local'; for 'ray'
    ray_executor.execute on the cluster at `address` (None: $MNIST_LAB_RAY_ADDRESS, else Ray's own
    lookup). Without Ray installed, 'ray' is the ConfigError naming the extra."""
    if choose(name) == "local":
        return execute
    from mnist_lab.service import ray_executor  # torch, the lab, and Ray when it trains

    ray_executor.import_ray()  # the refusal now, before anything is written

    def execute_on_ray(spec: JobSpec, store, cancel=None, on_progress=None) -> Any:
        return ray_executor.execute(spec, store, cancel=cancel, on_progress=on_progress, address=address)

    execute_on_ray.remote = True  # jobs.run_inline: the nodes resolve the device and load the data
    return execute_on_ray


def device_type(device: str, name: str | None = None, address: str | None = None) -> str:
    """The device type ('cpu' or 'cuda') a job's runs train on, which its limits and time estimates
    use: this machine's (resolve_device) with the local executor, exactly as before; with Ray the
    type named, or for 'auto' the cluster's: 'cuda' when some node has a GPU (`cluster_device`),
    this machine's when the cluster cannot be asked."""
    if choose(name) == "local":
        return resolve_device(device).type
    if isinstance(device, str) and device.strip() not in ("", "auto"):
        return "cuda" if device.strip().startswith("cuda") else resolve_device(device).type
    return cluster_device(address) or resolve_device("auto").type


_clusters: dict[str, tuple[float, str | None]] = {}  # address -> (when asked, 'cuda' / 'cpu' / None)
_clusters_lock = threading.Lock()


def cluster_device(address: str | None = None) -> str | None:
    """'cuda' when some node of the Ray cluster at `address` (None: $MNIST_LAB_RAY_ADDRESS) has a
    GPU, else 'cpu'; None when it cannot be joined. This process joins it as a driver (`connect`);
    the answer is kept CLUSTER_CACHE_S (a GPU box that joins or leaves is seen within that)."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    key = address or ""
    with _clusters_lock:
        asked = _clusters.get(key)
        if asked is not None and time.monotonic() - asked[0] < CLUSTER_CACHE_S:
            return asked[1]
        try:
            connect("ray", address)
            from mnist_lab.service import ray_executor

            gpus = float(ray_executor.import_ray().cluster_resources().get("GPU", 0))
            found: str | None = "cuda" if gpus > 0 else "cpu"
        except Exception:  # noqa: BLE001 - a cluster that cannot be asked: this machine's device, as before
            found = None
        _clusters[key] = (time.monotonic(), found)
        return found


def connect(name: str | None = None, address: str | None = None) -> None:
    """Join the Ray cluster now when the executor is 'ray' (nothing for 'local'), so that a driver
    which cannot (no Ray, nothing at the address, a wrong token or Ray version) is refused in one
    ConfigError before it writes anything."""
    if choose(name) == "local":
        return
    from mnist_lab.service import ray_executor

    ray_executor.import_ray()
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        _reach(address)
    shown = shorten(address or "auto", quote=False)
    outcome: list[BaseException | None] = []

    def join() -> None:
        try:
            ray_executor.connect(address)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - said below, in this thread's caller
            outcome.append(exc)
    # ray.init from another thread, so that a join Ray would retry for minutes is refused after JOIN_S;
    # there it leaves SIGTERM alone (on the main thread it makes SIGTERM a SystemExit, and a killed CLI run
    # 'failed' instead of 'interrupted'): whatever it sets, this process's handlers are put back after it.
    # Ray's C++ core writes each retry to this process's stderr (a worker's log): held aside, read for why.
    handlers = _handlers()
    ray_worker_log = logging.getLogger("ray._private.worker")
    ray_worker_log.addFilter(_not_main_thread_note)
    os.environ.setdefault(*_GCS_TRIES)
    try:
        with _stderr_aside() as said:
            joiner = threading.Thread(target=join, name="mnist-lab-ray-join", daemon=True)
            joiner.start()
            joiner.join(JOIN_S)
    finally:
        ray_worker_log.removeFilter(_not_main_thread_note)
        _restore(handlers)
    if "InvalidAuthToken" in said[0] or "Unauthenticated" in said[0]:
        raise ConfigError("ray_address", shown, _BAD_TOKEN)
    if not outcome:  # Ray would go on retrying for minutes: this process is refused (and exits)
        raise ConfigError("ray_address", shown, _SLOW, seconds=f"{JOIN_S:g}")
    if (exc := outcome[0]) is not None:  # Ray's own errors (auth, versions, no cluster): one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("ray_address", shown, _REFUSED, detail=shorten(first, quote=False)) from None


@contextlib.contextmanager
def _stderr_aside():
    """File descriptor 2 (where C++ code writes) into a temporary file while the block runs; yields a
    one-item list that then holds what was written there (its last 64 KiB)."""
    said = [""]
    sys.stderr.flush()
    with tempfile.TemporaryFile() as aside:
        saved = os.dup(2)
        os.dup2(aside.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            size = aside.seek(0, os.SEEK_END)
            aside.seek(max(0, size - 65536))
            said[0] = aside.read().decode("utf-8", "replace")


def _handlers() -> dict[int, Any]:
    """This process's SIGTERM and SIGINT handlers (none off the main thread, where none can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, handler)


def _not_main_thread_note(record: logging.LogRecord) -> bool:
    """Ray's warning that ray.init off the main thread sets no SIGTERM handler: wanted here, so unsaid."""
    return "SIGTERM handler is not set" not in record.getMessage()


def _reach(address: str) -> None:
    """Refuse an address that is not HOST:PORT, at which nothing answers within REACH_S, or at which
    something answers but not as a gRPC server (a Ray head is one): ray.init would retry for minutes
    before it says so."""
    shown = shorten(address, quote=False)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("ray_address", shown, _BAD_ADDRESS)
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_S)
    except OSError as exc:
        raise ConfigError("ray_address", shown, _UNREACHABLE, detail=shorten(exc.strerror or str(exc) or
                                                                             type(exc).__name__, quote=False)) from None
    with conn:
        if not _speaks_grpc(conn):
            raise ConfigError("ray_address", shown, _NOT_RAY, seconds=f"{REACH_S:g}")


def _speaks_grpc(conn: socket.socket) -> bool:
    """Whether the peer answers an HTTP/2 opening with a SETTINGS frame within REACH_S, as a gRPC
    server does (a web server answers HTTP/1 or closes; ssh, a database send their own greeting)."""
    try:
        conn.sendall(_H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = conn.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # a timeout too
        return False
    return head[3] == _H2_SETTINGS
