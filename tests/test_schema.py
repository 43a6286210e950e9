"""The results database's versions: a new file is at the newest version with exactly the columns
the code writes; each migration brings a file of the version before it up; a newer file is refused."""
from __future__ import annotations

import sqlite3

import pytest

from mnist_lab.errors import StoreError
from mnist_lab.runs import schema
from mnist_lab.runs.store import CSV_COLUMNS, ResultStore


def _columns(path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def _version(path) -> int:
    with sqlite3.connect(path) as conn:
        return schema.version_of(conn)


def test_a_new_database_is_at_the_newest_version_with_every_column_the_code_writes(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    assert _version(path) == schema.VERSION
    # a config field added without a migration would be a column the table lacks: this fails first
    assert set(CSV_COLUMNS) <= set(_columns(path, "runs"))
    assert [m.version for m in schema.MIGRATIONS] == list(range(1, schema.VERSION + 1))


def test_version_0_a_file_from_before_versions_gains_the_missing_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # an early file: fewer run columns, no version
        conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT, label TEXT, kind TEXT, "
                     "conv_channels TEXT, kernel_size, final_test_acc)")
        conn.execute("INSERT INTO runs VALUES ('r1', 'finished', 'lab5', 'cnn', '10-20', 5, 0.97)")
    store = ResultStore(path)
    assert _version(path) == schema.VERSION
    assert set(schema.RUNS_V1) <= set(_columns(path, "runs"))
    row = store.runs().iloc[0]
    assert (row.run_id, row.status, row.final_test_acc) == ("r1", "finished", 0.97)
    assert row["head"] is None and row["blocks"] is None  # columns added empty: the codec reads defaults


def test_every_migration_from_the_version_before(tmp_path):
    for migration in schema.MIGRATIONS[1:]:
        path = tmp_path / f"v{migration.version - 1}.sqlite"
        with sqlite3.connect(path) as conn:
            conn.isolation_level = None
            for earlier in schema.MIGRATIONS:
                if earlier.version < migration.version:
                    earlier.apply(conn)
            conn.execute(f"PRAGMA user_version = {migration.version - 1}")
        ResultStore(path).close()
        assert _version(path) == schema.VERSION


def test_opening_twice_migrates_once(tmp_path):
    path = tmp_path / "r.sqlite"
    first, second = ResultStore(path), ResultStore(path)
    assert _version(path) == schema.VERSION
    first.close(), second.close()


def test_a_file_from_a_newer_version_is_refused_untouched(tmp_path):
    path = tmp_path / "new.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
    with pytest.raises(StoreError, match="newer version") as caught:
        ResultStore(path)
    assert str(path) in str(caught.value)
    assert _columns(path, "runs") == [] and _version(path) == schema.VERSION + 1


def test_version_1_to_2_fixed_reasons_and_lesson_labels_become_codes_the_rest_shows_as_stored(tmp_path):
    """Version 1 stored English sentences; version 2 stores codes. The sentences that are msgids
    (the fixed stop reasons, a lesson variant's label) are converted by exact match; any other
    stored English is left as it is, and shown so in every language."""
    from mnist_lab.i18n import render_stored

    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as conn:
        conn.isolation_level = None
        schema.MIGRATIONS[0].apply(conn)
        conn.execute("PRAGMA user_version = 1")
        rows = [("r1", "stopped", "stopped by you", "lesson", "BatchNorm after each convolution"),
                ("r2", "interrupted", "the worker was stopped (SIGTERM) while it trained", "single",
                 "CNN 2×k5 valid [10-20] · 2,000 images"),
                ("r3", "finished", "", "sweep", "2 conv × k5")]
        conn.executemany("INSERT INTO runs (run_id, status, stop_reason, experiment, label) VALUES (?, ?, ?, ?, ?)",
                         rows)
        conn.executemany("INSERT INTO jobs (job_id, seq, workspace, status, stop_reason, error) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         [("j1", 1, "local", "stopped", "stopped with Ctrl-C", ""),
                          ("j2", 2, "local", "failed", "", "Batch size 1024 is larger than the 256 training images")])
    store = ResultStore(path)
    assert _version(path) == schema.VERSION >= 2
    runs = store.visible_runs(None).set_index("run_id")
    assert list(store.runs().columns) == CSV_COLUMNS  # runs.csv keeps its columns (owners at the end: schema 5)
    assert list(runs.loc[["r1", "r2", "r3"], "label"]) == [r[4] for r in rows]  # the English stays for runs.csv
    assert list(runs.loc[["r1", "r2"], "stop_reason"]) == [r[2] for r in rows[:2]]
    said = {r: (render_stored(row["label_msg"], "zh_CN", row["label"]),
                render_stored(row["stop_reason_msg"], "zh_CN", row["stop_reason"])) for r, row in runs.iterrows()}
    assert said["r1"] == ("每个卷积之后加批归一化（BatchNorm）", "由你停止")
    assert said["r2"] == ("CNN 2×k5 valid [10-20] · 2,000 images", "the worker was stopped (SIGTERM) while it trained")
    assert said["r3"] == ("2 conv × k5", "")
    with sqlite3.connect(path) as conn:
        jobs = dict(conn.execute("SELECT job_id, stop_reason || '|' || error FROM jobs").fetchall())
    assert render_stored(jobs["j1"].split("|")[0], "zh_CN") == "用 Ctrl-C 停止"
    assert jobs["j2"] == "|Batch size 1024 is larger than the 256 training images"  # an error as stored


