"""The teacher's class jobs (service/class_jobs.py): every student's report as one zip, the term's
data as one zip (queued, built by the worker with progress, stoppable, written whole or not at all),
and the end of term, which leaves no trace of the class in the store, its files or its bytes."""
from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from docx import Document

from mnist_lab.errors import ConfigError, StoreError
from mnist_lab.nets.model import build_model
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.runs.store import CSV_COLUMNS, ResultStore
from mnist_lab.runs.weights import SavedRun, save_weights, weights_dir
from mnist_lab.service import class_jobs
from mnist_lab.service.access import LOCAL, Asker, may
from mnist_lab.service.class_jobs import (
    EXPORT_FILES,
    class_job_file,
    class_snapshot,
    class_students,
    end_term,
    export_snapshot,
    export_zip,
    exports_dir,
    report_name,
    reports_zip,
    submit_class_job,
)
from mnist_lab.service.identity import Accounts, Identity, SignInError, class_roster
from mnist_lab.service.jobs import StoreRunner, job_view
from mnist_lab.service.queue import JobQueue
from mnist_lab.service.worker import Worker, WorkerConfig, job_time_limit
from mnist_lab.training.loop import TrainConfig
from tests.report_fixtures import DEFAULT_DATA, add_run

SECRET = b"s" * 32
TEACHER = Asker(workspace="teacher", shared=True, teacher=True)
STUDENT = Asker(workspace="student:Z9Q7X3K1", shared=True, student_id="Z9Q7X3K1", name="甄嬛测")
# distinctive 学号 and 姓名: grepped for in the database's bytes after the end of term
PEOPLE = [("Z9Q7X3K1", "甄嬛测"), ("Q4W8E2R6", "沈眉庄测")]


def student_runs(store: ResultStore, student_id: str, name: str, complete: bool) -> list[str]:
    """A student's runs without training: the lab's network on the full set, and (complete) a 2 x 2
    depth x kernel sweep with two seeds."""
    ids = []
    with store.context(job_id="", workspace=f"student:{student_id}", student_id=student_id, student_name=name):
        ids.append(add_run(store, PRESETS["lab5"].model, 0.985, steps=10))
        if complete:
            for layers in (1, 2):
                for kernel in (3, 5):
                    for seed in (0, 1):
                        ids.append(add_run(store, cnn_config(layers, kernel, padding="same"), 0.97 + 0.001 * seed,
                                           seed=seed, experiment="sweep", group_id=f"sweep-{student_id}", steps=10,
                                           label=f"{layers} conv × k{kernel}"))
    return ids


@pytest.fixture
def store(tmp_path) -> ResultStore:
    store = ResultStore(tmp_path / "results.sqlite")
    yield store
    store.close()


def test_only_the_teacher_and_a_local_user_may_act_on_the_class():
    assert may(TEACHER, "class", None) and may(LOCAL, "class", None)
    assert not may(STUDENT, "class", None)
    assert not may(Asker(workspace="visitor:x", shared=True, class_view=True), "class", None)
    assert not may(Asker(workspace="visitor:x", shared=True, demo=True), "class", None)


def test_class_students_are_the_roster_and_everyone_with_runs(store):
    student_runs(store, "Z9Q7X3K1", "甄嬛测", complete=False)
    accounts = Accounts(store, SECRET)
    accounts.import_roster("学号,姓名\nQ4W8E2R6,沈眉庄测\nZ9Q7X3K1,甄嬛\n")
    assert class_students(store) == [("student:Q4W8E2R6", "Q4W8E2R6", "沈眉庄测"),
                                     ("student:Z9Q7X3K1", "Z9Q7X3K1", "甄嬛")]  # the roster's name wins
    assert report_name("Z9Q7X3K1", "甄 嬛/测") == "Z9Q7X3K1_甄_嬛_测.docx"


