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
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from mnist_lab.errors import ConfigError, StoreError, need_choice, shorten
from mnist_lab.i18n import N_, resolve_lang, translator
from mnist_lab.lab import classwork
from mnist_lab.lab.report import Cover, build_report, to_docx
from mnist_lab.paths import csv_text
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
STALE_TMP_S = 3600  # a temporary file in exports/ older than this was left by a killed worker
ENDING_S = 600  # an end-of-term marker older than this was left by a killed process
# The class's rows, one filter for what the export writes and what the end of term deletes: a run or job
# with an owner, or in a student's workspace (an earlier version's run may have no owner columns)...
STUDENT_ROWS = "(COALESCE(student_id, '') != '' OR COALESCE(workspace, '') LIKE 'student:%')"
# ...and for jobs, the teacher's class jobs too (their zips name every student)
CLASS_JOB_ROWS = f"({STUDENT_ROWS} OR kind IN ({', '.join(repr(k) for k in CLASS_KINDS)}))"
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_SNAPSHOT = re.compile(r"(\d{1,18})/(\d{1,12}\.\d{6})")  # class_snapshot: "<job seq>/<time.time()>"
_UNSAFE = re.compile(r"[^\w\-]+")  # what a file name keeps of a name: letters (any script), digits, _ and -

NOT_TEACHER = N_("Only the teacher may build the class's reports and exports or end the term.")
ALREADY_BUILDING = N_("The class's {kind} are already being built: wait for that job to finish, or stop it.")
NO_STUDENTS = N_("There are no students yet: load the class list, or wait for students to train.")
WRONG_CONFIRM = N_("To end the term, type the number of students, {n}, to confirm; got {value}.")
STILL_TRAINING = N_("{n} jobs of the class are still queued or running: stop them (or wait), then end the term.")
ENDING = N_("The term is being ended: no class job can be started now.")
NOT_EXPORTED = N_("{n} of the class's runs or jobs are newer than the export (or were still training when it was "
                  "built): build the export again, download it, then end the term.")
NOT_COMPACTED = N_("The class was deleted, but the database {path} could not be compacted because another program "
                   "is reading it ({detail}), so deleted bytes may stay in the file: close that program (a database "
                   "browser, a backup, another server on this file) and run the end of term again.")
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
    by 学号: the workspace a sign-in gives them (where their jobs train), the roster's name, else
    the name of their newest run."""
    owned = store.visible_runs(None)[["student_id", "student_name"]]  # newest first
    owned = owned[owned["student_id"] != ""].drop_duplicates("student_id")
    found = dict(owned.itertuples(index=False))
    roster = dict(class_roster(store))
    return [(student_workspace(sid), sid, roster.get(sid) or found[sid]) for sid in sorted(set(roster) | set(found))]


def report_name(student_id: str, name: str) -> str:
    """A student's report's file name in the zip: "<学号>_<姓名>.docx", with anything a file name
    cannot hold (a slash, a space, a control character) made '_'."""
    stem = _UNSAFE.sub("_", f"{student_id}_{name}").strip("_") or "student"
    return f"{stem[:100]}.docx"


def _unique(file_name: str, used: set[str]) -> str:
    """`file_name`, or "<stem>-2.docx", "-3", ... when a name in `used` (casefolded) has it already
    (two names that differ only in what a file name cannot hold, or in case); added to `used`."""
    stem, suffix = os.path.splitext(file_name)
    candidate, n = file_name, 1
    while candidate.casefold() in used:
        n += 1
        candidate = f"{stem}-{n}{suffix}"
    used.add(candidate.casefold())
    return candidate


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
    used: set[str] = set()  # the names taken, casefolded: a zip unpacked on Windows or macOS ignores case
    with _whole_zip(target) as zf:
        for done, (workspace, student_id, name) in enumerate(students, start=1):
            _check(cancel)
            zf.writestr(_unique(report_name(student_id, name), used),
                        student_report(store, workspace, student_id, name, lang))
            if on_done is not None:
                on_done(done, len(students))
        _check(cancel)
    return len(students)


def _read_conn(store: ResultStore) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, timeout=30)


def _stream_csv(zf: zipfile.ZipFile, name: str, conn: sqlite3.Connection, sql: str, columns: list[str],
                cancel: threading.Event | None) -> None:
    """The rows of `sql` as the CSV `name` in the zip, CHUNK_ROWS at a time (never the whole table in
    memory), in the format pandas writes runs.csv's tables."""
    with zf.open(name, "w", force_zip64=True) as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as out:
        out.write(",".join(columns) + "\n")
        for chunk in pd.read_sql_query(sql, conn, chunksize=CHUNK_ROWS):
            _check(cancel)
            out.write(csv_text(chunk, header=False))  # run_id and labels are text a spreadsheet reads


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
        step(zf, "students.csv", csv_text(students))
        step(zf, "progress.csv", csv_text(classwork.progress_table(runs, roster)))
        step(zf, "pooled_grid.csv", csv_text(tables["pooled_grid"]))
        step(zf, "pooled_compare.csv", csv_text(tables["pooled_compare"]))
        owned = ", ".join(f"COALESCE({c}, '') AS {c}" if c in ("student_id", "student_name") else c
                          for c in CSV_COLUMNS)
        _stream_csv(zf, "runs.csv", conn, f"SELECT {owned} FROM runs WHERE {STUDENT_ROWS} "
                    "ORDER BY started_at DESC, run_id", CSV_COLUMNS, cancel)
        step(zf, "runs.csv")
        for name, table, columns, order in (("epochs.csv", "epochs", EPOCH_COLUMNS, "epoch"),
                                            ("iterations.csv", "iterations", ITERATION_COLUMNS, "iteration")):
            picked = ", ".join(f"t.{c}" for c in columns)
            _stream_csv(zf, name, conn, f"SELECT {picked} FROM {table} t WHERE t.run_id IN "
                        f"(SELECT run_id FROM runs WHERE {STUDENT_ROWS}) ORDER BY t.run_id, t.{order}", columns, cancel)
            step(zf, name)
        _stream_csv(zf, "jobs.csv", conn, f"SELECT {', '.join(EXPORT_JOB_COLUMNS)} FROM jobs "
                    f"WHERE {STUDENT_ROWS} ORDER BY seq", EXPORT_JOB_COLUMNS, cancel)
        step(zf, "jobs.csv")
        step(zf, "README.txt", translator(resolve_lang(lang)).gettext(README))
    return total


