"""Training jobs as data in the results database: a `JobSpec` (what to train, as JSON), the small
runner interface the pages and the CLI use (submit, poll, stop), the queue-backed runner, and
`execute`, which a worker process (worker.py) or the CLI calls to train one job. Another
executor (a Ray cluster, say) can run the same specs. Never imports streamlit.
"""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol

from mnist_lab import codec
from mnist_lab.data import datasets
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError, StoreError, failure_reason, need_choice
from mnist_lab.i18n import N_, Message, render_stored
from mnist_lab.lab.experiments import CompareConfig, Runner, SweepConfig, run_compare, run_single, run_sweep
from mnist_lab.lab.lessons import LessonConfig, base_configs, plan, run_lesson
from mnist_lab.nets.model import ModelConfig, count_params, describe
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import LOCAL_WORKSPACE, ResultStore
from mnist_lab.service.access import LOCAL, Asker, allowed, may
from mnist_lab.service.estimate import eta_seconds, run_estimates
from mnist_lab.service.queue import JOB_ACTIVE, STOPPED_BY_TEACHER, STOPPED_BY_YOU, JobQueue
from mnist_lab.training.events import Event
from mnist_lab.training.loop import CancelFlag, RunResult, TrainConfig
from mnist_lab.training.preflight import check_configs, preflight, resolve_device

KINDS = ("train", "sweep", "compare", "lesson")
# The teacher's class jobs (service/class_jobs.py): no JobSpec, no runs; a zip of the class's reports or of
# the term's data, `units_done` of `runs_total` items written so far.
CLASS_KINDS = ("reports", "export")
QUEUE_LIMIT = 2  # jobs a workspace may have waiting besides the one that trains
MAX_LABEL = 200  # characters of a job's label (its title on the pages)


