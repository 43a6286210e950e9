"""Results: tidy tables (runs, epochs, iterations) in SQLite, written as runs progress so an
interrupted run keeps what it finished, exported to CSV, with each run's kept weights beside
them. The job queue and the worker registry over the same file are service/queue.py's.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import glob
import os
import platform
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import fields
from datetime import datetime
from pathlib import Path

import pandas as pd

from mnist_lab import codec
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import (
    DISK_FULL_REASON,
    STORE_FULL,
    STORE_NOT_A_FILE,
    STORE_READ_ONLY,
    STORE_UNUSABLE,
    WEIGHTS_FULL,
    WEIGHTS_READ_ONLY,
    WEIGHTS_UNUSABLE,
    StoreError,
    writing,
)
from mnist_lab.i18n import N_, SEPARATOR, Message, render_stored, to_stored
from mnist_lab.nets.model import ModelConfig
from mnist_lab.paths import csv_text, default_db_path, write_files
from mnist_lab.runs import schema
from mnist_lab.training.loop import EpochMetrics, TrainConfig, label_parts

IDENTITY_COLUMNS = ["run_id", "experiment", "group_id", "label", "status", "started_at", "seconds", "device",
                    "engine", "params", "seed", "final_test_acc", "epochs_done", "diverged_at", "message"]
# Config fields are stored under their own names, except where the name already holds what
# actually happened: the engine and device a run asked for, beside the ones it got.
RENAMED = {"engine": "engine_requested", "device": "device_requested"}


def _config_columns(cls, derived: dict[str, str] | None = None) -> list[str]:
    """Every field of a config dataclass, as a column (a new field is one more column, no edit
    here); `derived` read-only values are inserted after the field named as their value."""
    out = []
    for f in fields(cls):
        if RENAMED.get(f.name, f.name) in IDENTITY_COLUMNS:  # the seed is one already
            continue
        out.append(RENAMED.get(f.name, f.name))
        out += [name for name, after in (derived or {}).items() if after == f.name]
    return out


RUN_COLUMNS = [
    *IDENTITY_COLUMNS,
    *_config_columns(ModelConfig, {"conv_layers": "kind"}),  # conv_layers: convolutions in the feature blocks
    *_config_columns(TrainConfig),
    *_config_columns(DataConfig, {"data_source": "data_dir"}),
    "torch_version", "torchvision_version", "python_version", "mnist_lab_version",
    # why a run ended early ("stopped by you", "the worker was killed", ...), and its epoch length
    "stop_reason", "steps_per_epoch",
]
EPOCH_COLUMNS = ["run_id", "epoch", "train_loss", "test_loss", "test_acc", "seconds"]
ITERATION_COLUMNS = ["run_id", "epoch", "iteration", "loss"]

# Not exported: which process writes a running run ("host:pid"), so a run left 'running' by a
# process that died can be told apart from one still training elsewhere; the job that trained
# it and that job's workspace (who may see, stop and delete it on a shared server).
_OWNER = "owner"
_PRIVATE = (_OWNER, "job_id", "workspace")
# Not exported either: the label and the stop reason as stored messages (i18n.to_stored), which
# each reader renders in their language; `label` and `stop_reason` keep their English for runs.csv.
# NULL in a run of an earlier version: its English is shown as it is.
MESSAGES = ("label_msg", "stop_reason_msg", "message_msg", "data_source_msg")
VISIBLE_EXTRA = ["workspace", "job_id", *MESSAGES]  # visible_runs' columns beyond RUN_COLUMNS (not in runs.csv)
LOCAL_WORKSPACE = "local"  # the one user of a local install; CLI runs belong to it
# Who a run belongs to, for a teacher to read (schema 5): the signed-in student's 学号 and 姓名,
# written from its job; '' for a run of the local user, the teacher, a visitor or an earlier
# version (an unnamed workspace). runs.csv ends with them.
OWNER_COLUMNS = ["student_id", "student_name"]
CSV_COLUMNS = [*RUN_COLUMNS, *OWNER_COLUMNS]  # runs.csv's columns, in order
_OWNER_READ = [f"COALESCE({c}, '') AS {c}" for c in OWNER_COLUMNS]



def run_row(run_id: str, model_cfg: ModelConfig, train_cfg: TrainConfig, data_cfg: DataConfig, *,
            experiment: str = "single", group_id: str = "", label: str | Message | list[Message] = "",
            status: str = "running",
            started_at: str = "", seconds: float = 0.0, device: str = "", engine: str = "", params: int = 0,
            final_test_acc: float | None = None, epochs_done: int = 0, data_source: str = "", data_source_msg: str = "",
            steps_per_epoch: int = 0, stop_reason: str = "", diverged_at: int | None = None,
            message: str = "") -> dict:
    """One `runs` row: identity, outcome, every config field (tuples as 'a-b', block lists as
    JSON), library versions; and `label_msg`, the label as a stored message. `label` is a Message
    (or its parts), or text (a lesson variant's msgid, a cell's name: looked up in the catalog, else shown as
    given); none: the run's default label (`label_parts`)."""
    import torch

    from mnist_lab import __version__

    # every key here is a column: RUN_COLUMNS derives from the same dataclass fields
    row = {**codec.to_row(data_cfg, RENAMED), **codec.to_row(train_cfg, RENAMED), **codec.to_row(model_cfg, RENAMED)}
    if isinstance(label, Message):
        parts, english = [label], str(label)
    elif isinstance(label, list) and label:  # a label's parts, as to_stored keeps them
        parts, english = label, SEPARATOR.join(str(part) for part in label)
    elif label:  # a msgid or a person's words, never formatted (it may hold braces)
        parts, english = [Message(label)], label
    else:
        parts = label_parts(model_cfg, data_cfg)
        english = SEPARATOR.join(str(part) for part in parts)
    row.update(run_id=run_id, experiment=experiment, group_id=group_id, label=english, label_msg=to_stored(parts),
               status=status, started_at=started_at, seconds=seconds, device=device, engine=engine,
               params=params, seed=train_cfg.seed, final_test_acc=final_test_acc, epochs_done=epochs_done,
               diverged_at=diverged_at, message=message, steps_per_epoch=steps_per_epoch, stop_reason=stop_reason,
               conv_layers=model_cfg.conv_layers, data_source=data_source, data_source_msg=data_source_msg or None,
               torch_version=torch.__version__,
               torchvision_version=_torchvision_version(),
               python_version=platform.python_version(), mnist_lab_version=__version__)
    return {c: row.get(c) for c in (*RUN_COLUMNS, "label_msg", "data_source_msg")}


