"""The teacher's class jobs and the end of term: every student's report as one zip, the term's data
as one zip (both queued jobs a worker builds with progress, `units_done` of `runs_total`, and can
stop between items), one student's report, and `end_term`, which deletes the class's runs, jobs,
accounts and files and compacts the database so nothing of them stays in its bytes.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mnist_lab.errors import ConfigError, need_choice, shorten
from mnist_lab.i18n import N_, resolve_lang, translator
from mnist_lab.lab import classwork
from mnist_lab.lab.report import Cover, build_report, to_docx
from mnist_lab.runs.store import CSV_COLUMNS, EPOCH_COLUMNS, ITERATION_COLUMNS, ResultStore
from mnist_lab.service.access import Asker, may
from mnist_lab.service.identity import ID_PATTERN, MAX_NAME, Accounts, class_roster, student_workspace
from mnist_lab.service.jobs import CLASS_KINDS
from mnist_lab.service.queue import JOB_ACTIVE, JOB_COLUMNS, JobQueue

EXPORTS_SUFFIX = ".exports"  # <db>.exports/<job_id>.zip: the finished class jobs' zips
MAX_STUDENTS = 5000  # in a class job's spec (a roster holds at most 2,000)
MAX_WORKSPACE = 100  # characters of a workspace name in a spec
CHUNK_ROWS = 50_000  # rows streamed into the export per read (a 60 x 100-run class keeps ~1.7 M iterations)
# The export's files, in the order they are written: each one is a unit of its progress.
EXPORT_FILES = ("students.csv", "progress.csv", "pooled_grid.csv", "pooled_compare.csv", "runs.csv", "epochs.csv",
                "iterations.csv", "jobs.csv", "README.txt")
# jobs.csv: a student's jobs without what may be private or unreadable (the spec, the browser's address)
EXPORT_JOB_COLUMNS = [c for c in JOB_COLUMNS if c not in ("spec", "client")]
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_UNSAFE = re.compile(r"[^\w\-]+")  # what a file name keeps of a name: letters (any script), digits, _ and -

NOT_TEACHER = N_("Only the teacher may build the class's reports and exports or end the term.")
ALREADY_BUILDING = N_("The class's {kind} are already being built: wait for that job to finish, or stop it.")
NO_STUDENTS = N_("There are no students yet: load the class list, or wait for students to train.")
WRONG_CONFIRM = N_("To end the term, type the number of students, {n}, to confirm; got {value}.")
STILL_TRAINING = N_("{n} jobs of the class are still queued or running: stop them (or wait), then end the term.")
README = N_("""The term's data of the class, exported by MNIST CNN Lab.

students.csv: every student (student ID, name, whether on the class list).
progress.csv: each student's progress through lab 5 (done / partial / missing per requirement) and the week-2 lessons.
pooled_grid.csv: the class's pooled depth x kernel experiment: every student's runs with the same settings, one run
per configuration and seed; mean and sample sd of the test accuracy over the seeds.
pooled_compare.csv: the class's pooled FC-vs-CNN comparison, likewise.
runs.csv: every run of a student, with its settings, result and owner (student_id, student_name).
epochs.csv: each epoch of those runs (losses and test accuracy).
iterations.csv: the training loss of every iteration of those runs.
jobs.csv: the students' training jobs (what each asked to train, when, and how it ended).
""")


class Stopped(Exception):
    """A class job's zip was stopped between two items (its `cancel` set): no zip was left."""


# ------------------------------------------------------------------------------ files and students

def exports_dir(db_path: str | Path) -> Path:
    """The folder beside the database `db_path` that keeps the class jobs' zips (`<db>.exports/`)."""
    db = Path(db_path)
    return db.with_name(f"{db.name}{EXPORTS_SUFFIX}")


def class_job_file(db_path: str | Path, job: dict) -> Path | None:
    """The zip of the finished class job `job` (a JobQueue row), if it is there."""
    job_id = str(job.get("job_id") or "")
    if job.get("kind") not in CLASS_KINDS or job.get("status") != "finished" or not _JOB_ID.fullmatch(job_id):
        return None
    path = exports_dir(db_path) / f"{job_id}.zip"
    return path if path.is_file() else None


