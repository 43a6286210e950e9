"""The teacher's class pages (issue 25) through AppTest, on a shared-mode store of three students' runs
written without training (tests/class_fixtures.py): one finished lab 5, one half, one nothing. The
teacher's Progress page shows exactly that, filters it and offers a student's report; Class results
pools the sweeps; End of term deletes only after the right number is typed; a student or a visitor
opening a class page gets only the refusal."""
from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apptest import APP, TEACHER, app_db, open_page, result_charts, session_for, student
from streamlit.testing.v1 import AppTest

from app_lib.session import KEY as SESSION_KEY
from mnist_lab.lab import report as report_module
from mnist_lab.lab.report import build_report
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.access import Asker
from mnist_lab.service.class_jobs import execute_class_job, submit_class_job
from mnist_lab.service.identity import Accounts, server_secret
from mnist_lab.service.jobs import StoreRunner
from mnist_lab.service.queue import JobQueue
from tests.class_fixtures import LAB5, add_run, lab5_complete, lab5_half

pytestmark = pytest.mark.usefixtures("no_worker_left_running")
TOKEN = "class-pages-teacher-token"
ROSTER = "学号,姓名\n2024001,张三\n2024002,李四\n2024003,王五\n"
CLASS_PAGES = ["class_progress", "class_pooled", "class_term"]
PAGES_DIR = Path(APP).parent / "app_pages"
TEACHER_ASKER = Asker(workspace="teacher", shared=True, teacher=True)


@pytest.fixture
def db(tmp_path, monkeypatch):
    """Three students on the class list: 2024001 finished lab 5, 2024002 did requirement 1, 2024003 nothing."""
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    monkeypatch.setenv("MNIST_LAB_TEACHER_TOKEN", TOKEN)
    path = app_db(tmp_path / "results.sqlite", monkeypatch)
    store = ResultStore(path)
    Accounts(store, server_secret(store.path)).import_roster(ROSTER)
    lab5_complete(store, "2024001", "张三")
    lab5_half(store, "2024002", "李四")
    store.close()
    return path


def progress_rows(at: AppTest) -> dict[str, dict]:
    """The Progress table as {student ID: row}, by its English headers."""
    frame = at.dataframe[0].value
    return {row["student ID"]: row for row in frame.to_dict("records")}


def test_the_teacher_sees_the_three_student_class_exactly(db):
    at = open_page("class_progress", who=TEACHER)
    assert at.title[0].value == "Progress"
    assert {m.label: m.value for m in at.metric} == {"students": "3", "lab 5 done": "1", "under way": "1",
                                                     "not started": "1"}
    rows = progress_rows(at)
    assert list(rows) == ["2024001", "2024002", "2024003"]
    assert [rows[i]["student name"] for i in rows] == ["张三", "李四", "王五"]
    assert [rows[i]["lab 5 done"] for i in rows] == [True, False, False]
    assert [rows[i]["1: the lab's network"] for i in rows] == ["done", "done", "missing"]
    assert [rows[i]["2: depth series"] for i in rows] == ["done", "missing", "missing"]
    assert [rows[i]["3: kernel series"] for i in rows] == ["done", "missing", "missing"]
    assert rows["2024003"]["runs"] == 0 and rows["2024003"]["last activity"] == ""
    assert rows["2024001"]["runs"] > rows["2024002"]["runs"] > 0


def test_the_filter_finds_a_name_and_a_state(db):
    at = open_page("class_progress", who=TEACHER)
    at.text_input(key="class_search").set_value("李").run()
    assert list(progress_rows(at)) == ["2024002"]
    at.text_input(key="class_search").set_value("").run()
    at.segmented_control(key="class_state").set_value("done").run()
    assert list(progress_rows(at)) == ["2024001"]
    at.segmented_control(key="class_state").set_value("not_started").run()
    assert list(progress_rows(at)) == ["2024003"]
    at.text_input(key="class_search").set_value("张").run()  # 张三 has finished: nobody is both
    assert at.dataframe[0].value.empty and not at.exception


def test_a_students_runs_and_report_download(db):
    at = open_page("class_progress", who=TEACHER)
    at.selectbox(key="class_student").set_value("2024001").run()
    runs = at.dataframe[1].value
    assert len(runs) == progress_rows(at)["2024001"]["runs"]
    [report] = [b for b in at.get("download_button") if b.proto.label == "Report (.docx)"]
    assert not report.proto.disabled
    at.selectbox(key="class_student").set_value("2024003").run()  # no runs: nothing to report
    [report] = [b for b in at.get("download_button") if b.proto.label == "Report (.docx)"]
    assert report.proto.disabled


def test_class_results_pool_the_students_sweeps(db):
    at = open_page("class_pooled", who=TEACHER)
    assert at.title[0].value == "Class results" and not at.exception
    assert len(result_charts(at)) >= 3  # depth and kernel lines, the heat map
    grid = at.dataframe[0].value
    assert grid.shape == (2, 2) and all("seeds" in str(cell) for cell in grid.to_numpy().ravel())
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"Depth × kernel (CSV)", "FC vs CNN (CSV)"} <= labels


