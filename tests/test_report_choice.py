"""Issue 22's report: requirement 1 answers with the lab's own run, the cover, the network's code
in an appendix, times in the reader's zone, the whole depth × kernel grid, iterations.csv on the
page, and the run chosen kept in the URL."""
from __future__ import annotations

import json
import re

import pytest
import torch
from report_fixtures import add_run, add_sweep
from streamlit.testing.v1 import AppTest

from mnist_lab.cli import main as cli
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.lab.findings import sweep_grid
from mnist_lab.lab.report import Cover, build_report, local_now, requirement1_run, to_html, to_markdown
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.paths import DB_ENV
from mnist_lab.runs.store import ResultStore

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
LAB = PRESETS["lab5"].model


@pytest.fixture
def store(tmp_path) -> ResultStore:
    return ResultStore(tmp_path / "r.sqlite")


def lessons_after_lab(store: ResultStore) -> str:
    """A 3-epoch Lab-5 run on the full set, then what a student runs after it: the lab net on 2,000
    images, a week-2 lesson's BatchNorm net, the lab net on permuted pixels, an unfinished lab run."""
    lab = add_run(store, LAB, 0.985, epochs=3, steps=30)
    add_run(store, LAB, 0.90, data=DataConfig(train_limit=2000))
    add_run(store, cnn_config(2, 3, batch_norm=True), 0.97, experiment="lesson",
            label="BatchNorm after each convolution")
    add_run(store, LAB, 0.95, data=DataConfig(permute_pixels=True))
    add_run(store, LAB, 0.5, status="stopped")
    return lab


# ------------------------------------------------------------------------------ requirement 1's run

def test_requirement1_is_the_lab_run_even_with_newer_lesson_runs(store):
    lab = lessons_after_lab(store)
    runs = store.visible_runs(None)
    assert runs.sort_values("started_at").iloc[-1]["run_id"] != lab  # newer runs exist
    assert requirement1_run(runs) == (lab, False)
    report = build_report(store, "en")
    assert report.findings.loss.numbers["run_id"] == lab and report.findings.loss.numbers["settings"]["epochs"] == 3
    assert "There is no finished run of the lab's own network" not in to_markdown(report)
    newer = add_run(store, LAB, 0.986, epochs=1)  # a newer lab run on the full set wins
    assert requirement1_run(store.visible_runs(None)) == (newer, False)


def test_without_a_lab_run_it_falls_back_to_the_newest_and_says_so(store):
    add_run(store, LAB, 0.90, data=DataConfig(train_limit=2000))
    newest = add_run(store, cnn_config(2, 3, batch_norm=True), 0.97, label="BatchNorm after each convolution")
    assert requirement1_run(store.visible_runs(None)) == (newest, True)
    for lang, words in (("en", "There is no finished run of the lab's own network (the lab5 preset)"),
                        ("zh", "还没有用完整训练集训练完成的实验五网络（预设 lab5）")):
        report = build_report(store, lang)
        text = to_markdown(report)
        assert report.findings.loss.numbers["run_id"] == newest and words in text
        assert "python -m mnist_lab train --preset lab5 --epochs 3" in text
    # a run chosen by hand is read as it is, without the note
    text = to_markdown(build_report(store, "en", run_id=newest))
    assert "There is no finished run of the lab's own network" not in text


def test_no_finished_run_at_all(store):
    assert requirement1_run(store.visible_runs(None)) == (None, False)
    add_run(store, LAB, 0.5, status="stopped")
    assert requirement1_run(store.visible_runs(None)) == (None, False)
    text = to_markdown(build_report(store, "en"))
    assert "Not enough runs for this yet" in text and "Appendix" not in text


# ------------------------------------------------------------------------------ the cover

def test_the_cover_is_printed_escaped(store):
    add_run(store, LAB, 0.98)
    cover = Cover(" 张三 <script>alert(1)</script> ", "2023001", "计科 1 班")
    report = build_report(store, "zh", cover=cover)
    text = to_markdown(report)
    assert "姓名：张三 <script>alert(1)</script>\n" in text and "学号：2023001" in text and "班级：计科 1 班" in text
    page = to_html(report)
    assert "<script>" not in page and "姓名：张三 &lt;script&gt;alert(1)&lt;/script&gt;" in page
    blank = to_markdown(build_report(store, "en"))  # blank fields: a line to fill in by hand
    assert f"Name: {'_' * 16}" in blank and f"Student ID: {'_' * 16}" in blank and f"Class: {'_' * 16}" in blank


