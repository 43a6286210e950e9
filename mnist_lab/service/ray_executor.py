"""The Ray executor (so far 'train' and 'sweep' jobs): each run of a job trains as one Ray streaming
task that yields its training events as JSON-safe dicts (training.events.to_dict: the final weights as
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
from typing import Any

import torch

import mnist_lab
from mnist_lab.errors import ConfigError, failure_reason
from mnist_lab.i18n import N_, Message, from_stored, to_stored
from mnist_lab.lab.experiments import run_single, sweep_runs
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
KINDS = ("train", "sweep")  # the job kinds this executor trains so far

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
    status: str = "pending"  # 'running', then 'finished', 'stopped', 'diverged' or 'failed' as a local run's
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


def train_events(run: dict[str, str], driver_versions: dict[str, str], board: Any, key: str) -> Iterator[dict]:
    """The task: train the run `run` (a `plan` item: its 'train' spec as JSON, run id, stored
    label, experiment and group) on this node and yield each of its events as `events.to_dict`
    writes it, stopping when `board` (a StopBoard) has `key`; a run whose job was stopped before it
    began yields nothing (as a local sweep does not start it). A failure is yielded as {'kind':
    'error', 'message': its stored reason}, never raised: only plain data leaves the node."""
    out: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            check_versions(driver_versions)
            spec = JobSpec.from_json(run["spec"])
            if spec.kind != "train":
                raise ConfigError("kind", spec.kind, _NOT_YET, options="train")
            label = (from_stored(run["label"]) or [spec.label])[0]
            if board is not None and import_ray().get(board.is_set.remote(key)):
                return
            run_single(spec.model, spec.train, spec.data, on_progress=lambda e: out.put(events.to_dict(e)),
                       cancel=RemoteFlag(board, key), label=label, run_id=run["run_id"],
                       experiment=run["experiment"], group_id=run["group_id"])
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


def plan(spec: JobSpec) -> list[dict[str, str]]:
    """The job's runs as the tasks get them, in the order a local worker trains them: each a
    'train' spec (JSON), its run id, label (a stored Message, or '' for the spec's own), experiment
    and group, the tags run_single gives them locally."""
    spec.validate()
    if spec.kind == "train":
        return [dict(spec=spec.to_json(), run_id=new_run_id(), label="", experiment="single", group_id="")]
    if spec.kind == "sweep":
        jobs, _, _ = sweep_runs(spec.sweep, spec.train)
        group = "sweep-" + new_run_id()
        return [dict(spec=JobSpec("train", train_cfg, spec.data, model=model_cfg).to_json(), run_id=new_run_id(),
                     label=to_stored(label), experiment="sweep", group_id=group)
                for model_cfg, train_cfg, label in jobs]
    raise ConfigError("kind", spec.kind, _NOT_YET, options=", ".join(KINDS))


_REMOTES: dict[str, tuple[Any, Any]] = {}  # the connection's job id: its (task, StopBoard)


def _remotes() -> tuple[Any, Any]:
    """(the streaming task, this driver's StopBoard actor), made once per connection: an actor
    belongs to the connection that made it, so after ray.shutdown() and a new ray.init the old
    handle is dropped, never called."""
    ray = import_ray()
    job_id = ray.get_runtime_context().get_job_id()
    if job_id not in _REMOTES:
        _REMOTES.clear()
        task = ray.remote(num_returns="streaming", num_cpus=1, max_retries=0)(train_events)
        _REMOTES[job_id] = (task, ray.remote(num_cpus=0)(StopBoard).remote())
    return _REMOTES[job_id]


# ------------------------------------------------------------------------------ the driver

@dataclass
class RemoteJob:
    """What the driver saw of a job trained on the cluster: its runs in plan order (those that
    started), and its status ('finished', or 'stopped' when any run stopped or never began)."""

    status: str
    runs: list[RemoteRun]


def execute(spec: JobSpec, store: ResultStore | None, cancel: CancelFlag | None = None,
            on_progress: Callable[[Event], None] | None = None, address: str | None = None) -> RemoteJob:
    """service.jobs.execute on the cluster: each run of `spec` (a 'train' job, or a sweep: one task
    per run) trains as a Ray task; this process records every event in `store` (one Recorder) as it
    arrives, then passes it to `on_progress`. A set `cancel` stops the runs as a local Stop does
    (what finished is kept; runs not begun never start); a failure on a node ends the runs it left
    open 'failed' with its reason, stops the others and raises RemoteError."""
    if spec.kind not in KINDS:
        raise ConfigError("kind", spec.kind, _NOT_YET, options=", ".join(KINDS))
    runs = plan(spec)
    ray = connect(address)
    task, board = _remotes()
    key = uuid.uuid4().hex  # the job's, on the board
    gens = [task.remote(run, versions(), board, key) for run in runs]
    arrived: queue.Queue = queue.Queue()  # (task index, event dict, or _DONE, or a RayError)
    pumps = [threading.Thread(target=_pump, args=(ray, k, gen, arrived), daemon=True, name="mnist-lab-ray-pump")
             for k, gen in enumerate(gens)]
    for pump in pumps:
        pump.start()
    done = threading.Event()
    watcher = threading.Thread(target=_watch_stop, args=(ray, cancel, board, key, gens, done), daemon=True,
                               name="mnist-lab-ray-stop")
    watcher.start()
    record = Recorder(store) if store is not None else None
    seen = {run["run_id"]: RemoteRun(run["run_id"]) for run in runs}
    open_runs: set[str] = set()
    failure: Message | None = None
    try:
        for _ in range(len(gens)):  # the one thread that writes the store: this one
            while (item := arrived.get())[1] is not _DONE:
                _, data = item
                if isinstance(data, BaseException) or data.get("kind") == "error":
                    why = failure_reason(data) if isinstance(data, BaseException) else _message(data.get("message"))
                    failure = failure or why
                    board.set.remote(key)  # the job has failed: the other runs stop
                    continue
                event = events.from_dict(data, "ray event")
                if event.run_id not in seen:  # not a run of this job: nothing to record
                    continue
                _note(seen[event.run_id], open_runs, event)
                if record is not None:
                    record(event)
                if on_progress is not None:
                    on_progress(event)
        if failure is not None:
            _fail_open(record, open_runs, to_stored(failure))
            raise RemoteError(failure)
    finally:
        done.set()
        watcher.join()
        board.forget.remote(key)
    started = [seen[run["run_id"]] for run in runs if seen[run["run_id"]].status != "pending"]
    stopped = len(started) < len(runs) or any(r.status == "stopped" for r in started)
    return RemoteJob("stopped" if stopped else "finished", started)


def _pump(ray: Any, k: int, gen: Any, arrived: queue.Queue) -> None:
    """Move task `k`'s events to `arrived` as they come, then _DONE (after a RayError, if it died)."""
    try:
        for ref in gen:
            arrived.put((k, ray.get(ref)))
    except ray.exceptions.RayError as exc:  # its worker or node died, or it was cancelled by force
        arrived.put((k, exc))
    finally:
        arrived.put((k, _DONE))


def _watch_stop(ray: Any, cancel: CancelFlag | None, board: Any, key: str, gens: list[Any],
                done: threading.Event) -> None:
    """Pass a Stop on to the job's tasks; cancel them by force when they have not ended
    STOP_GRACE_S later."""
    if cancel is None:
        return
    while not done.wait(STOP_POLL_S):
        if cancel.is_set():
            board.set.remote(key)
            if not done.wait(STOP_GRACE_S):
                for gen in gens:
                    ray.cancel(gen, force=True)
            return


def _note(run: RemoteRun, open_runs: set[str], event: Event) -> None:
    if isinstance(event, RunStarted):
        open_runs.add(event.run_id)
        run.status = "running"
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