def test_reports_zip_holds_each_students_docx_with_their_name_and_id_on_the_cover(store, tmp_path):
    for sid, name in PEOPLE:
        student_runs(store, sid, name, complete=sid == "Z9Q7X3K1")
    target = tmp_path / "out" / "reports.zip"
    seen = []
    started = time.perf_counter()
    assert reports_zip(store, class_students(store), "zh_CN", target, on_done=lambda d, t: seen.append((d, t))) == 2
    print(f"two reports: {time.perf_counter() - started:.2f} s")
    assert seen == [(1, 2), (2, 2)]
    with zipfile.ZipFile(target) as zf:
        assert sorted(zf.namelist()) == ["Q4W8E2R6_沈眉庄测.docx", "Z9Q7X3K1_甄嬛测.docx"]
        for sid, name in PEOPLE:
            text = "\n".join(p.text for p in Document(io.BytesIO(zf.read(f"{sid}_{name}.docx"))).paragraphs)
            assert name in text and sid in text
            other = next(s for s, _ in PEOPLE if s != sid)
            assert other not in text  # their own runs only
    assert [p.name for p in target.parent.iterdir()] == ["reports.zip"]  # no temporary file left


def test_a_stopped_zip_leaves_no_zip_and_no_temporary_file(store, tmp_path):
    for sid, name in PEOPLE:
        student_runs(store, sid, name, complete=False)
    cancel = threading.Event()
    target = tmp_path / "out" / "reports.zip"
    with pytest.raises(class_jobs.Stopped):
        reports_zip(store, class_students(store), "en", target, on_done=lambda d, t: cancel.set(), cancel=cancel)
    assert list(target.parent.iterdir()) == []


def test_the_export_streams_the_students_data_and_equals_the_store(store, tmp_path, monkeypatch):
    for sid, name in PEOPLE:
        student_runs(store, sid, name, complete=True)
    own = add_run(store, PRESETS["lab5"].model, 0.98, steps=10)  # the teacher's (local) run: not exported
    monkeypatch.setattr(class_jobs, "CHUNK_ROWS", 7)  # many chunks over a small store
    target = tmp_path / "export.zip"
    assert export_zip(store, [("Q4W8E2R6", "沈眉庄测")], "zh_CN", target) == len(EXPORT_FILES)
    with zipfile.ZipFile(target) as zf:
        assert zf.namelist() == list(EXPORT_FILES)
        read = {name: pd.read_csv(zf.open(name), dtype={"student_id": str}, keep_default_na=False)
                for name in EXPORT_FILES if name.endswith(".csv")}
        readme = zf.read("README.txt").decode()
    students = store.runs()
    students = students[students["student_id"] != ""]
    iterations = store.iterations(list(students["run_id"])).reset_index(drop=True)
    assert len(iterations) == len(store.iterations()) - 10 == 18 * 10
    pd.testing.assert_frame_equal(read["iterations.csv"], iterations, check_dtype=False)
    pd.testing.assert_frame_equal(read["epochs.csv"], store.epochs(list(students["run_id"])).reset_index(drop=True),
                                  check_dtype=False)
    assert list(read["runs.csv"].columns) == CSV_COLUMNS and own not in set(read["runs.csv"]["run_id"])
    assert sorted(read["runs.csv"]["run_id"]) == sorted(students["run_id"])
    assert read["students.csv"].to_dict("records") == [
        {"student_id": "Q4W8E2R6", "student_name": "沈眉庄测", "on_roster": True},
        {"student_id": "Z9Q7X3K1", "student_name": "甄嬛测", "on_roster": False}]
    assert list(read["progress.csv"]["student_id"]) == ["Q4W8E2R6", "Z9Q7X3K1"]
    assert "学号" in readme or "学生" in readme


def test_a_class_job_is_the_teachers_one_at_a_time_and_its_view_counts_units(store):
    queue = JobQueue(store)
    student_runs(store, "Z9Q7X3K1", "甄嬛测", complete=False)
    with pytest.raises(ConfigError, match="Only the teacher"):
        submit_class_job(queue, "reports", STUDENT, "zh_CN")
    with pytest.raises(ValueError):
        submit_class_job(queue, "train", TEACHER, "zh_CN")
    job_id = submit_class_job(queue, "reports", TEACHER, "zh_CN", client="10.0.0.1")
    with pytest.raises(ConfigError, match="already being built"):
        submit_class_job(queue, "reports", TEACHER, "zh_CN")
    row = queue.job(job_id)
    assert (row["workspace"], row["runs_total"], row["units_done"]) == ("teacher", 1, 0)
    assert json.loads(row["spec"]) == {"lang": "zh_CN", "students": [["student:Z9Q7X3K1", "Z9Q7X3K1", "甄嬛测"]]}
    view = job_view(queue, row)
    assert view.spec is None and view.runs == () and view.fraction == 0.0 and view.position == 1
    assert StoreRunner(store, asker=TEACHER).poll(job_id).units_done == 0
    assert StoreRunner(store, asker=STUDENT).poll(job_id) is None  # the teacher's job: not a student's to see
    queue.set_units_done(job_id, 1)
    assert job_view(queue, queue.job(job_id)).fraction == 1.0
    assert class_job_file(store.path, queue.job(job_id)) is None  # not finished
    assert queue.delete_jobs([job_id]) == 1 and queue.job(job_id) is None


