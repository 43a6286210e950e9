"""The Ray executor (first slice: 'train' jobs): a job's run trains as one Ray streaming task that
yields its training events as JSON-safe dicts (training.events.to_dict: the final weights as
safetensors bytes in base64); this process, the only one that writes the store, replays them into
`Recorder(store)`, so the store gets the rows a local run writes. A Stop reaches the task's loop as
its own cancel flag through a small Ray actor. Ray is imported only when used (the extra `ray`).
"""
from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

import mnist_lab
from mnist_lab.errors import ConfigError, failure_reason
from mnist_lab.i18n import N_, Message, from_stored, to_stored
from mnist_lab.lab.experiments import run_single
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.jobs import JobSpec
from mnist_lab.training import events
from mnist_lab.training.events import EpochEnded, Event, Iterations, RunEnded, RunStarted
from mnist_lab.training.loop import CancelFlag, new_run_id

ADDRESS_ENV = "MNIST_LAB_RAY_ADDRESS"  # the cluster a Ray driver joins ("127.0.0.1:6379"); else Ray's own
RAY_PIN = "ray==2.60.0"
STOP_POLL_S = 0.1  # how often a task asks the stop actor (its loop checks its flag every iteration)
STOP_GRACE_S = 10.0  # after a Stop, how long the task has to end by itself before it is cancelled by force
KINDS = ("train",)  # the job kinds this executor trains so far

_NO_RAY = N_("The Ray executor needs Ray ({pin}), which is not installed here ({detail}): install the extra "
             "'ray' (pip install 'mnist-lab[ray]'), or train with the local worker.")
_NOT_YET = N_("The Ray executor trains {options} jobs so far; a {value!r} job trains with the local worker.")
_VERSION = N_("This Ray node runs {name} {theirs}, but the job was written by {name} {ours}: install the same "
              "version on every node of the cluster.")
_DONE = object()  # the end of a task's event queue


@dataclass
class RemoteRun:
    """What the driver saw of a run trained on the cluster: its id, its end, its losses and epochs."""

    run_id: str
    status: str = "failed"  # 'finished', 'stopped', 'diverged' or 'failed', as a local run's
    losses: list[float] = field(default_factory=list)
    epochs: list[events.EpochMetrics] = field(default_factory=list)
    final_test_acc: float | None = None


class RemoteError(Exception):
    """A task that failed on the cluster, with its reason as data (template and params, so that
    errors.failure_reason keeps it in each reader's language)."""

    def __init__(self, message: Message):
        self.template, self.params = message.template, dict(message.params)
        super().__init__(str(message))


def import_ray() -> Any:
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("executor", "ray", _NO_RAY, pin=RAY_PIN, detail=str(exc)[:80]) from None
    return ray


def connect(address: str | None = None) -> Any:
    """Join the cluster at `address` (else $MNIST_LAB_RAY_ADDRESS, else Ray's own lookup) as its
    driver, once per process; token authentication comes from RAY_AUTH_MODE / RAY_AUTH_TOKEN."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get(ADDRESS_ENV) or "auto", log_to_driver=False,
                 logging_level="WARNING", configure_logging=False)
    return ray


def versions() -> dict[str, str]:
    """What a spec's driver runs; a node that runs anything else refuses the spec."""
    return {"mnist_lab": mnist_lab.__version__, "torch": torch.__version__}


def check_versions(ours: dict[str, str]) -> None:
    theirs = versions()
    for name in sorted(theirs):
        if ours.get(name) != theirs[name]:
            raise ConfigError("versions", ours.get(name), _VERSION, name=name, ours=ours.get(name),
                              theirs=theirs[name])


# ------------------------------------------------------------------------------ on a node