def _torchvision_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchvision")
    except PackageNotFoundError:
        return ""


def _process_alive(pid: str | int) -> bool:
    import psutil  # not os.kill(pid, 0): on Windows that terminates the process

    try:
        pid = int(pid)
    except ValueError:
        return True  # nothing we can tell: assume it still trains
    if not psutil.pid_exists(pid):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # exited, not yet reaped by its parent
    except psutil.Error:
        return True


def owner_id(pid: int | None = None) -> str:
    """'host:pid' of a process, as written in runs.owner, jobs.worker and workers.worker."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def owner_dead(owner: str | None) -> bool:
    """Whether the process `owner` ('host:pid') is known to be gone: on this machine and not alive.
    Processes of other machines, and rows with no owner, are never called dead."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and not _process_alive(pid)


# SQLite's primary result codes (sqlite3.h) that say what is wrong with the file, and the same by
# SQLite's own words (sqlite3_errstr) for an error that carries no code.
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, \
    SQLITE_CANTOPEN, SQLITE_NOTADB = 3, 5, 6, 7, 8, 10, 11, 13, 14, 26
_CODE_OF_WORDS = {"database or disk is full": SQLITE_FULL, "attempt to write a readonly database": SQLITE_READONLY,
                  "file is not a database": SQLITE_NOTADB, "database disk image is malformed": SQLITE_CORRUPT,
                  "unable to open database file": SQLITE_CANTOPEN, "disk I/O error": SQLITE_IOERR,
                  "database is locked": SQLITE_BUSY}
LOW_SPACE = 1 << 20  # bytes free below which a failed write is put down to a full disk
NOT_A_FILE = N_("a device, pipe or kernel file, not a file on disk")