class QueueFullError(ValueError):
    """A workspace already has a job training and the most it may queue."""


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to train a job: its kind and its configs, whole."""

    kind: str  # one of KINDS
    train: TrainConfig
    data: DataConfig
    model: ModelConfig | None = None  # kind "train"
    sweep: SweepConfig | None = None  # kind "sweep"
    compare: CompareConfig | None = None  # kind "compare"
    lesson: LessonConfig | None = None  # kind "lesson"
    label: str = ""

    def validate(self) -> None:
        """Check the spec whole before anything acts on it (ConfigError, a ValueError, naming the
        field): its kind, its label, and each config it carries; the configs the kind does not
        use must be absent (never silently ignored)."""
        need_choice("kind", self.kind, "Job kind", KINDS, "Unknown job kind {value!r}; choose one of {options}.")
        if not isinstance(self.label, str) or len(self.label) > MAX_LABEL or not self.label.isprintable():
            raise ConfigError("label", self.label, "A job's label is at most {high} printable characters; got "
                              "{value!r}. Write a shorter one, or leave it empty.", high=MAX_LABEL)
        parts = {"train": (self.model, ModelConfig), "sweep": (self.sweep, SweepConfig),
                 "compare": (self.compare, CompareConfig), "lesson": (self.lesson, LessonConfig)}
        for kind, (part, cls) in sorted(parts.items(), key=lambda item: item[0] != self.kind):  # its own first
            field = "model" if kind == "train" else kind
            if kind == self.kind and part is None:
                raise ConfigError(field, part, "A {kind!r} job needs its {field} configuration; it was written by "
                                  "another program, or damaged.", kind=kind, field=field)
            if kind != self.kind and part is not None:
                raise ConfigError(field, part, "A {kind!r} job does not use a {field} configuration; leave it out "
                                  "(it would be ignored).", kind=self.kind, field=field)
            if part is not None and not isinstance(part, cls):
                raise ConfigError(field, part, "{field} must be a {cls} config; got {value!r}.", field=field,
                                  cls=cls.__name__)
        for field, part, cls in (("train", self.train, TrainConfig), ("data", self.data, DataConfig)):
            if not isinstance(part, cls):
                raise ConfigError(field, part, "{field} must be a {cls} config; got {value!r}.", field=field,
                                  cls=cls.__name__)
        self.data.validate()  # each config whole here: plan() fits a lesson to the dataset named
        self.train.validate()
        parts[self.kind][0].validate()
        if self.kind == "lesson" and self.data.dataset != self.lesson.resolved_dataset():  # else trained silently
            raise ConfigError("data.dataset", self.data.dataset, "The lesson is set to run on {lesson} but the job's "
                              "data is {value!r}; make them the same (lesson_spec builds both).",
                              lesson=self.lesson.resolved_dataset())

    def run_configs(self) -> list[tuple[ModelConfig, TrainConfig, DataConfig]]:
        """(network, training, data) of each distinct run the job trains, seeds aside: one, a
        sweep's valid cells, the comparison's two networks, a lesson's variants."""
        self.validate()
        if self.kind == "train":
            return [(self.model, self.train, self.data)]
        if self.kind == "sweep":
            return [(cfg, self.train, self.data) for *_, cfg in self.sweep.cells()[0]]
        if self.kind == "compare":
            return [(cfg, self.train, self.data) for cfg in self.compare.models().values()]
        return [(v.model, v.train, v.data) for v in plan(self.lesson, self.train, self.data)[0]]

    def preflight(self, remote: bool = False) -> None:
        """The one pre-flight check (training.preflight) of every run of the job, before it is
        queued or any data loads: a ConfigError names the field, the value and what to change.
        `remote`: the runs train on a Ray cluster's nodes, which resolve the device and check its
        memory themselves: this machine's memory is not asked."""
        for model_cfg, train_cfg, data_cfg in self.run_configs():
            check_run(model_cfg, train_cfg, data_cfg, remote)

    def load_data(self) -> None:
        """Load every dataset the job's runs train on (once per process: datasets.load_raw, which the
        runs then reuse), so data this machine cannot have is refused (DataUnavailableError) before
        any job or run row is written. Call after `preflight`, which loads nothing."""
        for data_cfg in {(d.dataset, d.data_dir): d for *_, d in self.run_configs()}.values():
            datasets.load_raw(data_cfg)

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        return describe(self.model) if self.kind == "train" and self.model else self.kind

    def runs_per_config(self) -> int:
        """Runs of each of `run_configs()`: its seeds (the comparison's, on both pixel orders)."""
        if self.kind == "sweep":
            return self.sweep.seeds
        if self.kind == "compare":
            return 2 * self.compare.seeds
        if self.kind == "lesson":
            return self.lesson.n_seeds()
        return 1

    def runs_total(self) -> int:
        """How many runs the job will train (1, a sweep's valid cells × seeds, 4 × seeds, or a lesson's
        variants × seeds)."""
        return len(self.run_configs()) * self.runs_per_config()

    def to_json(self) -> str:
        return codec.to_json(self)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """The spec `to_json` wrote (ConfigError, naming the field, for anything else)."""
        return codec.from_json(cls, text, "job")


def lesson_jobs(spec: JobSpec) -> list[JobSpec]:
    """One 'train' JobSpec per run of a 'lesson' job (variant × seed): what the time estimate and
    the server's limits look at."""
    variants, _ = plan(spec.lesson, spec.train, spec.data)
    return [JobSpec("train", replace(v.train, seed=s), v.data, model=v.model, label=v.label)
            for v in variants for s in range(spec.lesson.n_seeds())]


def check_run(model_cfg: ModelConfig, train_cfg: TrainConfig, data_cfg: DataConfig, remote: bool = False) -> None:
    """training.preflight for a run trained in this process; for one a Ray node trains (`remote`),
    the same checks but this machine's device memory (the node checks its own). The device's name is
    still resolved here (TrainConfig.validate): an explicit 'cuda' needs a GPU on this machine too."""
    if remote:
        check_configs(model_cfg, train_cfg, data_cfg)
    else:
        preflight(model_cfg, train_cfg, data_cfg)


def lesson_spec(cfg: LessonConfig, device: str = "auto", engine: str = "auto", data_dir: str | None = None) -> JobSpec:
    """The job that trains the lesson (kind 'lesson'), for a worker or `run_inline`."""
    train, data = base_configs(cfg, device, engine, data_dir)
    return JobSpec("lesson", train, data, lesson=cfg, label=cfg.lesson.title)