# ------------------------------------------------------------------------------ class jobs

def _spec_json(lang: str, students: list[tuple[str, str, str]], snapshot: str | None = None) -> str:
    spec = {"lang": lang, "students": [list(s) for s in students]}
    if snapshot is not None:  # an export: what it holds, for end_term(snapshot=...)
        spec["snapshot"] = snapshot
    return json.dumps(spec, ensure_ascii=False)


def _load_spec(text: object) -> dict:
    try:
        spec = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        spec = None
    if not isinstance(spec, dict) or set(spec) - {"snapshot"} != {"lang", "students"}:
        raise ConfigError("job", shorten(text), N_("A class job's settings must be its language and students; got "
                                                   "{value}: it was written by another program, or damaged."))
    if "snapshot" in spec and not (isinstance(spec["snapshot"], str) and _SNAPSHOT.fullmatch(spec["snapshot"])):
        raise ConfigError("job.snapshot", shorten(spec["snapshot"]), N_("A class job's snapshot must be a job number "
                                                                        "and a time; got {value}."))
    return spec


def export_snapshot(job: dict) -> str | None:
    """The snapshot (class_snapshot) an export job `job` (a JobQueue row) was built after, to pass
    to end_term(snapshot=...); None for another job or a spec without one."""
    if job.get("kind") != "export":
        return None
    return _load_spec(job.get("spec")).get("snapshot")


