"""A full disk and a read-only place, named as such (issue 21): the results database full (SQLite's
`PRAGMA max_page_count`, and a 2 MB tmpfs filled while a run trains), read-only (a read-only mount,
or permissions where the tests do not run as root), a device or kernel file as --db, and --out on a
full or read-only folder. The message says what it is (never "move it aside" for a healthy file),
nothing is left 0-byte, and a run cut short ends 'failed' with the reason "disk full", its job too,
even when the database could not take that row (the next open ends them)."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mnist_lab.cli.main import main
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import (
    DISK_FULL_REASON,
    OUT_OF_MEMORY,
    STORE_FULL,
    WEIGHTS_FULL,
    WEIGHTS_READ_ONLY,
    WEIGHTS_UNUSABLE,
    ConfigError,
    OutputError,
    StoreError,
    failure_reason,
    writing,
)
from mnist_lab.i18n import N_, Message, render, render_stored, to_stored
from mnist_lab.lab.experiments import run_many, run_single
from mnist_lab.nets.presets import PRESETS
from mnist_lab.paths import write_files
from mnist_lab.runs import store as store_module
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore, disk_full_owners, run_row, store_failure
from mnist_lab.service.jobs import JobSpec, run_inline
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.events import Iterations, RunEnded
from mnist_lab.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny-fc", "--device", "cpu", "--quiet"]
# enough iteration rows (2 x 128) to overflow a database capped a few pages above its empty size
LONG = ["--train-limit", "2048", "--batch-size", "16", "--epochs", "2"]
MOVE_ASIDE = ".broken"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _zero_byte_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size == 0 and ".disk-full." not in p.name]


def _cap_pages(monkeypatch, extra_pages: int = 3) -> None:
    """Every store opened from now on may grow only `extra_pages` pages: a full disk, for SQLite."""
    opened = ResultStore._open

    def capped(self):
        opened(self)
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")
    monkeypatch.setattr(ResultStore, "_open", capped)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MB tmpfs (root, or a user allowed to mount); skipped with the reason where mounting is
    not permitted. Unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a 2 MB tmpfs is not permitted here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder: Path) -> Path:
    """Fill `folder`'s file system to the last byte; returns the filler file (delete it to free)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def _read_only(folder: Path) -> None:
    """Make `folder` read-only for this process: a read-only remount (root: permissions do not stop
    root), else its permissions; skipped with the reason where neither can."""
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
    else:
        for p in folder.rglob("*"):
            p.chmod(0o444)
        folder.chmod(0o555)


# ------------------------------------------------------------------------------ classification

@pytest.mark.parametrize("code, words", [
    (13, "the disk is full"), (8, "is read-only here"), (5, "check the file and its folder"), (26, MOVE_ASIDE),
    (11, MOVE_ASIDE)])
def test_sqlites_result_code_decides_the_message(code, words, tmp_path):
    exc = sqlite3.OperationalError("whatever SQLite said")
    exc.sqlite_errorcode = code  # as the sqlite3 module sets it (Python >= 3.11)
    message = str(store_failure(tmp_path / "r.sqlite", exc))
    assert words in message
    if words != MOVE_ASIDE:  # a healthy file is never to be moved aside
        assert MOVE_ASIDE not in message


def test_a_full_disk_is_named_in_chinese_too(tmp_path):
    error = store_failure(tmp_path / "r.sqlite", OSError(28, "No space left on device"))
    assert error.disk_full and error.template == STORE_FULL
    assert "磁盘已满" in render(error, "zh_CN") and MOVE_ASIDE not in render(error, "zh_CN")
    assert "磁盘已满" in render(writing_error(tmp_path), "zh_CN")


def writing_error(folder: Path) -> OutputError:
    with pytest.raises(OutputError) as caught, writing(folder):
        raise OSError(28, "No space left on device")
    return caught.value


