"""What a shared server's results take on its disk and what a job would add: a workspace's runs and
bytes, the whole store's bytes, a job's projected bytes (from the per-row figures bench/bench_bytes.py
measured), the active jobs of one client, and the demo's pruning of its visitors' old runs. Read by
policy.ServerPolicy.check before anything is queued. No streamlit here.
"""
from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mnist_lab.runs.store import LOCAL_WORKSPACE, ResultStore
from mnist_lab.runs.weights import valid_run_id, weights_dir, weights_path
from mnist_lab.service.identity import VISITOR_PREFIX
from mnist_lab.service.queue import JOB_ACTIVE, JobQueue

# Bytes a run keeps, measured by bench/bench_bytes.py (SQLite 4 KiB pages, no VACUUM; two runs gave
# 78-82, 205-273, 353-508 and 1,336 B for Lab-5: pages fill unevenly), rounded up: a row of
# `iterations` (with its primary-key index), a row of `epochs`, a row of `runs`, and a weights
# file's safetensors header beyond its float32 tensors (its configs as JSON: longer for a deeper
# network). A Lab-5 run of 10 epochs on 60,000 images keeps 0.77-0.81 MB, 95% of it iteration rows.
ITERATION_ROW_BYTES = 85
EPOCH_ROW_BYTES = 280
RUN_ROW_BYTES = 500
WEIGHTS_HEADER_BYTES = 1_500


@dataclass(frozen=True)
class Usage:
    """What one workspace keeps: its runs, and their bytes (rows as measured, weights as on disk)."""

    runs: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Standing:
    """What ServerPolicy.check weighs a new job against: the asker's usage, the whole store's
    bytes, and the jobs queued or training for the asker's client (its IP; the demo's cap)."""

    usage: Usage = Usage()
    total_bytes: int = 0
    client_jobs: int = 0


