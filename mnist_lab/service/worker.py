"""The worker process: takes queued jobs from the results store in order and trains them, writing
progress as it goes; honours a stop request within a second; marks what it cannot finish
(stopped by a signal, its server gone) 'interrupted' with the reason. `python -m mnist_lab
worker` runs one; the app starts one per training device when none is running for its store.
With `--executor ray` it is a Ray cluster's driver: its jobs train on the cluster's nodes, and it
records what they stream back (service/executors.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mnist_lab.i18n import N_, Message
from mnist_lab.runs.store import ResultStore, owner_dead, owner_id
from mnist_lab.service import executors
from mnist_lab.service.jobs import CLASS_KINDS, JobSpec, readable_error
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.loop import device_label, warm_up
from mnist_lab.training.preflight import resolve_device

NICE_ENV = "MNIST_LAB_WORKER_NICE"  # CPU priority a server's worker gives up (POSIX nice, 0-19)
SERVER_NICE = 5
POLL_S = 0.25  # how often an idle worker looks for a job, and a busy one for a stop request
HEARTBEAT_S = 2.0


@dataclass
class WorkerConfig:
    db: str | None = None  # results database (default: the store's default path)
    device: str = "auto"
    slot: int = 0  # one worker per slot: 0 .. workers-1 (one per GPU)
    parent_pid: int | None = None  # the server that started it: when it is gone, so is the worker
    idle_exit_s: float | None = None  # exit after this long without a job (None: never)
    max_job_s: float | None = None  # stop a job that trains longer ("timed out")
    warm: bool = True  # load MNIST and warm the device up before the first job
    nice: int = 0  # lower CPU priority (POSIX nice): a server's pages stay responsive while it trains
    executor: str = "local"  # 'local': jobs train in this process; 'ray': on the cluster, this process its driver
    ray_address: str | None = None  # the cluster (HOST:PORT) for 'ray'; None: $MNIST_LAB_RAY_ADDRESS, else Ray's lookup
    # this process was started to be the worker (the CLI): a job or run still 'running' under its id
    # ('host:pid') is a predecessor's, e.g. the same pid in a restarted container, never its own
    fresh_process: bool = False


class Worker:
    def __init__(self, cfg: WorkerConfig):
        """A Ray driver joins its cluster first: one that cannot is refused (ConfigError) before the
        database is opened."""
        self.cfg = cfg
        executors.connect(cfg.executor, cfg.ray_address)  # nothing for the local executor
        self.execute = executors.executor(cfg.executor, cfg.ray_address)  # jobs.execute's signature
        self.store = ResultStore(cfg.db)
        self.queue = JobQueue(self.store)
        self.id = owner_id()
        self.cancel = threading.Event()  # the job in progress should end now
        self.quit_reason: Message | None = None  # set when the whole worker should end (a signal, the server gone)
        self.job_id = ""

    # ------------------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:
        why = (N_("the server was stopped ({signal}) while it trained") if self.cfg.parent_pid else
               N_("the worker was stopped ({signal}) while it trained"))
        self.quit_reason = self.quit_reason or Message(why, {"signal": signal.Signals(signum).name})
        self.cancel.set()

    def _parent_gone(self) -> bool:
        pid = self.cfg.parent_pid
        return pid is not None and owner_dead(f"{owner_id(pid)}")

    # ------------------------------------------------------------------------------ the loop
    def run(self, max_jobs: int | None = None) -> int:
        """Serve jobs until a signal, the parent's end, `idle_exit_s` idle or `max_jobs` jobs.
        Returns the process exit code (0; 1 when another worker already holds the slot)."""
        remote = self.cfg.executor != "local"
        device = resolve_device("cpu" if remote else self.cfg.device)  # a Ray driver trains nothing itself
        cluster = self.cfg.ray_address or os.environ.get(executors.ADDRESS_ENV) or "auto"
        where = f"Ray {cluster}" if remote else device_label(device)
        if self.cfg.nice > 0:
            _lower_priority(self.cfg.nice)
        if not self.queue.register_worker(self.id, self.cfg.slot, where, self.cfg.parent_pid):
            print(f"worker: slot {self.cfg.slot} of {self.store.path} is served by another live worker",
                  file=sys.stderr)
            return 1
        if self.cfg.fresh_process:
            self.queue.mark_interrupted(gone={self.id})
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        print(f"worker {self.id}: serving {self.store.path} on {where}", file=sys.stderr, flush=True)
        try:
            if self.cfg.warm and not remote:  # a Ray driver's runs load their data on the nodes
                self._warm(device)
            done, idle_since, beat = 0, time.monotonic(), 0.0
            while not self.quit_reason and (max_jobs is None or done < max_jobs):
                now = time.monotonic()
                if now - beat > HEARTBEAT_S:
                    self.queue.heartbeat(self.id)
                    beat = now
                if self._parent_gone():
                    break
                job = self.queue.claim(self.id)
                if job is None:
                    if self.cfg.idle_exit_s is not None and now - idle_since > self.cfg.idle_exit_s:
                        break
                    time.sleep(POLL_S)
                    continue
                self._train(job, device)
                done += 1
                idle_since = time.monotonic()
        finally:
            self.queue.unregister_worker(self.id)
        return 0

    def _warm(self, device) -> None:
        from mnist_lab.data.datasets import DataConfig
        from mnist_lab.lab.experiments import get_data

        try:
            get_data(DataConfig(), str(device))  # the default data, decoded and on the device
        except Exception as exc:  # noqa: BLE001 - a job asking for it will report the reason
            print(f"worker: MNIST not loaded ahead ({readable_error(exc)})", file=sys.stderr)
        warm_up(device)

    def _watch(self, job_id: str, started: float, done: threading.Event, limit: float | None) -> None:
        """While a job trains: read stop requests, the parent's health and the time limit `limit` (s)."""
        beat = 0.0
        while not done.wait(POLL_S):
            if self.queue.stop_requested(job_id):
                self.cancel.set()
            if self._parent_gone():
                self.quit_reason = self.quit_reason or Message(
                    N_("the server stopped (restarted or killed) while it trained"))
                self.cancel.set()
            if limit is not None and time.monotonic() - started > limit:
                self.queue.request_stop(job_id, Message(
                    N_("timed out: jobs on this server may train for at most {limit} s"), {"limit": f"{limit:.0f}"}))
                self.cancel.set()
            if time.monotonic() - beat > HEARTBEAT_S:
                self.queue.heartbeat(self.id, job_id)
                beat = time.monotonic()

    def _train(self, job: dict, device) -> None:
        job_id = job["job_id"]
        self.cancel.clear()
        done = threading.Event()
        limit = job_time_limit(self.cfg.max_job_s, job["kind"])
        watcher = threading.Thread(target=self._watch, args=(job_id, time.monotonic(), done, limit),
                                   name="mnist-lab-stop-watch", daemon=True)
        watcher.start()
        try:
            if job["kind"] in CLASS_KINDS:  # the teacher's zip of reports or of the term's data
                from mnist_lab.service.class_jobs import execute_class_job  # python-docx and the report's figures

                status = execute_class_job(job, self.store, self.queue, self.cancel)
            else:
                status = self._execute(job, device)
        except Exception as exc:  # noqa: BLE001 - the page shows it; the runs so far are in the store
            self.queue.finish(job_id, "failed", error=readable_error(exc))
            print(f"worker: job {job_id} failed: {exc!r}", file=sys.stderr, flush=True)
        else:
            if self.quit_reason and status != "finished":
                self.queue.finish(job_id, "interrupted", reason=self.quit_reason)
            else:
                self.queue.finish(job_id, status)
        finally:
            done.set()
            watcher.join()
            self.queue.heartbeat(self.id)

    def _execute(self, job: dict, device) -> str:
        """Train the training job `job` (its JobSpec) with this worker's executor (in this process, or
        on the Ray cluster); its status. Its runs get the job's store context either way."""
        spec = JobSpec.from_json(job["spec"])
        if spec.train.device == "auto" and self.cfg.executor == "local":  # this worker's device (a node: its own)
            from dataclasses import replace

            spec = replace(spec, train=replace(spec.train, device=str(device)))
        with self.store.context(job_id=job["job_id"], workspace=job["workspace"],
                                student_id=job.get("student_id") or "", student_name=job.get("student_name") or ""):
            return self.execute(spec, self.store, cancel=self.cancel).status