class StopBoard:
    """The Ray actor behind Stop, one per driver process (made once: a new actor per job costs a
    worker start, seconds on a small node, during which a Stop would not arrive): the driver marks
    a job's key stopped, the job's tasks read it."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def set(self, key: str) -> None:
        self.stopped.add(key)

    def is_set(self, key: str) -> bool:
        return key in self.stopped

    def forget(self, key: str) -> None:
        self.stopped.discard(key)


class RemoteFlag:
    """A CancelFlag for the training loop on a node: asks the StopBoard actor about its job's `key`
    at most every STOP_POLL_S (the loop checks every iteration), never blocking the loop."""

    def __init__(self, board: Any, key: str):
        self.board, self.key, self.stopped, self.pending, self.asked = board, key, False, None, 0.0

    def is_set(self) -> bool:
        if self.stopped:
            return True
        ray = import_ray()
        if self.pending is not None:
            ready, _ = ray.wait([self.pending], timeout=0)
            if ready:
                self.stopped, self.pending = bool(ray.get(self.pending)), None
        elif time.monotonic() - self.asked >= STOP_POLL_S:
            self.pending, self.asked = self.board.is_set.remote(self.key), time.monotonic()
        return self.stopped


def train_events(spec_json: str, run_id: str, driver_versions: dict[str, str], board: Any,
                 key: str) -> Iterator[dict]:
    """The task: train the 'train' job `spec_json` as run `run_id` on this node and yield each of
    its events as `events.to_dict` writes it, stopping when `board` (a StopBoard) has `key`; a
    failure is yielded as {'kind': 'error', 'message': its stored reason}, never raised (only plain
    data leaves the node)."""
    out: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            check_versions(driver_versions)
            spec = JobSpec.from_json(spec_json)
            if spec.kind not in KINDS:
                raise ConfigError("kind", spec.kind, _NOT_YET, options=", ".join(KINDS))
            run_single(spec.model, spec.train, spec.data, on_progress=lambda e: out.put(events.to_dict(e)),
                       cancel=RemoteFlag(board, key), label=spec.label, run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - sent to the driver as data
            out.put({"kind": "error", "message": to_stored(failure_reason(exc))})
        finally:
            out.put(_DONE)

    # the loop reports through a callback; a thread lets this generator yield what it reports as it comes
    worker = threading.Thread(target=work, name="mnist-lab-ray-run", daemon=True)
    worker.start()
    while (item := out.get()) is not _DONE:
        yield item
    worker.join()


@lru_cache(maxsize=1)
def _remotes() -> tuple[Any, Any]:
    """(the streaming task, this driver's StopBoard actor), made once per process."""
    ray = import_ray()
    task = ray.remote(num_returns="streaming", num_cpus=1, max_retries=0)(train_events)
    return task, ray.remote(num_cpus=0)(StopBoard).remote()


# ------------------------------------------------------------------------------ the driver

def execute(spec: JobSpec, store: ResultStore | None, cancel: CancelFlag | None = None,
            on_progress: Callable[[Event], None] | None = None, address: str | None = None) -> RemoteRun:
    """service.jobs.execute on the cluster: train `spec` (kind 'train') as one Ray task whose
    events this process records in `store` (one Recorder) as they arrive, then passes to
    `on_progress`. A set `cancel` stops the run as a local Stop does (what finished is kept);
    a failure on the node ends the run 'failed' with its reason and raises RemoteError."""
    spec.validate()
    if spec.kind not in KINDS:
        raise ConfigError("kind", spec.kind, _NOT_YET, options=", ".join(KINDS))
    ray = connect(address)
    task, board = _remotes()
    run = RemoteRun(new_run_id())
    key = uuid.uuid4().hex  # the job's, on the board
    gen = task.remote(spec.to_json(), run.run_id, versions(), board, key)
    done = threading.Event()
    watcher = threading.Thread(target=_watch_stop, args=(ray, cancel, board, key, gen, done), daemon=True,
                               name="mnist-lab-ray-stop")
    watcher.start()
    record = Recorder(store) if store is not None else None
    open_runs: set[str] = set()
    try:
        for ref in gen:
            data = ray.get(ref)
            if data.get("kind") == "error":
                _fail_open(record, open_runs, data.get("message", ""))
                raise RemoteError(_message(data.get("message")))
            event = events.from_dict(data, "ray event")
            _note(run, open_runs, event)
            if record is not None:
                record(event)
            if on_progress is not None:
                on_progress(event)
    except ray.exceptions.RayError as exc:  # the task or its node died, or it was cancelled by force
        why = failure_reason(exc)
        _fail_open(record, open_runs, to_stored(why))
        raise RemoteError(why) from None
    finally:
        done.set()
        watcher.join()
        board.forget.remote(key)
    return run


def _watch_stop(ray: Any, cancel: CancelFlag | None, board: Any, key: str, gen: Any,
                done: threading.Event) -> None:
    """Pass a Stop on to the task's flag; cancel the task by force when it has not ended
    STOP_GRACE_S later."""
    if cancel is None:
        return
    while not done.wait(STOP_POLL_S):
        if cancel.is_set():
            board.set.remote(key)
            if not done.wait(STOP_GRACE_S):
                ray.cancel(gen, force=True)
            return


def _note(run: RemoteRun, open_runs: set[str], event: Event) -> None:
    if isinstance(event, RunStarted):
        open_runs.add(event.run_id)
    elif isinstance(event, Iterations):
        run.losses.extend(event.losses)
    elif isinstance(event, EpochEnded):
        run.epochs.append(event.metrics)
    elif isinstance(event, RunEnded):
        open_runs.discard(event.run_id)
        run.status, run.final_test_acc = event.status, event.final_test_acc


def _message(stored: Any) -> Message:
    parts = from_stored(stored)
    return parts[0] if parts else Message(N_("the run failed; no reason was given"))


def _fail_open(record: Recorder | None, open_runs: set[str], stored: str) -> None:
    """End the runs that started and did not end 'failed', with the stored reason."""
    for run_id in sorted(open_runs):
        if record is not None:
            record(RunEnded(run_id=run_id, epoch=0, step=0, total_steps=0, status="failed", seconds=0.0,
                            message=str(_message(stored)), message_msg=stored))
    open_runs.clear()
