"""Which executor trains a job: the local worker's own process (jobs.execute, the default and all a
laptop needs) or a Ray cluster (ray_executor.execute, this process its driver). One choice per entry
point (the worker, the CLI's training commands, the app's workers), from a flag or $MNIST_LAB_EXECUTOR.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from mnist_lab.errors import ConfigError, shorten
from mnist_lab.i18n import N_
from mnist_lab.service.jobs import JobSpec, execute

EXECUTOR_ENV = "MNIST_LAB_EXECUTOR"  # 'local' (default) or 'ray'
ADDRESS_ENV = "MNIST_LAB_RAY_ADDRESS"  # the cluster a Ray driver joins (ray_executor.ADDRESS_ENV, read there too)
EXECUTORS = ("local", "ray")
REACH_S = 3.0  # how long joining waits for the cluster's head to answer before it is refused

Execute = Callable[..., Any]  # jobs.execute's signature: (spec, store, cancel=None, on_progress=None) -> result

_UNKNOWN = N_("Unknown executor {value} (from {source}): choose one of {choices}.")
_NO_ADDRESS = N_("--ray-address {value} is only for the Ray executor, so it would change nothing here: add "
                 "--executor ray (or set MNIST_LAB_EXECUTOR=ray), or leave --ray-address out.")
_BAD_ADDRESS = N_("The Ray address {value} is not HOST:PORT (e.g. 10.0.0.1:6379, the head's `ray start --head` "
                  "address): set --ray-address or MNIST_LAB_RAY_ADDRESS.")
_UNREACHABLE = N_("Nothing answers at the Ray address {value} ({detail}): start the cluster's head there (ray start "
                  "--head), or fix --ray-address / MNIST_LAB_RAY_ADDRESS.")
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

    return execute_on_ray


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
    try:
        ray_executor.connect(address)
    except Exception as exc:  # noqa: BLE001 - Ray's own errors (auth, versions, no cluster): one line
        raise ConfigError("ray_address", shorten(address or "auto", quote=False), _REFUSED,
                          detail=shorten(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                                         quote=False)) from None


def _reach(address: str) -> None:
    """Refuse an address that is not HOST:PORT, or at which nothing answers within REACH_S (ray.init
    would wait a minute and more before it says so)."""
    shown = shorten(address, quote=False)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("ray_address", shown, _BAD_ADDRESS)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_S):
            pass
    except OSError as exc:
        raise ConfigError("ray_address", shown, _UNREACHABLE, detail=shorten(exc.strerror or str(exc) or
                                                                             type(exc).__name__, quote=False)) from None
