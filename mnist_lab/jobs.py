"""Background jobs for the dashboard: experiment callables run in worker threads, one at a
time per training device (the rest wait, 'queued'), their progress buffered for a UI to poll,
stopped on request or when no page has polled them for a while. Never imports streamlit.
"""
from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .data import DataUnavailableError
from .train import EpochMetrics, Progress

# fn(on_progress=..., cancel=...) -> result; run_single, run_sweep and run_compare fit once
# their configs are bound with functools.partial.
JobFn = Callable[..., Any]

ACTIVE = ("queued", "running")


@dataclass
class RunTrace:
    """What one training run inside a job has reported so far."""

    run_id: str
    losses: list[float] = field(default_factory=list)  # one per iteration, in order
    epochs: list[EpochMetrics] = field(default_factory=list)
    step: int = 0  # iterations done
    total_steps: int = 0
    status: str = "running"  # then the run's own end status: "finished" or "stopped"
    eta_s: float | None = None  # the training loop's own estimate for this run


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's state, safe to draw while the worker keeps training."""

    id: str
    kind: str
    label: str
    status: str  # "queued", "running", "finished", "stopped" or "failed"
    position: int  # 1-based place in the queue while queued, else 0
    runs: tuple[RunTrace, ...]  # in the order they started
    runs_total: int  # how many runs the job will train
    fraction: float  # of the whole job, in [0, 1]
    elapsed_s: float  # since the job left the queue
    eta_s: float | None
    result: Any = None
    error: str = ""  # a readable message when status is "failed"
    error_detail: str = ""  # the traceback, for an expander
    stop_reason: str = ""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def losses(self) -> list[float]:
        """Every iteration loss of the job's runs, concatenated."""
        return [x for r in self.runs for x in r.losses]


