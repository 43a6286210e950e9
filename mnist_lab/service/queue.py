"""The job queue and the worker registry: the `jobs` and `workers` tables of the results
database, through which the app, the CLI and worker processes submit, claim, follow and stop
training. Their own connection to the store's file (runs/schema.py owns every table); what a
job's end means for its runs is asked of the ResultStore, which alone writes runs.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection, Iterable

from mnist_lab.errors import DISK_FULL_REASON
from mnist_lab.i18n import N_, Message, to_stored
from mnist_lab.runs.store import ResultStore, cut_by_full_disk, disk_full_since, explained, owner_dead, owner_id

JOB_COLUMNS = ["job_id", "seq", "workspace", "kind", "label", "spec", "status", "runs_total", "stop_requested",
               "stop_reason", "error", "created_at", "started_at", "finished_at", "worker",
               # who submitted it (schema 5; '' before): the student's 学号 and 姓名, the browser's address
               "student_id", "student_name", "client",
               "units_done"]  # a class job's progress (schema 6): students' reports or tables written
_OWNER_READ = ["COALESCE(student_id, '')", "COALESCE(student_name, '')", "COALESCE(client, '')",
               "COALESCE(units_done, 0)"]
_SELECT_JOBS = f"SELECT {', '.join([*JOB_COLUMNS[:-4], *_OWNER_READ])} FROM jobs"
JOB_ACTIVE = ("queued", "running")
# A job's `stop_reason` and `error` are stored messages (i18n.to_stored); a reader renders them.
STOPPED_BY_YOU = Message(N_("stopped by you"))
STOPPED_BY_TEACHER = Message(N_("stopped by the teacher"))  # a teacher stopped another workspace's job
WORKER_COLUMNS = ["worker", "slot", "device", "parent_pid", "started_at", "heartbeat_at", "job_id"]
WORKER_STALE_S = 30.0  # a worker that has not written its heartbeat for this long is gone


class JobQueue:
    """Jobs and workers in the results database `store` opened (and brought to the current
    schema). Safe to share between threads and processes; every write is its own transaction."""

    @explained
    def __init__(self, store: ResultStore):
        self.store = store
        self.path = store.path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self.mark_interrupted()

    def close(self) -> None:
        self._conn.close()

    @explained
    def _write(self, sql: str, params: tuple = ()) -> int:
        with self._lock, self._conn:
            return self._conn.execute(sql, params).rowcount

    # ------------------------------------------------------------------------------ jobs
    @explained
    def submit(self, job_id: str, workspace: str, kind: str, label: str, spec: str, runs_total: int,
               student_id: str = "", student_name: str = "", client: str = "") -> None:
        """Queue a job (`spec`: its configs as JSON) for `workspace` and the student who submitted
        it from `client`; workers take queued jobs in `seq` order."""
        self._write("INSERT INTO jobs (job_id, seq, workspace, kind, label, spec, status, runs_total, created_at, "
                    "student_id, student_name, client) "
                    "VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                    (job_id, workspace, kind, label, spec, runs_total, time.time(), student_id, student_name, client))

    @explained
    def start_inline(self, job_id: str, workspace: str, kind: str, label: str, spec: str, runs_total: int) -> None:
        """A job that this process trains itself (the CLI): 'running' at once, owned by this process."""
        self._write("INSERT INTO jobs (job_id, seq, workspace, kind, label, spec, status, runs_total, created_at, "
                    "started_at, worker) VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?, ?, ?, ?, "
                    "'running', ?, ?, ?, ?)",
                    (job_id, workspace, kind, label, spec, runs_total, time.time(), time.time(), owner_id()))

    @explained
    def claim(self, worker: str) -> dict | None:
        """Atomically take the oldest queued job whose workspace has nothing running (one job per
        workspace at a time, however many workers), mark it 'running' for `worker`; None if none."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # no other process claims between the read and the write
            try:
                row = self._conn.execute(
                    f"{_SELECT_JOBS} WHERE status = 'queued' AND workspace NOT IN "
                    "(SELECT workspace FROM jobs WHERE status = 'running') ORDER BY seq LIMIT 1").fetchone()
                if row is not None:
                    self._conn.execute("UPDATE jobs SET status = 'running', started_at = ?, worker = ? "
                                       "WHERE job_id = ?", (time.time(), worker, row[0]))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        if row is None:
            return None
        job = dict(zip(JOB_COLUMNS, row))
        job.update(status="running", worker=worker)
        return job

    @explained
    def request_stop(self, job_id: str, reason: Message = STOPPED_BY_YOU) -> bool:
        """Ask a job to stop, saying why: a queued one ends at once, a running one at its next
        iteration (its worker reads the request). Returns whether the job was still active."""
        why = to_stored(reason)
        with self._lock, self._conn:
            n = self._conn.execute("UPDATE jobs SET status = 'stopped', stop_reason = ?, stop_requested = 1, "
                                   "finished_at = ? WHERE job_id = ? AND status = 'queued'",
                                   (why, time.time(), job_id)).rowcount
            n += self._conn.execute("UPDATE jobs SET stop_requested = 1, stop_reason = ? WHERE job_id = ? AND "
                                    "status = 'running' AND stop_requested = 0", (why, job_id)).rowcount
        return n > 0

    @explained
    def stop_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT stop_requested FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    @explained
    def finish(self, job_id: str, status: str, reason: Message | None = None, error: Message | None = None) -> None:
        """End a job, and give its runs that ended early (stopped, interrupted) the job's reason
        (the one given here, else the stop request's)."""
        given = to_stored(reason) if reason is not None else ""
        failed = to_stored(error) if error is not None else ""
        with self._lock, self._conn:
            self._conn.execute("UPDATE jobs SET status = ?, stop_reason = CASE WHEN ? != '' THEN ? ELSE stop_reason "
                               "END, error = ?, finished_at = ? WHERE job_id = ? AND status IN ('queued', 'running')",
                               (status, given, given, failed, time.time(), job_id))
            row = self._conn.execute("SELECT stop_reason, worker FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        reason = row[0] if row and row[0] else given
        self.store.end_job_runs(job_id, status, failed or reason if status == "failed" else reason)
        if row and row[1] == owner_id():  # this process's own job is recorded: a full disk it met is settled
            self.store.forget_disk_full()

    def set_units_done(self, job_id: str, n: int) -> None:
        """A class job's progress: `n` of its `runs_total` items (reports, tables) written."""
        self._write("UPDATE jobs SET units_done = ? WHERE job_id = ?", (int(n), job_id))

    @explained
    def delete_jobs(self, job_ids: Iterable[str]) -> int:
        """Remove the rows of `job_ids` (the end of term; their runs are the store's to delete); how many."""
        ids = list(job_ids)
        if not ids:
            return 0
        return self._write(f"DELETE FROM jobs WHERE job_id IN ({', '.join('?' for _ in ids)})", tuple(ids))

    @explained
    def jobs(self, workspace: str | None = None, job_ids: Iterable[str] | None = None,
             kinds: Iterable[str] | None = None, statuses: Iterable[str] | None = None, limit: int = 50) -> list[dict]:
        """Jobs newest first, optionally of one workspace, some ids, kinds or statuses."""
        where, params = [], []
        if workspace is not None:
            where.append("workspace = ?")
            params.append(workspace)
        for column, values in (("job_id", job_ids), ("kind", kinds), ("status", statuses)):
            if values is not None:
                values = list(values)
                where.append(f"{column} IN ({', '.join('?' for _ in values) or 'NULL'})")
                params += values
        sql = _SELECT_JOBS
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
        return [dict(zip(JOB_COLUMNS, r)) for r in rows]

    def job(self, job_id: str) -> dict | None:
        found = self.jobs(job_ids=[job_id], limit=1)
        return found[0] if found else None

    @explained
    def queue_position(self, job_id: str) -> int:
        """1-based place among the queued jobs (0 when not queued)."""
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq <= "
                                     "(SELECT seq FROM jobs WHERE job_id = ? AND status = 'queued')",
                                     (job_id,)).fetchone()
        return int(row[0]) if row else 0

    @explained
    def mark_interrupted(self, gone: Collection[str] = ()) -> int:
        """Mark 'interrupted' every job still 'running' whose worker, on this machine, no longer
        exists (killed, crashed, machine restarted), or is one of `gone` (a process just started, whose
        id a predecessor had: a restarted container reuses pids), its runs with it and the reason ('failed',
        DISK_FULL_REASON, where that worker found the disk full after the job started:
        store.note_disk_full); then every
        run left running by a dead process (ResultStore.mark_interrupted). Returns how many runs
        changed."""
        with self._lock:
            jobs = self._conn.execute("SELECT job_id, worker, started_at FROM jobs WHERE status = 'running'").fetchall()
        full = disk_full_since(self.path)  # those that found the disk full could not end their job
        for job_id, worker, started in jobs:
            dead = owner_dead(worker) or worker in gone
            if dead and cut_by_full_disk(full, worker, started):
                self.finish(job_id, "failed", error=Message(DISK_FULL_REASON))
            elif dead:
                self.finish(job_id, "interrupted", reason=Message(
                    N_("the worker process ({worker}) ended before the job finished (killed or crashed)"),
                    {"worker": worker}))
        return self.store.mark_interrupted(gone)

    # ------------------------------------------------------------------------------ workers
    @explained
    def register_worker(self, worker: str, slot: int, device: str, parent_pid: int | None) -> bool:
        """Claim worker slot `slot` for `worker`, unless a live worker already holds it."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = self._conn.execute("SELECT worker, heartbeat_at FROM workers WHERE slot = ?", (slot,)).fetchall()
                live = [w for w, beat in rows if w != worker and not owner_dead(w)
                        and time.time() - (beat or 0) < WORKER_STALE_S]
                if not live:
                    self._conn.execute("DELETE FROM workers WHERE slot = ?", (slot,))
                    self._conn.execute("INSERT INTO workers VALUES (?, ?, ?, ?, ?, ?, '')",
                                       (worker, slot, device, parent_pid, time.time(), time.time()))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return not live

    def heartbeat(self, worker: str, job_id: str = "") -> None:
        self._write("UPDATE workers SET heartbeat_at = ?, job_id = ? WHERE worker = ?", (time.time(), job_id, worker))

    def unregister_worker(self, worker: str) -> None:
        self._write("DELETE FROM workers WHERE worker = ?", (worker,))

    @explained
    def live_workers(self) -> list[dict]:
        """Workers whose process is alive (on this machine) and whose heartbeat is recent."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {', '.join(WORKER_COLUMNS)} FROM workers").fetchall()
        now = time.time()
        return [dict(zip(WORKER_COLUMNS, r)) for r in rows
                if not owner_dead(r[0]) and now - (r[5] or 0) < WORKER_STALE_S]