def class_students(store: ResultStore) -> list[tuple[str, str, str]]:
    """(workspace, 学号, 姓名) of every student on the roster and every other student who has runs,
    by 学号: a student with runs has the workspace and name of their newest run (the roster's name
    if on it), one without the workspace a sign-in would give them."""
    owned = store.visible_runs(None)[["student_id", "student_name", "workspace"]]  # newest first
    owned = owned[owned["student_id"] != ""].drop_duplicates("student_id")
    found = {sid: (ws, name) for sid, name, ws in owned.itertuples(index=False)}
    roster = dict(class_roster(store))
    ids = sorted(set(roster) | set(found))
    return [(found[sid][0] if sid in found else student_workspace(sid), sid,
             roster.get(sid) or found[sid][1]) for sid in ids]


def report_name(student_id: str, name: str) -> str:
    """A student's report's file name in the zip: "<学号>_<姓名>.docx", with anything a file name
    cannot hold (a slash, a space, a control character) made '_'."""
    stem = _UNSAFE.sub("_", f"{student_id}_{name}").strip("_") or "student"
    return f"{stem[:100]}.docx"


def student_report(store: ResultStore, workspace: str, student_id: str, name: str, lang: str) -> bytes:
    """One student's report as the .docx they download themselves: their runs only, their name
    and 学号 on the cover, without the server's detail."""
    report = build_report(store, resolve_lang(lang), workspace=(workspace,),
                          cover=Cover(name=name[:MAX_NAME], student_id=student_id), detail=False)
    return to_docx(report)


# ------------------------------------------------------------------------------ zips

@contextlib.contextmanager
def _whole_zip(target: Path):
    """A zip written under a temporary name beside `target` and put in place only when whole:
    a failure or a stop leaves neither the zip nor the temporary file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                yield zf
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Stopped


def reports_zip(store: ResultStore, students: Iterable[tuple[str, str, str]], lang: str, target: Path,
                on_done: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None) -> int:
    """Every student's report (`students`: (workspace, 学号, 姓名)) as a .docx named
    report_name(学号, 姓名) in the zip `target`, written whole; `on_done(done, total)` after each;
    Stopped (and no zip) when `cancel` is set between two reports. Returns how many reports."""
    students = list(students)
    with _whole_zip(target) as zf:
        for done, (workspace, student_id, name) in enumerate(students, start=1):
            _check(cancel)
            zf.writestr(report_name(student_id, name), student_report(store, workspace, student_id, name, lang))
            if on_done is not None:
                on_done(done, len(students))
        _check(cancel)
    return len(students)


def _read_conn(store: ResultStore) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, timeout=30)


_STUDENT_RUN = "COALESCE(r.student_id, '') != ''"


def _stream_csv(zf: zipfile.ZipFile, name: str, conn: sqlite3.Connection, sql: str, columns: list[str],
                cancel: threading.Event | None) -> None:
    """The rows of `sql` as the CSV `name` in the zip, CHUNK_ROWS at a time (never the whole table in
    memory), in the format pandas writes runs.csv's tables."""
    with zf.open(name, "w", force_zip64=True) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as out:
        out.write(",".join(columns) + "\n")
        for chunk in pd.read_sql_query(sql, conn, chunksize=CHUNK_ROWS):
            _check(cancel)
            chunk.to_csv(out, header=False, index=False)


