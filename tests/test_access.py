"""Who may see, stop or delete a run: one function, `access.may`, and the job runner obeys it
whoever calls it (a page, the CLI, a script), not only the pages' buttons."""
from __future__ import annotations

import pytest

from mnist_lab.data.datasets import DataConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore, run_row
from mnist_lab.service.access import LOCAL, Asker, allowed, may, workspace_of
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


def test_the_server_policy_says_who_a_session_is():
    policy = ServerPolicy(mode="shared", teacher_token="s3cret")
    assert policy.asker("alice-ws", "wrong") == ALICE
    assert policy.asker("teacher-ws", "s3cret") == TEACHER
    assert ServerPolicy().asker("local") == LOCAL


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