def read_spec(text: object) -> tuple[str, list[tuple[str, str, str]]]:
    """A class job's spec read back and checked whole: (language, [(workspace, 学号, 姓名), ...]),
    each workspace the one of that 学号 (a tampered row cannot build a report of the teacher's or a
    local user's runs); ConfigError naming the field for anything else (a damaged or tampered row)."""
    spec = _load_spec(text)
    lang, students = spec["lang"], spec["students"]
    if lang not in ("en", "zh_CN"):
        raise ConfigError("job.lang", shorten(lang), N_("A class job's language must be en or zh_CN; got {value}."))
    if not isinstance(students, list) or len(students) > MAX_STUDENTS:
        raise ConfigError("job.students", shorten(students), N_("A class job's students must be a list of at most "
                                                               "{high}; got {value}."), high=MAX_STUDENTS)
    checked = []
    for i, entry in enumerate(students):
        ok = (isinstance(entry, list) and len(entry) == 3 and all(isinstance(x, str) for x in entry)
              and 0 < len(entry[0]) <= MAX_WORKSPACE and ID_PATTERN.fullmatch(entry[1]) is not None
              and entry[0] == student_workspace(entry[1]) and len(entry[2]) <= MAX_NAME and entry[2].isprintable())
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
    if _ending(queue.store):
        raise ConfigError("kind", kind, ENDING)
    if queue.jobs(kinds=[kind], statuses=JOB_ACTIVE, limit=1):
        raise ConfigError("kind", kind, ALREADY_BUILDING, kind=N_("reports") if kind == "reports" else N_("exports"))
    students = class_students(queue.store)
    if kind == "reports" and not students:
        raise ConfigError("kind", kind, NO_STUDENTS)
    job_id = uuid.uuid4().hex
    total = len(students) if kind == "reports" else len(EXPORT_FILES)
    snapshot = class_snapshot(queue.store) if kind == "export" else None  # before it is queued: it reads later
    queue.submit(job_id, asker.workspace, kind, "", _spec_json(resolve_lang(lang), students, snapshot), total,
                 client=client)
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
    older = [j["job_id"] for j in queue.jobs(kinds=[job["kind"]], limit=10**6) if j["job_id"] != job_id]
    prune_exports(store.path, older)
    return "finished"


def prune_exports(db_path: str | Path, job_ids: Iterable[str], now: float | None = None) -> int:
    """Remove the zips of the class jobs `job_ids` (older ones of the kind a job just built) and the
    temporary files a killed worker left (older than STALE_TMP_S) from `<db>.exports/`; how many."""
    folder, now = exports_dir(db_path), time.time() if now is None else now
    gone = [folder / f"{j}.zip" for j in job_ids if _JOB_ID.fullmatch(str(j))]
    with contextlib.suppress(OSError):
        gone += [p for p in folder.glob(".*.tmp") if now - p.stat().st_mtime > STALE_TMP_S]
    removed = 0
    for path in gone:
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


# ------------------------------------------------------------------------------ the end of term

@dataclass(frozen=True)
class TermCleared:
    """What the end of term deleted."""

    runs: int
    jobs: int
    students: int
    sessions: int
    files: int  # weights files and class zips


def class_snapshot(store: ResultStore) -> str:
    """What an export about to read the store will hold, for end_term(snapshot=...): the newest
    job's number and the time now, as "<seq>/<time.time()>". Take it before the export reads."""
    with contextlib.closing(_read_conn(store)) as conn:
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0]
    return f"{int(seq)}/{time.time():.6f}"


def _not_exported(conn: sqlite3.Connection, snapshot: str) -> int:
    """How many of the class's jobs and runs an export taken at `snapshot` may lack: a job queued
    after it, or one that started or ended after it (its runs were still training), or a run that
    started after it."""
    match = _SNAPSHOT.fullmatch(snapshot) if isinstance(snapshot, str) else None
    if match is None:
        raise ConfigError("snapshot", shorten(snapshot), N_("An export's snapshot must be a job number and a time; "
                                                            "got {value}."))
    seq, at = int(match[1]), float(match[2])
    jobs = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {STUDENT_ROWS} AND (seq > ? OR COALESCE(started_at, 0) > ? "
                        "OR COALESCE(finished_at, 0) > ?)", (seq, at, at)).fetchone()[0]
    runs = 0
    for (started,) in conn.execute(f"SELECT started_at FROM runs WHERE {STUDENT_ROWS}"):
        with contextlib.suppress(TypeError, ValueError, OverflowError):  # an earlier version's start: not newer
            runs += datetime.fromisoformat(started).timestamp() > at
    return jobs + runs


def _ending_marker(db_path: str | Path) -> Path:
    db = Path(db_path)
    return db.with_name(f"{db.name}.ending")


def _ending(store: ResultStore) -> bool:
    """Whether an end of term is under way on this database (its marker, younger than ENDING_S)."""
    with contextlib.suppress(OSError):
        return time.time() - _ending_marker(store.path).stat().st_mtime < ENDING_S
    return False


