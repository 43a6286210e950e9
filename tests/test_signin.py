"""Shared mode's sign-in, sessions and owners through AppTest (issue 24): every address shows the
sign-in page until someone signs in, then the same address opens its page; a roster student signs in
with the teacher's one-time code and sets a PIN, later with the PIN; wrong PINs and tokens are
slowed, said in one line with the wait; the teacher's Class page imports a roster (or refuses it
whole), prints codes and resets a PIN; the Runs page names each run's owner for the teacher and
shows a student only their own runs; the report's cover takes the student's sign-in. AppTest sends
no cookies: a session is handed to the app as it keeps one (apptest.session_for)."""
from __future__ import annotations

import re

import pytest
from apptest import APP, TEACHER, app_db, open_page, session_for, student
from streamlit.testing.v1 import AppTest
from test_i18n import assert_chinese, english_left, texts

from app_lib.session import KEY as SESSION_KEY
from mnist_lab.data.datasets import DataConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore, run_row
from mnist_lab.service.identity import Accounts, Identity, server_secret
from mnist_lab.training.loop import TrainConfig

TOKEN = "teacher-token-for-tests"
ROSTER = "学号,姓名\n2024001,张三\n2024002,李四\n"


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    monkeypatch.setenv("MNIST_LAB_TEACHER_TOKEN", TOKEN)
    return app_db(tmp_path / "results.sqlite", monkeypatch)


def accounts(db) -> Accounts:
    store = ResultStore(db)
    return Accounts(store, server_secret(store.path))


def app(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query or {})
    return at.run()


def student_form(at: AppTest, student_id: str, name: str) -> AppTest:
    at.text_input(key="signin_id").set_value(student_id)
    at.text_input(key="signin_name").set_value(name)
    return submit(at, "signin_id_form")


def submit(at: AppTest, form: str) -> AppTest:
    """Press the submit button of `form` (AppTest names a form's button by its form)."""
    [button] = [b for b in at.get("button") if b.proto.is_form_submitter and b.proto.form_id == form]
    return button.click().run()


def pin_inputs(at: AppTest) -> list:
    return [t for t in at.get("text_input") if t.key.startswith(("signin_secret", "signin_pin"))]


def test_not_signed_in_every_address_shows_the_sign_in_page_and_then_opens_it(db):
    at = app()
    assert at.title[0].value == "Sign in to MNIST CNN Lab" and not at.exception
    with pytest.raises(ValueError):  # no other page is registered before a sign-in
        at.switch_page("app_pages/runs.py")
    store = ResultStore(db)
    for run_id in ("r-old", "r-new"):
        store.start_run(run_row(run_id, PRESETS["tiny-fc"].model, TrainConfig(), DataConfig(), status="finished"))

    deep = AppTest.from_file(APP, default_timeout=60)  # a browser whose pages once listed Runs (to reach its address)
    deep.session_state[SESSION_KEY] = session_for(TEACHER)
    deep.run().switch_page("app_pages/runs.py")
    deep.session_state[SESSION_KEY] = ""  # no one signed in any more: a copied link opened fresh
    deep.query_params.update({"selected": "r-old", "status": "finished"})
    deep.run()
    assert deep.title[0].value == "Sign in to MNIST CNN Lab" and not deep.get("multiselect")
    assert deep.query_params["selected"] == "r-old"  # the link is kept for after the sign-in
    deep.text_input(key="signin_token").set_value(TOKEN)
    submit(deep, "signin_teacher_form")
    assert deep.title[0].value == "Runs" and not deep.exception  # the same page, the link's settings
    assert deep.multiselect(key="runs_selected").value == ["r-old"]
    assert deep.multiselect(key="runs_status").value == ["finished"]
    assert any("Signed in as the teacher" in c.value for c in deep.sidebar.caption)