@pytest.mark.parametrize("spec", [
    "not json", "{}", json.dumps({"lang": "zh_CN", "students": [["student:a", "a/../../b", "x"]]}),
    json.dumps({"lang": "fr", "students": []}), json.dumps({"lang": "en", "students": [["w", "id", "n", "x"]]}),
    json.dumps({"lang": "en", "students": [], "out": "/etc"}),
    json.dumps({"lang": "en", "students": [["student:a", "a", "line\nbreak"]]}),
    # a workspace that is not the 学号's: the teacher's or a local user's runs in a student's report
    json.dumps({"lang": "en", "students": [["teacher", "Z9Q7X3K1", "甄嬛测"]]}),
    json.dumps({"lang": "en", "students": [["local", "Z9Q7X3K1", "甄嬛测"]]}),
    json.dumps({"lang": "en", "students": [["student:Q4W8E2R6", "Z9Q7X3K1", "甄嬛测"]]}),
    json.dumps({"lang": "en", "students": [], "snapshot": "../x"}),
])
def test_a_tampered_spec_fails_the_job_with_a_clear_error_and_no_zip(store, spec):
    queue = JobQueue(store)
    student_runs(store, "Z9Q7X3K1", "甄嬛测", complete=False)
    job_id = submit_class_job(queue, "reports", TEACHER, "en")
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:  # a row changed behind the app's back
        conn.execute("UPDATE jobs SET spec = ? WHERE job_id = ?", (spec, job_id))
    Worker(WorkerConfig(db=str(store.path), warm=False, device="cpu")).run(max_jobs=1)
    view = StoreRunner(store, asker=TEACHER).poll(job_id)
    assert view.status == "failed" and "class job" in view.error
    assert not exports_dir(store.path).exists() or list(exports_dir(store.path).iterdir()) == []


def test_the_worker_builds_a_queued_reports_job_with_progress(store):
    for sid, name in PEOPLE:
        student_runs(store, sid, name, complete=False)
    queue = JobQueue(store)
    job_id = submit_class_job(queue, "reports", TEACHER, "zh_CN")
    Worker(WorkerConfig(db=str(store.path), warm=False, device="cpu")).run(max_jobs=1)
    row = queue.job(job_id)
    view = job_view(queue, row)
    assert (view.status, view.units_done, view.runs_total, view.fraction) == ("finished", 2, 2, 1.0)
    path = class_job_file(store.path, row)
    assert path == exports_dir(store.path) / f"{job_id}.zip"
    with zipfile.ZipFile(path) as zf:
        assert len(zf.namelist()) == 2


def test_a_stop_request_midway_ends_the_job_stopped_with_no_zip(store, monkeypatch):
    for sid, name in PEOPLE:
        student_runs(store, sid, name, complete=False)
    queue = JobQueue(store)
    job_id = submit_class_job(queue, "reports", TEACHER, "en")
    built = class_jobs.student_report

    def slow_first(*args, **kwargs):  # the teacher presses stop while the first report is built
        queue.request_stop(job_id)
        time.sleep(0.8)  # the worker's watcher reads the request (every 0.25 s)
        return built(*args, **kwargs)
    monkeypatch.setattr(class_jobs, "student_report", slow_first)
    Worker(WorkerConfig(db=str(store.path), warm=False, device="cpu")).run(max_jobs=1)
    view = job_view(queue, queue.job(job_id))
    assert view.status == "stopped" and view.units_done == 1
    assert list(exports_dir(store.path).iterdir()) == []  # neither the zip nor its temporary file