def execute(spec: JobSpec, store: ResultStore | None, cancel: CancelFlag | None = None,
            on_progress: Callable[[Event], None] | None = None, runner: Runner | None = None) -> Any:
    """Train the job in this process, every run's events recorded in `store` as they happen (one
    `Recorder`); returns the experiment's result (its `.status` is 'finished' or 'stopped').
    `runner`: what trains the runs (an executor's, e.g. service.ray_executor.RayRunner); None: this
    process, as always. Raises what the core raises (ValueError for bad input)."""
    spec.validate()
    record = Recorder(store) if store is not None else None
    if spec.kind == "train":
        if runner is None:
            return run_single(spec.model, spec.train, spec.data, record=record, on_progress=on_progress,
                              cancel=cancel, label=spec.label)
        done = runner([(spec.model, spec.train, spec.label)], spec.data, record=record, on_progress=on_progress,
                      cancel=cancel, experiment="single", group_id="")
        return done[0] if done else not_started(spec)
    more = {} if runner is None else {"runner": runner}
    if spec.kind == "sweep":
        return run_sweep(spec.sweep, spec.train, spec.data, record=record, on_progress=on_progress, cancel=cancel,
                         **more)
    if spec.kind == "lesson":
        return run_lesson(spec.lesson, spec.train, spec.data, record=record, on_progress=on_progress, cancel=cancel,
                          **more)
    return run_compare(spec.compare, spec.train, spec.data, record=record, on_progress=on_progress, cancel=cancel,
                       **more)


def not_started(spec: JobSpec) -> RunResult:
    """A 'train' job's result when a Stop came before its run began (a runner left it out): stopped,
    no run id, nothing trained."""
    return RunResult(run_id="", model_cfg=spec.model, train_cfg=spec.train, data_cfg=spec.data,
                     params=count_params(spec.model), device="", engine="", status="stopped", label=spec.label)


def run_inline(spec: JobSpec, store: ResultStore, cancel: threading.Event,
               on_progress: Callable[[Event], None] | None = None, poll_s: float = 0.25,
               executor: Callable[..., Any] | None = None, job_id: str | None = None) -> Any:
    """Train a job from this process (the CLI) as a job of the local workspace: it is listed beside
    the workers' jobs, and a stop request from another process (the Runs page) sets `cancel`.
    `job_id`: the id its row gets (the demo's examples record it first); a new one by default.
    `executor` trains it (execute's signature; None: `execute`, here; service/executors.py's Ray
    executor: on the cluster, its events recorded here, its data loaded and its device's memory checked
    on the nodes, not here)."""
    remote = bool(getattr(executor, "remote", False))
    spec.preflight(remote)
    if not remote:
        spec.load_data()  # data that cannot be had leaves no 'failed' job behind
    job_id = job_id or uuid.uuid4().hex
    queue = JobQueue(store)
    queue.start_inline(job_id, LOCAL_WORKSPACE, spec.kind, spec.title, spec.to_json(), spec.runs_total())
    done = threading.Event()

    def watch() -> None:
        while not done.wait(poll_s):
            if queue.stop_requested(job_id):
                cancel.set()
    watcher = threading.Thread(target=watch, name="mnist-lab-stop-watch", daemon=True)
    watcher.start()
    try:
        with store.context(job_id=job_id, workspace=LOCAL_WORKSPACE):
            result = (executor or execute)(spec, store, cancel=cancel, on_progress=on_progress)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        # what went wrong is what is raised: a database that cannot take the job's end either (a full
        # disk) leaves it to the next open (store.note_disk_full)
        with contextlib.suppress(StoreError):
            why = failure_reason(exc)  # the same words as its runs' (a second Ctrl-C, a full disk, ...)
            queue.finish(job_id, "interrupted" if interrupted else "failed", reason=why if interrupted else None,
                         error=None if interrupted else why)
        raise
    finally:
        done.set()
        watcher.join()
    by_ctrl_c = result.status == "stopped" and not queue.stop_requested(job_id)  # else the request says why
    queue.finish(job_id, result.status, reason=Message(N_("stopped with Ctrl-C")) if by_ctrl_c else None)
    queue.close()
    return result


