"""Who may see, stop or delete a run: one function, `access.may`, and the job runner obeys it
whoever calls it (a page, the CLI, a script), not only the pages' buttons."""
from __future__ import annotations

import pytest

from mnist_lab.data.datasets import DataConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore, run_row
from mnist_lab.service.access import EXAMPLES_WORKSPACE, LOCAL, Asker, allowed, may, workspace_of
from mnist_lab.service.identity import Identity
from mnist_lab.service.jobs import JobSpec, StoreRunner
from mnist_lab.service.policy import ServerPolicy
from mnist_lab.training.loop import TrainConfig

TINY = DataConfig(train_limit=256, test_limit=1000)
ALICE = Asker("alice-ws", shared=True)
BOB = Asker("bob-ws", shared=True)
TEACHER = Asker("teacher-ws", shared=True, teacher=True)
CLASS = Asker("carol-ws", shared=True, class_view=True)


def test_may_local_user_and_teacher_do_anything_a_student_only_with_their_own():
    for action in ("see", "stop", "delete"):
        assert may(LOCAL, action, "bob-ws") and may(TEACHER, action, "bob-ws")
        assert may(ALICE, action, "alice-ws") and not may(ALICE, action, "bob-ws")
        assert may(CLASS, action, "carol-ws")
    assert may(CLASS, "see", "bob-ws") and not may(CLASS, "stop", "bob-ws") and not may(CLASS, "delete", "bob-ws")
    with pytest.raises(ValueError, match="Unknown action"):
        may(ALICE, "rename", "alice-ws")


def test_a_thing_is_a_workspace_a_row_or_an_object_and_a_run_of_none_is_the_local_users():
    class View:
        workspace = "bob-ws"
    assert [workspace_of(t) for t in ("bob-ws", {"workspace": "bob-ws"}, View(), {"workspace": None}, None, "")] \
        == ["bob-ws", "bob-ws", "bob-ws", "local", "local", "local"]
    assert allowed(ALICE, "see", [{"workspace": "alice-ws", "n": 1}, {"workspace": "bob-ws", "n": 2}]) \
        == [{"workspace": "alice-ws", "n": 1}]
    assert (ALICE.scope, CLASS.scope, TEACHER.scope, LOCAL.scope) == (("alice-ws",), None, None, None)


def test_the_server_policy_says_who_a_signed_in_session_is():
    policy = ServerPolicy(mode="shared", teacher_token="s3cret")
    alice = policy.asker(Identity("student", "student:2023001", "2023001", "Alice"))
    assert (alice.workspace, alice.student_id, alice.name, alice.teacher) == ("student:2023001", "2023001", "Alice",
                                                                              False)
    assert policy.asker(Identity("teacher", "teacher")).teacher
    nobody = policy.asker(None)  # not signed in: sees nothing, whatever the class view says
    assert nobody.scope == () and not may(nobody, "see", "student:2023001")
    assert ServerPolicy().asker(None) == LOCAL  # a local install: its one user


def _run(store: ResultStore, run_id: str, workspace: str, job_id: str = "") -> None:
    with store.context(job_id=job_id, workspace=workspace):
        store.start_run(run_row(run_id, PRESETS["tiny-fc"].model, TrainConfig(), TINY, status="finished"))


