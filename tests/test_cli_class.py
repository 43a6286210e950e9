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
    assert main(["class", "end-term", "--db", str(db), "--out", str(out), "--quiet"]) == 0
    assert "deleted 10 runs, 0 jobs, 2 students" in capsys.readouterr().out  # 1 + 2 x 2 x 2, and 1
    store = ResultStore(db)
    assert list(store.runs()["student_id"]) == [""]  # the teacher's own run stays
    assert Accounts(store, server_secret(db)).roster() == []
    assert main(["class", "end-term", "--db", str(db), "--out", str(out), "--quiet", "--confirm", "0"]) == 0