def _sqlite_code(exc: BaseException | None) -> int | None:
    """The primary SQLite result code of `exc` or of what it wraps (pandas wraps read errors)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if isinstance(code, int):
                return code & 0xFF  # an extended code's low byte is its primary code
            return next((c for words, c in _CODE_OF_WORDS.items() if words in str(exc)), None)
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _nearest_folder(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _read_only(path: Path) -> bool:
    """The file, or the folder its journal goes in, cannot be written here (its permissions, a
    read-only mount: os.access says so even to root)."""
    return (path.exists() and not os.access(path, os.W_OK)) or not os.access(_nearest_folder(path), os.W_OK)


def _low_space(path: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(_nearest_folder(path)).free < LOW_SPACE
    except OSError:
        return False


def special_file(path: Path) -> bool:
    """Not a file on disk, though it may look like one: a device, a pipe, or a kernel file such as
    /proc/version (size 0, yet it reads text)."""
    try:
        if path.is_dir() or not path.exists():
            return False
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return True
        if st.st_size == 0:
            with open(path, "rb") as f:
                return bool(f.read(1))
    except OSError:
        return False
    return False


def store_failure(path: str | Path, exc: BaseException) -> StoreError:
    """What a failure of the database file is, as the StoreError that says what to do: a full disk
    (free space; the file is healthy), a read-only file or folder, a device or kernel file, or a
    damaged file (only then: move it aside). SQLite's result code decides where it gives one."""
    path = Path(path)
    detail = getattr(exc, "strerror", None) or str(exc).rpartition(": ")[2] or str(exc)
    code = _sqlite_code(exc)
    if special_file(path):
        return StoreError(path, NOT_A_FILE, STORE_NOT_A_FILE)
    if code is None and isinstance(exc, OSError):  # the folder, the weights beside it
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(path, detail, STORE_FULL)
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(path, detail, STORE_READ_ONLY)
        return StoreError(path, detail, STORE_UNUSABLE)
    if code == SQLITE_FULL:
        return StoreError(path, detail, STORE_FULL)
    if code in (SQLITE_READONLY, SQLITE_PERM) or (code in (SQLITE_CANTOPEN, SQLITE_IOERR) and _read_only(path)):
        return StoreError(path, detail, STORE_READ_ONLY)
    if code in (SQLITE_CANTOPEN, SQLITE_IOERR):
        return StoreError(path, detail, STORE_FULL if _low_space(path) else STORE_UNUSABLE)
    if code in (SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM):  # a healthy file that another process holds, say
        return StoreError(path, detail, STORE_UNUSABLE)
    return StoreError(path, detail)  # not a database, malformed, not our tables: damaged; move it aside


def weights_failure(folder: str | Path, exc: OSError) -> StoreError:
    """An OSError of writing a run's weights into `folder` (<db>.weights/), named as the weights
    folder's, not the database's: a full disk, a read-only folder, or the system's own words."""
    detail = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(folder, detail, WEIGHTS_FULL)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreError(folder, detail, WEIGHTS_READ_ONLY)
    return StoreError(folder, detail, WEIGHTS_UNUSABLE)


# A process whose write found the disk full leaves an empty marker beside the database (creating
# an empty file needs no data blocks, so it works on a full disk), named after it:
# `<db>.disk-full.<pid>@<host>`, its time (mtime) the last time it did. If it could not end its runs
# and job itself (their rows did not fit either), the next process to open the store, once that
# process is gone, ends them 'failed' with DISK_FULL_REASON instead of blaming a killed worker:
# only those that started before that time (a run or job started later, by a process that went on
# once there was space again, or by another process given the same pid, was not cut short by it).
# The marker goes when nothing of that process is left running, or at its next successful write to
# the database once it has ended every run and job of its own that was running then.
_FULL_MARK = ".disk-full."
# A file's time is the kernel's coarse clock (a tick, up to ~10 ms, behind time.time() on Linux; 2 s
# steps on FAT): a run or job that started up to this long after its marker's time counts as before it.
_MARK_TIME_SLACK_S = 2.0


def _full_marker(db: Path, owner: str) -> Path:
    host, _, pid = owner.rpartition(":")
    return db.with_name(f"{db.name}{_FULL_MARK}{pid}@{host}")


def note_disk_full(db: str | Path, owner: str | None = None) -> None:
    """Say, beside the database, that this process (`owner`) found the disk full, now."""
    with contextlib.suppress(OSError):
        _full_marker(Path(db), owner or owner_id()).touch()