def export_zip(store: ResultStore, accounts_roster: Iterable[tuple[str, str]], lang: str, target: Path,
               on_done: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None) -> int:
    """The term's data as the zip `target`, written whole (EXPORT_FILES): the students (学号, 姓名, on
    the roster: no PIN, no code), their progress and the pooled tables (classwork), their runs
    (runs.csv's columns), epochs and iterations (streamed), their jobs (no spec, no address) and a
    README in `lang`. `accounts_roster`: the roster's (学号, 姓名). `on_done(done, total)` after each
    file; Stopped (and no zip) when `cancel` is set. Returns how many files."""
    roster = list(accounts_roster)
    total, done = len(EXPORT_FILES), 0

    def step(zf: zipfile.ZipFile, name: str, text: str | None = None) -> None:
        nonlocal done
        if text is not None:
            zf.writestr(name, text)
        done += 1
        if on_done is not None:
            on_done(done, total)
        _check(cancel)

    on_roster = {sid for sid, _ in roster}
    students = pd.DataFrame([(sid, name, sid in on_roster) for _, sid, name in class_students(store)],
                            columns=["student_id", "student_name", "on_roster"])
    runs = classwork.class_runs(store)
    tables = classwork.pooled_tables(runs)
    with _whole_zip(target) as zf, contextlib.closing(_read_conn(store)) as conn:
        _check(cancel)
        step(zf, "students.csv", students.to_csv(index=False))
        step(zf, "progress.csv", classwork.progress_table(runs, roster).to_csv(index=False))
        step(zf, "pooled_grid.csv", tables["pooled_grid"].to_csv(index=False))
        step(zf, "pooled_compare.csv", tables["pooled_compare"].to_csv(index=False))
        owned = ", ".join(f"COALESCE(r.{c}, '') AS {c}" if c in ("student_id", "student_name") else f"r.{c}"
                          for c in CSV_COLUMNS)
        _stream_csv(zf, "runs.csv", conn, f"SELECT {owned} FROM runs r WHERE {_STUDENT_RUN} "
                    "ORDER BY r.started_at DESC, r.run_id", CSV_COLUMNS, cancel)
        step(zf, "runs.csv")
        for name, table, columns, order in (("epochs.csv", "epochs", EPOCH_COLUMNS, "epoch"),
                                            ("iterations.csv", "iterations", ITERATION_COLUMNS, "iteration")):
            picked = ", ".join(f"t.{c}" for c in columns)
            _stream_csv(zf, name, conn, f"SELECT {picked} FROM {table} t JOIN runs r ON r.run_id = t.run_id "
                        f"WHERE {_STUDENT_RUN} ORDER BY t.run_id, t.{order}", columns, cancel)
            step(zf, name)
        _stream_csv(zf, "jobs.csv", conn, f"SELECT {', '.join(EXPORT_JOB_COLUMNS)} FROM jobs r "
                    f"WHERE {_STUDENT_RUN} ORDER BY seq", EXPORT_JOB_COLUMNS, cancel)
        step(zf, "jobs.csv")
        step(zf, "README.txt", translator(resolve_lang(lang)).gettext(README))
    return total


# ------------------------------------------------------------------------------ class jobs

def _spec_json(lang: str, students: list[tuple[str, str, str]]) -> str:
    return json.dumps({"lang": lang, "students": [list(s) for s in students]}, ensure_ascii=False)


def read_spec(text: object) -> tuple[str, list[tuple[str, str, str]]]:
    """A class job's spec read back and checked whole: (language, [(workspace, 学号, 姓名), ...]);
    ConfigError naming the field for anything else (a damaged or tampered row)."""
    try:
        spec = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        spec = None
    if not isinstance(spec, dict) or set(spec) != {"lang", "students"}:
        raise ConfigError("job", shorten(text), N_("A class job's settings must be its language and students; got "
                                                   "{value}: it was written by another program, or damaged."))
    lang, students = spec["lang"], spec["students"]
    if lang not in ("en", "zh_CN"):
        raise ConfigError("job.lang", shorten(lang), N_("A class job's language must be en or zh_CN; got {value}."))
    if not isinstance(students, list) or len(students) > MAX_STUDENTS:
        raise ConfigError("job.students", shorten(students), N_("A class job's students must be a list of at most "
                                                               "{high}; got {value}."), high=MAX_STUDENTS)
    checked = []
    for i, entry in enumerate(students):
        ok = (isinstance(entry, list) and len(entry) == 3 and all(isinstance(x, str) for x in entry)
              and 0 < len(entry[0]) <= MAX_WORKSPACE and entry[0].isprintable()
              and ID_PATTERN.fullmatch(entry[1]) is not None and len(entry[2]) <= MAX_NAME and entry[2].isprintable())
        if not ok:
            field = f"job.students[{i}]"
            raise ConfigError(field, shorten(entry), N_("A class job's student must be a workspace, a student ID "
                                                        "and a name; got {value}."))
        checked.append((entry[0], entry[1], entry[2]))
    return lang, checked