def test_a_roster_student_signs_in_with_the_code_then_with_a_pin(db):
    codes = accounts(db).import_roster(ROSTER)
    at = app()
    student_form(at, "2024001", "张三")
    assert any("one-time code your teacher gave you" in i.value for i in at.info)
    at.text_input(key="signin_secret").set_value(codes["2024001"])
    at.text_input(key="signin_pin1").set_value("135790")
    at.text_input(key="signin_pin2").set_value("135791")
    submit(at, "signin_secret_form")
    assert any("The two PINs differ" in e.value for e in at.error)  # nothing consumed
    at.text_input(key="signin_pin2").set_value("135790")
    submit(at, "signin_secret_form")
    assert not at.exception and at.title[0].value != "Sign in to MNIST CNN Lab"
    assert any("Signed in as 张三 (2024001)" in c.value for c in at.sidebar.caption)
    assert at.session_state[SESSION_KEY]  # the cookie's value, written into the browser on this run

    again = app()  # another browser: the PIN now
    student_form(again, "2024001", "张三")
    assert again.text_input(key="signin_secret").label == "PIN" and not pin_inputs(again)[1:]  # no new PIN
    again.text_input(key="signin_secret").set_value("135790")
    submit(again, "signin_secret_form")
    assert any("Signed in as 张三 (2024001)" in c.value for c in again.sidebar.caption)
    again.sidebar.button(key="sign_out_btn").click().run()
    assert again.title[0].value == "Sign in to MNIST CNN Lab" and again.session_state[SESSION_KEY] == ""
    outsider = app()
    student_form(outsider, "9999999", "王五")  # not on the roster
    assert len(outsider.error) == 1 and not pin_inputs(outsider)  # said why; nothing asked


def test_without_a_roster_a_student_claims_an_id_and_wrong_pins_are_slowed(db):
    at = app()
    student_form(at, "s42", "Alice")
    assert any("belongs to whoever signs in with it first" in w.value for w in at.warning)
    at.text_input(key="signin_pin1").set_value("24682468")
    at.text_input(key="signin_pin2").set_value("24682468")
    submit(at, "signin_secret_form")
    assert any("Signed in as Alice (s42)" in c.value for c in at.sidebar.caption)

    thief = app()
    student_form(thief, "s42", "Alice")
    waits = []
    for _try in range(6):
        thief.text_input(key="signin_secret").set_value("00000000")
        submit(thief, "signin_secret_form")
        [error] = thief.error  # one line each time
        waits.append(error.value)
        assert "s42" not in error.value or "wait" in error.value  # never a second message
    assert "wrong" in waits[0]
    assert any("wait" in w for w in waits[3:])  # a growing wait, said in seconds
    assert not any("Signed in" in c.value for c in thief.sidebar.caption)


def test_the_teacher_signs_in_and_a_wrong_token_is_refused_in_chinese(db):
    at = app({"lang": "zh_CN"})
    assert at.title[0].value == "登录 MNIST CNN 实验室"
    assert_chinese(at)
    at.text_input(key="signin_token").set_value("nope")
    submit(at, "signin_teacher_form")
    assert len(at.error) == 1
    assert_chinese(at)  # the refusal too
    at.text_input(key="signin_token").set_value(TOKEN)
    submit(at, "signin_teacher_form")
    assert any("已以教师身份登录" in c.value for c in at.sidebar.caption)


def test_the_class_page_imports_a_roster_refuses_a_bad_one_and_resets_a_pin(db):
    at = open_page("teacher", who=TEACHER)
    at.get("file_uploader")[0].upload("bad.csv", "学号,姓名\n2024001,张三\n2024001,李四\n".encode(), "text/csv").run()
    at.button(key="teacher_import_btn").click().run()
    assert len(at.error) == 1 and not accounts(db).roster()  # checked whole: nothing imported
    at.get("file_uploader")[0].upload("class.csv", ROSTER.encode(), "text/csv").run()
    at.button(key="teacher_import_btn").click().run()
    assert not at.exception and not at.error
    codes = at.dataframe[0].value
    assert list(codes.iloc[:, 0]) == ["2024001", "2024002"] and codes.iloc[:, 2].str.len().min() >= 6
    [html] = [b for b in at.get("download_button") if b.proto.label == "Printable codes (HTML)"]
    assert {e.student_id for e in accounts(db).roster()} == {"2024001", "2024002"}

    at.selectbox(key="teacher_reset_id").set_value("2024002")
    at.checkbox(key="teacher_reset_sure").check().run()
    at.button(key="teacher_reset_btn").click().run()
    assert not at.exception
    new = dict(zip(at.dataframe[0].value.iloc[:, 0], at.dataframe[0].value.iloc[:, 2]))["2024002"]
    assert accounts(db).sign_in("2024002", "李四", new, "", new_pin="112233").student_id == "2024002"