def test_version_2_to_3_keeps_a_diverged_runs_english_and_adds_its_code_column(tmp_path):
    path = tmp_path / "v2.sqlite"
    with sqlite3.connect(path) as conn:
        conn.isolation_level = None
        for migration in schema.MIGRATIONS[:2]:
            migration.apply(conn)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO runs (run_id, status, message) VALUES ('r1', 'diverged', 'The loss became nan at "
                     "iteration 7: training diverged.')")
    store = ResultStore(path)
    row = store.visible_runs(None).iloc[0]
    assert row["message"] == "The loss became nan at iteration 7: training diverged." and row["message_msg"] is None


def test_version_4_to_5_runs_and_jobs_gain_empty_owners_and_the_sign_in_tables_appear(tmp_path):
    """A database of version 4 (before sign-in): its runs and jobs list with empty owners (an
    unnamed workspace), runs.csv ends with the owner columns, and the sign-in tables exist."""
    from mnist_lab.service.jobs import StoreRunner

    path = tmp_path / "v4.sqlite"
    with sqlite3.connect(path) as conn:
        conn.isolation_level = None
        for migration in schema.MIGRATIONS[:4]:
            migration.apply(conn)
        conn.execute("PRAGMA user_version = 4")
        conn.execute("INSERT INTO runs (run_id, status, workspace, job_id, started_at) "
                     "VALUES ('r1', 'finished', 'tok-abc', 'j1', '2026-12-01T10:00:00')")
        conn.execute("INSERT INTO runs (run_id, status, started_at) VALUES ('r2', 'finished', '2026-12-01T09:00:00')")
        conn.execute("INSERT INTO jobs (job_id, seq, workspace, kind, label, spec, status, runs_total, created_at) "
                     "VALUES ('j1', 1, 'tok-abc', 'train', 't', '{}', 'finished', 1, 0)")
    store = ResultStore(path)
    assert _version(path) == schema.VERSION >= 6
    runs = store.visible_runs(None).set_index("run_id")
    assert list(runs.loc[["r1", "r2"], "workspace"]) == ["tok-abc", "local"]
    assert list(runs["student_id"]) == ["", ""] and list(runs["student_name"]) == ["", ""]
    assert list(store.visible_runs(("tok-abc",))["run_id"]) == ["r1"]  # a ?ws= workspace stays as it was
    assert list(store.runs().columns)[-2:] == ["student_id", "student_name"]
    views = StoreRunner(store).jobs(None)
    assert [(v.id, v.workspace, v.student_id, v.student_name) for v in views] == [("j1", "tok-abc", "", "")]
    for table in ("students", "sessions", "signin_failures"):
        assert _columns(path, table)
    assert {"student_id", "student_name", "client"} <= set(_columns(path, "jobs"))
    assert "token_mac" in _columns(path, "sessions")  # a teacher's session ends when the token changes
    store.close()


def test_version_5_to_6_jobs_gain_units_done_and_an_old_job_still_lists(tmp_path):
    """A database of version 5: its jobs read with units_done 0 and list as before."""
    from mnist_lab.service.jobs import StoreRunner
    from mnist_lab.service.queue import JobQueue

    path = tmp_path / "v5.sqlite"
    with sqlite3.connect(path) as conn:
        conn.isolation_level = None
        for migration in schema.MIGRATIONS[:5]:
            migration.apply(conn)
        conn.execute("PRAGMA user_version = 5")
        conn.execute("INSERT INTO jobs (job_id, seq, workspace, kind, label, spec, status, runs_total, created_at, "
                     "student_id, student_name) VALUES ('j1', 1, 'student:7', 'train', 't', '{}', 'finished', 1, 0, "
                     "'7', '张三')")
    store = ResultStore(path)
    assert _version(path) == schema.VERSION >= 6
    assert "units_done" in _columns(path, "jobs")
    assert JobQueue(store).job("j1")["units_done"] == 0
    views = StoreRunner(store).jobs(None)
    assert [(v.id, v.status, v.student_name, v.units_done) for v in views] == [("j1", "finished", "张三", 0)]
    store.close()


def test_version_6_to_7_the_examples_table_appears_empty_and_nothing_is_an_example(tmp_path):
    """A database of version 6: it gains the demo's examples table, empty, so none of its jobs (the
    operator's own runs included) counts as the example set, which is not ready."""
    from mnist_lab.service.examples import examples_ready

    path = tmp_path / "v6.sqlite"
    with sqlite3.connect(path) as conn:
        conn.isolation_level = None
        for migration in schema.MIGRATIONS[:6]:
            migration.apply(conn)
        conn.execute("PRAGMA user_version = 6")
        conn.execute("INSERT INTO jobs (job_id, seq, workspace, kind, label, spec, status, runs_total, created_at) "
                     "VALUES ('j1', 1, 'local', 'train', 't', '{}', 'finished', 1, 0)")
    assert not examples_ready(path, "tiny") and _version(path) == 6  # a check reads only: no migration
    ResultStore(path).close()
    assert _version(path) == schema.VERSION >= 7
    assert _columns(path, "examples") == ["name", "version", "scale", "job_id", "built_at"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM examples").fetchone()[0] == 0
    assert not examples_ready(path, "tiny")
