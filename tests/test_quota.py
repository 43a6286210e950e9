"""What a shared server keeps and what one person may add (service/quota.py, policy.check_quota):
a workspace's runs and bytes, a job's projected bytes, the per-person, per-client and total caps
refusing a job before it is queued (in both languages), and the demo's pruning of old visitor runs.
Rows are written directly: nothing trains here."""
from __future__ import annotations

import sqlite3
import time
from dataclasses import replace

import pytest

from mnist_lab import i18n
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.lab.experiments import CompareConfig
from mnist_lab.nets.model import count_params
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore, run_row
from mnist_lab.runs.weights import weights_path
from mnist_lab.service import quota
from mnist_lab.service.identity import Identity
from mnist_lab.service.jobs import JobSpec, StoreRunner
from mnist_lab.service.policy import LimitError, ServerPolicy
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.loop import TrainConfig

LAB5 = PRESETS["lab5"].model
SHARED = ServerPolicy(mode="shared", max_runs=3, max_mb=1.0, max_total_gb=1.0)


def lab5(epochs: int = 1, train_limit: int | None = 1000, **data) -> JobSpec:
    return JobSpec("train", TrainConfig(epochs=epochs, device="cpu"), DataConfig(train_limit=train_limit, **data),
                   model=LAB5)


def add_run(store: ResultStore, run_id: str, workspace: str, *, age_s: float = 0.0, epochs: int = 2,
            steps: int = 10, status: str = "finished", weights: int = 0) -> None:
    """A run row of `workspace` started `age_s` ago with `epochs` x `steps` done, and `weights` bytes
    of weights file (0: none)."""
    with store.context(workspace=workspace):
        store.start_run(run_row(run_id, LAB5, TrainConfig(), DataConfig(), status=status, epochs_done=epochs,
                                steps_per_epoch=steps, started_at=quota.iso(time.time() - age_s)))
    if weights:
        path = weights_path(store.path, run_id)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\0" * weights)


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    yield store
    store.close()


def test_usage_counts_a_workspaces_runs_rows_and_weights_files(store):
    add_run(store, "a1", "alice", epochs=2, steps=10, weights=5000)
    add_run(store, "a2", "alice", epochs=1, steps=4)
    add_run(store, "b1", "bob", weights=7000)
    rows = 2 * quota.RUN_ROW_BYTES + 3 * quota.EPOCH_ROW_BYTES + 24 * quota.ITERATION_ROW_BYTES
    assert quota.usage(store, "alice") == quota.Usage(2, rows + 5000)
    assert quota.usage(store, "nobody") == quota.Usage(0, 0)
    before = quota.total_bytes(store)
    assert before > 12_000  # the database's pages in use and both weights files
    store.delete_runs(["b1"])
    assert quota.total_bytes(store) <= before - 7000  # freed pages and the deleted file no longer count


def test_a_jobs_bytes_are_projected_from_the_measured_rows_and_its_weights():
    ten = quota.job_bytes(lab5(epochs=10, train_limit=None))  # 938 steps an epoch
    weights = count_params(LAB5) * 4 + quota.WEIGHTS_HEADER_BYTES
    assert ten == 9380 * quota.ITERATION_ROW_BYTES + 10 * quota.EPOCH_ROW_BYTES + quota.RUN_ROW_BYTES + weights
    assert 0.75e6 < ten < 0.9e6  # bench/bench_bytes.py measured 0.77-0.81 MB for this run
    compare = JobSpec("compare", TrainConfig(), DataConfig(train_limit=640), compare=CompareConfig(seeds=2))
    per_run = [quota.job_bytes(replace(compare, compare=None, kind="train", model=cfg))
               for cfg in compare.compare.models().values()]
    assert quota.job_bytes(compare) == 4 * sum(per_run) + 4 * 784 * 8  # 2 seeds x 2 pixel orders; half permuted


def test_each_cap_refuses_the_job_before_anything_is_queued_with_what_to_do(store):
    runner = StoreRunner(store)
    start = lab5()

    def refused(ws: str, policy: ServerPolicy = SHARED) -> LimitError:
        with pytest.raises(LimitError) as info:
            policy.check(start, "cpu", quota.standing(store, ws))
            runner.submit(start, ws)  # what the app does after the check: never reached
        return info.value

    for i in range(3):
        add_run(store, f"r{i}", "alice")
    SHARED.check(start, "cpu", quota.standing(store, "bob"))  # bob keeps nothing: allowed
    too_many = refused("alice")
    assert "Runs you keep on this server: 3; this job adds 1, and each person may keep at most 3" in str(too_many)
    assert "Delete old runs on the Runs page" in str(too_many)
    assert i18n.render(too_many, "zh_CN").startswith("你在这个服务器上保存的运行：3 次")
    assert "运行记录" in i18n.render(too_many, "zh_CN")

    add_run(store, "big", "carol", weights=990_000)
    too_big = refused("carol")
    used, adds = (round(n / 1000) for n in (quota.usage(store, "carol").bytes, quota.job_bytes(start)))
    assert f"Your runs take {used} KB on this server and this job would add about {adds} KB" in str(too_big)
    assert "每人最多保存 1.0 MB" in i18n.render(too_big, "zh_CN")

    full = refused("bob", replace(SHARED, max_mb=10.0, max_total_gb=0.0001))
    assert "The server's disk quota for results is full" in str(full) and "ask your teacher" in str(full)
    assert "请联系老师" in i18n.render(full, "zh_CN")
    demo_full = refused("visitor:x", replace(SHARED, mode="demo", max_mb=10.0, max_total_gb=0.0001))
    assert "visitors' runs are deleted 24 hours after they start" in str(demo_full)
    assert "24 小时" in i18n.render(demo_full, "zh_CN")
    assert JobQueue(store).jobs(limit=100) == []  # every refusal before the queue
    ServerPolicy().check(start, "cpu", quota.standing(store, "alice"))  # a local install keeps whatever it likes


