"""The results database's tables and their history: `PRAGMA user_version` says which version a
file is at, and MIGRATIONS, in order, bring any older file to the newest. Every change to the
tables is one more migration here, with a test that starts from the version before it.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from mnist_lab.errors import StoreError

# The runs table of version 1 (what the app wrote before versions were counted, 2026-12): identity
# and outcome, every config field, the library versions, and the private owner/job/workspace.
RUNS_V1 = [
    "run_id", "experiment", "group_id", "label", "status", "started_at", "seconds", "device", "engine", "params",
    "seed", "final_test_acc", "epochs_done", "diverged_at", "message",
    "kind", "conv_layers", "conv_channels", "kernel_size", "padding", "pool_before_relu", "batch_norm", "dropout",
    "hidden", "softmax_before_loss", "in_channels", "image_size", "n_classes", "blocks", "head",
    "epochs", "batch_size", "optimizer", "lr", "momentum", "device_requested", "shuffle", "eval_batch_size",
    "progress_every_s", "engine_requested", "augment", "sort_by_label",
    "dataset", "normalize", "train_limit", "test_limit", "permute_pixels", "permutation_seed", "data_dir",
    "data_source", "torch_version", "torchvision_version", "python_version", "mnist_lab_version", "stop_reason",
    "steps_per_epoch", "owner", "job_id", "workspace",
]

_TABLES_V1 = f"""
CREATE TABLE IF NOT EXISTS runs ({", ".join(c + (" TEXT PRIMARY KEY" if c == "run_id" else "") for c in RUNS_V1)});
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, seq INTEGER, workspace TEXT, kind TEXT, label TEXT,
    spec TEXT, status TEXT, runs_total INTEGER, stop_requested INTEGER DEFAULT 0, stop_reason TEXT DEFAULT '',
    error TEXT DEFAULT '', created_at REAL, started_at REAL, finished_at REAL, worker TEXT DEFAULT '');
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS workers (worker TEXT PRIMARY KEY, slot INTEGER, device TEXT, parent_pid INTEGER,
    started_at REAL, heartbeat_at REAL, job_id TEXT);
