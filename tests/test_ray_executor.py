"""The Ray executor (service/ray_executor.py) on the session's 2-node local cluster (the `ray_cluster`
fixture of tests/ray_cluster.py, registered in conftest.py: 127.0.0.1, token authentication): a 'train'
job trained through Ray writes the store rows a local run writes, with the same losses; a Stop ends it
as a local Stop does. Skipped (with the reason) where Ray is not installed; the module's own refusals
are tested without it."""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch

from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.i18n import N_, Message
from mnist_lab.lab.experiments import CompareConfig, CompareResult, SweepConfig
from mnist_lab.lab.lessons import LessonConfig, LessonResult
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore
from mnist_lab.service import ray_executor
from mnist_lab.service.jobs import JobSpec, execute, lesson_spec
from mnist_lab.training import events
from mnist_lab.training.events import Iterations, RunEnded
from mnist_lab.training.loop import RunResult, TrainConfig

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


def _unit(spec: JobSpec) -> dict:
    jobs = [(spec.model, spec.train, spec.label)]
    return ray_executor.unit_data(jobs, spec.data, [0], "single", "", ["run-1"], 0.0)


def test_the_task_sends_a_refusal_as_data_not_an_exception():
    """What leaves a node is plain data: a failure is an 'error' event with its stored reason."""
    old = {**ray_executor.versions(), "mnist_lab": "0.0.0"}
    [item] = list(ray_executor.train_unit(_unit(tiny_spec()), old, None, "key"))
    assert item["kind"] == "error" and "mnist_lab" in item["message"] and "0.0.0" in item["message"]


def test_the_task_trains_its_unit_under_the_drivers_run_id(one_thread):
    """In-process (no cluster): the task's events, as plain dicts, are the local run's under the run id the
    driver chose (a retry keeps it); a Message label travels as stored data."""
    spec = tiny_spec(train_limit=64)
    unit = ray_executor.unit_data([(spec.model, spec.train, Message(N_("{n} conv × {rest}"), {"n": 1, "rest": "k3"}))],
                                  spec.data, [0], "sweep", "sweep-x", ["run-7"], 0.0)
    json.dumps(unit)  # plain data only
    sent = [events.from_dict(d, "test") for d in ray_executor.train_unit(unit, ray_executor.versions(), None, "k")]
    assert {e.run_id for e in sent} == {"run-7"} and isinstance(sent[-1], RunEnded) and sent[-1].status == "finished"
    assert sent[0].experiment == "sweep" and sent[0].group_id == "sweep-x" and sent[0].label == "1 conv × k3"
    local = execute(spec, None)
    assert [x for e in sent if isinstance(e, Iterations) for x in e.losses] == list(local.losses)


def test_stacked_runs_are_one_unit_and_other_runs_one_each():
    stacked = replace(tiny_spec().train, engine="stacked")
    lab5, tiny = PRESETS["lab5"].model, PRESETS["tiny-cnn"].model
    jobs = [(lab5, replace(stacked, seed=s), "") for s in range(3)] + [(tiny, replace(stacked, seed=0), "")]
    assert ray_executor.units(jobs) == [[0, 1, 2], [3]]
    plain = [(lab5, replace(tiny_spec().train, seed=s), "") for s in range(3)]
    assert ray_executor.units(plain) == [[0], [1], [2]]


def test_task_resources_share_a_gpu_by_the_networks_size():
    lab5 = tiny_spec()
    auto = replace(lab5.train, device="auto")
    assert ray_executor.task_resources(lab5, cluster_gpus=True) == {"num_cpus": 1}  # device 'cpu'
    assert ray_executor.task_resources((lab5.model, auto), cluster_gpus=False) == {"num_cpus": 1}
    assert ray_executor.task_resources((lab5.model, auto), cluster_gpus=True) == {"num_cpus": 1, "num_gpus": 0.125}
    assert ray_executor.task_resources([(lab5.model, auto)] * 3, cluster_gpus=True)["num_gpus"] == 0.125
    vgg = PRESETS["vgg16-cifar"].model
    assert ray_executor.task_resources((vgg, replace(auto, device="cuda")), cluster_gpus=True)["num_gpus"] == 1.0