def readable_error(exc: BaseException) -> str:
    """A message a student can act on: the core's own ValueError text, or the exception named."""
    if isinstance(exc, (ValueError, DataUnavailableError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "Out of memory: use a smaller training subset, batch size or network."
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Job:
    """One submitted callable. The worker writes progress under a lock; readers take snapshots."""

    def __init__(self, kind: str, fn: JobFn, label: str, runs_total: int, wake: threading.Condition):
        self.id = uuid.uuid4().hex  # unguessable: a session only reaches the jobs whose ids it holds
        self.kind = kind
        self.label = label
        self.runs_total = max(int(runs_total), 1)
        self.cancel = threading.Event()
        self.fn = fn
        self.status = "queued"
        self.result: Any = None
        self.error = ""
        self.error_detail = ""
        self.stop_reason = ""
        self.created = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None
        self.last_polled = self.created  # monotonic seconds of the last heartbeat
        self._runs: OrderedDict[str, RunTrace] = OrderedDict()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._wake = wake  # the manager's queue condition, notified when a queued job is stopped

    # ---------------------------------------------------------------- called by the worker
    def on_progress(self, event: Progress) -> None:
        with self._lock:
            run = self._runs.get(event.run_id)
            if run is None:
                run = self._runs[event.run_id] = RunTrace(event.run_id)
            run.total_steps = event.total_steps
            run.step = max(run.step, event.step)
            run.eta_s = event.eta_s
            if event.kind == "iterations":
                run.losses.extend(event.losses)
            elif event.kind == "epoch" and event.metrics is not None:
                run.epochs.append(event.metrics)
            elif event.kind == "end":
                run.status = event.status

    def _finish(self, status: str, result: Any = None, error: str = "", detail: str = "") -> None:
        with self._lock:
            self.status, self.result, self.error, self.error_detail = status, result, error, detail
            self.finished = time.monotonic()
        self._done.set()

    # ---------------------------------------------------------------- called by the UI
    def heartbeat(self) -> None:
        """The page showing this job is still open."""
        self.last_polled = time.monotonic()

    def stop(self, reason: str = "stopped by the user") -> None:
        """Ask the run to end at its next iteration; what it finished is kept."""
        if self.done:
            return
        with self._lock:
            self.stop_reason = self.stop_reason or reason
        self.cancel.set()
        with self._wake:
            self._wake.notify_all()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; True if it did within `timeout` seconds."""
        return self._done.wait(timeout)

    def snapshot(self, position: int = 0) -> JobSnapshot:
        with self._lock:
            runs = tuple(RunTrace(r.run_id, list(r.losses), list(r.epochs), r.step, r.total_steps, r.status, r.eta_s)
                         for r in self._runs.values())
            status = self.status
            result, error, detail, reason = self.result, self.error, self.error_detail, self.stop_reason
        done_runs = sum(r.status != "running" for r in runs)
        current = next((r for r in reversed(runs) if r.status == "running" and r.total_steps), None)
        part = current.step / current.total_steps if current else 0.0
        fraction = 1.0 if status == "finished" else min((done_runs + part) / self.runs_total, 1.0)
        end = self.finished or time.monotonic()
        elapsed = end - self.started if self.started else 0.0
        eta = None
        if status not in ACTIVE:
            eta = 0.0
        elif status == "running" and self.runs_total == 1 and current is not None:
            eta = current.eta_s  # measured from the run's own start, without the data loading
        elif status == "running" and fraction > 0:
            eta = elapsed / fraction * (1 - fraction)
        return JobSnapshot(self.id, self.kind, self.label, status, position if status == "queued" else 0,
                           runs, self.runs_total, fraction, elapsed, eta, result, error, detail, reason)


class JobManager:
    """Runs jobs in daemon threads, `slots` at a time (1: one GPU, or a CPU shared by every
    session of the process), first come first served. A job nobody has polled for
    `heartbeat_timeout_s` is stopped, so a closed browser tab does not train forever."""

    def __init__(self, slots: int = 1, heartbeat_timeout_s: float = 120.0, watchdog_every_s: float = 5.0,
                 keep_finished: int = 100):
        self.slots = slots
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.watchdog_every_s = watchdog_every_s
        self.keep_finished = keep_finished  # finished jobs kept in memory for their pages
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: list[Job] = []  # waiting, oldest first
        self._running = 0
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._watchdog: threading.Thread | None = None

    def submit(self, kind: str, fn: JobFn, *, label: str = "", runs_total: int = 1) -> Job:
        """Queue `fn(on_progress=..., cancel=...)`; it starts when a slot is free."""
        job = Job(kind, fn, label or kind, runs_total, self._cond)
        with self._cond:
            self._jobs[job.id] = job
            self._queue.append(job)
            self._prune()
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="mnist-lab-job-watchdog", daemon=True)
                self._watchdog.start()
        threading.Thread(target=self._work, args=(job,), name=f"mnist-lab-job-{job.id[:8]}", daemon=True).start()
        return job

    def get(self, job_id: str | None) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id) if job_id else None

    def position(self, job: Job) -> int:
        """1-based place among the waiting jobs (0 when not waiting)."""
        with self._cond:
            return self._queue.index(job) + 1 if job in self._queue else 0

    def snapshot(self, job_id: str | None) -> JobSnapshot | None:
        job = self.get(job_id)
        return job.snapshot(self.position(job)) if job else None

    def poll(self, job_id: str | None) -> JobSnapshot | None:
        """Heartbeat and snapshot in one call: what a UI does every refresh."""
        job = self.get(job_id)
        if job is None:
            return None
        job.heartbeat()
        return job.snapshot(self.position(job))

    def active(self) -> list[Job]:
        with self._cond:
            return [j for j in self._jobs.values() if not j.done]

    def reap_abandoned(self, now: float | None = None) -> list[Job]:
        """Stop every unfinished job whose page has not polled it within the timeout."""
        now = time.monotonic() if now is None else now
        stale = [j for j in self.active() if now - j.last_polled > self.heartbeat_timeout_s]
        for job in stale:
            job.stop(f"no page polled it for {self.heartbeat_timeout_s:.0f} s (tab closed?)")
        return stale

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every job and the watchdog (tests; a process that exits needs nothing)."""
        self._closed.set()
        for job in self.active():
            job.stop("the job manager shut down")
        for job in self.active():
            job.wait(timeout)

    # ---------------------------------------------------------------- internals
    def _work(self, job: Job) -> None:
        with self._cond:
            while not job.cancel.is_set() and (self._queue[0] is not job or self._running >= self.slots):
                self._cond.wait(timeout=1.0)
            self._queue.remove(job)
            self._cond.notify_all()  # the next in line may now be first
            if job.cancel.is_set():
                job._finish("stopped")  # never started: nothing to keep
                return
            self._running += 1
            with job._lock:  # snapshot() reads them under the job's lock
                job.status = "running"
                job.started = time.monotonic()
        try:
            result = job.fn(on_progress=job.on_progress, cancel=job.cancel)
            # The result knows whether every run completed; a Stop (or the reaper) landing after
            # the last iteration sets the flag but stopped nothing. Plain callables: the flag.
            status = getattr(result, "status", None)
            if status not in ("finished", "stopped"):
                status = "stopped" if job.cancel.is_set() else "finished"
            job._finish(status, result=result)
        except BaseException as exc:  # noqa: BLE001 - the page shows it; the runs so far are in the store
            job._finish("failed", error=readable_error(exc), detail=traceback.format_exc())
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _watch(self) -> None:
        while not self._closed.wait(self.watchdog_every_s):
            self.reap_abandoned()

    def _prune(self) -> None:
        finished = [j for j in self._jobs.values() if j.done]
        for job in finished[: max(len(finished) - self.keep_finished, 0)]:
            del self._jobs[job.id]