def submit_class_job(queue: JobQueue, kind: str, asker: Asker, lang: str, client: str = "") -> str:
    """Queue a class job of `kind` (CLASS_KINDS: "reports", every student's report; "export", the
    term's data) for the teacher `asker`, its words in `lang`; returns its id. Refused (ConfigError)
    for anyone else, while one of that kind is queued or running, and for reports without students."""
    need_choice("kind", kind, "Class job", CLASS_KINDS)
    if not may(asker, "class", None):
        raise ConfigError("kind", kind, NOT_TEACHER)
    if queue.jobs(kinds=[kind], statuses=JOB_ACTIVE, limit=1):
        raise ConfigError("kind", kind, ALREADY_BUILDING, kind=N_("reports") if kind == "reports" else N_("exports"))
    students = class_students(queue.store)
    if kind == "reports" and not students:
        raise ConfigError("kind", kind, NO_STUDENTS)
    job_id = uuid.uuid4().hex
    total = len(students) if kind == "reports" else len(EXPORT_FILES)
    queue.submit(job_id, asker.workspace, kind, "", _spec_json(resolve_lang(lang), students), total, client=client)
    return job_id


def execute_class_job(job: dict, store: ResultStore, queue: JobQueue, cancel: threading.Event) -> str:
    """Build the class job `job` (a claimed JobQueue row) into exports/<job_id>.zip, whole; its
    `units_done` after each item; 'finished', or 'stopped' (no zip) when `cancel` is set between
    two items. A spec that is not one (read_spec) raises ConfigError before anything is written."""
    lang, students = read_spec(job["spec"])
    job_id = str(job["job_id"])
    if not _JOB_ID.fullmatch(job_id):
        raise ConfigError("job_id", shorten(job_id), N_("A class job's id must be 32 hexadecimal digits; got "
                                                       "{value}."))
    target = exports_dir(store.path) / f"{job_id}.zip"

    def on_done(done: int, total: int) -> None:
        queue.set_units_done(job_id, done)

    try:
        if job["kind"] == "reports":
            reports_zip(store, students, lang, target, on_done, cancel)
        else:
            export_zip(store, class_roster(store), lang, target, on_done, cancel)
    except Stopped:
        return "stopped"
    return "finished"


# ------------------------------------------------------------------------------ the end of term

@dataclass(frozen=True)
class TermCleared:
    """What the end of term deleted."""

    runs: int
    jobs: int
    students: int
    sessions: int
    files: int  # weights files and class zips


def _student_run_ids(store: ResultStore) -> list[str]:
    runs = store.visible_runs(None)[["run_id", "student_id", "workspace"]]
    owned = (runs["student_id"] != "") | runs["workspace"].str.startswith("student:")
    return list(runs.loc[owned, "run_id"])


def end_term(store: ResultStore, queue: JobQueue, accounts: Accounts, confirm: int) -> TermCleared:
    """Delete the class: every student's runs (epochs, iterations, weights files), every student's
    job and every class job (and its zip), the students, their codes and PINs, the sessions of
    students and visitors and every counted wrong sign-in; the teacher's own runs and session stay.
    `confirm` must be the number of students (class_students); refused while a student's or a class
    job is queued or running. The database is compacted after, so no deleted byte stays in it."""
    n = len(class_students(store))
    if not isinstance(confirm, int) or isinstance(confirm, bool) or confirm != n:
        raise ConfigError("confirm", shorten(confirm, quote=False), WRONG_CONFIRM, n=n)
    jobs = queue.jobs(limit=10**9)
    ours = [j for j in jobs if j["student_id"] or j["kind"] in CLASS_KINDS
            or str(j["workspace"] or "").startswith("student:")]
    active = [j for j in ours if j["status"] in JOB_ACTIVE]
    if active:
        raise ConfigError("confirm", confirm, STILL_TRAINING, n=len(active))
    run_ids = _student_run_ids(store)
    files = 0
    for start in range(0, len(run_ids), 500):  # well under SQLite's limit on an IN list
        chunk = run_ids[start:start + 500]
        files += len(store.inspectable(chunk))
        store.delete_runs(chunk)
    for job in ours:
        path = exports_dir(store.path) / f"{job['job_id']}.zip"
        if _JOB_ID.fullmatch(str(job["job_id"])) and path.is_file():
            path.unlink()
            files += 1
    folder = exports_dir(store.path)
    if folder.is_dir():  # a temporary file a killed worker left: the folder is the class jobs' only
        for leftover in folder.iterdir():
            if leftover.is_file() and (leftover.suffix in (".zip", ".tmp")):
                leftover.unlink()
                files += 1
        with contextlib.suppress(OSError):
            folder.rmdir()
    deleted_jobs = queue.delete_jobs([j["job_id"] for j in ours])
    cleared = accounts.clear_class()
    store.compact()
    return TermCleared(len(run_ids), deleted_jobs, cleared["students"], cleared["sessions"], files)