def job_time_limit(max_job_s: float | None, kind: str) -> float | None:
    """How long a job of `kind` may run (s; None: no limit): the server's limit on a training job
    (max_job_s, meant for students' training), none for the teacher's class jobs (sixty reports
    take minutes, and stopping them leaves nothing)."""
    return None if kind in CLASS_KINDS else max_job_s


def _lower_priority(nice: int) -> None:
    import psutil

    try:
        if hasattr(psutil, "BELOW_NORMAL_PRIORITY_CLASS"):  # Windows
            psutil.Process().nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
        else:
            psutil.Process().nice(min(psutil.Process().nice() + nice, 19))
    except psutil.Error:
        pass  # not allowed here: train at the same priority


def spawn_worker(db: str | Path, slot: int = 0, device: str = "auto", parent_pid: int | None = None,
                 idle_exit_s: float | None = None, max_job_s: float | None = None,
                 log: str | Path | None = None, executor: str | None = None,
                 ray_address: str | None = None) -> subprocess.Popen:
    """Start `python -m mnist_lab worker` for the store `db` as a child process (the app's way); with
    `executor` 'ray' a driver of the cluster at `ray_address` (None: the child reads the environment)."""
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "mnist_lab", "worker", "--db", str(db), "--slot", str(slot), "--device", device]
    if parent_pid is not None:  # started by a server: end with it, and leave its pages the CPU they need
        cmd += ["--parent-pid", str(parent_pid), "--nice", os.environ.get(NICE_ENV, str(SERVER_NICE))]
    if idle_exit_s is not None:
        cmd += ["--idle-exit", str(idle_exit_s)]
    if max_job_s is not None:
        cmd += ["--max-job-seconds", str(max_job_s)]
    if os.environ.get("MNIST_LAB_WORKER_WARM", "1") == "0":
        cmd += ["--no-warm"]
    if executor is not None:
        cmd += ["--executor", executor]
    if ray_address is not None:
        cmd += ["--ray-address", ray_address]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it open
    try:
        return subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()
