"""A full disk and a read-only place, named as such (issue 21): the results database full (SQLite's
`PRAGMA max_page_count`, and a 2 MB tmpfs filled while a run trains), read-only (a read-only mount,
or permissions where the tests do not run as root), a device or kernel file as --db, and --out on a
full or read-only folder. The message says what it is (never "move it aside" for a healthy file),
nothing is left 0-byte, and a run cut short ends 'failed' with the reason "disk full", its job too,
even when the database could not take that row (the next open ends them)."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from mnist_lab.cli.main import main
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import DISK_FULL_REASON, STORE_FULL, OutputError, StoreError, writing
from mnist_lab.i18n import render, render_stored
from mnist_lab.nets.presets import PRESETS
from mnist_lab.paths import write_files
from mnist_lab.runs import store as store_module
from mnist_lab.runs.store import ResultStore, disk_full_owners, run_row, store_failure
from mnist_lab.service.jobs import JobSpec, run_inline
from mnist_lab.service.queue import JobQueue
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
    assert job["status"] == "failed" and "the disk is full" in render_stored(job["error"], "en")
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
    assert view.status == "failed" and "the disk is full" in view.error and MOVE_ASIDE not in view.error
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