def disk_full_since(db: str | Path) -> dict[str, float]:
    """The processes ('host:pid') that found the disk full while writing `db` and may have left
    runs or a job unended, each with when it last did (seconds since the epoch)."""
    db = Path(db)
    found: dict[str, float] = {}
    try:
        markers = list(db.parent.glob(f"{glob.escape(db.name)}{_FULL_MARK}*"))
    except OSError:
        return found
    for marker in markers:
        pid, _, host = marker.name[len(db.name) + len(_FULL_MARK):].partition("@")
        if pid.isdigit() and host:
            with contextlib.suppress(OSError):
                found[f"{host}:{pid}"] = marker.stat().st_mtime
    return found


def disk_full_owners(db: str | Path) -> set[str]:
    """The processes ('host:pid') with a full-disk marker beside `db` (disk_full_since)."""
    return set(disk_full_since(db))


def cut_by_full_disk(full: dict[str, float], owner: str | None, started: object) -> bool:
    """Whether a run or job of `owner` that started at `started` (an ISO 8601 time, as runs store
    it, or seconds since the epoch, as jobs do) and was left running is put down to the full disk
    its process found: it has a marker, and the run or job started before it (within the slack of a
    file's time, _MARK_TIME_SLACK_S). A start that cannot be read (an earlier version's) is."""
    if owner not in full:
        return False
    try:
        when = datetime.fromisoformat(started).timestamp() if isinstance(started, str) else float(started)
    except (TypeError, ValueError, OverflowError):
        return True
    return when <= full[owner] + _MARK_TIME_SLACK_S