# ---------------------------------------------------------------------------------- the end of term

def _weights(store: ResultStore, run_id: str) -> Path:
    model = PRESETS["tiny-fc"].model
    return save_weights(store.path, SavedRun(run_id, model, TrainConfig(), DEFAULT_DATA,
                                             build_model(model).state_dict(), None, "finished", 0.9))


@pytest.fixture
def class_store(store):
    """Two students' runs with weights, their jobs, a roster with sessions and wrong sign-ins, a
    class job's zip; the teacher's own run with weights and the teacher's session."""
    accounts = Accounts(store, SECRET)
    codes = accounts.import_roster("学号,姓名\n" + "".join(f"{sid},{name}\n" for sid, name in PEOPLE))
    queue = JobQueue(store)
    for sid, name in PEOPLE:
        for run_id in student_runs(store, sid, name, complete=sid == "Z9Q7X3K1")[:2]:
            _weights(store, run_id)
        queue.submit(f"job-{sid}", f"student:{sid}", "train", f"{name}'s run", "{}", 1, sid, name, "10.0.0.7")
        queue.finish(f"job-{sid}", "finished")
        accounts.open_session(Identity("student", f"student:{sid}", sid, name), "10.0.0.7")
        with pytest.raises(SignInError):
            accounts.sign_in(sid, name, "WRONGCODE", "10.0.0.8", new_pin="123456")
    accounts.sign_in(PEOPLE[0][0], PEOPLE[0][1], codes[PEOPLE[0][0]], "10.0.0.7", new_pin="246810")
    accounts.open_session(Identity("visitor", "visitor:abc"), "10.0.0.9")
    teacher = accounts.open_session(Identity("teacher", "teacher"), "10.0.0.1")
    with store.context(job_id="", workspace="teacher"):
        mine = add_run(store, PRESETS["lab5"].model, 0.99, steps=10)
    _weights(store, mine)
    job_id = submit_class_job(queue, "reports", TEACHER, "zh_CN")
    queue.claim("test-worker")
    zipped = exports_dir(store.path) / f"{job_id}.zip"
    zipped.parent.mkdir()
    zipped.write_bytes("甄嬛测 Z9Q7X3K1".encode())  # what a reports zip names
    queue.finish(job_id, "finished")
    return store, queue, accounts, mine, teacher, job_id


def test_end_term_is_refused_with_the_wrong_number_and_while_a_student_trains(class_store):
    store, queue, accounts, *_ = class_store
    before = (len(store.runs()), len(queue.jobs(limit=100)), len(accounts.roster()), len(accounts.sessions()))
    with pytest.raises(ConfigError, match="type the number of students, 2"):
        end_term(store, queue, accounts, 3)
    queue.submit("job-active", "student:Q4W8E2R6", "train", "t", "{}", 1, "Q4W8E2R6", "沈眉庄测")
    with pytest.raises(ConfigError, match="still queued or running"):
        end_term(store, queue, accounts, 2)
    queue.request_stop("job-active")
    assert (len(store.runs()), len(queue.jobs(limit=100)) - 1, len(accounts.roster()),
            len(accounts.sessions())) == before


def test_end_term_leaves_no_trace_of_the_class(class_store):
    store, queue, accounts, mine, teacher, job_id = class_store
    assert len(list(weights_dir(store.path).iterdir())) == 4
    before = store.path.read_bytes() + Path(f"{store.path}-wal").read_bytes()
    assert all(sid.encode() in before and name.encode() in before for sid, name in PEOPLE)  # the check below bites
    cleared = end_term(store, queue, accounts, 2)
    assert (cleared.runs, cleared.jobs, cleared.students) == (9 + 1, 2 + 1, 2)
    assert cleared.sessions == 2 + 1 and cleared.files == 3 + 1  # 3 students' weights files, the zip
    assert list(store.runs()["run_id"]) == [mine]
    assert set(store.epochs()["run_id"]) == {mine} and set(store.iterations()["run_id"]) == {mine}
    assert [p.name for p in weights_dir(store.path).iterdir()] == [f"{mine}.safetensors"]
    assert queue.jobs(limit=100) == [] and not exports_dir(store.path).exists()
    assert accounts.roster() == [] and accounts.failures() == []
    assert [s["role"] for s in accounts.sessions()] == ["teacher"]
    assert accounts.session(teacher) == Identity("teacher", "teacher")
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        assert [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("students", "signin_failures")] \
            == [0, 0]
    for path in (store.path, Path(f"{store.path}-wal")):
        data = path.read_bytes() if path.exists() else b""
        for sid, name in PEOPLE:
            assert sid.encode() not in data and name.encode() not in data, path.name