# What went wrong, as the message stored with a job (its error) and with its runs (their reason):
# one function for both, errors.failure_reason; this name is the one the worker imports.
readable_error = failure_reason


# ------------------------------------------------------------------------------------ views

@dataclass(frozen=True)
class RunView:
    """One run of a job as the store has it now."""

    run_id: str
    label: str
    status: str
    step: int  # iterations stored so far
    total_steps: int
    steps_per_epoch: int
    epochs_done: int
    final_test_acc: float | None
    engine: str
    stop_reason: str  # in English (runs.csv's); `stop_message` is what a reader renders
    stop_message: str = ""  # the stored message (i18n.render_stored); '' for none


@dataclass(frozen=True)
class JobView:
    """A job and its runs, read from the store: what a page draws and polls."""

    id: str
    workspace: str
    kind: str
    label: str
    status: str  # queued, running, finished, stopped, failed or interrupted
    position: int  # 1-based place in the queue while queued, else 0
    runs: tuple[RunView, ...]  # in the order they started
    runs_total: int
    fraction: float  # of the whole job, in [0, 1]
    elapsed_s: float  # since the job left the queue
    eta_s: float | None
    error: str  # in English; `error_message` is the stored message a reader renders
    stop_reason: str  # in English; `stop_message` is the stored message a reader renders
    stop_requested: bool
    spec: JobSpec | None
    created_at: float
    error_message: str = ""
    stop_message: str = ""
    student_id: str = ""  # who submitted it: the student's 学号 and 姓名 ('' for anyone else, or before schema 5)
    student_name: str = ""
    units_done: int = 0  # a class job's items (students' reports, tables) written so far

    @property
    def active(self) -> bool:
        return self.status in JOB_ACTIVE


def _seconds_since(iso: str | None, now: float) -> float | None:
    try:
        return max(now - datetime.fromisoformat(iso).timestamp(), 0.0) if iso else None
    except ValueError:
        return None


_VIEW_COLUMNS = ("run_id", "label", "status", "started_at", "steps_per_epoch", "epochs", "epochs_done",
                 "final_test_acc", "engine", "stop_reason", "stop_reason_msg")


@lru_cache(maxsize=256)
def _spec(text: str) -> JobSpec | None:
    try:
        return JobSpec.from_json(text)
    except (ValueError, TypeError):
        return None


class _NoFigures(Exception):
    """A network of the job has no measured figure in this process yet (lru_cache keeps no exception)."""


@lru_cache(maxsize=256)
def _known_estimates(text: str) -> tuple[float, ...]:
    spec = _spec(text)
    found = run_estimates(spec, resolve_device(spec.train.device).type, measure_missing=False)
    if found is None:
        raise _NoFigures
    return tuple(found)


def _estimates(text: str) -> tuple[float, ...] | None:
    """Each run's idle-machine estimate (estimate.run_estimates) of the job written as `text`, from
    the figures this process already has (the page measured them before the job started); None
    where one is missing (nothing is measured while the job trains: that would slow it) or its
    device is not on this machine."""
    try:
        return _known_estimates(text)
    except Exception:  # noqa: BLE001 - an ETA is never worth a failed poll: the plain ETA stands in
        return None