def test_a_task_caps_its_cuda_memory_to_its_fraction(monkeypatch):
    calls = []
    monkeypatch.setattr(ray_executor, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls.append((f, d)))
    assert ray_executor.cap_gpu_memory("auto", 0.125) and calls == [(0.125, torch.device("cuda", 0))]
    assert not ray_executor.cap_gpu_memory("auto", 1.0) and not ray_executor.cap_gpu_memory("auto", 0.0)
    monkeypatch.setattr(ray_executor, "resolve_device", lambda device: torch.device("cpu"))
    assert not ray_executor.cap_gpu_memory("auto", 0.125) and len(calls) == 1


# ------------------------------------------------------------------------------ on a cluster

@pytest.fixture
def one_thread():
    """Local runs on one thread, as a task on a 1-CPU share trains (Ray sets OMP_NUM_THREADS to its
    CPUs): a CPU's sums in another order would differ in the last bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _epochs(result) -> list[tuple]:
    return [(e.epoch, e.train_loss, e.test_loss, e.test_acc) for e in result.epochs]


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
    run = ray_executor.execute(tiny_spec(train_limit=64), ResultStore(tmp_path / "ray.sqlite"))
    assert run.status == "finished"


def test_a_train_job_through_ray_writes_what_a_local_run_writes(ray_cluster, one_thread, tmp_path):
    spec = tiny_spec()
    seen = []
    remote_store, local_store = ResultStore(tmp_path / "ray.sqlite"), ResultStore(tmp_path / "local.sqlite")
    remote = ray_executor.execute(spec, remote_store, on_progress=seen.append)
    local = execute(spec, local_store)
    assert isinstance(remote, RunResult) and remote.status == local.status == "finished"
    assert len(remote.losses) == 32 and remote.losses == list(local.losses)
    assert remote.final_test_acc == local.final_test_acc and _epochs(remote) == _epochs(local)
    assert (remote.params, remote.engine, remote.label, remote.steps_per_epoch) == \
        (local.params, local.engine, local.label, local.steps_per_epoch)
    assert all(torch.equal(remote.state_dict[k], v) for k, v in local.state_dict.items())
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

    run = ray_executor.execute(spec, store, cancel=cancel, on_progress=stop_at_first_losses)
    assert run.status == "stopped" and time.monotonic() - asked[0] < 2.0
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
    assert job.status == local.status == "finished" and len(job.results) == len(local.results) == 4
    for remote, there in zip(job.results, local.results, strict=True):  # the local order
        assert remote.losses == list(there.losses) and remote.final_test_acc == there.final_test_acc
    assert _table(job.table) == _table(local.table)

    def by_config(store):
        rows = _rows(store, "runs")
        assert len({r["group_id"] for r in rows}) == 1 and rows[0]["group_id"].startswith("sweep-")
        return sorted(({k: v for k, v in r.items() if k != "group_id"} for r in rows), key=repr)
    assert by_config(remote_store) == by_config(local_store)


def _table(frame) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in VARYING} for row in frame.to_dict("records")]


def test_a_comparison_through_ray_gives_the_local_table_and_summary(ray_cluster, one_thread, tmp_path):
    """FC and CNN on normal and permuted pixels, 1 seed, 256 images: the local comparison's table and summary."""
    spec = JobSpec("compare", tiny_spec().train, tiny_spec().data, compare=CompareConfig(seeds=1))
    remote_store = ResultStore(tmp_path / "ray.sqlite")
    job = ray_executor.execute(spec, remote_store)
    local = execute(spec, None)
    assert isinstance(job, CompareResult) and job.status == local.status == "finished"
    assert _table(job.table) == _table(local.table)
    assert job.summary.equals(local.summary)
    assert [r.losses for r in job.results] == [list(r.losses) for r in local.results]
    assert len(remote_store.runs()) == 4 and set(remote_store.runs()["experiment"]) == {"compare"}


def test_a_lesson_through_ray_gives_the_local_table_summary_and_reading(ray_cluster, one_thread, tmp_path):
    cfg = LessonConfig("shuffle", dataset="mnist", seeds=1, epochs=1, train_limit=256, test_limit=200)
    spec = lesson_spec(cfg, device="cpu")
    job = ray_executor.execute(spec, ResultStore(tmp_path / "ray.sqlite"))
    local = execute(spec, None)
    assert isinstance(job, LessonResult) and job.status == local.status == "finished"
    assert _table(job.table) == _table(local.table)
    timeless = ["seconds"]  # the summary's median seconds: how long each took
    assert job.summary.drop(columns=timeless).equals(local.summary.drop(columns=timeless))
    def words(reading):  # its "Cost of ..." line says how long the runs took
        return [line for line in reading.render() if not line.startswith("Cost of")]
    assert words(job.reading) == words(local.reading)