# ---------------------------------------------------------------------------------- review findings

def test_end_term_refuses_a_job_queued_while_it_signs_the_class_out_and_class_jobs_meanwhile(class_store,
                                                                                              monkeypatch):
    store, queue, accounts, mine, teacher, job_id = class_store
    clear = accounts.clear_class
    refused = []

    def and_meanwhile():  # a student's page that checked its session just before: its job is queued after
        gone = clear()
        queue.submit("job-late", "student:Q4W8E2R6", "train", "t", "{}", 1, "Q4W8E2R6", "沈眉庄测", "10.0.0.7")
        with pytest.raises(ConfigError, match="being ended") as exc:
            submit_class_job(queue, "export", TEACHER, "en")
        refused.append(exc.value)
        return gone
    monkeypatch.setattr(accounts, "clear_class", and_meanwhile)
    runs = len(store.runs())
    with pytest.raises(ConfigError, match="1 jobs of the class are still queued"):
        end_term(store, queue, accounts, 2)
    assert refused and len(store.runs()) == runs and queue.job("job-late")["status"] == "queued"  # nothing deleted
    assert [s["role"] for s in accounts.sessions()] == ["teacher"]  # but the class was signed out first
    monkeypatch.setattr(accounts, "clear_class", clear)
    queue.request_stop("job-late")
    queue.finish("job-late", "stopped")
    cleared = end_term(store, queue, accounts, 2)
    assert cleared.jobs == 2 + 1 + 1 and queue.jobs(limit=100) == [] and list(store.runs()["run_id"]) == [mine]
    assert submit_class_job(queue, "export", TEACHER, "en")  # the marker went with the end of term


def test_end_term_deletes_what_the_export_writes_and_nothing_newer_than_its_snapshot(class_store, tmp_path):
    store, queue, accounts, mine, *_ = class_store
    with store.context(job_id="", workspace="student:Q4W8E2R6"):  # an earlier version's run: no owner columns
        legacy = add_run(store, PRESETS["lab5"].model, 0.9, steps=10)
    job_id = submit_class_job(queue, "export", TEACHER, "en")
    snapshot = export_snapshot(queue.job(job_id))
    assert snapshot == json.loads(queue.job(job_id)["spec"])["snapshot"] and export_snapshot({"kind": "train"}) is None
    queue.request_stop(job_id)
    queue.finish(job_id, "stopped")
    export_zip(store, class_roster(store), "en", tmp_path / "e.zip")
    with zipfile.ZipFile(tmp_path / "e.zip") as zf:
        exported = set(pd.read_csv(zf.open("runs.csv"))["run_id"])
    queue.submit("job-new", "student:Z9Q7X3K1", "train", "t", "{}", 1, "Z9Q7X3K1", "甄嬛测")  # after the export
    queue.finish("job-new", "finished")
    with pytest.raises(ConfigError, match="newer than the export"):
        end_term(store, queue, accounts, 2, snapshot=snapshot)
    with pytest.raises(ConfigError, match="snapshot must be"):
        end_term(store, queue, accounts, 2, snapshot="yesterday")
    before = set(store.runs()["run_id"])
    assert legacy in exported and before - exported == {mine}  # the export holds every run that will go
    end_term(store, queue, accounts, 2, snapshot=class_snapshot(store))
    assert list(store.runs()["run_id"]) == [mine]


