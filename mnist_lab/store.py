"""Results: tidy tables (runs, epochs, iterations) in SQLite, written as runs progress so an
interrupted run keeps what it finished, and exported to CSV.
"""
from __future__ import annotations

import functools
import os
import platform
import socket
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from .data import DataConfig, default_cache_dir
from .errors import StoreError
from .models import ModelConfig, describe
from .train import EpochMetrics, Progress, RunResult, TrainConfig

DB_ENV = "MNIST_LAB_DB"

RUN_COLUMNS = [
    "run_id", "experiment", "group_id", "label", "status", "started_at", "seconds", "device", "engine",
    "params", "seed", "final_test_acc", "epochs_done", "diverged_at", "message",
    # model config
    "kind", "conv_layers", "conv_channels", "kernel_size", "padding", "pool_before_relu", "batch_norm",
    "dropout", "hidden", "softmax_before_loss", "in_channels", "image_size", "n_classes",
    # training config
    "epochs", "batch_size", "optimizer", "lr", "momentum", "shuffle", "eval_batch_size", "engine_requested",
    # data config
    "dataset", "normalize", "train_limit", "test_limit", "permute_pixels", "permutation_seed", "data_dir", "data_source",
    "torch_version", "torchvision_version", "python_version", "mnist_lab_version",
]
EPOCH_COLUMNS = ["run_id", "epoch", "train_loss", "test_loss", "test_acc", "seconds"]
ITERATION_COLUMNS = ["run_id", "epoch", "iteration", "loss"]

# Not exported: which process writes a running run ("host:pid"), so a run left 'running' by a
# process that died can be told apart from one still training elsewhere.
_OWNER = "owner"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs ({", ".join(c + (" TEXT PRIMARY KEY" if c == "run_id" else "") for c in RUN_COLUMNS)},
    {_OWNER} TEXT);
CREATE TABLE IF NOT EXISTS epochs (run_id TEXT, epoch INTEGER, train_loss REAL, test_loss REAL,
    test_acc REAL, seconds REAL, PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS iterations (run_id TEXT, epoch INTEGER, iteration INTEGER, loss REAL,
    PRIMARY KEY (run_id, iteration));
"""


def default_db_path() -> Path:
    return Path(os.environ.get(DB_ENV) or default_cache_dir() / "results.sqlite")


def _fmt_tuple(values: tuple[int, ...]) -> str:
    return "-".join(str(v) for v in values)


def run_row(run_id: str, model_cfg: ModelConfig, train_cfg: TrainConfig, data_cfg: DataConfig, *,
            experiment: str = "single", group_id: str = "", label: str = "", status: str = "running",
            started_at: str = "", seconds: float = 0.0, device: str = "", engine: str = "", params: int = 0,
            final_test_acc: float | None = None, epochs_done: int = 0, data_source: str = "",
            diverged_at: int | None = None, message: str = "") -> dict:
    """One `runs` row: identity, outcome, every config field (tuples as 'a-b'), library versions."""
    import torch

    from . import __version__

    model = {k: (_fmt_tuple(v) if isinstance(v, tuple) else v) for k, v in asdict(model_cfg).items()}
    # config fields first, so what actually happened (device, engine) overrides what was asked
    row = {**asdict(data_cfg), **asdict(train_cfg), **model}
    row["engine_requested"] = row.get("engine", "")
    row.update(run_id=run_id, experiment=experiment, group_id=group_id, label=label or run_label(model_cfg, data_cfg),
               status=status, started_at=started_at, seconds=seconds, device=device, engine=engine,
               params=params, seed=train_cfg.seed, final_test_acc=final_test_acc, epochs_done=epochs_done,
               diverged_at=diverged_at, message=message,
               conv_layers=model_cfg.conv_layers, data_source=data_source, torch_version=torch.__version__, torchvision_version=_torchvision_version(),
               python_version=platform.python_version(), mnist_lab_version=__version__)
    return {c: row.get(c) for c in RUN_COLUMNS}


def run_label(model_cfg: ModelConfig, data_cfg: DataConfig) -> str:
    """A run's default label: its network, and the data settings that change results when they
    are not the lab's defaults (normalisation, permuted pixels, a subset)."""
    parts = [describe(model_cfg)]
    if data_cfg.normalize != "mnist":
        parts.append(f"{data_cfg.normalize} normalisation")
    if data_cfg.permute_pixels:
        parts.append("permuted pixels")
    if data_cfg.train_limit is not None:
        parts.append(f"{data_cfg.train_limit:,} images")
    return " · ".join(parts)


def _torchvision_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchvision")
    except PackageNotFoundError:
        return ""


def _process_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OSError):
        return True  # someone else's process, or nothing we can tell: assume it still trains
    return True