CREATE TABLE IF NOT EXISTS epochs (run_id TEXT, epoch INTEGER, train_loss REAL, test_loss REAL,
    test_acc REAL, seconds REAL, PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS iterations (run_id TEXT, epoch INTEGER, iteration INTEGER, loss REAL,
    PRIMARY KEY (run_id, iteration));
"""


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _add_columns(conn: sqlite3.Connection, table: str, columns: list[str]) -> None:
    have = _columns(conn, table)
    for column in columns:
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _v1(conn: sqlite3.Connection) -> None:
    """Version 1: the tables as the app wrote them before versions were counted. A file from
    then (user_version 0) may lack columns that later releases of that time added: they are
    added, empty (NULL: the codec reads a config field's default)."""
    for statement in _TABLES_V1.split(";"):
        if statement.strip():
            conn.execute(statement)
    _add_columns(conn, "runs", RUNS_V1)


# The sentences version 1 stored whole that are msgids of the catalog (the app's fixed stop reasons):
# version 2 stores them as codes, so they show in the reader's language. Exact matches only; any
# other stored English (a reason with a value inside, an error) stays as it is and is shown so.
FIXED_REASONS_V1 = ("stopped by you", "stopped with Ctrl-C", "aborted with a second Ctrl-C",
                    "the server stopped (restarted or killed) while it trained")
LESSON_EXPERIMENT = "lesson"  # version 1's runs of a lesson: their label is the variant's msgid


def _code(template: str) -> str:
    """A stored message of version 2 (i18n.to_stored's form, written out so this migration never changes)."""
    return json.dumps({"template": template, "params": {}}, ensure_ascii=False)


def _v2(conn: sqlite3.Connection) -> None:
    """Version 2: messages stored as codes. Runs gain `label_msg` and `stop_reason_msg` (their
    English stays in `label` and `stop_reason` for runs.csv); a job's `stop_reason` and `error`
    hold a code. Version 1's fixed stop reasons and lesson variant labels become codes; the rest
    of its English is left as it is (NULL codes: shown as stored)."""
    _add_columns(conn, "runs", ["label_msg", "stop_reason_msg"])
    for reason in FIXED_REASONS_V1:
        conn.execute("UPDATE runs SET stop_reason_msg = ? WHERE stop_reason = ?", (_code(reason), reason))
        conn.execute("UPDATE jobs SET stop_reason = ? WHERE stop_reason = ?", (_code(reason), reason))
    labels = conn.execute("SELECT DISTINCT label FROM runs WHERE experiment = ? AND COALESCE(label, '') != ''",
                          (LESSON_EXPERIMENT,)).fetchall()
    for (label,) in labels:
        conn.execute("UPDATE runs SET label_msg = ? WHERE experiment = ? AND label = ?",
                     (json.dumps([json.loads(_code(label))], ensure_ascii=False), LESSON_EXPERIMENT, label))


def _v3(conn: sqlite3.Connection) -> None:
    """Version 3: a diverged run's message stored as a code too (`message_msg` beside the English
    `message` of runs.csv). Messages stored before stay as they are (NULL code: shown as stored)."""
    _add_columns(conn, "runs", ["message_msg"])


def _v4(conn: sqlite3.Connection) -> None:
    """Version 4: where a run's data came from stored as a code too (`data_source_msg` beside the
    English `data_source` of runs.csv). Runs recorded before keep their English (NULL code)."""
    _add_columns(conn, "runs", ["data_source_msg"])


# Version 5's tables of a class server's sign-in (service/identity.py): the students (a roster's, or
# those who claimed an id), the signed-in sessions (a teacher's with an HMAC of the token it signed in
# with: a changed token ends it), and the wrong tries counted per client and account.
_TABLES_V5 = """
CREATE TABLE IF NOT EXISTS students (student_id TEXT PRIMARY KEY, name TEXT NOT NULL, on_roster INTEGER,
    code_hash TEXT, pin_hash TEXT, created_at REAL, pin_set_at REAL);
CREATE TABLE IF NOT EXISTS sessions (session_id TEXT PRIMARY KEY, role TEXT, workspace TEXT, student_id TEXT,
    name TEXT, client TEXT, created_at REAL, expires_at REAL, token_mac TEXT);
CREATE TABLE IF NOT EXISTS signin_failures (key TEXT PRIMARY KEY, failures INTEGER, first_at REAL, last_at REAL);
"""


def _v5(conn: sqlite3.Connection) -> None:
    """Version 5: every run and job has an owner a teacher can read. Runs and jobs gain
    `student_id` and `student_name` (NULL before: an unnamed workspace), jobs the `client` that
    submitted them; and the sign-in tables (students, sessions, signin_failures)."""
    _add_columns(conn, "runs", ["student_id", "student_name"])
    _add_columns(conn, "jobs", ["student_id", "student_name", "client"])
    for statement in _TABLES_V5.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v6(conn: sqlite3.Connection) -> None:
    """Version 6: a class job's progress (the teacher's reports zip or the term's export: how many
    students' reports or tables are written), `jobs.units_done`, 0 for every job before."""
    if "units_done" not in _columns(conn, "jobs"):
        conn.execute("ALTER TABLE jobs ADD COLUMN units_done INTEGER NOT NULL DEFAULT 0")


def _v7(conn: sqlite3.Connection) -> None:
    """Version 7: the demo's example set (service/examples.py): which job of the local workspace
    is which example, of which version of the set and at which scale. Nothing before it is one."""
    conn.execute("CREATE TABLE IF NOT EXISTS examples (name TEXT PRIMARY KEY, version INTEGER NOT NULL, "
                 "scale TEXT NOT NULL, job_id TEXT NOT NULL, built_at REAL)")


@dataclass(frozen=True)
class Migration:
    version: int  # the user_version a file has after it
    what: str  # one line for a person
    apply: Callable[[sqlite3.Connection], None]


MIGRATIONS: list[Migration] = [
    Migration(1, "the runs, epochs, iterations, jobs and workers tables", _v1),
    Migration(2, "messages stored as codes: runs.label_msg and stop_reason_msg; fixed reasons and lesson labels", _v2),
    Migration(3, "a diverged run's message stored as a code: runs.message_msg", _v3),
    Migration(4, "where a run's data came from stored as a code: runs.data_source_msg", _v4),
    Migration(5, "owners and sign-in: runs/jobs.student_id, student_name, jobs.client; students, sessions, "
                 "signin_failures", _v5),
    Migration(6, "a class job's progress: jobs.units_done", _v6),
    Migration(7, "the demo's example set: the examples table (name, version, scale, job_id)", _v7),
]
VERSION = MIGRATIONS[-1].version  # the version this code writes


def version_of(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, path: object = "?") -> int:
    """Bring the database to VERSION, one migration per transaction (a failure leaves the file at
    the last version reached). A file written by a newer version is refused, not altered. Returns
    the version it was at."""
    found = version_of(conn)
    if found > VERSION:
        raise StoreError(path, f"schema version {found}; this program reads up to {VERSION}",
                         "The results database {path} was written by a newer version of MNIST CNN Lab ({detail}): "
                         "update this program, or choose another file with --db or MNIST_LAB_DB.")
    for migration in MIGRATIONS:
        if migration.version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")  # one writer: two processes opening an old file migrate it once
        try:
            if version_of(conn) < migration.version:
                migration.apply(conn)
                conn.execute(f"PRAGMA user_version = {migration.version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found
