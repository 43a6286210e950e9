"""The teacher's class pages (issue 25) through AppTest, on a shared-mode store of three students' runs
written without training (tests/class_fixtures.py): one finished lab 5, one half, one nothing. The
teacher's Progress page shows exactly that, filters it and offers a student's report; Class results
pools the sweeps; End of term deletes only after the right number is typed; a student or a visitor
opening a class page gets only the refusal."""
from __future__ import annotations

from pathlib import Path

import pytest
from apptest import APP, TEACHER, app_db, open_page, session_for, student
from streamlit.testing.v1 import AppTest

from app_lib.session import KEY as SESSION_KEY
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.identity import Accounts, server_secret
from mnist_lab.service.jobs import StoreRunner
from mnist_lab.service.queue import JobQueue
from tests.class_fixtures import lab5_complete, lab5_half

pytestmark = pytest.mark.usefixtures("no_worker_left_running")
TOKEN = "class-pages-teacher-token"
ROSTER = "学号,姓名\n2024001,张三\n2024002,李四\n2024003,王五\n"
CLASS_PAGES = ["class_progress", "class_pooled", "class_term"]
PAGES_DIR = Path(APP).parent / "app_pages"


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
    assert len(at.get("plotly_chart")) >= 3  # depth and kernel lines, the heat map
    grid = at.dataframe[0].value
    assert grid.shape == (2, 2) and all("seeds" in str(cell) for cell in grid.to_numpy().ravel())
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"Depth × kernel (CSV)", "FC vs CNN (CSV)"} <= labels


def test_the_end_of_term_delete_waits_for_the_right_number(db):
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
    assert at.button(key="class_reports_btn").disabled  # one at a time
    view = StoreRunner(queue.store, queue=queue).wait(job["job_id"], timeout=90)
    assert view is not None and view.status == "finished", view
    at.run()
    [zip_button] = [b for b in at.get("download_button") if b.proto.label == "Download class_reports.zip"]
    assert not at.button(key="class_reports_btn").disabled