def test_the_class_page_in_chinese(db):
    accounts(db).import_roster(ROSTER)
    with pytest.raises(ValueError):  # a wrong code: the page lists the failure
        accounts(db).sign_in("2024001", "张三", "000000", "10.0.0.9", new_pin="123456")
    at = open_page("teacher", {"lang": "zh_CN"}, who=TEACHER)
    at.button(key="teacher_issue_btn").click().run()
    assert at.title[0].value == "登录与班级名单"
    assert len(at.dataframe) == 4  # codes, students, failures, who is signed in
    codes = set(at.dataframe[0].value.iloc[:, 2])  # the codes themselves: letters and digits, not words
    assert not [(where, text) for where, text in texts(at) if text not in codes and english_left(text)]


def test_a_student_cannot_open_the_class_page(db):
    at = open_page("home", who=student("s1"))
    with pytest.raises(ValueError):  # not in a student's navigation
        at.switch_page("app_pages/teacher.py")


def _owned(store: ResultStore, run_id: str, who=None) -> None:
    with store.context(job_id=f"j-{run_id}", workspace=who.workspace if who else "Ab12Cd34Ef56Gh78Ij90",
                       student_id=who.student_id if who else "", student_name=who.name if who else ""):
        store.start_run(run_row(run_id, PRESETS["tiny-fc"].model, TrainConfig(), DataConfig(), label=run_id,
                                status="finished"))


def test_the_runs_page_names_owners_for_the_teacher_and_shows_a_student_only_their_own(db):
    store = ResultStore(db)
    alice, bob = student("s1", "Alice"), student("s2", "Bob")
    _owned(store, "r-alice", alice)
    _owned(store, "r-bob", bob)
    _owned(store, "r-old")  # an earlier version's ?ws= workspace
    teacher = open_page("runs", who=TEACHER)
    frame = teacher.dataframe[0].value
    owners = dict(zip(frame["run"], zip(frame["student ID"], frame["student name"])))
    assert owners == {"r-alice": ("s1", "Alice"), "r-bob": ("s2", "Bob"), "r-old": ("", "(unnamed workspace)")}

    mine = open_page("runs", who=alice)
    frame = mine.dataframe[0].value
    assert list(frame["run"]) == ["r-alice"] and "student name" not in frame.columns
    zh = open_page("runs", {"lang": "zh_CN"}, who=TEACHER)
    assert "（未命名的工作区）" in set(zh.dataframe[0].value["姓名"])


def test_the_report_cover_takes_the_signed_in_students_name_and_id(db):
    at = open_page("report", who=student("2024001", "张三"))
    assert at.text_input(key="report_cover_name_input").value == "张三"
    assert at.text_input(key="report_cover_name_input").disabled
    assert at.text_input(key="report_cover_student_id_input").value == "2024001"
    assert not at.text_input(key="report_cover_class_name_input").disabled