def _explained(method: Callable) -> Callable:
    """Any failure of the database file (malformed, full disk, read-only, a folder that cannot be
    made) as one StoreError naming the file and how to move it aside."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:  # pandas' DatabaseError, which wraps read errors, is an OSError
            detail = getattr(exc, "strerror", None) or str(exc).rpartition(": ")[2] or str(exc)
            raise StoreError(getattr(self, "path", "?"), detail) from None
    return run


def _check_place(path: Path) -> None:
    if path.is_dir():
        raise StoreError(path, "it is a directory", "The results database {path} is a directory, not a file: give a "
                         "file name with --db or MNIST_LAB_DB, e.g. {path}/results.sqlite.")
    if path.parent.exists() and not path.parent.is_dir():
        raise StoreError(path, f"{path.parent} is a file", "The results database {path} cannot be created ({detail}): "
                         "choose another file with --db or MNIST_LAB_DB.")


def _quick_check(conn: sqlite3.Connection) -> None:
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError(problems[0])


class ResultStore:
    """SQLite (WAL) store of runs, epochs and iterations. Safe to share between threads; every
    write is its own transaction, so a killed process loses at most the write in flight."""

    @_explained
    def __init__(self, path: str | Path | None = None):
        """Open (or create) the database and check it (PRAGMA quick_check): a damaged or unwritable
        file raises StoreError naming it and how to move it aside, before anything trains."""
        self.path = Path(path) if path else default_db_path()
        _check_place(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            _quick_check(self._conn)
            self._conn.executescript(_SCHEMA)
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
            for column in [*RUN_COLUMNS, _OWNER]:  # a database from an older version gains new fields
                if column not in have:
                    self._conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")
        self.mark_interrupted()

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------------------ writes
    @_explained
    def _write(self, sql: str, rows: Iterable[tuple] | tuple = ()) -> None:
        with self._lock, self._conn:
            if isinstance(rows, tuple):
                self._conn.execute(sql, rows)
            else:
                self._conn.executemany(sql, rows)

    def start_run(self, row: dict) -> None:
        cols = ", ".join([*RUN_COLUMNS, _OWNER])
        marks = ", ".join("?" for _ in range(len(RUN_COLUMNS) + 1))
        self._write(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})",
                    (*(row[c] for c in RUN_COLUMNS), f"{socket.gethostname()}:{os.getpid()}"))

    @_explained
    def mark_interrupted(self) -> int:
        """Mark 'interrupted' every run still 'running' whose process, on this machine, no longer
        exists (killed, crashed, machine restarted): it keeps what it finished and can be deleted.
        Runs of live processes and of other machines are left alone. Returns how many changed."""
        host = socket.gethostname()
        with self._lock:
            rows = self._conn.execute(f"SELECT run_id, {_OWNER} FROM runs WHERE status = 'running'").fetchall()
        dead = [run_id for run_id, owner in rows
                if owner and owner.rpartition(":")[0] == host and not _process_alive(owner.rpartition(":")[2])]
        if dead:
            marks = ", ".join("?" for _ in dead)
            self._write(f"UPDATE runs SET status = 'interrupted' WHERE status = 'running' AND run_id IN ({marks})",
                        tuple(dead))
        return len(dead)

    def add_iterations(self, run_id: str, first_iteration: int, losses: Iterable[float], steps_per_epoch: int) -> None:
        rows = [(run_id, (it - 1) // steps_per_epoch + 1, it, loss, run_id)
                for it, loss in enumerate(losses, start=first_iteration)]
        # a run deleted while it trains gets no orphan rows
        self._write("INSERT OR REPLACE INTO iterations SELECT ?, ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?)", rows)

    @_explained
    def add_epoch(self, run_id: str, m: EpochMetrics) -> None:
        with self._lock, self._conn:  # one transaction: the epoch and the run's progress agree
            self._conn.execute("INSERT OR REPLACE INTO epochs SELECT ?, ?, ?, ?, ?, ? "
                               "WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = ?)",
                               (run_id, m.epoch, m.train_loss, m.test_loss, m.test_acc, m.seconds, run_id))
            self._conn.execute("UPDATE runs SET epochs_done = ?, final_test_acc = ? WHERE run_id = ?",
                               (m.epoch, m.test_acc, run_id))

    def finish_run(self, run_id: str, status: str, seconds: float, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in ("status", "seconds", *fields))
        self._write(f"UPDATE runs SET {sets} WHERE run_id = ?", (status, seconds, *fields.values(), run_id))

    def recorder(self, steps_per_epoch: int) -> Callable[[Progress], None]:
        """An `on_progress` callback that writes each event as it arrives."""
        def record(event: Progress) -> None:
            if event.kind == "iterations":
                self.add_iterations(event.run_id, event.first_iteration, event.losses, steps_per_epoch)
            elif event.kind == "epoch" and event.metrics is not None:
                self.add_epoch(event.run_id, event.metrics)
        return record

    def save_result(self, result: RunResult, **row_fields) -> None:
        """Write a finished RunResult whole (for runs not recorded while they trained)."""
        self.start_run(run_row(result.run_id, result.model_cfg, result.train_cfg, result.data_cfg,
                               status=result.status, started_at=result.started_at, seconds=result.seconds,
                               device=result.device, engine=result.engine, params=result.params,
                               final_test_acc=result.final_test_acc, epochs_done=len(result.epochs),
                               data_source=result.data_source, diverged_at=result.diverged_at,
                               message=result.message, **row_fields))
        self.add_iterations(result.run_id, 1, result.losses, max(result.steps_per_epoch, 1))
        for m in result.epochs:
            self.add_epoch(result.run_id, m)

    @_explained
    def delete_runs(self, run_ids: Iterable[str]) -> int:
        ids = list(run_ids)
        if not ids:
            return 0
        marks = ", ".join("?" for _ in ids)
        with self._lock, self._conn:
            n = self._conn.execute(f"DELETE FROM runs WHERE run_id IN ({marks})", ids).rowcount
            self._conn.execute(f"DELETE FROM epochs WHERE run_id IN ({marks})", ids)
            self._conn.execute(f"DELETE FROM iterations WHERE run_id IN ({marks})", ids)
        return n

    # ------------------------------------------------------------------------------ reads
    @_explained
    def _read(self, table: str, columns: list[str], run_ids: Iterable[str] | None, order: str) -> pd.DataFrame:
        sql = f"SELECT {', '.join(columns)} FROM {table}"
        params: list = []
        if run_ids is not None:
            params = list(run_ids)
            if not params:
                return pd.DataFrame(columns=columns)
            sql += f" WHERE run_id IN ({', '.join('?' for _ in params)})"
        with self._lock:
            return pd.read_sql_query(sql + f" ORDER BY {order}", self._conn, params=params)

    def runs(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return self._read("runs", RUN_COLUMNS, run_ids, "started_at DESC, run_id")

    def epochs(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return self._read("epochs", EPOCH_COLUMNS, run_ids, "run_id, epoch")

    def iterations(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        return self._read("iterations", ITERATION_COLUMNS, run_ids, "run_id, iteration")

    def export_csv(self, out_dir: str | Path, run_ids: Iterable[str] | None = None) -> dict[str, Path]:
        """Write runs.csv, epochs.csv and iterations.csv; return their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ids = list(run_ids) if run_ids is not None else None
        paths = {}
        for name, frame in (("runs", self.runs(ids)), ("epochs", self.epochs(ids)),
                            ("iterations", self.iterations(ids))):
            paths[name] = out / f"{name}.csv"
            frame.to_csv(paths[name], index=False)
        return paths