@contextlib.contextmanager
def _connect(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A short-lived connection of its own (WAL: a read never waits for a writer)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone meanwhile (deleted, pruned), or never written
        return 0


def _run_bytes(store: ResultStore, rows: list[tuple]) -> int:
    """Bytes of stored runs (rows of run_id, epochs done, steps done): their rows as measured and a
    stat of each weights file."""
    weights = sum(_file_bytes(weights_path(store.path, run_id)) for run_id, *_ in rows if valid_run_id(run_id))
    epochs, steps = sum(r[1] for r in rows), sum(r[2] for r in rows)
    return len(rows) * RUN_ROW_BYTES + epochs * EPOCH_ROW_BYTES + steps * ITERATION_ROW_BYTES + weights


_RUN_FIGURES = "run_id, COALESCE(epochs_done, 0), COALESCE(epochs_done, 0) * COALESCE(steps_per_epoch, 0)"


def active_usage(store: ResultStore, workspace: str | None = None) -> Usage:
    """What the jobs queued or training (of `workspace`; None: every workspace's) will still add:
    for each, its runs_total and its spec's projected bytes (job_bytes), less the runs and bytes it
    has already stored (those count as stored runs). A spec that cannot be read counts its runs only."""
    from mnist_lab.service.jobs import CLASS_KINDS, JobSpec

    marks = ", ".join("?" for _ in JOB_ACTIVE)
    # a class job (the teacher's zip of reports or data) trains no run
    where = f"status IN ({marks}) AND kind NOT IN ({', '.join('?' for _ in CLASS_KINDS)})"
    params = [*JOB_ACTIVE, *CLASS_KINDS]
    if workspace is not None:
        where += " AND COALESCE(NULLIF(workspace, ''), ?) = ?"
        params += [LOCAL_WORKSPACE, workspace]
    with _connect(store.path) as conn:
        jobs = conn.execute(f"SELECT job_id, spec, COALESCE(runs_total, 0) FROM jobs WHERE {where}",
                            params).fetchall()
        stored = {job_id: conn.execute(f"SELECT {_RUN_FIGURES} FROM runs WHERE job_id = ?", (job_id,)).fetchall()
                  for job_id, *_ in jobs}
    runs = nbytes = 0
    for job_id, spec, total in jobs:
        done = stored[job_id]
        runs += max(int(total) - len(done), 0)
        try:
            projected = job_bytes(JobSpec.from_json(spec))
        except Exception:  # noqa: BLE001 - an unreadable or older spec: its runs still count
            continue
        nbytes += max(projected - _run_bytes(store, done), 0)
    return Usage(runs, nbytes)


def usage(store: ResultStore, workspace: str) -> Usage:
    """`workspace`'s runs and bytes: one SQL sum over its runs (an iteration row per step of each
    epoch done, an epoch row per epoch) and a stat of each run's weights file, plus what its jobs
    queued or training will still add (`active_usage`): a person cannot pass the caps by queueing."""
    with _connect(store.path) as conn:
        rows = conn.execute(f"SELECT {_RUN_FIGURES} FROM runs WHERE COALESCE(NULLIF(workspace, ''), ?) = ?",
                            (LOCAL_WORKSPACE, workspace)).fetchall()
    pending = active_usage(store, workspace)
    return Usage(len(rows) + pending.runs, _run_bytes(store, rows) + pending.bytes)


def total_bytes(store: ResultStore, pending: bool = True) -> int:
    """The results on the server's disk: the database's pages in use (a deleted run's pages are
    free for the next rows, though the file keeps its size) and the weights folder's files; with
    `pending`, plus what every job queued or training will still add (`active_usage`)."""
    return stored_bytes(store) + (active_usage(store).bytes if pending else 0)


def stored_bytes(store: ResultStore) -> int:
    """The results on the server's disk now (total_bytes without the jobs still to come)."""
    with _connect(store.path) as conn:
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
    db = (pages - free) * size
    folder = weights_dir(store.path)
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        return db + sum(_file_bytes(Path(e.path)) for e in entries if e.is_file(follow_symlinks=False))
    return db


def client_jobs(store: ResultStore, client: str, unknown_is_one: bool = False) -> int:
    """Jobs queued or training that were submitted from `client` (an IP); 0 for a database without
    the column (before schema 5). An unknown client ('') counts 0, or with `unknown_is_one` (the
    demo) as one client shared by every unknown one: behind a proxy that is not trusted every
    visitor looks the same, and they share the cap (the safe side)."""
    if not client and not unknown_is_one:
        return 0
    marks = ", ".join("?" for _ in JOB_ACTIVE)
    with _connect(store.path) as conn:
        try:
            return conn.execute(f"SELECT COUNT(*) FROM jobs WHERE COALESCE(client, '') = ? AND status IN ({marks})",
                                (client, *JOB_ACTIVE)).fetchone()[0]
        except sqlite3.OperationalError:  # no such column: an older file
            return 0


def standing(store: ResultStore, workspace: str, client: str = "", unknown_is_one: bool = False) -> Standing:
    """What `workspace` keeps and has coming, the server's total with every active job's, and the
    active jobs of `client` (`unknown_is_one`: the demo, where an unknown client is one client)."""
    return Standing(usage(store, workspace), total_bytes(store), client_jobs(store, client, unknown_is_one))


def job_bytes(spec) -> int:
    """What a job (a service.jobs.JobSpec) would add, projected: for each run, an iteration row per
    step, an epoch row per epoch, its run row, and its weights (params x 4 + header, + the pixel
    permutation when it trains on permuted pixels: a comparison's half)."""
    from mnist_lab.nets.model import count_params

    total = 0
    for model_cfg, train_cfg, data_cfg in spec.run_configs():
        runs = spec.runs_per_config()
        steps = train_cfg.epochs * math.ceil(data_cfg.n_train() / train_cfg.batch_size)
        weights = count_params(model_cfg) * 4 + WEIGHTS_HEADER_BYTES
        permuted = runs // 2 if spec.kind == "compare" else runs * bool(data_cfg.permute_pixels)
        total += runs * (steps * ITERATION_ROW_BYTES + train_cfg.epochs * EPOCH_ROW_BYTES + RUN_ROW_BYTES + weights)
        total += permuted * data_cfg.spec.n_pixels * 8  # its int64 positions
    return total


def iso(seconds: float) -> str:
    """A time as runs store theirs (ISO 8601, UTC): such strings sort as the times do."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def prune_visitors(store: ResultStore, queue: JobQueue, older_than_s: float, now: float | None = None) -> int:
    """The demo's clean-up: delete visitors' runs (rows and weights) started more than
    `older_than_s` ago and no longer training, and their jobs that ended that long ago. The
    examples (the operator's runs) and students' runs are never touched. Returns the runs deleted."""
    cutoff = (time.time() if now is None else now) - older_than_s
    visitors, marks = VISITOR_PREFIX + "%", ", ".join("?" for _ in JOB_ACTIVE)
    with _connect(store.path) as conn:
        run_ids = [r[0] for r in conn.execute(
            "SELECT run_id FROM runs WHERE workspace LIKE ? AND COALESCE(started_at, '') < ? "
            "AND COALESCE(status, '') != 'running'", (visitors, iso(cutoff)))]  # runs keep ISO 8601 UTC times
    with _connect(queue.path) as conn, conn:  # the jobs table, in the queue's file
        conn.execute(f"DELETE FROM jobs WHERE workspace LIKE ? AND status NOT IN ({marks}) "
                     "AND COALESCE(finished_at, created_at, 0) < ?", (visitors, *JOB_ACTIVE, cutoff))
    return store.delete_runs(run_ids)