def test_compact_gives_up_after_its_wait_while_another_program_reads_and_end_term_says_so(class_store, monkeypatch):
    store, queue, accounts, mine, *_ = class_store
    monkeypatch.setattr("mnist_lab.runs.store.COMPACT_WAIT_S", 1.0)  # 10 s on a server; the same path
    reader = sqlite3.connect(store.path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM runs").fetchone()  # a read transaction holds the log
    started = time.monotonic()
    with pytest.raises(StoreError, match="could not be compacted because another program"):
        end_term(store, queue, accounts, 2)
    assert time.monotonic() - started < 5  # not 2 x 25 tries of the connection's 30 s busy wait
    assert list(store.runs()["run_id"]) == [mine]  # the class was deleted all the same
    with pytest.raises(StoreError, match="could not be compacted"):
        store.compact(max_wait_s=0.3)
    reader.rollback()
    reader.close()
    assert end_term(store, queue, accounts, 0).runs == 0  # run again without the reader: compacted
    assert not Path(f"{store.path}-wal").exists() or Path(f"{store.path}-wal").stat().st_size == 0
    for sid, name in PEOPLE:
        assert sid.encode() not in store.path.read_bytes() and name.encode() not in store.path.read_bytes()


def test_class_jobs_have_no_time_limit_and_a_reports_job_outlives_it(store):
    assert job_time_limit(60.0, "train") == 60.0 and job_time_limit(60.0, "sweep") == 60.0
    assert job_time_limit(60.0, "reports") is None and job_time_limit(60.0, "export") is None
    assert job_time_limit(None, "train") is None
    for sid, name in PEOPLE:
        student_runs(store, sid, name, complete=False)
    queue = JobQueue(store)
    job_id = submit_class_job(queue, "reports", TEACHER, "en")
    Worker(WorkerConfig(db=str(store.path), warm=False, device="cpu", max_job_s=0.01)).run(max_jobs=1)
    assert queue.job(job_id)["status"] == "finished"


def test_report_names_that_collide_get_a_number(store, tmp_path):
    students = [("student:A1", "A1", "x/y"), ("student:A1_x", "A1_x", "y"), ("student:a1", "a1", "X y")]
    reports_zip(store, students, "en", tmp_path / "r.zip")
    with zipfile.ZipFile(tmp_path / "r.zip") as zf:
        assert zf.namelist() == ["A1_x_y.docx", "A1_x_y-2.docx", "a1_X_y-3.docx"]


def test_a_finished_class_job_removes_older_zips_of_its_kind_and_stale_temporary_files(store):
    student_runs(store, "Z9Q7X3K1", "甄嬛测", complete=False)
    queue = JobQueue(store)
    worker = Worker(WorkerConfig(db=str(store.path), warm=False, device="cpu"))
    first = submit_class_job(queue, "export", TEACHER, "en")
    worker.run(max_jobs=1)
    folder = exports_dir(store.path)
    stale, fresh = folder / ".x.zip.1-aa.tmp", folder / ".y.zip.2-bb.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half")
    old = time.time() - 2 * class_jobs.STALE_TMP_S
    os.utime(stale, (old, old))
    reports = submit_class_job(queue, "reports", TEACHER, "en")
    worker.run(max_jobs=1)
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{first}.zip", f"{reports}.zip", fresh.name])
    second = submit_class_job(queue, "export", TEACHER, "en")
    worker.run(max_jobs=1)
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{second}.zip", f"{reports}.zip", fresh.name])
    assert class_job_file(store.path, queue.job(first)) is None


FORMULAS = [("F1", "=HYPERLINK(\"http://x\",\"y\")"), ("F2", "@SUM(1)")]


def test_every_csv_of_the_export_quotes_a_name_a_spreadsheet_would_run(store, tmp_path):
    from tests.class_fixtures import lab5_half

    for sid, name in FORMULAS:
        lab5_half(store, sid, name)
    export_zip(store, class_roster(store), "en", tmp_path / "e.zip")
    with zipfile.ZipFile(tmp_path / "e.zip") as zf:
        for name in ("students.csv", "progress.csv", "runs.csv"):
            names = set(pd.read_csv(zf.open(name), keep_default_na=False)["student_name"])
            assert names == {"'" + n for _, n in FORMULAS}, name
    paths = store.export_csv(tmp_path / "csv")
    assert set(pd.read_csv(paths["runs"], keep_default_na=False)["student_name"]) == {"'" + n for _, n in FORMULAS}