def test_the_demo_caps_jobs_per_client_ip_across_visitor_workspaces(store):
    demo = ServerPolicy.from_env({"MNIST_LAB_MODE": "demo"}, [])
    assert (demo.queue_limit, demo.max_client_jobs) == (0, 1)
    visitor = demo.asker(Identity("visitor", "visitor:a"))
    job = StoreRunner(store, queue_limit=demo.queue_limit, asker=visitor, client="10.0.0.7").submit(lab5())
    assert quota.client_jobs(store, "10.0.0.7") == 1 and quota.client_jobs(store, "10.0.0.8") == 0
    with pytest.raises(LimitError, match=r"Jobs from your network training or waiting here: 1 \(at most 1\)") as info:
        demo.check(lab5(), "cpu", quota.standing(store, "visitor:b", "10.0.0.7"))  # a fresh workspace, same IP
    assert "来自你所在网络、正在这里训练或等待的任务：1 个" in i18n.render(info.value, "zh_CN")
    demo.check(lab5(), "cpu", quota.standing(store, "visitor:c", "10.0.0.8"))  # another client
    JobQueue(store).finish(job, "finished")
    demo.check(lab5(), "cpu", quota.standing(store, "visitor:b", "10.0.0.7"))  # its job ended


def test_pruning_removes_only_old_visitor_runs_their_weights_and_ended_jobs(store):
    queue, day = JobQueue(store), 24 * 3600
    add_run(store, "old-visitor", "visitor:aaaa", age_s=2 * day, weights=100)
    add_run(store, "new-visitor", "visitor:bbbb", age_s=60, weights=100)
    add_run(store, "still-training", "visitor:cccc", age_s=2 * day, status="running")
    add_run(store, "example", "local", age_s=2 * day, weights=100)  # the demo's examples: the operator's runs
    add_run(store, "student", "student:s01", age_s=2 * day, weights=100)
    for job_id, ws in (("old-job", "visitor:aaaa"), ("queued-job", "visitor:aaaa"), ("example-job", "local")):
        queue.submit(job_id, ws, "train", job_id, lab5().to_json(), 1)
    queue.finish("old-job", "finished")
    queue.finish("example-job", "finished")
    with sqlite3.connect(store.path) as conn:  # both ended two days ago
        conn.execute("UPDATE jobs SET created_at = ?, finished_at = ? WHERE job_id IN ('old-job', 'example-job')",
                     (time.time() - 2 * day, time.time() - 2 * day))
    assert quota.prune_visitors(store, queue, day, now=time.time() + 60) == 1
    assert set(store.runs()["run_id"]) == {"new-visitor", "still-training", "example", "student"}
    assert not weights_path(store.path, "old-visitor").exists()
    assert all(weights_path(store.path, r).exists() for r in ("new-visitor", "example", "student"))
    assert {j["job_id"] for j in queue.jobs(limit=100)} == {"queued-job", "example-job"}
    assert quota.prune_visitors(store, queue, day) == 0  # nothing left to prune


def test_a_job_spec_may_not_name_a_server_folder_in_shared_or_demo_mode(monkeypatch):
    monkeypatch.delenv("MNIST_LAB_DATA_DIR", raising=False)
    spec = lab5(data_dir="/srv/secret")
    ServerPolicy().check(spec, "cpu")  # local: the user's own folders
    for mode in ("shared", "demo"):
        with pytest.raises(ConfigError, match="reads the server's own copy of the data") as info:
            ServerPolicy(mode=mode).check(spec, "cpu")
        assert "/srv" not in str(info.value) and "/srv" not in i18n.render(info.value, "zh_CN")
        assert "不要在任务中指定数据文件夹" in i18n.render(info.value, "zh_CN")
    monkeypatch.setenv("MNIST_LAB_DATA_DIR", "/srv/secret")
    ServerPolicy(mode="shared").check(spec, "cpu")  # the server's own folder, named
    ServerPolicy(mode="shared").check(lab5(), "cpu")