def export_now(db: Path, lang: str = "en") -> dict:
    """The class's export built here, as a worker builds it (claimed, executed, finished): the finished job."""
    store = ResultStore(db)
    queue = JobQueue(store)
    try:
        job_id = submit_class_job(queue, "export", TEACHER_ASKER, lang)
        job = queue.claim("test-worker")
        assert job is not None and job["job_id"] == job_id
        queue.finish(job_id, execute_class_job(job, store, queue, threading.Event()))
        return queue.job(job_id)
    finally:
        store.close()


def test_the_end_of_term_delete_waits_for_the_right_number(db):
    export_now(db)
    at = open_page("class_term", who=TEACHER)
    assert at.button(key="term_delete_btn").disabled
    at.number_input(key="term_confirm").set_value(2).run()
    at.checkbox(key="term_saved").check().run()
    assert at.button(key="term_delete_btn").disabled  # 3 students, not 2
    at.number_input(key="term_confirm").set_value(3).run()
    assert not at.button(key="term_delete_btn").disabled
    at.button(key="term_delete_btn").click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Deleted:")
    assert "weights files" not in at.success[0].value and "files (weights, exports)" in at.success[0].value
    store = ResultStore(db)
    try:
        runs = store.visible_runs(None)
        assert not (runs["student_id"].fillna("") != "").any()
    finally:
        store.close()


@pytest.mark.parametrize("page", CLASS_PAGES)
def test_a_student_or_a_visitor_gets_only_the_refusal(page, db, monkeypatch):
    at = open_page("home", who=student("2024001", "张三"))
    with pytest.raises(ValueError):  # not in a student's navigation
        at.switch_page(f"app_pages/{page}.py")
    direct = AppTest.from_file(str(PAGES_DIR / f"{page}.py"), default_timeout=30)  # the page's own guard
    direct.session_state[SESSION_KEY] = session_for(student("2024001", "张三"))
    direct.run()
    assert [e.value for e in direct.error] == ["Only the teacher can open this page."]
    assert not direct.title and not direct.dataframe and not direct.get("download_button")
    monkeypatch.setenv("MNIST_LAB_MODE", "demo")  # a visitor
    visitor = AppTest.from_file(str(PAGES_DIR / f"{page}.py"), default_timeout=30).run()
    assert [e.value for e in visitor.error] == ["Only the teacher can open this page."]
    assert not visitor.title and not visitor.dataframe


def test_the_teacher_chooses_whose_report(db):
    at = open_page("report", who=TEACHER)
    whose = at.selectbox(key="report_whose")
    assert whose.value == "" and set(whose.options) >= {"My own runs", "张三 (2024001)", "Every run"}
    at.selectbox(key="report_whose").set_value("student:2024001").run()
    assert not at.exception
    cover = {t.key: t.value for t in at.text_input}
    assert cover["report_cover_name_input"] == "张三" and cover["report_cover_student_id_input"] == "2024001"


def test_all_reports_build_as_a_job_and_download_as_a_zip(db):
    at = open_page("class_progress", who=TEACHER)
    at.button(key="class_reports_btn").click().run()
    assert not at.exception and not at.error
    queue = JobQueue(ResultStore(db))
    [job] = queue.jobs(kinds=["reports"])
    assert job["workspace"] == "teacher" and job["runs_total"] == 3  # the class list: a report each, even without runs
    assert json.loads(job["spec"])["lang"] == "zh_CN"  # the report language's default, not the page's English
    assert at.button(key="class_reports_btn").disabled  # one at a time
    view = StoreRunner(queue.store, queue=queue).wait(job["job_id"], timeout=90)
    assert view is not None and view.status == "finished", view
    at.run()
    [zip_button] = [b for b in at.get("download_button") if b.proto.label == "Download class_reports.zip"]
    assert not at.button(key="class_reports_btn").disabled


def cover_fields(at: AppTest) -> dict[str, str]:
    return {t.key: t.value for t in at.text_input if t.key.startswith("report_cover_")}


def test_a_chosen_students_cover_does_not_stay_on_the_teachers_own(db):
    at = open_page("report", who=TEACHER)
    at.text_input(key="report_cover_class_name_input").set_value("CS 2024").run()  # the teacher's own cover, typed
    at.selectbox(key="report_whose").set_value("student:2024002").run()
    assert cover_fields(at) == {"report_cover_name_input": "李四", "report_cover_student_id_input": "2024002",
                                "report_cover_class_name_input": "CS 2024"}
    for back in ("", "*"):  # my own runs, then every run: the teacher's cover again, not the student's
        at.selectbox(key="report_whose").set_value(back).run()
        assert not at.exception
        assert cover_fields(at) == {"report_cover_name_input": "", "report_cover_student_id_input": "",
                                    "report_cover_class_name_input": "CS 2024"}
        assert all(not t.disabled for t in at.text_input if t.key.startswith("report_cover_"))
    at.text_input(key="report_cover_name_input").set_value("Teacher Wu").run()
    at.selectbox(key="report_whose").set_value("student:2024001").run()
    at.selectbox(key="report_whose").set_value("").run()
    assert cover_fields(at)["report_cover_name_input"] == "Teacher Wu"