def job_view(queue: JobQueue, row: dict) -> JobView:
    """The job `row` (a `JobQueue.jobs` row) and its runs as the store has them now."""
    now = time.time()
    if row["kind"] in CLASS_KINDS:
        return _class_job_view(queue, row, now)
    rows = queue.store.job_run_rows(row["job_id"], _VIEW_COLUMNS) if row["status"] != "queued" else []
    runs = [RunView(r["run_id"], r["label"] or "", r["status"], int(r["iterations_done"]),
                    int(r["steps_per_epoch"] or 0) * int(r["epochs"] or 0), int(r["steps_per_epoch"] or 0),
                    int(r["epochs_done"] or 0), r["final_test_acc"], r["engine"] or "", r["stop_reason"] or "",
                    r["stop_reason_msg"] or r["stop_reason"] or "")
            for r in rows]
    total = max(int(row["runs_total"] or 1), 1)
    done = sum(r.status != "running" for r in runs)
    current = next((r for r in reversed(runs) if r.status == "running" and r.total_steps), None)
    part = min(current.step / current.total_steps, 1.0) if current else 0.0
    status = row["status"]
    fraction = 1.0 if status == "finished" else min((done + part) / total, 1.0)
    started, finished = row["started_at"], row["finished_at"]
    elapsed = ((finished or now) - started) if started else 0.0
    eta = None
    spec = _spec(row["spec"])
    if status not in JOB_ACTIVE:
        eta = 0.0
    elif status == "running":
        estimates = _estimates(row["spec"]) if spec is not None else None
        first = _seconds_since(rows[0]["started_at"], now) if rows else None  # after the data loaded
        if estimates and len(estimates) == total and len(runs) <= total:  # its pace against its estimate
            progress = [1.0 if r.status != "running" else (r.step / r.total_steps if r.total_steps else 0.0)
                        for r in runs]
            eta = eta_seconds(list(estimates), progress, first or 0.0)
        elif total == 1 and current is not None and current.step:
            run_elapsed = _seconds_since(rows[-1]["started_at"], now)  # without the data loading
            if run_elapsed is not None:
                eta = run_elapsed / part * (1 - part)
        elif fraction > 0:
            eta = elapsed / fraction * (1 - fraction)
    return JobView(row["job_id"], row["workspace"], row["kind"], row["label"] or row["kind"], status,
                   queue.queue_position(row["job_id"]) if status == "queued" else 0, tuple(runs), total, fraction,
                   elapsed, eta, render_stored(row["error"], "en"), render_stored(row["stop_reason"], "en"),
                   bool(row["stop_requested"]), spec, row["created_at"] or 0.0, row["error"] or "",
                   row["stop_reason"] or "", row.get("student_id") or "", row.get("student_name") or "",
                   int(row.get("units_done") or 0))


def _class_job_view(queue: JobQueue, row: dict, now: float) -> JobView:
    """A class job (CLASS_KINDS): its progress is `units_done` of `runs_total`; it has no runs and
    its spec (students and a language, class_jobs') is never read as a JobSpec."""
    total = max(int(row["runs_total"] or 1), 1)
    units = int(row.get("units_done") or 0)
    status = row["status"]
    fraction = 1.0 if status == "finished" else min(units / total, 1.0)
    started, finished = row["started_at"], row["finished_at"]
    elapsed = ((finished or now) - started) if started else 0.0
    eta = 0.0 if status not in JOB_ACTIVE else (elapsed / fraction * (1 - fraction) if fraction > 0 else None)
    return JobView(row["job_id"], row["workspace"], row["kind"], row["label"] or row["kind"], status,
                   queue.queue_position(row["job_id"]) if status == "queued" else 0, (), total, fraction,
                   elapsed, eta, render_stored(row["error"], "en"), render_stored(row["stop_reason"], "en"),
                   bool(row["stop_requested"]), None, row["created_at"] or 0.0, row["error"] or "",
                   row["stop_reason"] or "", row.get("student_id") or "", row.get("student_name") or "", units)


# ------------------------------------------------------------------------------------ runners

class JobRunner(Protocol):
    """What a page or a tool needs to have jobs trained somewhere else."""

    def submit(self, spec: JobSpec, workspace: str | None = None) -> str: ...

    def poll(self, job_id: str) -> JobView | None: ...

    def stop(self, job_id: str, reason: Message | None = None) -> bool: ...