def test_a_demo_visitor_gets_a_workspace_and_sees_the_examples_read_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", "demo")
    db = app_db(tmp_path / "results.sqlite", monkeypatch)
    store = ResultStore(db)
    store.start_run(run_row("r-example", PRESETS["tiny-fc"].model, TrainConfig(), DataConfig(), label="example",
                            status="finished"))  # trained by the operator on the CLI: the local workspace
    at = open_page("runs")
    assert at.title[0].value == "Runs" and not at.exception  # no sign-in page
    who = accounts(db).session(at.session_state[SESSION_KEY])
    assert who.role == "visitor" and who.workspace.startswith("visitor:")
    assert list(at.dataframe[0].value["run"]) == ["r-example"]
    assert any("the examples can be looked at, not stopped or deleted" in c.value for c in at.caption)
    assert any("belong to someone else" in c.value for c in at.caption)
    assert at.button(key="runs_delete_btn").disabled and not at.checkbox(key="runs_sure").value
    assert at.checkbox(key="runs_sure").disabled
    assert not at.sidebar.button  # no sign-out for a visitor


def test_a_run_the_teacher_stops_says_so_to_its_student(db):
    from mnist_lab.service.jobs import JobSpec
    from mnist_lab.service.queue import JobQueue

    store, alice = ResultStore(db), student("s1", "Alice")
    spec = JobSpec("train", TrainConfig(epochs=1), DataConfig(train_limit=256), model=PRESETS["tiny-fc"].model)
    queue = JobQueue(store)
    queue.start_inline("j-alice", alice.workspace, "train", spec.title, spec.to_json(), 1)  # training (this process)
    with store.context(job_id="j-alice", workspace=alice.workspace, student_id="s1", student_name="Alice"):
        store.start_run(run_row("r-live", PRESETS["tiny-fc"].model, TrainConfig(), DataConfig(), status="running"))
    teacher = open_page("runs", who=TEACHER)
    teacher.button(key="runs_stop_btn").click().run()
    assert not teacher.exception
    queue.finish("j-alice", "stopped")  # what the worker does at the next iteration
    assert "stopped by the teacher" in queue.jobs()[0]["stop_reason"]  # the job's reason, as stored
    at = open_page("train", who=alice)
    assert any(w.value.startswith("Stopped (stopped by the teacher) after") for w in at.warning)