@pytest.mark.parametrize("cover, field, words", [
    (Cover(name="x" * 61), "name", "Name is too long: at most 60 characters."),
    (Cover(student_id="2023\n001"), "student_id", "Student ID may hold only printable characters"),
    (Cover(class_name="a\x1b[31m"), "class_name", "Class may hold only printable characters"),
    (Cover(name="\u202e"), "name", "printable"),
    (Cover(name=42), "name", "Name must be text."),
])
def test_cover_fields_are_checked(cover, field, words):
    with pytest.raises(ConfigError) as err:
        cover.validate()
    assert err.value.field == field and words in str(err.value)
    assert Cover(name="x" * 60, student_id="2023001", class_name="计科1班").validate()


def test_cli_cover_flags_and_refusal(store, tmp_path, capsys):
    add_run(store, LAB, 0.98)
    out = tmp_path / "rep"
    assert cli.main(["report", "--out", str(out), "--db", str(store.path), "--lang", "zh", "--name", "李四",
                     "--student-id", "2023002", "--class", "计科2班"]) == 0
    page = (out / "report.html").read_text("utf-8")
    assert "姓名：李四" in page and "学号：2023002" in page and "班级：计科2班" in page
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert cli.main(["report", "--out", str(bad), "--db", str(store.path), "--lang", "en", "--name", "y" * 61]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "at most 60 characters" in err[0]
    assert not bad.exists()  # nothing written on refusal


# ------------------------------------------------------------------------------ appendix, times, grid

def test_the_appendix_has_the_networks_code_as_the_export_writes_it(store):
    lab = add_run(store, LAB, 0.98)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    text = to_markdown(build_report(store, "en"))
    assert torch.equal(torch.rand(3), expected)  # built on the meta device: no random numbers drawn
    code = text[text.index("## Appendix: the network's code"):]
    assert f"The network of run {lab} as PyTorch code" in code and "```python\nclass Net(nn.Module):" in code
    assert "self.conv1 = nn.Conv2d(1, 10, kernel_size=5" in code and "self.conv2 = nn.Conv2d(10, 20" in code
    assert "8,490 parameters" in code and "x = self.flatten(x)  # -> (320,)" in code
    zh = to_markdown(build_report(store, "zh"))
    assert "## 附录：网络的代码" in zh and "nn.Linear(320, 10" in zh


def test_times_are_in_the_readers_zone(store):
    add_run(store, LAB, 0.98)
    assert local_now("Asia/Shanghai").endswith(" Asia/Shanghai")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d Asia/Shanghai", local_now("Asia/Shanghai"))
    for bad in (None, "", "Not/AZone", "../../etc/passwd"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", local_now(bad))
    text = to_markdown(build_report(store, "en", tz="Asia/Shanghai"))
    assert re.search(r"Generated on \d{4}-\d\d-\d\d \d\d:\d\d Asia/Shanghai from", text)
    assert " UTC from" in to_markdown(build_report(store, "en"))


def test_requirements_2_and_3_show_the_whole_grid(store):
    means = {(1, 3): 0.90, (1, 5): 0.92, (2, 3): 0.95, (2, 5): 0.96, (3, 3): 0.97}  # (3, 5) not run
    add_sweep(store, means)
    add_sweep(store, {(1, 3): 0.5, (2, 3): 0.6}, padding="valid")  # another sweep: fewer cells, not pooled
    grid = sweep_grid(store.visible_runs(None))
    assert grid["layers"] == [1, 2, 3] and grid["kernels"] == [3, 5] and len(grid["cells"]) == 5
    assert grid["fixed"]["padding"] == "same" and grid["fixed"]["seeds"] == [0, 1, 2]
    for cell, mean in means.items():
        assert grid["cells"][cell].n == 3 and grid["cells"][cell].mean == pytest.approx(mean)
        assert grid["cells"][cell].sd == pytest.approx(0.002)
    text = to_markdown(build_report(store, "en"))
    assert "| conv+pool layers | kernel size 3×3 | kernel size 5×5 |" in text
    assert "| 1 | 90.00% ± 0.20 | 92.00% ± 0.20 |" in text and "| 3 | 97.00% ± 0.20 | — |" in text
    assert "| 卷积+池化层数 | 3×3 卷积核 | 5×5 卷积核 |" in to_markdown(build_report(store, "zh"))
    assert sweep_grid(ResultStore(store.path.parent / "empty.sqlite").visible_runs(None)) is None


# ------------------------------------------------------------------------------ the page, in Chinese

def test_report_page_in_chinese_picks_the_lab_run_keeps_it_in_the_url_and_offers_iterations(store, monkeypatch):
    lab = lessons_after_lab(store)
    monkeypatch.setenv(DB_ENV, str(store.path))
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    at = AppTest.from_file(str(ROOT / "app_pages" / "report.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    picker = at.selectbox(key="report_run")
    first = picker.options[0]
    assert picker.value == lab and first.startswith("实验五网络，完整训练集") and "3 个轮次" in first
    assert sum(o.startswith("实验五网络，完整训练集") for o in picker.options) == 1  # the 2,000-image run is not one
    assert any(f"运行 {lab}" in m.value for m in at.markdown)
    downloads = at.get("download_button")
    assert len(downloads) == 5 and "iterations.csv" in [d.proto.label.split("（")[0] for d in downloads]
    # the cover: typed in, printed, kept with the session (not in the URL)
    at.text_input(key="report_cover_name_input").input("王五")
    at.text_input(key="report_cover_student_id_input").input("2023003")
    at.run()
    assert not at.exception, at.exception
    assert any("姓名：王五" in m.value for m in at.markdown) and any("学号：2023003" in m.value for m in at.markdown)
    assert at.session_state["report_cover_name"] == "王五" and "王五" not in json.dumps(at.query_params)
    # another run chosen: kept in the URL, and a link with it reopens it
    chosen = store.visible_runs(None).query("status == 'finished' and run_id != @lab")["run_id"].iloc[0]
    at.selectbox(key="report_run").set_value(chosen).run()
    assert not at.exception, at.exception
    assert at.query_params["run"] == [chosen] or at.query_params["run"] == chosen
    again = AppTest.from_file(str(ROOT / "app_pages" / "report.py"), default_timeout=60)
    again.query_params["run"] = chosen
    again.run()
    assert not again.exception and again.selectbox(key="report_run").value == chosen
    # a link naming no visible run falls back to the lab run, with a warning
    wrong = AppTest.from_file(str(ROOT / "app_pages" / "report.py"), default_timeout=60)
    wrong.query_params["run"] = "nope"
    wrong.run()
    assert not wrong.exception and wrong.selectbox(key="report_run").value == lab and wrong.warning


def test_report_page_refuses_a_bad_cover_field_in_one_line(store, monkeypatch):
    add_run(store, LAB, 0.98)
    monkeypatch.setenv(DB_ENV, str(store.path))
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(ROOT / "app_pages" / "report.py"), default_timeout=60).run()
    at.text_input(key="report_cover_class_name_input").input("计科\t1班").run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["班级只能包含可打印字符（不能有换行或控制字符）。"]
    assert not any("计科" in m.value for m in at.markdown)


def test_report_page_says_in_chinese_why_a_run_of_one_iteration_cannot_be_read(store, monkeypatch):
    one = add_run(store, LAB, 0.98, steps=1)  # finished after a single iteration: no loss curve to read
    monkeypatch.setenv(DB_ENV, str(store.path))
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_file(str(ROOT / "app_pages" / "report.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    # the report's own default: section 1 is left to do, the rest of the report is there
    assert at.selectbox(key="report_run").value == one and not at.error and at.get("download_button")
    add_run(store, LAB, 0.985, epochs=3, steps=30)  # a newer lab run becomes the default
    at = AppTest.from_file(str(ROOT / "app_pages" / "report.py"), default_timeout=60).run()
    at.selectbox(key="report_run").set_value(one).run()  # the reader picks the one-iteration run
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [f"运行“{one}”只记录了 1 次迭代：请选择一个真正训练过的运行。"]
    assert not at.get("download_button")  # no half-written report offered