def test_a_student_cannot_see_stop_or_delete_anothers_run_through_the_runner(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    spec = JobSpec("train", TrainConfig(device="cpu"), TINY, model=PRESETS["tiny-fc"].model)
    bob = StoreRunner(store, asker=BOB)
    job = bob.submit(spec)  # queued in bob's own workspace
    _run(store, "bob-run", "bob-ws", job)
    _run(store, "alice-run", "alice-ws")
    alice = StoreRunner(store, queue=bob.queue, asker=ALICE)

    assert alice.poll(job) is None and alice.jobs(None) == [] and alice.jobs("bob-ws") == []
    assert list(alice.runs()["run_id"]) == ["alice-run"] and not alice.may_see_run("bob-run")
    assert not alice.stop(job) and alice.stop_runs(["bob-run"]) == 0
    assert bob.poll(job).status == "queued"  # untouched
    assert alice.delete_runs(["bob-run", "alice-run"]) == 1  # only her own
    assert list(store.runs()["run_id"]) == ["bob-run"]

    assert StoreRunner(store, queue=bob.queue, asker=CLASS).poll(job) is not None  # the class view sees it
    assert not StoreRunner(store, queue=bob.queue, asker=CLASS).stop(job)  # and cannot stop it
    assert bob.stop_runs(["bob-run"]) == 1 and bob.poll(job).status == "stopped"
    assert StoreRunner(store, queue=bob.queue, asker=TEACHER).delete_runs(["bob-run"]) == 1
    assert store.runs().empty


# ------------------------------------------------------------------------------ issue 24: owners, demo, teacher

ANN = Asker("student:0012", shared=True, student_id="0012", name="张三")
VISITOR = Asker("visitor:abc", shared=True, demo=True)
NOBODY = Asker("", shared=True)  # not signed in


def test_a_demo_visitor_sees_the_examples_and_changes_only_their_own_runs():
    examples = EXAMPLES_WORKSPACE
    assert may(VISITOR, "see", examples) and not may(VISITOR, "stop", examples)
    assert not may(VISITOR, "delete", examples)
    assert all(may(VISITOR, action, "visitor:abc") for action in ("see", "stop", "delete"))
    assert not may(VISITOR, "see", "visitor:xyz") and not may(VISITOR, "see", "student:1")
    assert VISITOR.scope == ("visitor:abc", examples) and ANN.scope == ("student:0012",)
    assert NOBODY.scope == () and not any(may(NOBODY, a, t) for a in ("see", "stop") for t in ("", "local", None))
    assert may(Asker("teacher", shared=True, teacher=True, demo=True), "delete", examples)


def test_a_scope_tuple_reaches_the_runs_a_runner_and_the_report_read(tmp_path):
    from mnist_lab.lab.findings import compute_findings

    store = ResultStore(tmp_path / "r.sqlite")
    for run_id, workspace in (("example", EXAMPLES_WORKSPACE), ("mine", "visitor:abc"), ("theirs", "visitor:xyz")):
        _run(store, run_id, workspace)
    assert sorted(StoreRunner(store, asker=VISITOR).runs()["run_id"]) == ["example", "mine"]
    assert sorted(store.visible_runs(VISITOR.scope)["run_id"]) == ["example", "mine"]
    assert list(store.visible_runs("visitor:xyz")["run_id"]) == ["theirs"]  # one workspace as a str still works
    assert store.visible_runs(NOBODY.scope).empty
    runner = StoreRunner(store, asker=VISITOR)
    assert runner.may_see_run("example") and not runner.may_see_run("theirs")
    assert runner.delete_runs(["example", "mine", "theirs"]) == 1 and len(store.runs()) == 2
    assert compute_findings(store, workspace=VISITOR.scope) is not None


def test_a_students_job_and_its_runs_carry_their_id_and_name(tmp_path):
    from mnist_lab.service.worker import Worker, WorkerConfig

    db = tmp_path / "r.sqlite"
    store = ResultStore(db)
    runner = StoreRunner(store, asker=ANN, client="10.0.0.7")
    job = runner.submit(JobSpec("train", TrainConfig(device="cpu"), TINY, model=PRESETS["tiny-fc"].model))
    row = runner.queue.job(job)
    assert (row["workspace"], row["student_id"], row["student_name"], row["client"]) == \
        ("student:0012", "0012", "张三", "10.0.0.7")
    Worker(WorkerConfig(db=str(db), warm=False)).run(max_jobs=1)
    view = runner.poll(job)
    assert (view.status, view.student_id, view.student_name) == ("finished", "0012", "张三")
    runs = store.visible_runs(None)
    assert list(runs[["student_id", "student_name", "workspace"]].iloc[0]) == ["0012", "张三", "student:0012"]
    paths = store.export_csv(tmp_path / "out")
    header = paths["runs"].read_text(encoding="utf-8").splitlines()
    assert header[0].endswith(",steps_per_epoch,student_id,student_name") and header[1].endswith(",0012,张三")
    local = StoreRunner(store).submit(JobSpec("train", TrainConfig(device="cpu"), TINY, model=PRESETS["tiny-fc"].model))
    assert (runner.queue.job(local)["student_id"], runner.queue.job(local)["client"]) == ("", "")


def test_the_teacher_stopping_a_students_job_says_stopped_by_the_teacher(tmp_path):
    from mnist_lab.i18n import render_stored

    store = ResultStore(tmp_path / "r.sqlite")
    spec = JobSpec("train", TrainConfig(device="cpu"), TINY, model=PRESETS["tiny-fc"].model)
    ann = StoreRunner(store, asker=ANN)
    teacher = StoreRunner(store, queue=ann.queue, asker=Asker("teacher", shared=True, teacher=True))
    by_teacher, by_ann, teachers_own = ann.submit(spec), ann.submit(spec), teacher.submit(spec)
    with store.context(job_id=by_teacher, workspace="student:0012"):  # a run its worker cut short
        store.start_run(run_row("ann-run", PRESETS["tiny-fc"].model, TrainConfig(), TINY, status="stopped"))
    assert teacher.stop_runs(["ann-run"]) == 1 and ann.stop(by_ann) and teacher.stop(teachers_own)
    said = {job: ann.queue.job(job)["stop_reason"] for job in (by_teacher, by_ann, teachers_own)}
    assert render_stored(said[by_teacher], "en") == "stopped by the teacher"
    assert render_stored(said[by_teacher], "zh_CN") == "由老师停止"
    assert render_stored(said[by_ann], "en") == render_stored(said[teachers_own], "en") == "stopped by you"
    assert ann.poll(by_teacher).stop_reason == "stopped by the teacher"
    ann.queue.finish(by_teacher, "stopped")  # as a worker ends it: its runs say why too
    run = store.visible_runs(None).set_index("run_id").loc["ann-run"]
    assert run["stop_reason"] == "stopped by the teacher"
    assert render_stored(run["stop_reason_msg"], "zh_CN", run["stop_reason"]) == "由老师停止"