class StoreRunner:
    """Jobs queued in the results database and trained by worker processes that watch it
    (`python -m mnist_lab worker`, or the one the app starts), acting for `asker`: it polls,
    lists, stops and deletes only what `access.may` lets them. A workspace may have one job
    training and `queue_limit` more waiting. `queue`: the store's JobQueue when the caller keeps
    one open (the app), else one of its own. `client`: the submitting browser's address, kept on
    its jobs for the teacher. `remote`: its workers drive a Ray cluster (MNIST_LAB_EXECUTOR=ray),
    whose nodes check a job's device memory: this machine's is not asked (check_run)."""

    def __init__(self, store: ResultStore, queue_limit: int = QUEUE_LIMIT, queue: JobQueue | None = None,
                 asker: Asker = LOCAL, client: str = "", remote: bool = False):
        self.store = store
        self.queue = queue if queue is not None else JobQueue(store)
        self.queue_limit = queue_limit
        self.asker = asker
        self.client = client
        self.remote = remote

    def submit(self, spec: JobSpec, workspace: str | None = None) -> str:
        """Queue `spec` in `workspace` (the asker's own by default), owned by the asker's student
        (its 学号 and 姓名 go on the job and every run it trains)."""
        workspace = self.asker.workspace if workspace is None else workspace
        spec.preflight(self.remote)  # refused here, not by a worker after it has loaded the data
        runs_total = spec.runs_total()  # validates a sweep's cells too
        active = self.queue.jobs(workspace=workspace, statuses=JOB_ACTIVE, limit=1000)
        if len(active) >= 1 + self.queue_limit:
            raise QueueFullError(f"You already have {len(active)} jobs training or waiting (at most "
                                 f"{1 + self.queue_limit}): wait for one to finish, or stop one, then start this one.")
        job_id = uuid.uuid4().hex  # unguessable
        self.queue.submit(job_id, workspace, spec.kind, spec.title, spec.to_json(), runs_total,
                          self.asker.student_id, self.asker.name if self.asker.student_id else "", self.client)
        return job_id

    def poll(self, job_id: str) -> JobView | None:
        """The job as it is now; None when there is none, or the asker may not see it."""
        row = self.queue.job(job_id) if job_id else None
        return job_view(self.queue, row) if row and may(self.asker, "see", row) else None

    def stop(self, job_id: str, reason: Message | None = None) -> bool:
        """Ask the job to stop; False when it is no longer active or the asker may not stop it. The
        reason, unless given: "stopped by the teacher" when the teacher stops another workspace's
        job, else "stopped by you"."""
        row = self.queue.job(job_id) if job_id else None
        if not row or not may(self.asker, "stop", row):
            return False
        return self.queue.request_stop(job_id, reason or self.stop_reason(row))

    def stop_reason(self, job: dict) -> Message:
        """Why a job this asker stops ended, as its owner reads it."""
        if self.asker.shared and self.asker.teacher and job.get("workspace") != self.asker.workspace:
            return STOPPED_BY_TEACHER
        return STOPPED_BY_YOU

    def jobs(self, workspace: str | None, kinds: tuple[str, ...] | None = None, active: bool = False,
             limit: int = 20) -> list[JobView]:
        """A workspace's jobs (every workspace's for None) that the asker may see, newest first;
        only queued and running ones if `active`."""
        rows = self.queue.jobs(workspace=workspace, kinds=kinds, statuses=JOB_ACTIVE if active else None, limit=limit)
        return [job_view(self.queue, row) for row in allowed(self.asker, "see", rows)]

    def runs(self):
        """The runs the asker may see (a DataFrame: `ResultStore.visible_runs`)."""
        return self.store.visible_runs(self.asker.scope)

    def may_see_run(self, run_id: str) -> bool:
        owners = self.store.run_workspaces([run_id])
        return run_id in owners and may(self.asker, "see", owners[run_id])

    def stop_runs(self, run_ids: list[str], reason: Message | None = None) -> int:
        """Stop the jobs that train `run_ids` (a sweep or comparison stops as a whole), those the
        asker may stop; returns how many jobs were asked to stop."""
        return sum(self.stop(job_id, reason) for job_id in set(self.store.run_jobs(run_ids).values()))

    def delete_runs(self, run_ids: list[str]) -> int:
        """Delete the runs among `run_ids` that the asker may delete; returns how many were."""
        owners = self.store.run_workspaces(run_ids)
        return self.store.delete_runs([r for r in run_ids if r in owners and may(self.asker, "delete", owners[r])])

    def wait(self, job_id: str, timeout: float, every_s: float = 0.1) -> JobView | None:
        """Poll until the job ends or `timeout` seconds pass (tests, scripts); its last view."""
        deadline = time.monotonic() + timeout
        view = self.poll(job_id)
        while view is not None and view.active and time.monotonic() < deadline:
            time.sleep(every_s)
            view = self.poll(job_id)
        return view