def explained(method: Callable) -> Callable:
    """Any failure of the database file (a full disk, a read-only file or folder, a device, a
    damaged file, a folder that cannot be made) as one StoreError naming the file and what to do
    (store_failure); a full disk also leaves this process's marker (note_disk_full)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            result = method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:  # pandas' DatabaseError, which wraps read errors, is an OSError
            path = getattr(self, "path", "?")
            error = store_failure(path, exc)
            if error.disk_full and path != "?":
                note_disk_full(path)
                _FULL_NOTED.add(str(path))
            raise error from None
        if _FULL_NOTED and str(getattr(self, "path", "?")) in _FULL_NOTED and method.__name__ in _WRITES:
            settle_disk_full(self)
        return result
    return run


# What this process found full (database paths, as strings), until a later write there succeeds
# and it has nothing left unended (settle_disk_full); the methods whose success tells.
_FULL_NOTED: set[str] = set()
_WRITES = {"_write", "add_epoch", "end_job_runs", "finish", "delete_runs"}


def settle_disk_full(store) -> None:
    """A write of this process to `store` succeeded after it found the disk full: once no run or
    job of its own that started before its marker is still running (their ends were recorded), the
    marker goes, so that a later kill of this process is not put down to that full disk."""
    path = Path(store.path)
    owner = owner_id()
    marker = _full_marker(path, owner)
    try:
        since = marker.stat().st_mtime
    except OSError:
        _FULL_NOTED.discard(str(path))
        return
    conn = getattr(store, "_conn", None)
    if conn is None:
        return
    try:
        with store._lock:
            runs = conn.execute(f"SELECT started_at FROM runs WHERE status = 'running' AND {_OWNER} = ?",
                                (owner,)).fetchall()
            jobs = conn.execute("SELECT started_at FROM jobs WHERE status = 'running' AND worker = ?",
                                (owner,)).fetchall()
    except sqlite3.Error:
        return
    if any(cut_by_full_disk({owner: since}, owner, started) for (started,) in (*runs, *jobs)):
        return
    with contextlib.suppress(OSError):
        marker.unlink(missing_ok=True)
    _FULL_NOTED.discard(str(path))


def _check_place(path: Path) -> None:
    if path.is_dir():
        raise StoreError(path, "it is a directory", "The results database {path} is a directory, not a file: give a "
                         "file name with --db or MNIST_LAB_DB, e.g. {path}/results.sqlite.")
    if path.parent.exists() and not path.parent.is_dir():
        raise StoreError(path, f"{path.parent} is a file", "The results database {path} cannot be created ({detail}): "
                         "choose another file with --db or MNIST_LAB_DB.")
    if special_file(path):
        raise StoreError(path, NOT_A_FILE, STORE_NOT_A_FILE)


def _quick_check(conn: sqlite3.Connection) -> None:
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError(problems[0])


BUSY_TIMEOUT_S = 30  # how long a write waits for another process's write to end
COMPACT_WAIT_S = 10.0  # how long compact() waits, in all, for other connections' reads to end
COMPACT_BUSY = N_("The results database {path} could not be compacted: another program is reading it ({detail}). "
                  "Close it (a database browser, a backup, another server on this file) and try again.")


class ResultStore:
    """SQLite (WAL) store of runs, epochs and iterations. Safe to share between
    threads and processes; every write is its own transaction, so a killed process loses at most
    the write in flight."""

    def __init__(self, path: str | Path | None = None):
        """Open (or create) the database and check it (PRAGMA quick_check): a damaged, full or
        read-only file raises StoreError naming it and what to do, before anything trains. A file
        this open created and could not set up is removed: a refusal leaves no 0-byte database."""
        self.path = Path(path) if path else default_db_path()
        new = not os.path.lexists(self.path)
        try:
            self._open()
        except BaseException:
            if new:
                self._remove_unborn()
            raise

    def _remove_unborn(self) -> None:
        with contextlib.suppress(AttributeError, sqlite3.Error):
            self._conn.close()
        for leftover in (*(Path(f"{self.path}{end}") for end in ("", "-wal", "-shm", "-journal")),
                         _full_marker(self.path, owner_id())):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)

    @explained
    def _open(self) -> None:
        _check_place(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._context: dict[str, str] = {}  # job_id / workspace written into the runs started
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            _quick_check(self._conn)
        schema.migrate(self._conn, self.path)  # an older file is brought up to date, a newer one refused
        self.mark_interrupted()

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------------------ writes
    @explained
    def _write(self, sql: str, rows: Iterable[tuple] | tuple = ()) -> None:
        with self._lock, self._conn:
            if isinstance(rows, tuple):
                self._conn.execute(sql, rows)
            else:
                self._conn.executemany(sql, rows)

    @contextlib.contextmanager
    def context(self, job_id: str = "", workspace: str = LOCAL_WORKSPACE, student_id: str = "",
                student_name: str = ""):
        """Runs started inside belong to `job_id` and `workspace`, and to the student who submitted
        the job (a worker sets it per job from the job's row)."""
        previous = self._context
        self._context = dict(job_id=job_id, workspace=workspace, student_id=student_id, student_name=student_name)
        try:
            yield self
        finally:
            self._context = previous

    def start_run(self, row: dict) -> None:
        cols = ", ".join([*RUN_COLUMNS, *MESSAGES, *_PRIVATE, *OWNER_COLUMNS])
        marks = ", ".join("?" for _ in range(len(RUN_COLUMNS) + len(MESSAGES) + len(_PRIVATE) + len(OWNER_COLUMNS)))
        ctx = self._context
        self._write(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})",
                    (*(row.get(c) for c in (*RUN_COLUMNS, *MESSAGES)), owner_id(), ctx.get("job_id", ""),
                     ctx.get("workspace", LOCAL_WORKSPACE), ctx.get("student_id") or None,
                     ctx.get("student_name") or None))

    @explained
    def mark_interrupted(self, gone: Collection[str] = ()) -> int:
        """End every run still 'running' whose process, on this machine, no longer exists (or is one
        of `gone`: a process just started under a predecessor's id), with the
        reason: 'interrupted' (killed, crashed, machine restarted), or 'failed' with
        DISK_FULL_REASON when that process found the disk full (its marker, note_disk_full) and
        could not record its end itself. A run keeps what it finished and can be deleted. Runs of
        live processes and of other machines are left alone. Returns how many runs changed. (A job's
        dead worker is the queue's: JobQueue.mark_interrupted.)"""
        with self._lock:
            runs = self._conn.execute(f"SELECT run_id, {_OWNER} FROM runs WHERE status = 'running'").fetchall()
        dead = [(run_id, owner) for run_id, owner in runs if owner_dead(owner) or owner in gone]
        with self._lock:
            started = dict(self._conn.execute("SELECT run_id, started_at FROM runs WHERE status = 'running'"))
        full = disk_full_since(self.path)
        ends = [("failed", Message(DISK_FULL_REASON)) if cut_by_full_disk(full, owner, started.get(run_id)) else
                ("interrupted", Message(N_("its process ({owner}) ended before the run finished (killed or crashed)"),
                                        {"owner": owner}))
                for run_id, owner in dead]
        # a reason it already has is kept. Any reader of the store ends a dead process's runs at once
        # (a killed CLI run, a killed worker's run); the queue then ends their job with its own reason
        # (JobQueue.mark_interrupted), and the run keeps the one said first: both name the process
        self._write("UPDATE runs SET status = ?, "
                    "stop_reason_msg = CASE WHEN COALESCE(stop_reason, '') = '' THEN ? ELSE stop_reason_msg END, "
                    "stop_reason = CASE WHEN COALESCE(stop_reason, '') = '' THEN ? ELSE stop_reason END "
                    "WHERE status = 'running' AND run_id = ?",
                    [(status, to_stored(m), str(m), run_id) for (status, m), (run_id, _) in zip(ends, dead)])
        for owner in full:
            if owner_dead(owner) or owner in gone:
                self.forget_disk_full(owner)
        return len(dead)

    @explained
    def forget_disk_full(self, owner: str | None = None) -> None:
        """Remove the full-disk marker of `owner` (this process by default) once nothing of it is
        left running (its runs and its job were ended, by itself or by mark_interrupted)."""
        owner = owner or owner_id()
        marker = _full_marker(self.path, owner)
        if not marker.exists():
            return
        with self._lock:
            running = self._conn.execute(
                f"SELECT (SELECT COUNT(*) FROM runs WHERE status = 'running' AND {_OWNER} = ?) + "
                "(SELECT COUNT(*) FROM jobs WHERE status = 'running' AND worker = ?)", (owner, owner)).fetchone()[0]
        if not running:
            marker.unlink(missing_ok=True)

    @explained
    def end_job_runs(self, job_id: str, status: str, reason: str) -> None:
        """A job ended with `status`: its runs cut short with it say why (`reason`, a stored
        message; the English beside it for runs.csv). An interrupted job's run in progress is
        interrupted too, a failed job's fails (with the job's error: never an empty reason)."""
        with self._lock, self._conn:
            if status == "interrupted":  # the run it was training was cut short with it
                self._conn.execute("UPDATE runs SET status = 'interrupted' WHERE job_id = ? AND status IN "
                                   "('running', 'stopped')", (job_id,))
            elif status == "failed":  # a run whose own end could not be recorded
                self._conn.execute("UPDATE runs SET status = 'failed' WHERE job_id = ? AND status = 'running'",
                                   (job_id,))
            self._conn.execute("UPDATE runs SET stop_reason = ?, stop_reason_msg = ? WHERE job_id = ? AND status IN "
                               "('stopped', 'interrupted', 'failed') AND COALESCE(stop_reason, '') = ''",
                               (render_stored(reason, "en"), reason or None, job_id))

    def add_iterations(self, run_id: str, first_iteration: int, losses: Iterable[float], steps_per_epoch: int) -> None:
        rows = [(run_id, (it - 1) // steps_per_epoch + 1, it, loss, run_id)
                for it, loss in enumerate(losses, start=first_iteration)]
        # a run deleted while it trains gets no orphan rows
        self._write("INSERT OR REPLACE INTO iterations SELECT ?, ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?)", rows)

    @explained
    def add_epoch(self, run_id: str, m: EpochMetrics) -> None:
        with self._lock, self._conn:  # one transaction: the epoch and the run's progress agree
            self._conn.execute("INSERT OR REPLACE INTO epochs SELECT ?, ?, ?, ?, ?, ? "
                               "WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?)",
                               (run_id, m.epoch, m.train_loss, m.test_loss, m.test_acc, m.seconds, run_id))
            self._conn.execute("UPDATE runs SET epochs_done = ?, final_test_acc = ?, "
                               "seconds = COALESCE(seconds, 0) + ? WHERE run_id = ?",
                               (m.epoch, m.test_acc, m.seconds, run_id))

    def finish_run(self, run_id: str, status: str, seconds: float, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in ("status", "seconds", *fields))
        self._write(f"UPDATE runs SET {sets} WHERE run_id = ?", (status, seconds, *fields.values(), run_id))

    @explained
    def delete_runs(self, run_ids: Iterable[str]) -> int:
        ids = list(run_ids)
        if not ids:
            return 0
        marks = ", ".join("?" for _ in ids)
        with self._lock, self._conn:
            n = self._conn.execute(f"DELETE FROM runs WHERE run_id IN ({marks})", ids).rowcount
            self._conn.execute(f"DELETE FROM epochs WHERE run_id IN ({marks})", ids)
            self._conn.execute(f"DELETE FROM iterations WHERE run_id IN ({marks})", ids)
        from mnist_lab.runs.weights import delete_weights

        delete_weights(self.path, ids)
        return n

    @contextlib.contextmanager
    def immediate(self):
        """One write transaction on this store's connection, yielding it: BEGIN IMMEDIATE (no other
        process writes between its reads and its writes), committed when the block ends, rolled
        back when it raises. A failure of the database file is a StoreError (store_failure)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.rollback()
                    raise
                self._conn.commit()
            except sqlite3.Error as exc:
                raise store_failure(self.path, exc) from None

    @explained
    def compact(self, max_wait_s: float | None = None) -> None:
        """Rewrite the file without the free pages deleted rows left (VACUUM), the write-ahead log
        folded in and emptied first and after: no byte of a deleted row stays in the database's files
        (the end of term). While another connection reads, the log cannot be emptied: each try waits
        a moment, all of them at most `max_wait_s` (COMPACT_WAIT_S), then StoreError(COMPACT_BUSY) says so."""
        deadline = time.monotonic() + (COMPACT_WAIT_S if max_wait_s is None else max_wait_s)
        with self._lock:
            self._conn.execute("PRAGMA busy_timeout = 100")  # not the connection's 30 s per try
            try:
                self._checkpoint(deadline)
                try:
                    self._conn.execute("VACUUM")
                except sqlite3.OperationalError as exc:  # locked or busy: another connection is in the way
                    raise StoreError(self.path, str(exc), COMPACT_BUSY) from None
                self._checkpoint(deadline)
            finally:
                self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")

    def _checkpoint(self, deadline: float) -> None:
        """Fold the write-ahead log into the file and empty it, trying again until `deadline`
        (time.monotonic()) while another connection's read holds it; then StoreError(COMPACT_BUSY)."""
        while True:
            try:
                busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.OperationalError as exc:
                busy, why = 1, str(exc)
            else:
                why = "a reader holds the write-ahead log"
            if busy == 0:
                return
            if time.monotonic() >= deadline:
                raise StoreError(self.path, why, COMPACT_BUSY)
            time.sleep(0.2)

    # ------------------------------------------------------------------------------ weights
    def save_weights(self, run) -> Path:
        """Keep a run's final weights (a `weights.SavedRun`: with the pixel permutation it trained
        on, and its configs) beside the database, in `<db>.weights/<run_id>.safetensors`. A folder
        that cannot take them is a StoreError naming the weights folder (weights_failure)."""
        from mnist_lab.runs.weights import save_weights, weights_dir

        try:
            return save_weights(self.path, run)
        except OSError as exc:
            error = weights_failure(weights_dir(self.path), exc)
            if error.disk_full:
                note_disk_full(self.path)
                _FULL_NOTED.add(str(self.path))
            raise error from None

    def delete_weights(self, run_ids: Iterable[str]) -> int:
        """Remove the kept weights of `run_ids` (a run that ended failed keeps none); how many."""
        from mnist_lab.runs.weights import delete_weights

        with contextlib.suppress(OSError):
            return delete_weights(self.path, run_ids)
        return 0

    def load_weights(self, run_id: str):
        """The run's `weights.SavedRun`; FileNotFoundError when it has none."""
        from mnist_lab.runs.weights import load_weights

        return load_weights(self.path, run_id)

    def inspectable(self, run_ids: Iterable[str]) -> set[str]:
        """The runs among `run_ids` whose weights are kept (the Inspect page can open them)."""
        from mnist_lab.runs.weights import has_weights

        return has_weights(self.path, run_ids)

    # ------------------------------------------------------------------------------ runs of jobs
    def job_runs(self, job_id: str) -> pd.DataFrame:
        """The runs a job has started, in start order, with how many iterations each has stored."""
        return pd.DataFrame(self.job_run_rows(job_id), columns=[*RUN_COLUMNS, "iterations_done"])

    @explained
    def job_run_rows(self, job_id: str, columns: Iterable[str] = RUN_COLUMNS) -> list[dict]:
        """`job_runs` as plain dicts (no DataFrame: a page polls this every second)."""
        columns = list(columns)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {', '.join(columns)}, (SELECT COALESCE(MAX(iteration), 0) FROM iterations i "
                "WHERE i.run_id = runs.run_id) FROM runs WHERE job_id = ? ORDER BY rowid", (job_id,)).fetchall()
        return [dict(zip([*columns, "iterations_done"], r)) for r in rows]

    @explained
    def iterations_after(self, run_id: str, after: int) -> tuple[list[int], list[float]]:
        """(iteration numbers, losses) of `run_id` past iteration `after`: what a page polling
        a live run reads each time, instead of the whole curve."""
        with self._lock:
            rows = self._conn.execute("SELECT iteration, loss FROM iterations WHERE run_id = ? AND iteration > ? "
                                      "ORDER BY iteration", (run_id, after)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    @explained
    def visible_runs(self, scope: str | Iterable[str] | None) -> pd.DataFrame:
        """`runs()` (its owner columns too) plus each run's workspace and job and its stored messages
        (VISIBLE_EXTRA), restricted to the workspaces of `scope`: one workspace, a tuple of them
        (access.Asker.scope), or None for every run (a local user or a teacher)."""
        sql = (f"SELECT {', '.join([*RUN_COLUMNS, *_OWNER_READ])}, "
               f"COALESCE(workspace, '{LOCAL_WORKSPACE}') AS workspace, job_id, {', '.join(MESSAGES)} FROM runs")
        params: list = []
        if scope is not None:
            params = [scope] if isinstance(scope, str) else list(scope)
            sql += f" WHERE COALESCE(workspace, '{LOCAL_WORKSPACE}') IN ({', '.join('?' for _ in params) or 'NULL'})"
        with self._lock:
            return pd.read_sql_query(sql + " ORDER BY started_at DESC, run_id", self._conn, params=params)

    @explained
    def run_jobs(self, run_ids: Iterable[str]) -> dict[str, str]:
        """run_id -> the job that trains or trained it (runs of no job are left out)."""
        ids = list(run_ids)
        if not ids:
            return {}
        with self._lock:
            rows = self._conn.execute(f"SELECT run_id, job_id FROM runs WHERE run_id IN "
                                      f"({', '.join('?' for _ in ids)}) AND COALESCE(job_id, '') != ''",
                                      ids).fetchall()
        return dict(rows)

    @explained
    def run_workspaces(self, run_ids: Iterable[str]) -> dict[str, str]:
        """run_id -> the workspace it belongs to (a run of none is the local user's)."""
        ids = list(run_ids)
        if not ids:
            return {}
        with self._lock:
            rows = self._conn.execute(f"SELECT run_id, COALESCE(NULLIF(workspace, ''), '{LOCAL_WORKSPACE}') FROM runs "
                                      f"WHERE run_id IN ({', '.join('?' for _ in ids)})", ids).fetchall()
        return dict(rows)

    # ------------------------------------------------------------------------------ reads
    @explained
    def _read(self, table: str, columns: list[str], run_ids: Iterable[str] | None, order: str) -> pd.DataFrame:
        sql = f"SELECT {', '.join(columns)} FROM {table}"
        params: list = []
        if run_ids is not None:
            params = list(run_ids)
            if not params:
                return pd.DataFrame(columns=[c.rpartition(" AS ")[2] for c in columns])
            sql += f" WHERE run_id IN ({', '.join('?' for _ in params)})"
        with self._lock:
            return pd.read_sql_query(sql + f" ORDER BY {order}", self._conn, params=params)

    def runs(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The runs (every one, or `run_ids`), newest first, with runs.csv's columns (CSV_COLUMNS)."""
        return self._read("runs", [*RUN_COLUMNS, *_OWNER_READ], run_ids, "started_at DESC, run_id")

    def epochs(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return self._read("epochs", EPOCH_COLUMNS, run_ids, "run_id, epoch")

    def iterations(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return self._read("iterations", ITERATION_COLUMNS, run_ids, "run_id, iteration")

    def export_csv(self, out_dir: str | Path, run_ids: Iterable[str] | None = None,
                   extra: dict[str, pd.DataFrame] | None = None) -> dict[str, Path]:
        """Write runs.csv, epochs.csv and iterations.csv (and `<name>.csv` of each `extra` table)
        whole or not at all (paths.write_files); return their paths. A folder that cannot take
        them is an OutputError naming why (a full disk, read-only)."""
        out = Path(out_dir)
        ids = list(run_ids) if run_ids is not None else None
        tables = {"runs": self.runs(ids), "epochs": self.epochs(ids), "iterations": self.iterations(ids),
                  **(extra or {})}
        paths = {name: out / f"{name}.csv" for name in tables}
        with writing(out):
            write_files({paths[name]: csv_text(frame) for name, frame in tables.items()})
        return paths

