"""The teacher's class jobs (service/class_jobs.py): every student's report as one zip, the term's
data as one zip (queued, built by the worker with progress, stoppable, written whole or not at all),
and the end of term, which leaves no trace of the class in the store, its files or its bytes."""
from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from docx import Document

from mnist_lab.errors import ConfigError
from mnist_lab.nets.model import build_model
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.runs.store import CSV_COLUMNS, ResultStore
from mnist_lab.runs.weights import SavedRun, save_weights, weights_dir
from mnist_lab.service import class_jobs
from mnist_lab.service.access import LOCAL, Asker, may
from mnist_lab.service.class_jobs import (
    EXPORT_FILES,
    class_job_file,
    class_students,
    end_term,
    export_zip,
    exports_dir,
    report_name,
    reports_zip,
    submit_class_job,
)
from mnist_lab.service.identity import Accounts, Identity, SignInError
from mnist_lab.service.jobs import StoreRunner, job_view
from mnist_lab.service.queue import JobQueue
from mnist_lab.service.worker import Worker, WorkerConfig
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