@pytest.mark.parametrize("db", ["/proc/version", "/dev/null"])
def test_a_device_or_kernel_file_as_db_is_not_a_regular_file(db, capsys):
    if not Path(db).exists():
        pytest.skip(f"{db} does not exist on this system")
    assert main(["train", *TINY, "--train-limit", "64", "--db", db]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{db} is not a regular file" in line and MOVE_ASIDE not in line


def test_a_damaged_database_is_still_the_only_one_to_move_aside(tmp_path, capsys):
    db = tmp_path / "junk.sqlite"
    db.write_bytes(b"not a database at all " * 300)
    assert main(["train", *TINY, "--train-limit", "64", "--db", str(db)]) == 2
    assert f"mv {db} {db}.broken" in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------ a full database

def test_a_full_database_ends_the_run_and_its_job_failed_disk_full(tmp_path, monkeypatch, capsys, mnist_raw):
    _cap_pages(monkeypatch)
    db = tmp_path / "r.sqlite"
    code = main(["train", *TINY, *LONG, "--db", str(db)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "the disk is full" in line and "not damaged" in line and MOVE_ASIDE not in line
    monkeypatch.undo()
    store = ResultStore(db)
    [run] = store.visible_runs(None).to_dict("records")
    assert run["status"] == "failed" and run["stop_reason"] == DISK_FULL_REASON
    assert render_stored(run["stop_reason_msg"], "zh_CN") == "磁盘已满：结果数据库无法再写入更多行"
    [job] = JobQueue(store).jobs()
    # the job's error is its runs' reason (errors.failure_reason), without the database's path (finding 3, 11)
    assert job["status"] == "failed" and render_stored(job["error"], "en") == DISK_FULL_REASON
    assert not disk_full_owners(db)  # both ends were recorded: no marker left


def test_a_full_database_through_the_api_raises_a_disk_full_store_error(tmp_path, monkeypatch, mnist_raw):
    _cap_pages(monkeypatch)
    store = ResultStore(tmp_path / "r.sqlite")
    spec = JobSpec("train", TrainConfig(device="cpu", batch_size=16, epochs=2), DataConfig(train_limit=2048),
                   model=PRESETS["tiny-fc"].model)
    with pytest.raises(StoreError) as caught:
        run_inline(spec, store, threading.Event())
    assert caught.value.disk_full
    run = store.runs().iloc[0]
    assert run["status"] == "failed" and run["stop_reason"] == DISK_FULL_REASON


def test_a_workers_job_on_a_full_database_ends_failed_disk_full(tmp_path, monkeypatch, mnist_raw):
    from mnist_lab.service.jobs import StoreRunner
    from mnist_lab.service.worker import Worker, WorkerConfig

    db = tmp_path / "r.sqlite"
    spec = JobSpec("train", TrainConfig(device="cpu", batch_size=16, epochs=2), DataConfig(train_limit=2048),
                   model=PRESETS["tiny-fc"].model)
    job_id = StoreRunner(ResultStore(db)).submit(spec)
    _cap_pages(monkeypatch)
    assert Worker(WorkerConfig(db=str(db), device="cpu", warm=False)).run(max_jobs=1) == 0
    monkeypatch.undo()
    store = ResultStore(db)
    view = StoreRunner(store).poll(job_id)
    assert view.status == "failed" and view.error == DISK_FULL_REASON and str(db) not in view.error
    [run] = view.runs
    assert run.status == "failed" and run.stop_reason == DISK_FULL_REASON
    assert not disk_full_owners(db)


def test_a_failed_run_never_has_an_empty_reason(tmp_path, mnist_raw):
    store = ResultStore(tmp_path / "r.sqlite")
    spec = JobSpec("train", TrainConfig(device="cpu", batch_size=16), DataConfig(train_limit=256),
                   model=PRESETS["tiny-fc"].model)

    def boom(event):
        raise RuntimeError("the chart could not be drawn")
    with pytest.raises(RuntimeError):
        run_inline(spec, store, threading.Event(), on_progress=boom)
    run = store.runs().iloc[0]
    assert run["status"] == "failed" and run["stop_reason"] == "RuntimeError: the chart could not be drawn"


def test_runs_left_running_by_a_process_that_found_the_disk_full_end_failed_at_the_next_open(tmp_path):
    """The database could not take even the run's end: the marker the process left beside it says
    why, and the next open ends its run and job 'failed: disk full', not 'killed or crashed'."""
    db = tmp_path / "r.sqlite"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = store_module.owner_id(int(gone.stdout))
    store = ResultStore(db)
    with store.context(job_id="full-job"):
        store.start_run(run_row("full-run", PRESETS["tiny-fc"].model, TrainConfig(), DataConfig()))
    queue = JobQueue(store)
    queue.start_inline("full-job", "local", "train", "t", "{}", 1)
    with sqlite3.connect(db) as conn:  # as the dead process left them: its run and job 'running'
        conn.execute("UPDATE runs SET owner = ?", (dead,))
        conn.execute("UPDATE jobs SET worker = ?", (dead,))
    store.close()
    queue.close()
    store_module.note_disk_full(db, dead)
    assert disk_full_owners(db) == {dead}
    store = ResultStore(db)
    run = store.runs().iloc[0]
    assert run["status"] == "failed" and run["stop_reason"] == DISK_FULL_REASON
    assert disk_full_owners(db) == {dead}  # kept until its job is ended too
    [job] = JobQueue(store).jobs()
    assert job["status"] == "failed" and render_stored(job["error"], "en") == DISK_FULL_REASON
    assert not disk_full_owners(db)  # settled: the marker is gone


def test_without_a_marker_a_dead_process_is_still_blamed_on_a_kill(tmp_path):
    db = tmp_path / "r.sqlite"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store = ResultStore(db)
    store.start_run(run_row("r1", PRESETS["tiny-fc"].model, TrainConfig(), DataConfig()))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET owner = ?", (store_module.owner_id(int(gone.stdout)),))
    run = ResultStore(db).runs().iloc[0]
    assert run["status"] == "interrupted" and "killed or crashed" in run["stop_reason"]


_FILL_WHILE_TRAINING = textwrap.dedent("""
    import os, sys, threading
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.errors import StoreError
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.runs.store import ResultStore
    from mnist_lab.service.jobs import JobSpec, run_inline
    from mnist_lab.training.events import Iterations
    from mnist_lab.training.loop import TrainConfig

    db, filler = sys.argv[1:3]
    filled = []

    def fill(event):  # the disk fills up while the run trains
        if isinstance(event, Iterations) and not filled:
            filled.append(1)
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            chunk = b"0" * 65536
            while True:
                try:
                    os.write(fd, chunk)
                except OSError:
                    if len(chunk) == 1:
                        break
                    chunk = chunk[:len(chunk) // 2]
            os.close(fd)
    spec = JobSpec("train", TrainConfig(device="cpu", batch_size=16, epochs=2), DataConfig(train_limit=2048),
                   model=PRESETS["tiny-fc"].model)
    try:
        run_inline(spec, ResultStore(db), threading.Event(), on_progress=fill)
    except StoreError as exc:
        print("full" if exc.disk_full else "other", exc)
        sys.exit(2)
    print("finished")
""")


def test_a_disk_that_fills_while_training_ends_the_run_failed_disk_full(small_tmpfs, mnist_raw):
    db, filler = small_tmpfs / "r.sqlite", small_tmpfs / "filler"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _FILL_WHILE_TRAINING, str(db), str(filler)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and done.stdout.startswith("full "), done.stdout + done.stderr
    assert "the disk is full" in done.stdout and MOVE_ASIDE not in done.stdout
    assert not [p for p in small_tmpfs.iterdir() if p.name.endswith(".tmp")]  # no half weights file
    filler.unlink()  # space again; the process is gone
    store = ResultStore(db)
    JobQueue(store)
    run = store.runs().iloc[0]
    assert run["status"] == "failed" and run["stop_reason"] == DISK_FULL_REASON
    [job] = JobQueue(store).jobs()
    assert job["status"] == "failed"
    assert not disk_full_owners(db)


def test_a_database_on_a_full_disk_is_refused_and_leaves_no_empty_file(small_tmpfs, capsys):
    _fill(small_tmpfs)
    db = small_tmpfs / "r.sqlite"
    assert main(["train", *TINY, "--train-limit", "64", "--db", str(db)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "the disk is full" in line and MOVE_ASIDE not in line
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler"]


# ------------------------------------------------------------------------------ read-only

def test_a_read_only_database_says_read_only(small_tmpfs, capsys, mnist_raw):
    db = small_tmpfs / "r.sqlite"
    ResultStore(db).close()
    _read_only(small_tmpfs)
    assert main(["train", *TINY, "--train-limit", "64", "--db", str(db)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "is read-only here" in line and "not damaged" in line and MOVE_ASIDE not in line
    assert main(["report", "--db", str(db), "--out", str(small_tmpfs.parent / "report")]) == 2
    assert "is read-only here" in _one_error_line(capsys.readouterr().err)


def test_a_read_only_out_folder_says_read_only(small_tmpfs, tmp_path, capsys, mnist_raw):
    db = tmp_path / "r.sqlite"
    assert main(["train", *TINY, "--train-limit", "64", "--db", str(db)]) == 0
    out = small_tmpfs / "report"
    out.mkdir()
    _read_only(small_tmpfs)
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ("read-only" in line.lower() or "Permission denied" in line) and str(out) in line and "Errno" not in line
    assert not list(out.iterdir())


# ------------------------------------------------------------------------------ --out

def test_report_out_on_an_existing_file_says_it_is_a_file(tmp_path, capsys, mnist_raw):
    db, a_file = tmp_path / "r.sqlite", tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    assert main(["train", *TINY, "--train-limit", "64", "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--out", str(a_file)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"--out {a_file} is a file, not a directory" in line and "Errno" not in line
    assert a_file.read_text() == "root:x:0:0\n"


def test_out_on_a_full_disk_says_so_and_leaves_no_empty_file(small_tmpfs, tmp_path, capsys, mnist_raw):
    db = tmp_path / "r.sqlite"
    assert main(["train", *TINY, "--train-limit", "64", "--db", str(db)]) == 0
    run_id = ResultStore(db).runs()["run_id"].item()
    _fill(small_tmpfs)
    capsys.readouterr()
    for argv in (["report", "--db", str(db), "--out", str(small_tmpfs / "report")],
                 ["export", run_id, "--db", str(db), "--out", str(small_tmpfs / "export")],
                 ["inspect", run_id, "--db", str(db), "--out", str(small_tmpfs / "inspect")],
                 ["train", *TINY, "--train-limit", "64", "--db", str(db), "--out", str(small_tmpfs / "tables")]):
        assert main(argv) == 2, argv
        line = _one_error_line(capsys.readouterr().err)
        assert "the disk is full" in line and "Errno" not in line, argv
    assert not _zero_byte_files(small_tmpfs)
    assert sorted(p.name for p in small_tmpfs.rglob("*") if p.is_file()) == ["filler"]


def test_write_files_is_all_or_nothing(tmp_path):
    old = tmp_path / "runs.csv"
    old.write_text("the old table\n")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(OSError):
        write_files({old: "the new table\n", blocker / "epochs.csv": "cannot go here\n"})
    assert old.read_text() == "the old table\n"  # untouched: nothing was renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder", "runs.csv"]  # no temporary left
    assert write_files({old: "the new table\n"}) == [old] and old.read_text() == "the new table\n"


def test_any_other_write_on_a_full_disk_is_named_as_such(tmp_path, monkeypatch, capsys):
    """A write outside the store and the output helpers (a raw OSError) still says 'disk full'."""
    from mnist_lab.cli import main as cli_main

    def presets_on_a_full_disk(args):
        raise OSError(28, "No space left on device", str(tmp_path / "somewhere"))
    monkeypatch.setattr(cli_main, "cmd_presets", presets_on_a_full_disk)
    assert main(["presets"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{tmp_path / 'somewhere'} could not be written: the disk is full" in line and "Errno" not in line


def test_data_idx_on_a_full_disk_says_so_and_leaves_nothing(tmp_path, monkeypatch, capsys, mnist_raw):
    """`data idx` writes its four files through write_files: a full disk is one line, and neither a
    file nor the folders it made are left."""
    from mnist_lab.data import offline

    def full(contents):
        raise OSError(errno.ENOSPC, "No space left on device", str(next(iter(contents))))
    monkeypatch.setattr(offline, "load_dataset", lambda spec, data_dir=None: mnist_raw)
    monkeypatch.setattr(offline, "write_files", full)
    out = tmp_path / "new" / "data"
    assert main(["data", "idx", "--out", str(out)]) == 2
    assert f"{out} could not be written: the disk is full" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ reasons (review of issue 21)
# The weights folder named as such, a reason stored whole and without a path, a run cut short by
# Ctrl-C through the API saying so, no weights kept by a failed run, a disk-full marker that does not
# outlive its cause, and one function for a run's reason and a job's error (errors.failure_reason).

def _tiny_spec(**train) -> JobSpec:
    return JobSpec("train", TrainConfig(device="cpu", batch_size=16, **train), DataConfig(train_limit=256),
                   model=PRESETS["tiny-fc"].model)


@pytest.mark.parametrize("errno_, words, zh", [
    (errno.EACCES, "is read-only here", "只读"), (errno.ENOSPC, "the disk is full", "磁盘已满"),
    (errno.EIO, "cannot be written", "无法写入")])
def test_a_weights_folder_that_cannot_be_written_is_named_as_the_weights_folder(tmp_path, monkeypatch, mnist_raw,
                                                                                errno_, words, zh):
    from mnist_lab.runs import weights as weights_module

    def refused(path, data):
        raise OSError(errno_, os.strerror(errno_), str(path))
    monkeypatch.setattr(weights_module, "write_file", refused)
    db = tmp_path / "srv" / "r.sqlite"
    store = ResultStore(db)
    with pytest.raises(StoreError) as caught:
        run_inline(_tiny_spec(), store, threading.Event())
    error = caught.value
    assert error.template in (WEIGHTS_FULL, WEIGHTS_READ_ONLY, WEIGHTS_UNUSABLE)
    assert str(error).startswith(f"The weights folder {db}.weights ") and words in str(error)
    assert "results database" not in str(error) and MOVE_ASIDE not in str(error)
    assert zh in render(error, "zh_CN") and error.disk_full == (errno_ == errno.ENOSPC)
    [run] = store.visible_runs(None).to_dict("records")
    [job] = JobQueue(store).jobs()
    assert run["status"] == "failed" and job["status"] == "failed"
    for stored in (run["stop_reason_msg"], job["error"]):  # the Runs page's words: no server path
        assert "weights" in render_stored(stored, "en") and str(tmp_path) not in stored
        assert render_stored(stored, "zh_CN") != render_stored(stored, "en")  # translated
    assert run["stop_reason"] == render_stored(run["stop_reason_msg"], "en") == render_stored(job["error"], "en")
    assert not store.inspectable([run["run_id"]]) and not disk_full_owners(db)


def test_a_weights_folder_that_is_a_file_is_named_and_the_database_kept(tmp_path, capsys, mnist_raw):
    db = tmp_path / "r.sqlite"
    Path(f"{db}.weights").write_text("not a folder")
    assert main(["train", *TINY, "--train-limit", "64", "--db", str(db)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"The weights folder {db}.weights cannot be written" in line and MOVE_ASIDE not in line
    [run] = ResultStore(db).runs().to_dict("records")
    assert run["status"] == "failed" and run["stop_reason"] == "the run's weights could not be saved"


def test_every_store_failure_is_stored_without_its_path(tmp_path):
    for code in (13, 8, 5, 26):
        exc = sqlite3.OperationalError("whatever SQLite said")
        exc.sqlite_errorcode = code
        error = store_failure(tmp_path / "secret" / "r.sqlite", exc)
        reason = failure_reason(error)
        assert "secret" not in to_stored(reason) and "{path}" not in reason.template and not reason.params
        assert render(reason, "zh_CN") != str(reason)  # each has its translation
    assert str(failure_reason(store_failure(tmp_path / "r.sqlite", OSError(28, "No space left")))) == DISK_FULL_REASON


def test_a_reason_of_several_parts_is_stored_whole_in_every_language(tmp_path, mnist_raw):
    store = ResultStore(tmp_path / "r.sqlite")
    recorder = Recorder(store)
    parts = [Message(DISK_FULL_REASON), Message(N_("aborted with a second Ctrl-C"))]

    def record(event):  # a run that ends failed for two reasons, as a remote executor may send it
        if isinstance(event, RunEnded):
            event = dataclasses.replace(event, status="failed", weights=None, message=" · ".join(map(str, parts)),
                                        message_msg=to_stored(parts))
        recorder(event)
    run_single(PRESETS["tiny-fc"].model, TrainConfig(device="cpu", batch_size=64), DataConfig(train_limit=128),
               record=record)
    run = store.visible_runs(None).iloc[0]
    assert run["stop_reason"] == f"{DISK_FULL_REASON} · aborted with a second Ctrl-C"
    zh = render_stored(run["stop_reason_msg"], "zh_CN")
    assert zh == "磁盘已满：结果数据库无法再写入更多行 · 第二次按 Ctrl-C 中止"


@pytest.mark.parametrize("how", ["run_single", "run_many", "run_many stacked"])
def test_a_second_ctrl_c_through_the_api_gives_the_run_its_reason(tmp_path, mnist_raw, how):
    """No job (run_single/run_many called directly): no queue.finish fills the reason in."""
    store = ResultStore(tmp_path / "r.sqlite")
    engine = "stacked" if "stacked" in how else "auto"
    train = [TrainConfig(device="cpu", batch_size=64, seed=s, engine=engine) for s in (0, 1)]
    data = DataConfig(train_limit=256)

    def ctrl_c(event):
        if isinstance(event, Iterations):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        if how == "run_single":
            run_single(PRESETS["tiny-fc"].model, train[0], data, record=Recorder(store), on_progress=ctrl_c)
        else:
            run_many([(PRESETS["tiny-fc"].model, t, "") for t in train], data, record=Recorder(store),
                     on_progress=ctrl_c)
    runs = store.visible_runs(None).to_dict("records")
    assert runs and all(r["status"] == "interrupted" for r in runs)
    for run in runs:
        assert run["stop_reason"] == "aborted with a second Ctrl-C"
        assert render_stored(run["stop_reason_msg"], "zh_CN") == "第二次按 Ctrl-C 中止"


def test_a_run_whose_end_cannot_be_recorded_keeps_no_weights(tmp_path, monkeypatch, mnist_raw):
    """The weights are saved, then the row saying 'finished' does not fit (a full disk): the run
    ends failed, and a failed run is never listed on the Inspect page."""
    db = tmp_path / "r.sqlite"
    store = ResultStore(db)
    finish = ResultStore.finish_run

    def full_at_finished(self, run_id, status, seconds, **fields):
        if status == "finished":
            raise StoreError(self.path, "database or disk is full", STORE_FULL)
        return finish(self, run_id, status, seconds, **fields)
    monkeypatch.setattr(ResultStore, "finish_run", full_at_finished)
    with pytest.raises(StoreError):
        run_inline(_tiny_spec(), store, threading.Event())
    [run] = store.runs().to_dict("records")
    assert run["status"] == "failed" and run["stop_reason"] == DISK_FULL_REASON
    assert not store.inspectable([run["run_id"]])
    assert not list(Path(f"{db}.weights").glob("*.safetensors"))


_FULL_THEN_KILLED = textwrap.dedent("""
    import os, signal, sys
    from datetime import datetime, timezone
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.errors import StoreError
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.runs.store import ResultStore, disk_full_owners, run_row
    from mnist_lab.training.loop import TrainConfig

    store = ResultStore(sys.argv[1])
    model = PRESETS["tiny-fc"].model

    def start(run_id):
        store.start_run(run_row(run_id, model, TrainConfig(), DataConfig(),
                                started_at=datetime.now(timezone.utc).isoformat()))
    start("cut-short")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    try:
        store.add_iterations("cut-short", 1, [0.5] * 5000, 100)
    except StoreError as exc:
        assert exc.disk_full
    assert disk_full_owners(sys.argv[1])  # the marker says so
    store._conn.execute("PRAGMA max_page_count = 1000000")  # space again
    store.finish_run("cut-short", "failed", 0.0, stop_reason="disk full")  # its end is recorded
    start("later")  # the process goes on, then is killed
    print(len(disk_full_owners(sys.argv[1])), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_process_that_wrote_again_after_a_full_disk_is_not_blamed_on_it_when_killed(tmp_path):
    db = tmp_path / "r.sqlite"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", _FULL_THEN_KILLED, str(db)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == -9 and done.stdout.strip() == "0", done.stdout + done.stderr  # settled: no marker
    runs = {r["run_id"]: r for r in ResultStore(db).runs().to_dict("records")}
    assert runs["cut-short"]["status"] == "failed"
    assert runs["later"]["status"] == "interrupted" and "killed or crashed" in runs["later"]["stop_reason"]


def test_a_disk_full_marker_older_than_a_run_does_not_blame_it(tmp_path):
    """A marker left by a process (its end unrecorded, or its pid since given to another): a run
    or job of that pid started after it was not cut short by that full disk."""
    db = tmp_path / "r.sqlite"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = store_module.owner_id(int(gone.stdout))
    store_module.note_disk_full(db, dead)
    marker = next(tmp_path.glob("r.sqlite.disk-full.*"))
    os.utime(marker, (time.time() - 3600, time.time() - 3600))  # an hour ago
    store = ResultStore(db)
    with store.context(job_id="later-job"):
        store.start_run(run_row("later", PRESETS["tiny-fc"].model, TrainConfig(), DataConfig(),
                                started_at=datetime.now(timezone.utc).isoformat()))
    queue = JobQueue(store)
    queue.start_inline("later-job", "local", "train", "t", "{}", 1)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET owner = ?", (dead,))
        conn.execute("UPDATE jobs SET worker = ?", (dead,))
    store.close()
    queue.close()
    store = ResultStore(db)
    [job] = JobQueue(store).jobs()
    run = store.runs().iloc[0]
    assert run["status"] == "interrupted" and "killed or crashed" in run["stop_reason"]
    assert job["status"] == "interrupted" and not job["error"]
    assert not disk_full_owners(db)  # its process is gone and nothing of it is left running


def test_one_function_words_a_runs_reason_and_a_jobs_error(tmp_path, mnist_raw):
    from mnist_lab.service.jobs import readable_error

    assert readable_error is failure_reason
    assert failure_reason(MemoryError()).template == OUT_OF_MEMORY
    assert "内存" in render(failure_reason(MemoryError()), "zh_CN")
    listed = ConfigError("kernel_sizes", [3, 5], "Kernel sizes {value} are too large for {name}.", name="lab5")
    kept = failure_reason(listed)  # a list value is kept as its repr, the template kept for translation
    assert kept.template == listed.template and kept.params["value"] == "[3, 5]" and str(kept) == str(listed)
    json.loads(to_stored(kept))
    assert str(failure_reason(ValueError("bad input"))) == "bad input"
    assert str(failure_reason(RuntimeError("boom"))) == "RuntimeError: boom"
    assert str(failure_reason(KeyboardInterrupt())) == "aborted with a second Ctrl-C"
    assert str(failure_reason(RuntimeError())) == "RuntimeError"
    store = ResultStore(tmp_path / "r.sqlite")

    def boom(event):
        raise MemoryError
    with pytest.raises(MemoryError):
        run_inline(_tiny_spec(), store, threading.Event(), on_progress=boom)
    run = store.visible_runs(None).iloc[0]
    [job] = JobQueue(store).jobs()
    assert run["status"] == "failed" and run["stop_reason_msg"] == job["error"] == to_stored(Message(OUT_OF_MEMORY))


def test_a_start_a_few_milliseconds_after_the_markers_coarse_file_time_counts_as_before_it():
    """A file's time comes from the kernel's coarse clock (a tick behind time.time()), so a job that
    started just before its process found the disk full can carry a start a few ms after the marker's
    time (seen in CI: the job ended 'interrupted'). Within the slack it is the full disk's; a run
    started seconds later is not."""
    marked = 1_800_000_000.0
    full = {"host:42": marked}
    assert store_module.cut_by_full_disk(full, "host:42", marked + 0.004)
    assert store_module.cut_by_full_disk(full, "host:42", datetime.fromtimestamp(marked + 0.004, timezone.utc)
                                         .isoformat())
    assert not store_module.cut_by_full_disk(full, "host:42", marked + 60)
    assert not store_module.cut_by_full_disk(full, "host:7", marked)  # no marker of its own
    assert store_module.cut_by_full_disk(full, "host:42", "not a time")  # an earlier version's start