def end_term(store: ResultStore, queue: JobQueue, accounts: Accounts, confirm: int,
             snapshot: str | None = None) -> TermCleared:
    """Delete the class: every student's runs (epochs, iterations, weights files), every student's
    job and every class job (and its zip), the students, their codes and PINs, the sessions of
    students and visitors and every counted wrong sign-in; the teacher's own runs and session stay.
    `confirm` must be the number of students (class_students); refused while a student's or a class
    job is queued or running. `snapshot`: class_snapshot() taken before the export was read (the
    CLI's, or export_snapshot(job) of the page's export job); then refused if any of the class's runs
    or jobs is newer, so nothing is deleted that the export lacks. The class's rows are the ones the
    export writes (STUDENT_ROWS; for jobs CLASS_JOB_ROWS).

    In this order, so that nothing the class submits meanwhile survives: the students and visitors
    are signed out first and class jobs refused (no one can queue a job any more), then ONE write
    transaction checks again and deletes the jobs, runs, epochs, iterations, students, sessions and
    wrong sign-ins; then the weights files and zips go, and the database is compacted, so no deleted
    byte stays in it (a program reading it meanwhile: StoreError NOT_COMPACTED, after the deletion:
    run it again, with 0 students, once that program is closed)."""
    n = len(class_students(store))
    if not isinstance(confirm, int) or isinstance(confirm, bool) or confirm != n:
        raise ConfigError("confirm", shorten(confirm, quote=False), WRONG_CONFIRM, n=n)
    check_term_ready(store, confirm, snapshot)  # refused before anything changes
    marker = _ending_marker(store.path)
    marker.touch()
    try:
        signed_out = accounts.clear_class()  # from here no student's or visitor's session is valid
        with store.immediate() as conn:
            _refuse_unfinished(conn, confirm, snapshot)  # a job queued meanwhile: nothing was deleted
            run_ids = [r for (r,) in conn.execute(f"SELECT run_id FROM runs WHERE {STUDENT_ROWS}")]
            job_ids = [j for (j,) in conn.execute(f"SELECT job_id FROM jobs WHERE {CLASS_JOB_ROWS}")]
            class_runs = f"run_id IN (SELECT run_id FROM runs WHERE {STUDENT_ROWS})"
            conn.execute(f"DELETE FROM iterations WHERE {class_runs}")
            conn.execute(f"DELETE FROM epochs WHERE {class_runs}")
            runs = conn.execute(f"DELETE FROM runs WHERE {STUDENT_ROWS}").rowcount
            jobs = conn.execute(f"DELETE FROM jobs WHERE {CLASS_JOB_ROWS}").rowcount
            # what Accounts.clear_class deleted, again: anyone who signed in between
            students = conn.execute("DELETE FROM students").rowcount
            sessions = conn.execute("DELETE FROM sessions WHERE COALESCE(role, '') != 'teacher'").rowcount
            conn.execute("DELETE FROM signin_failures")
        files = store.delete_weights(run_ids) + prune_exports(store.path, job_ids, now=float("inf"))
        folder = exports_dir(store.path)
        if folder.is_dir():  # the class jobs' folder: anything left in it (a zip without its job) goes too
            for leftover in folder.iterdir():
                if leftover.is_file() and leftover.suffix in (".zip", ".tmp"):
                    leftover.unlink()
                    files += 1
            with contextlib.suppress(OSError):
                folder.rmdir()
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()
    cleared = TermCleared(runs, jobs, signed_out["students"] + students, signed_out["sessions"] + sessions, files)
    try:
        store.compact()
    except StoreError as exc:
        raise StoreError(exc.path, exc.detail, NOT_COMPACTED) from None
    return cleared


def check_term_ready(store: ResultStore, confirm: object = None, snapshot: str | None = None) -> None:
    """What end_term checks before it changes anything (the CLI asks before it exports): ConfigError
    while a class job is queued or running, or when the class has runs or jobs newer than `snapshot`."""
    with contextlib.closing(_read_conn(store)) as conn:
        _refuse_unfinished(conn, confirm, snapshot)


def _refuse_unfinished(conn: sqlite3.Connection, confirm: object, snapshot: str | None) -> None:
    """ConfigError while a class job is queued or running, or (`snapshot`) the export lacks some of the class."""
    active = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE {CLASS_JOB_ROWS} AND status IN "
                          f"({', '.join('?' for _ in JOB_ACTIVE)})", JOB_ACTIVE).fetchone()[0]
    if active:
        raise ConfigError("confirm", confirm, STILL_TRAINING, n=active)
    if snapshot is not None and (newer := _not_exported(conn, snapshot)):
        raise ConfigError("snapshot", shorten(snapshot), NOT_EXPORTED, n=newer)