def test_a_chosen_students_report_is_theirs_with_the_class_lists_name(db, monkeypatch):
    store = ResultStore(db)
    add_run(store, student_id="2024002", student_name="李四改", experiment="single", model=LAB5)
    store.close()  # their newest run says another name: the cover keeps the class list's
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return build_report(*args, **kwargs)
    monkeypatch.setattr(report_module, "build_report", spy)  # the page imports it by name on every run
    at = open_page("report", who=TEACHER)
    assert calls[-1]["detail"] is True and calls[-1]["workspace"] == ("teacher",)
    at.selectbox(key="report_whose").set_value("student:2024002").run()
    assert not at.exception
    assert "李四 (2024002)" in at.selectbox(key="report_whose").options
    built = calls[-1]  # the report the student downloads: their workspace, the class list's name, no server detail
    assert built["detail"] is False and built["workspace"] == ("student:2024002",)
    assert (built["cover"].name, built["cover"].student_id) == ("李四", "2024002")
    at.selectbox(key="report_whose").set_value("*").run()
    assert calls[-1]["detail"] is True and calls[-1]["workspace"] is None and calls[-1]["cover"].name == ""


def test_all_reports_are_built_in_the_report_language_picked(db):
    at = open_page("class_progress", who=TEACHER)
    assert at.radio(key="class_report_lang").value == "zh_CN"  # like the single report and the CLI
    assert any("(Chinese)" in c.value for c in at.caption)
    at.radio(key="class_report_lang").set_value("en").run()
    assert any("report language chosen above (English)" in c.value for c in at.caption)
    store = ResultStore(db)
    try:
        at.button(key="class_reports_btn").click().run()
        [job] = JobQueue(store).jobs(kinds=["reports"])
        assert json.loads(job["spec"])["lang"] == "en"
    finally:
        store.close()


def test_the_sidebar_words_a_class_job_in_both_languages(db):
    store = ResultStore(db)
    queue = JobQueue(store)
    submit_class_job(queue, "reports", TEACHER_ASKER, "zh_CN")
    submit_class_job(queue, "export", TEACHER_ASKER, "zh_CN")
    store.close()
    for lang, words in (("en", ("All reports", "End of term")), ("zh_CN", ("全部报告", "学期结束"))):
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params["lang"] = lang
        at.session_state[SESSION_KEY] = session_for(TEACHER)
        at.run()
        shown = " ".join(c.value for c in at.sidebar.caption)
        assert all(f"{w}: " in shown for w in words), shown


def test_an_export_older_than_a_students_run_holds_the_delete(db):
    export_now(db)
    at = open_page("class_term", who=TEACHER)
    built = [c.value for c in at.caption if c.value.startswith("The export was built at ")]
    assert len(built) == 1 and "(UTC)" in built[0] and not at.warning
    store = ResultStore(db)
    add_run(store, student_id="2024003", student_name="王五", experiment="single", model=LAB5,
            started_at=datetime.now(UTC).isoformat())
    store.close()  # 王五 trains after the export started: it misses that run
    at.run()
    [warning] = at.warning  # end_term's own check (the export's snapshot): what it would refuse
    assert re.sub(r"\\(.)", r"\1", warning.value).startswith("1 of the class's runs or jobs are newer than the export")
    at.number_input(key="term_confirm").set_value(3).run()
    at.checkbox(key="term_saved").check().run()
    assert at.button(key="term_delete_btn").disabled
    export_now(db)  # a new export: the delete may go
    at.run()
    assert not at.warning and not at.button(key="term_delete_btn").disabled


def test_without_an_export_the_delete_waits(db):
    at = open_page("class_term", who=TEACHER)
    at.number_input(key="term_confirm").set_value(3).run()
    at.checkbox(key="term_saved").check().run()
    assert at.button(key="term_delete_btn").disabled
    assert "The delete waits for an export built after the students' last run." in [c.value for c in at.caption]


def test_an_export_without_a_snapshot_is_dated_by_its_start(db):
    job = export_now(db)  # as an earlier version queued it: no snapshot in its spec
    spec = json.loads(job["spec"])
    del spec["snapshot"]
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # the row as the earlier version wrote it
        conn.execute("UPDATE jobs SET spec = ? WHERE job_id = ?", (json.dumps(spec), job["job_id"]))
    at = open_page("class_term", who=TEACHER)
    assert not at.warning
    store = ResultStore(db)
    add_run(store, student_id="2024003", student_name="王五", experiment="single", model=LAB5,
            started_at=datetime.now(UTC).isoformat())
    store.close()
    at.run()
    assert [w.value for w in at.warning][0].startswith("Students trained after this export was started")
    at.number_input(key="term_confirm").set_value(3).run()
    at.checkbox(key="term_saved").check().run()
    assert at.button(key="term_delete_btn").disabled
