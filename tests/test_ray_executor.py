"""The Ray executor (service/ray_executor.py) on the session's 2-node local cluster (the `ray_cluster`
fixture of tests/ray_cluster.py, registered in conftest.py: 127.0.0.1, token authentication): a 'train'
job trained through Ray writes the store rows a local run writes, with the same losses; a Stop ends it
as a local Stop does. Skipped (with the reason) where Ray is not installed; the module's own refusals
are tested without it."""
from __future__ import annotations

import sys
import threading
import time

import pytest
import torch

from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.lab.experiments import SweepConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore
from mnist_lab.service import ray_executor
from mnist_lab.service.jobs import JobSpec, execute
from mnist_lab.training.events import Iterations
from mnist_lab.training.loop import TrainConfig

# what may differ between two trainings of the same run: when, how long, and the run's own id
VARYING = {"run_id", "started_at", "finished_at", "seconds", "updated_at", "heartbeat_at"}


def tiny_spec(epochs: int = 1, train_limit: int = 256) -> JobSpec:
    """Lab 5 on 256 images, batch 8 (32 iterations), plain engine, CPU, seed 0."""
    return JobSpec("train", TrainConfig(epochs=epochs, batch_size=8, device="cpu", engine="plain", seed=0),
                   DataConfig(train_limit=train_limit, test_limit=500), model=PRESETS["lab5"].model)


# ------------------------------------------------------------------------------ without Ray

def test_without_ray_the_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray \(ray==2\.60\.0\)"):
        ray_executor.execute(tiny_spec(), None)


def test_a_node_refuses_a_spec_from_another_version():
    ray_executor.check_versions(ray_executor.versions())
    with pytest.raises(ConfigError, match="install the same version on every node"):
        ray_executor.check_versions({**ray_executor.versions(), "torch": "0.0.1"})


def test_the_task_sends_a_refusal_as_data_not_an_exception():
    """What leaves a node is plain data: a failure is an 'error' event with its stored reason."""
    old = {**ray_executor.versions(), "mnist_lab": "0.0.0"}
    [run] = ray_executor.plan(tiny_spec())
    [item] = list(ray_executor.train_events(run, old, None, "key"))
    assert item["kind"] == "error" and "mnist_lab" in item["message"] and "0.0.0" in item["message"]


# ------------------------------------------------------------------------------ on a cluster

@pytest.fixture
def one_thread():
    """Local runs on one thread, as a task on a 1-CPU share trains (Ray sets OMP_NUM_THREADS to its
    CPUs): a CPU's sums in another order would differ in the last bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(store: ResultStore, table: str) -> list[dict]:
    frame = getattr(store, table)()
    return [{k: v for k, v in row.items() if k not in VARYING} for row in frame.to_dict("records")]


def test_cluster_has_two_nodes_behind_token_auth(ray_cluster):
    import ray

    assert ray.cluster_resources()["CPU"] == 2.0
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert ray_cluster.address.startswith("127.0.0.1:") and ray_cluster.env()["RAY_AUTH_MODE"] == "token"


def test_a_new_connection_gets_new_task_and_stop_handles(ray_cluster, tmp_path):
    """The StopBoard actor belongs to a connection: after ray.shutdown() and a new ray.init the
    driver must make a new one, not call the dead one's handle."""
    import ray

    first = ray_executor._remotes()
    ray.shutdown()
    ray_executor.connect(ray_cluster.address)
    second = ray_executor._remotes()
    assert second[1] is not first[1] and ray_executor._remotes() is second
    job = ray_executor.execute(tiny_spec(train_limit=64), ResultStore(tmp_path / "ray.sqlite"))
    assert job.status == "finished"


def test_a_train_job_through_ray_writes_what_a_local_run_writes(ray_cluster, one_thread, tmp_path):
    spec = tiny_spec()
    seen = []
    remote_store, local_store = ResultStore(tmp_path / "ray.sqlite"), ResultStore(tmp_path / "local.sqlite")
    job = ray_executor.execute(spec, remote_store, on_progress=seen.append)
    [remote] = job.runs
    local = execute(spec, local_store)
    assert job.status == remote.status == local.status == "finished"
    assert len(remote.losses) == 32 and remote.losses[:30] == list(local.losses)[:30]
    assert remote.final_test_acc == local.final_test_acc
    assert [type(e).__name__ for e in seen][0] == "RunStarted" and type(seen[-1]).__name__ == "RunEnded"
    for table in ("runs", "epochs", "iterations"):
        assert _rows(remote_store, table) == _rows(local_store, table), table
    saved = remote_store.load_weights(remote.run_id)
    assert saved.model_cfg == spec.model and saved.status == "finished"
    local_weights = local_store.load_weights(local.run_id).state_dict
    assert all(torch.equal(saved.state_dict[k], local_weights[k]) for k in local_weights)


def test_stop_reaches_the_task_and_keeps_what_finished(ray_cluster, tmp_path):
    spec = tiny_spec(epochs=20, train_limit=2048)  # 5,120 iterations: minutes if the Stop were missed
    store, cancel, asked = ResultStore(tmp_path / "ray.sqlite"), threading.Event(), []

    def stop_at_first_losses(event):
        if isinstance(event, Iterations) and not cancel.is_set():
            asked.append(time.monotonic())
            cancel.set()

    job = ray_executor.execute(spec, store, cancel=cancel, on_progress=stop_at_first_losses)
    [run] = job.runs
    assert job.status == run.status == "stopped" and time.monotonic() - asked[0] < 2.0
    [row] = store.runs().to_dict("records")
    assert row["status"] == "stopped" and 0 < len(run.losses) < 5120
    assert len(store.iterations()) == len(run.losses)  # every loss streamed is kept


def test_a_sweep_fans_out_one_task_per_run_with_the_local_results(ray_cluster, one_thread, tmp_path):
    """2 x 1 cells x 2 seeds on the two nodes: run for run, the local sweep's losses, accuracies and rows."""
    spec = JobSpec("sweep", tiny_spec().train, tiny_spec().data,
                   sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=2))
    remote_store, local_store = ResultStore(tmp_path / "ray.sqlite"), ResultStore(tmp_path / "local.sqlite")
    job = ray_executor.execute(spec, remote_store)
    local = execute(spec, local_store)
    assert job.status == local.status == "finished" and len(job.runs) == len(local.results) == 4
    for remote, there in zip(job.runs, local.results, strict=True):  # the plan's order is the local order
        assert remote.losses[:30] == list(there.losses)[:30] and remote.final_test_acc == there.final_test_acc

    def by_config(store):
        rows = _rows(store, "runs")
        assert len({r["group_id"] for r in rows}) == 1 and rows[0]["group_id"].startswith("sweep-")
        return sorted(({k: v for k, v in r.items() if k != "group_id"} for r in rows), key=repr)
    assert by_config(remote_store) == by_config(local_store)
