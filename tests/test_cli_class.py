"""`python -m mnist_lab class` for a teacher without a browser: the class's tables (--out), every
report in one zip, the term's export, and the end of term with its typed confirmation; every
message in either language."""
from __future__ import annotations

import io
import zipfile

import pandas as pd
import pytest

from mnist_lab.cli.main import main
from mnist_lab.lab.classwork import class_runs, pooled_tables, progress_table
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.class_jobs import EXPORT_FILES
from mnist_lab.service.identity import Accounts, server_secret
from mnist_lab.service.queue import JobQueue
from tests.class_fixtures import lab5_complete, lab5_half
from tests.report_fixtures import add_run

PEOPLE = [("Z9Q7X3K1", "甄嬛测"), ("Q4W8E2R6", "沈眉庄测")]


@pytest.fixture
def db(tmp_path):
    """Two students on the roster, one who finished lab 5 and one who did requirement 1 only, and
    the teacher's own run."""
    path = tmp_path / "class.sqlite"
    store = ResultStore(path)
    Accounts(store, server_secret(path)).import_roster("学号,姓名\n" + "".join(f"{s},{n}\n" for s, n in PEOPLE))
    lab5_complete(store, *PEOPLE[0])
    lab5_half(store, *PEOPLE[1])
    add_run(store, PRESETS["lab5"].model, 0.99, steps=10)
    store.close()
    return path