def _app_script():
    """One run of the app's own code: its workers looked after (the demo's prune hook), then a Train start."""
    import streamlit as st

    from app_lib.shared import ensure_workers
    from app_lib.widgets import start_job
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.service.jobs import JobSpec
    from mnist_lab.training.loop import TrainConfig

    ensure_workers()
    if st.session_state.get("start"):
        start_job("train", JobSpec("train", TrainConfig(device="cpu"), DataConfig(train_limit=256, test_limit=256),
                                   model=PRESETS["tiny-cnn"].model))


def test_the_app_prunes_a_demo_at_most_every_ten_minutes_and_refuses_a_full_one_before_queueing(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app_lib.shared import pruned_at
    from tests.apptest import app_db

    db = app_db(tmp_path / "demo.sqlite", monkeypatch)
    monkeypatch.setenv("MNIST_LAB_MODE", "demo")
    store, day = ResultStore(db), 24 * 3600
    queue = JobQueue(store)
    assert queue.register_worker("test-worker", 0, "cpu", None)  # a live worker: the app starts none
    add_run(store, "old-1", "visitor:aaaa", age_s=2 * day)
    add_run(store, "example", "local", age_s=2 * day)
    at = AppTest.from_function(_app_script, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert set(store.runs()["run_id"]) == {"example"}  # pruned on the first run of the page
    add_run(store, "old-2", "visitor:bbbb", age_s=2 * day)
    at.run()
    assert set(store.runs()["run_id"]) == {"example", "old-2"}  # not again within ten minutes
    pruned_at()[str(db)] -= 601
    at.run()
    assert set(store.runs()["run_id"]) == {"example"}

    monkeypatch.setenv("MNIST_LAB_MAX_TOTAL_GB", "0.00001")  # 10 KB: less than the database itself
    at.session_state["start"] = True
    at.run()
    assert not at.exception, at.exception
    assert isinstance(at.session_state["_train_refused"], LimitError)
    assert "This demo's space for results is full for now" in str(at.session_state["_train_refused"])
    assert queue.jobs(limit=10) == []  # refused before anything was queued
    queue.close()
    store.close()


def test_jobs_waiting_or_training_count_toward_the_caps(store):
    """Queueing is no way past the caps: a workspace's queued and training jobs count their runs
    and projected bytes (less what a training one has stored), every workspace's count in the total."""
    runner = StoreRunner(store, queue_limit=10, asker=SHARED.asker(Identity("student", "student:s1", "s1", "A")))
    waiting = runner.submit(lab5())
    assert quota.usage(store, "student:s1") == quota.Usage(1, quota.job_bytes(lab5()))
    assert quota.usage(store, "student:s2") == quota.Usage(0, 0)
    assert quota.total_bytes(store) == quota.stored_bytes(store) + quota.job_bytes(lab5())
    runner.submit(lab5())
    runner.submit(lab5())  # three queued: the fourth run would pass max_runs=3
    with pytest.raises(LimitError, match="Runs you keep on this server: 3; this job adds 1"):
        SHARED.check(lab5(), "cpu", quota.standing(store, "student:s1"))
    big = replace(SHARED, max_runs=100, max_mb=1000.0, max_total_gb=4 * quota.job_bytes(lab5()) / 1e9)
    with pytest.raises(LimitError, match="disk quota for results is full"):  # s2 keeps nothing; the queue fills it
        big.check(lab5(), "cpu", quota.standing(store, "student:s2"))
    # a training job's stored run counts once: as a stored run, not again as one to come
    with store.context(job_id=waiting, workspace="student:s1"):
        store.start_run(run_row("r-live", LAB5, TrainConfig(), DataConfig(), status="running", epochs_done=1,
                                steps_per_epoch=10))
    assert quota.usage(store, "student:s1").runs == 3
    for job_id in [j["job_id"] for j in JobQueue(store).jobs(limit=10)]:
        JobQueue(store).finish(job_id, "finished")
    assert quota.usage(store, "student:s1").runs == 1 and quota.total_bytes(store) == quota.stored_bytes(store)


def test_in_the_demo_every_unknown_client_is_one_client(store):
    demo = ServerPolicy.from_env({"MNIST_LAB_MODE": "demo"}, [])
    visitor = demo.asker(Identity("visitor", "visitor:a"))
    StoreRunner(store, queue_limit=demo.queue_limit, asker=visitor, client="").submit(lab5())
    assert quota.client_jobs(store, "") == 0 and quota.client_jobs(store, "", unknown_is_one=True) == 1
    with pytest.raises(LimitError, match=r"Jobs from your network training or waiting here: 1 \(at most 1\)"):
        demo.check(lab5(), "cpu", quota.standing(store, "visitor:b", "", unknown_is_one=True))
    demo.check(lab5(), "cpu", quota.standing(store, "visitor:c", "10.0.0.8", unknown_is_one=True))  # a known one