def test_a_damaged_database_stops_the_sign_in_page_without_a_path(broken_db, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    app_db(broken_db, monkeypatch)
    at = app()
    assert not at.exception and at.title[0].value == "Sign in to MNIST CNN Lab"
    [error] = at.error
    assert "results database" in error.value and str(broken_db.parent) not in error.value.replace("\\", "")
    assert not pin_inputs(at) and not at.get("text_input")


def test_behind_a_trusted_proxy_the_client_is_the_address_the_proxy_saw(monkeypatch):
    """The throttle counts per address: behind the server's own proxy that is the entry the proxy
    appended (the last); the entries before it are the browser's to forge, one per guess."""
    from types import SimpleNamespace

    from app_lib import session

    context = SimpleNamespace(headers={"X-Forwarded-For": "6.6.6.6, 10.1.2.3"}, ip_address="127.0.0.9")
    monkeypatch.setattr(session, "st", SimpleNamespace(context=context))
    monkeypatch.delenv(session.TRUST_PROXY_ENV, raising=False)
    assert session.client() == "127.0.0.9"  # no proxy trusted: the connection's own address
    monkeypatch.setenv(session.TRUST_PROXY_ENV, "1")
    assert session.client() == "10.1.2.3"
    context.headers = {}
    assert session.client() == "127.0.0.9"
    context.headers = {"X-Forwarded-For": "10.1.2.3"}
    context.ip_address = "203.0.113.7"  # a browser connecting straight to the server: its header is its own
    assert session.client() == "203.0.113.7"
    context.ip_address = "::1"  # the proxy on this machine over IPv6
    assert session.client() == "10.1.2.3"
    context.ip_address = None  # unknown (a unix socket): this machine
    assert session.client() == "10.1.2.3"
    context.headers = {"X-Forwarded-For": "2001:db8:1:2:aaaa::1"}  # an IPv6 client: its /64 (it holds them all)
    assert session.client() == "2001:db8:1:2::/64"
    monkeypatch.delenv(session.TRUST_PROXY_ENV)
    context.ip_address = "2001:db8:1:2:bbbb::9"
    assert session.client() == "2001:db8:1:2::/64"


def test_the_slips_address_is_the_apps_not_the_class_pages(monkeypatch):
    """The printed slips say where to sign in: the scheme, host and base path, not /teacher."""
    from types import SimpleNamespace

    from app_lib import session

    options = {"server.baseUrlPath": ""}
    fake = SimpleNamespace(context=SimpleNamespace(url="https://lab.example.edu:8501/teacher?lang=zh_CN#codes"),
                           get_option=options.get)
    monkeypatch.setattr(session, "st", fake)
    assert session.app_address() == "https://lab.example.edu:8501/"
    options["server.baseUrlPath"] = "/mnist/"
    fake.context.url = "https://lab.example.edu/mnist/teacher"
    assert session.app_address() == "https://lab.example.edu/mnist/"
    fake.context.url = None  # unknown (AppTest)
    assert session.app_address() == ""


def test_the_sidebar_shows_a_name_as_its_characters(db):
    at = open_page("home", who=student("s9", "**Boss** [click](https://evil.example)"))
    [caption] = [c.value for c in at.sidebar.caption if "Signed in as" in c.value]
    assert "\\*\\*Boss\\*\\* \\[click\\]\\(https\u2060\\:" in caption  # escaped: no bold, no link


def test_a_csv_cell_that_starts_a_formula_is_text_in_the_teachers_runs_csv(db, monkeypatch):
    import streamlit as st

    from app_lib.widgets import no_formula

    store = ResultStore(db)
    _owned(store, "r-evil", student("s1", "=HYPERLINK(\"http://x\",\"y\")"))
    _owned(store, "r-plus", student("s2", "+SUM(1)"))
    got, button = {}, st.download_button

    def recorded(label, data=None, file_name=None, *args, **kwargs):
        got[file_name] = data() if callable(data) else data
        return button(label, data, file_name, *args, **kwargs)
    monkeypatch.setattr(st, "download_button", recorded)
    open_page("runs", who=TEACHER)
    text = got["runs.csv"]
    assert "'=HYPERLINK" in text and "'+SUM(1)" in text
    assert not any(cell.startswith(("=", "+", "@")) for line in text.splitlines() for cell in line.split(","))
    assert [no_formula(v) for v in ("-1", "@a", "\tx", "\rx", "a=b", -1.5, None)] == \
        ["'-1", "'@a", "'\tx", "'\rx", "a=b", -1.5, None]


def test_a_class_view_student_sees_no_classmates_names_and_reports_their_own_runs(db, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_CLASS_VIEW", "1")
    store = ResultStore(db)
    alice, bob = student("s1", "Alice"), student("s2", "Bob")
    _owned(store, "r-alice", alice)
    _owned(store, "r-bob", bob)
    import streamlit as st
    got, button = {}, st.download_button

    def recorded(label, data=None, file_name=None, *args, **kwargs):
        got[file_name] = data() if callable(data) else data
        return button(label, data, file_name, *args, **kwargs)
    monkeypatch.setattr(st, "download_button", recorded)
    at = open_page("runs", who=alice)
    frame = at.dataframe[0].value
    assert set(frame["run"]) == {"r-alice", "r-bob"}  # the class view: every run
    assert "student name" not in frame.columns and "student ID" not in frame.columns
    assert "Bob" not in got["runs.csv"] and "s2" not in got["runs.csv"] and "Alice" in got["runs.csv"]
    report = open_page("report", who=alice)
    options = report.selectbox(key="report_run").options
    assert any("r-alice" in o for o in options) and not any("r-bob" in o for o in options)  # their own runs
    text = "\n".join(str(m.value) for m in report.markdown)
    assert "results database" not in text and "results.sqlite" not in text and "make fonts" not in text
    assert "from your" in text


def test_a_session_counts_only_in_its_own_mode_and_a_teachers_only_with_the_current_token(db, monkeypatch):
    def opened(cookie: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        at.session_state[SESSION_KEY] = cookie
        return at.run()

    visitor = session_for(Identity("visitor", "visitor:" + "v" * 22))  # a demo's cookie on a class server
    assert opened(visitor).title[0].value == "Sign in to MNIST CNN Lab"
    cookie = session_for(TEACHER)
    assert opened(cookie).sidebar.button(key="sign_out_btn")  # the token it signed in with
    monkeypatch.setenv("MNIST_LAB_TEACHER_TOKEN", "a-new-token-" + "x" * 12)  # the teacher changed it
    assert opened(cookie).title[0].value == "Sign in to MNIST CNN Lab"
    monkeypatch.setenv("MNIST_LAB_MODE", "demo")  # a student's cookie on a demo: a visitor, not the student
    at = open_page("runs", who=student("s1", "Alice"))
    who = accounts(db).session(at.session_state[SESSION_KEY])
    assert who.role == "visitor" and not any("Alice" in c.value for c in at.sidebar.caption)


def test_the_teacher_signs_a_student_or_everyone_out_and_removes_a_student(db):
    accounts(db).import_roster(ROSTER)
    alice_cookie, bob_cookie = session_for(student("2024001", "张三")), session_for(student("2024002", "李四"))
    at = open_page("teacher", who=TEACHER)
    mine = at.session_state[SESSION_KEY]
    at.selectbox(key="teacher_sign_out_id").set_value("2024001")
    at.button(key="teacher_sign_out_btn").click().run()
    assert not at.exception
    assert accounts(db).session(alice_cookie) is None and accounts(db).session(bob_cookie) is not None
    other_teacher = session_for(TEACHER)
    at.button(key="teacher_sign_out_all_btn").click().run()
    assert accounts(db).session(bob_cookie) is None and accounts(db).session(other_teacher) is None
    assert accounts(db).session(mine) is not None and at.sidebar.button(key="sign_out_btn")  # the teacher stays

    at.selectbox(key="teacher_remove_id").set_value("2024002")
    assert at.button(key="teacher_remove_btn").disabled  # confirm first
    at.checkbox(key="teacher_remove_sure").check().run()
    at.button(key="teacher_remove_btn").click().run()
    assert not at.exception
    assert {e.student_id for e in accounts(db).roster()} == {"2024001"}


def cookie_scripts(at: AppTest) -> list[str]:
    """The session-cookie scripts this run drew (st.html in the sidebar)."""
    return [e.proto.body for e in at.sidebar.get("html") if "document.cookie" in e.proto.body]


def test_every_run_writes_the_cookie_until_the_session_ends_and_a_sign_out_deletes_it_once(db):
    """A run cut short by a rerun may never render its cookie element: each run of a live session
    writes it again (with what is left of the session), so opening another address at once finds
    it; a session ended elsewhere writes nothing more; a sign-out's deletion is written once."""
    at = app()
    student_form(at, "s42", "Alice")
    at.text_input(key="signin_pin1").set_value("24682468")
    at.text_input(key="signin_pin2").set_value("24682468")
    submit(at, "signin_secret_form")
    cookie = at.session_state[SESSION_KEY]
    for _run in range(2):  # the sign-in's run and the next
        [script] = cookie_scripts(at)
        assert f"mnist_lab_session={cookie};" in script and "SameSite=Strict" in script
        age = int(re.search(r"Max-Age=(\d+)", script).group(1))
        assert 3600 < age <= 13 * 3600
        at.run()

    accounts(db).close_session(cookie)  # e.g. signed out in another tab of the same browser
    at.run()
    assert cookie_scripts(at) == [] and not any("Signed in as" in c.value for c in at.sidebar.caption)

    at = app()
    student_form(at, "s42", "Alice")
    at.text_input(key="signin_secret").set_value("24682468")
    submit(at, "signin_secret_form")
    assert cookie_scripts(at)
    at.sidebar.button(key="sign_out_btn").click().run()
    [script] = cookie_scripts(at)
    assert "mnist_lab_session=;" in script and "Max-Age=0;" in script
    at.run()
    assert cookie_scripts(at) == []