def test_class_out_writes_the_three_tables(db, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["class", "--db", str(db), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pooled_compare.csv", "pooled_grid.csv", "progress.csv"]
    store = ResultStore(db)
    runs = class_runs(store)
    expected = {"progress": progress_table(runs, sorted(PEOPLE)), **pooled_tables(runs)}
    for name, table in expected.items():  # the same tables as the class pages show
        assert (out / f"{name}.csv").read_text() == table.to_csv(index=False)
    assert list(pd.read_csv(out / "progress.csv", dtype={"student_id": str})["student_id"]) == ["Q4W8E2R6", "Z9Q7X3K1"]
    said = capsys.readouterr().out
    assert "2 students, 1 of them finished lab 5" in said and "the largest pooled depth × kernel set: 4 cells" in said
    assert "progress.csv" in said
    assert main(["--lang", "zh", "class", "--db", str(db)]) == 2  # neither --out nor a command
    assert capsys.readouterr().err.startswith("错误：")


def test_class_reports_and_export_write_their_zips(db, tmp_path, capsys):
    out = tmp_path / "zips"
    assert main(["class", "reports", "--db", str(db), "--out", str(out), "--quiet"]) == 0
    with zipfile.ZipFile(out / "class_reports.zip") as zf:
        assert sorted(zf.namelist()) == ["Q4W8E2R6_沈眉庄测.docx", "Z9Q7X3K1_甄嬛测.docx"]
    assert capsys.readouterr().out == f"wrote {out / 'class_reports.zip'}\n"
    assert main(["--lang", "zh", "class", "--db", str(db), "export", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("已写入")
    with zipfile.ZipFile(out / "class_export.zip") as zf:
        assert zf.namelist() == list(EXPORT_FILES)
        runs = pd.read_csv(io.BytesIO(zf.read("runs.csv")), dtype={"student_id": str})
    assert sorted(set(runs["student_id"])) == sorted(s for s, _ in PEOPLE) and len(runs) == 10


def test_end_term_refuses_the_wrong_number_and_deletes_with_the_right_one(db, tmp_path, capsys, monkeypatch):
    out = tmp_path / "term"
    assert main(["--lang", "zh", "class", "end-term", "--db", str(db), "--out", str(out), "--confirm", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("错误：") and "2" in err and len(err.splitlines()) == 1
    assert not out.exists() and len(ResultStore(db).runs()) == 11  # nothing written, nothing deleted

    monkeypatch.setattr("builtins.input", lambda prompt: "1")  # typed wrong at the prompt: the export stays
    assert main(["class", "end-term", "--db", str(db), "--out", str(out), "--quiet"]) == 2
    assert "type the number of students, 2" in capsys.readouterr().err
    assert (out / "class_export.zip").is_file() and len(ResultStore(db).runs()) == 11

    monkeypatch.setattr("builtins.input", lambda prompt: "2")
    assert main(["class", "end-term", "--db", str(db), "--out", str(out), "--quiet"]) == 2  # not over that export
    assert "class_export.zip is already there" in capsys.readouterr().err
    out = tmp_path / "term2"
    assert main(["class", "end-term", "--db", str(db), "--out", str(out), "--quiet"]) == 0
    assert "deleted 10 runs, 0 jobs, 2 students" in capsys.readouterr().out  # 1 + 2 x 2 x 2, and 1
    store = ResultStore(db)
    assert list(store.runs()["student_id"]) == [""]  # the teacher's own run stays
    assert Accounts(store, server_secret(db)).roster() == []
    assert main(["class", "end-term", "--db", str(db), "--out", str(tmp_path / "term3"), "--quiet",
                 "--confirm", "0"]) == 0


def test_a_zip_already_in_out_is_never_overwritten(db, tmp_path, capsys):
    out = tmp_path / "zips"
    for command, name in (("export", "class_export.zip"), ("reports", "class_reports.zip"),
                          ("end-term", "class_export.zip")):
        out.mkdir(exist_ok=True)
        (out / name).write_bytes(b"last week's")
        assert main(["class", command, "--db", str(db), "--out", str(out), "--quiet", "--confirm", "2"][
            :None if command == "end-term" else -2]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(out / name) in err and "choose another --out" in err
        assert (out / name).read_bytes() == b"last week's" and len(ResultStore(db).runs()) == 11
        (out / name).unlink()


def test_out_before_the_subcommand_is_the_zips_folder(db, tmp_path, capsys):
    out = tmp_path / "zips"
    assert main(["class", "--db", str(db), "--out", str(out), "export", "--quiet"]) == 0
    assert [p.name for p in out.iterdir()] == ["class_export.zip"]
    assert main(["class", "--db", str(db), "reports", "--quiet"]) == 2  # no --out at all: said, not a traceback
    assert "Give --out DIR for the zip" in capsys.readouterr().err


@pytest.mark.parametrize("typed", [EOFError, "²", "٢", " 2x", KeyboardInterrupt])
def test_the_end_term_prompt_refuses_what_is_not_a_number_and_ctrl_c_aborts(db, tmp_path, capsys, monkeypatch, typed):
    def answer(prompt):
        if isinstance(typed, type):
            raise typed
        return typed
    monkeypatch.setattr("builtins.input", answer)
    code = main(["--lang", "zh", "class", "end-term", "--db", str(db), "--out", str(tmp_path / "t"), "--quiet"])
    err = capsys.readouterr().err
    if typed is KeyboardInterrupt:
        assert code == 130 and "Traceback" not in err
    else:
        assert code == 2 and err.startswith("错误：") and len(err.strip().splitlines()) == 1
    assert (tmp_path / "t" / "class_export.zip").is_file() and len(ResultStore(db).runs()) == 11  # nothing deleted


def test_end_term_refuses_a_training_job_before_it_exports(db, tmp_path, capsys):
    store = ResultStore(db)
    JobQueue(store).submit("job-x", "student:Z9Q7X3K1", "train", "t", "{}", 1, "Z9Q7X3K1", "甄嬛测")
    assert main(["class", "end-term", "--db", str(db), "--out", str(tmp_path / "t"), "--confirm", "2"]) == 2
    assert "still queued or running" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_cli_tables_and_exports_quote_a_name_a_spreadsheet_would_run(tmp_path, capsys):
    path = tmp_path / "f.sqlite"
    store = ResultStore(path)
    names = ["=HYPERLINK(\"http://x\",\"y\")", "@SUM(1)"]
    for sid, name in zip(("F1", "F2"), names):
        lab5_half(store, sid, name)
    out = tmp_path / "out"
    assert main(["class", "--db", str(path), "--out", str(out / "tables")]) == 0
    assert main(["class", "export", "--db", str(path), "--out", str(out), "--quiet"]) == 0
    store.export_csv(out / "runs")  # what train/sweep/compare --out write
    quoted = {"'" + n for n in names}
    read = {"progress.csv": out / "tables" / "progress.csv", "runs.csv": out / "runs" / "runs.csv"}
    for name, file in read.items():
        assert set(pd.read_csv(file, keep_default_na=False)["student_name"]) == quoted, name
    with zipfile.ZipFile(out / "class_export.zip") as zf:
        for name in ("students.csv", "progress.csv", "runs.csv"):
            assert set(pd.read_csv(zf.open(name), keep_default_na=False)["student_name"]) == quoted, name
