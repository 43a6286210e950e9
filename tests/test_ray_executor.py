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
from mnist_lab.lab.experiments import CompareConfig, CompareResult, SweepConfig, run_many
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


def test_jobs_execute_trains_every_kind_through_a_given_runner(tmp_path):
    """The runner seam: with runner=run_many (wrapped to watch it) a 'train' job is one call of one job,
    tagged 'single', and returns the local RunResult; a sweep's runs all go through it."""
    calls = []

    def watching(jobs, data_cfg, **kw):
        calls.append((len(jobs), kw["experiment"], kw["group_id"]))
        return run_many(jobs, data_cfg, **kw)
    spec = tiny_spec(train_limit=64)
    run = execute(spec, ResultStore(tmp_path / "a.sqlite"), runner=watching)
    assert calls == [(1, "single", "")] and isinstance(run, RunResult) and run.status == "finished"
    assert run.losses == list(execute(spec, None).losses)
    sweep = JobSpec("sweep", spec.train, spec.data, sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=1))
    result = execute(sweep, None, runner=watching)
    assert calls[1][:2] == (2, "sweep") and calls[1][2].startswith("sweep-") and len(result.table) == 2


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
    # a whole GPU is set too: a process that ran a 1/8 task before must not stay capped at 1/8
    assert ray_executor.cap_gpu_memory("auto", 1.0) and calls[-1] == (1.0, torch.device("cuda", 0))
    assert not ray_executor.cap_gpu_memory("auto", 0.0) and len(calls) == 2
    monkeypatch.setattr(ray_executor, "resolve_device", lambda device: torch.device("cpu"))
    assert not ray_executor.cap_gpu_memory("auto", 0.125) and len(calls) == 2


def test_a_remote_error_is_one_translated_line_as_a_refusal_is():
    """RemoteError renders as a ConfigError does (i18n.render, the CLI's error line) and its stored
    reason (failure_reason) keeps its template and values, so each reader reads it in their language."""
    from mnist_lab.errors import failure_reason
    from mnist_lab.i18n import render

    exc = ray_executor.RemoteError(ray_executor.no_node({"num_cpus": 4}))
    assert isinstance(exc, ValueError) and "asks for 4 CPU and 0 GPU" in render(exc, "en")
    assert "集群中没有机器" in render(exc, "zh_CN") and "\n" not in render(exc, "zh_CN")
    why = failure_reason(exc)
    assert why.template == exc.template and why.params["cpus"] == "4"


def test_a_task_no_live_node_can_run_fails_its_job_after_a_while(monkeypatch):
    """The driver's watch on queued tasks: a task whose ask no live node has (counted in all, not free)
    fails the job after NO_NODE_WAIT_S, with the reason; one a node can run waits."""
    nodes = [{"Alive": True, "Resources": {"CPU": 1.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}}]
    assert ray_executor.feasible({"num_cpus": 1}, nodes)
    assert not ray_executor.feasible({"num_cpus": 1, "num_gpus": 0.125}, nodes)  # the GPU box is dead
    fake = type("FakeRay", (), {"nodes": staticmethod(lambda: nodes)})()
    monkeypatch.setattr(ray_executor, "FEASIBLE_POLL_S", 0.0)
    monkeypatch.setattr(ray_executor, "NO_NODE_WAIT_S", 0.05)
    waiting = ray_executor._Waiting(fake, [{"num_cpus": 1}, {"num_cpus": 1, "num_gpus": 0.125}])
    assert waiting.check({0}) is None and waiting.check({0, 1}) is None  # the GPU task waits ...
    time.sleep(0.06)
    why = waiting.check({0, 1})  # ... until NO_NODE_WAIT_S is over
    assert why is not None and why.params == {"cpus": "1", "gpus": "0.125"}


def _cli(monkeypatch, capsys, tmp_path, execute):
    from mnist_lab.cli.main import main
    from mnist_lab.service import executors

    monkeypatch.setattr(executors, "executor", lambda name=None, address=None: execute)
    monkeypatch.setattr(executors, "connect", lambda name=None, address=None: None)
    code = main(["train", "--executor", "ray", "--device", "cpu", "--train-limit", "64", "--epochs", "1", "--quiet",
                 "--db", str(tmp_path / "x.sqlite"), "--lang", "zh_CN"])
    return code, capsys.readouterr()


def test_the_cli_says_a_run_failed_on_the_cluster_in_one_line(monkeypatch, capsys, tmp_path):
    from mnist_lab.service.queue import JobQueue

    def failing(spec, store, cancel=None, on_progress=None):
        raise ray_executor.RemoteError(ray_executor.no_node({"num_cpus": 4}))
    code, out = _cli(monkeypatch, capsys, tmp_path, failing)
    lines = out.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "集群中没有机器" in lines[0] and "Traceback" not in out.err
    [job] = JobQueue(ResultStore(tmp_path / "x.sqlite")).jobs(limit=5)
    assert job["status"] == "failed" and "no machine of the cluster" in str(job["error"])


def test_the_cli_says_a_train_job_stopped_before_its_run_began(monkeypatch, capsys, tmp_path):
    from mnist_lab.service.jobs import not_started

    code, out = _cli(monkeypatch, capsys, tmp_path, lambda spec, store, cancel=None, on_progress=None:
                     not_started(spec))
    assert code == 0 and "在运行开始之前就已停止" in out.out and "run :" not in out.out and "运行 ：" not in out.out


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
    assert second[-1] is not first[-1] and ray_executor._remotes() is second
    # a task with a GPU share gets a process of its own (its CUDA device and memory cap are its alone)
    assert second[1]._max_calls == 1 and second[0]._max_calls != 1
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


def test_a_stacked_sweep_trains_one_task_per_cell_with_the_local_stacked_losses(ray_cluster, one_thread, tmp_path):
    """Engine 'stacked' on the CPU: each cell's seeds are one task (one stack, as run_many stacks them
    locally), a RunStarted per seed; the same losses and accuracies as the local stacked sweep."""
    spec = JobSpec("sweep", replace(tiny_spec().train, engine="stacked"), tiny_spec().data,
                   sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=2))
    seen = []
    job = ray_executor.execute(spec, ResultStore(tmp_path / "ray.sqlite"), on_progress=seen.append)
    local = execute(spec, None)
    assert [type(e).__name__ for e in seen].count("RunStarted") == 4
    assert [r.engine for r in job.results] == [r.engine for r in local.results] == ["stacked"] * 4
    assert [r.losses for r in job.results] == [list(r.losses) for r in local.results]
    assert [r.final_test_acc for r in job.results] == [r.final_test_acc for r in local.results]


def test_the_data_loads_once_per_node_process_not_per_run(ray_cluster, tmp_path):
    """6 runs on one data setting: each node's worker prepares it once (lab.experiments.get_data's memo),
    so fewer loads than runs."""
    import ray

    spec = JobSpec("sweep", tiny_spec().train, tiny_spec(train_limit=96).data,
                   sweep=SweepConfig(conv_layers=(1, 2, 3), kernel_sizes=(3,), seeds=2))
    job = ray_executor.execute(spec, None)
    assert job.status == "finished" and len(job.results) == 6
    key = (spec.data, "cpu")
    probe = ray.remote(num_cpus=1)(lambda k: (__import__("os").getpid(),
                                              __import__("mnist_lab.lab.experiments", fromlist=["x"]).DATA_LOADS[k]))
    loads = dict(ray.get([probe.remote(key) for _ in range(4)]))  # the nodes' worker processes
    assert 1 <= sum(loads.values()) <= 2 and max(loads.values()) == 1


def test_ray_failures_are_retried_only_for_a_lost_machine_and_say_so_without_rays_words(ray_cluster):
    """A lost worker or node is trained again; a RayTaskError (the run's code failed on the node) and a
    cancel are not. The stored reason keeps the exception's type (or a refusal's template), never Ray's
    text (machines, addresses, commands)."""
    import ray

    died = ray.exceptions.NodeDiedError("Node IP: 192.0.2.2, node ID abc, use `ray logs raylet.out -ip 192.0.2.2`")
    crashed = ray.exceptions.WorkerCrashedError()
    coded = ray.exceptions.RayTaskError("train_unit", "Traceback ...", ImportError("No module named 'x'\nmore"))
    refused = ray.exceptions.RayTaskError("train_unit", "Traceback ...",
                                          ConfigError("versions", "1", "got {value!r} on 192.0.2.2"))
    assert ray_executor.machine_lost(ray, died) and ray_executor.machine_lost(ray, crashed)
    assert not ray_executor.machine_lost(ray, coded)
    assert not ray_executor.machine_lost(ray, ray.exceptions.TaskCancelledError())
    why = ray_executor.lost_reason(ray, died)
    assert why.params == {"error": "NodeDiedError"} and "192.0.2.2" not in str(why)
    assert ray_executor.lost_reason(ray, coded).params == {"error": "ImportError: No module named 'x'"}
    assert ray_executor.lost_reason(ray, refused).template == "got {value!r} on 192.0.2.2"


def _hold_every_cpu(folder):
    """Tasks that hold each node's CPU (released by ray.cancel), running before this returns: each has
    said so (a marker file), not merely been counted off the free CPUs (that count can still hold an
    earlier test's tasks that are ending, and a sweep's task could then take a CPU before a hold)."""
    import ray

    def hold(marker: str, seconds: float) -> None:  # (nested: Ray ships it by value to the nodes)
        import pathlib
        import time

        pathlib.Path(marker).touch()  # it runs
        time.sleep(seconds)

    markers = [folder / f"hold-{k}" for k in range(2)]
    holds = [ray.remote(num_cpus=1)(hold).remote(str(m), 120) for m in markers]
    deadline = time.monotonic() + 60
    while not all(m.exists() for m in markers) and time.monotonic() < deadline:
        time.sleep(0.1)
    return holds


def test_stop_cancels_queued_tasks_at_once(ray_cluster, tmp_path):
    """Every CPU busy: the sweep's tasks wait in the cluster's queue; a Stop cancels them at once (not after
    STOP_GRACE_S): nothing trained, nothing recorded."""
    import ray

    spec = JobSpec("sweep", tiny_spec().train, tiny_spec().data,
                   sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=1))
    cancel, holds = threading.Event(), _hold_every_cpu(tmp_path)
    threading.Timer(1.0, cancel.set).start()
    try:
        began = time.monotonic()
        job = ray_executor.execute(spec, ResultStore(tmp_path / "ray.sqlite"), cancel=cancel)
        took = time.monotonic() - began - 1.0
    finally:
        for hold in holds:
            ray.cancel(hold, force=True)
    assert job.status == "stopped" and job.results == [] and took < 3.0
    assert len(ResultStore(tmp_path / "ray.sqlite").runs()) == 0


def test_a_task_no_node_can_run_fails_the_job_at_once(ray_cluster, monkeypatch, tmp_path):
    """An ask no node has in all (4 CPUs on 1-CPU nodes) would wait in Ray's queue for ever: the job fails
    before anything is submitted, with the reason."""
    monkeypatch.setattr(ray_executor, "task_resources", lambda *a, **k: {"num_cpus": 4})
    began = time.monotonic()
    with pytest.raises(ray_executor.RemoteError, match="asks for 4 CPU"):
        ray_executor.execute(tiny_spec(train_limit=64), ResultStore(tmp_path / "ray.sqlite"))
    assert time.monotonic() - began < 5 and len(ResultStore(tmp_path / "ray.sqlite").runs()) == 0


def test_an_exception_on_the_driver_stops_the_tasks_and_ends_the_runs(ray_cluster, tmp_path):
    """on_progress raises at the first losses: the task stops (its CPU is free again within seconds, not
    minutes of training) and the run ends 'failed' with the reason, not left 'running'."""
    import ray

    def boom(event):
        if isinstance(event, Iterations):
            raise RuntimeError("on_progress failed")
    store = ResultStore(tmp_path / "ray.sqlite")
    with pytest.raises(RuntimeError, match="on_progress failed"):
        ray_executor.execute(tiny_spec(epochs=20, train_limit=2048), store, on_progress=boom)  # minutes to train
    [row] = store.runs().to_dict("records")
    assert row["status"] == "failed" and "on_progress failed" in row["stop_reason"]
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2


# ------------------------------------------------------------------------------ node failures (last: they kill nodes)

def _hold_the_head():
    """A task that holds the head node's CPU (released by ray.cancel), so the job's tasks train on worker nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])
    return ray.remote(num_cpus=1)(lambda s: __import__("time").sleep(s)).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote(120)


def test_a_run_whose_node_dies_is_retried_under_its_run_id_with_the_same_losses(ray_cluster, one_thread, tmp_path):
    """2 runs on the worker node (the head held): while the 2nd trains the node dies and a new one joins;
    the 1st (finished) is kept, the 2nd trains again there under the same run id (its first rows gone)
    with an uninterrupted run's losses."""
    import ray

    spec = JobSpec("sweep", replace(tiny_spec().train, batch_size=4), tiny_spec(train_limit=1024).data,
                   sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=1))  # 256 iterations a run
    seen, killed = [], []

    def on_progress(event):
        seen.append(event)
        if not killed and isinstance(event, Iterations) and len({e.run_id for e in seen}) == 2:
            killed.append(len(ray_cluster.nodes) - 1)
            ray_cluster.kill_node(killed[-1])
            ray_cluster.add_node()  # where the retry trains
    store, hold = ResultStore(tmp_path / "ray.sqlite"), _hold_the_head()
    try:
        job = ray_executor.execute(spec, store, on_progress=on_progress)
    finally:
        ray.cancel(hold, force=True)
    local = execute(spec, None)
    starts = [e.run_id for e in seen if type(e).__name__ == "RunStarted"]
    assert killed and len(starts) == 3 and starts[1] == starts[2] and len(set(starts)) == 2  # the 2nd, retried
    assert job.status == "finished" and [r.status for r in job.results] == ["finished"] * 2
    assert [r.losses for r in job.results] == [list(r.losses) for r in local.results]
    assert [r.final_test_acc for r in job.results] == [r.final_test_acc for r in local.results]
    runs, iterations = store.runs(), store.iterations()
    assert sorted(runs["run_id"]) == sorted(r.run_id for r in job.results) and set(runs["status"]) == {"finished"}
    for result in job.results:  # exactly one copy of each run's rows
        mine = iterations[iterations["run_id"] == result.run_id]
        assert list(mine["loss"]) == result.losses and mine["iteration"].is_unique and len(mine) == 256
        assert store.load_weights(result.run_id).status == "finished"


def test_a_run_whose_node_dies_twice_ends_failed_with_the_reason(ray_cluster, tmp_path):
    """The head's CPU held by another task, so the run trains on a worker node; that node is killed at the
    run's first losses and a new one joins; the retry trains there and that node is killed too: the run
    ends 'failed' with the reason, and RemoteError is raised."""
    import ray

    hold, kills, starts = _hold_the_head(), [], []

    def on_progress(event):
        if type(event).__name__ == "RunStarted":
            starts.append(event.run_id)
        elif isinstance(event, Iterations) and len(kills) < len(starts):  # each attempt's first losses
            kills.append(len(ray_cluster.nodes) - 1)
            ray_cluster.kill_node(kills[-1])
            if len(kills) == 1:
                ray_cluster.add_node()  # where the retry trains
    store = ResultStore(tmp_path / "ray.sqlite")
    try:
        with pytest.raises(ray_executor.RemoteError) as raised:
            ray_executor.execute(tiny_spec(train_limit=2048), store, on_progress=on_progress)  # 256 iterations
    finally:
        ray.cancel(hold, force=True)
        ray_cluster.add_node()
    assert len(kills) == 2 and len(starts) == 2 and len(set(starts)) == 1  # the same run id, twice
    [row] = store.runs().to_dict("records")
    assert row["status"] == "failed" and row["stop_reason"] and str(raised.value)
    assert row["run_id"] == starts[0] and len(store.iterations()) < 256
    # the reason in each reader's language, with the exception's type only: no machine's address, no command
    from mnist_lab.i18n import render

    assert "127.0.0.1" not in row["stop_reason"] and "ray logs" not in row["stop_reason"]
    assert "again when the run was trained once more" in row["stop_reason"]
    zh = render(raised.value, "zh_CN")
    assert "重新训练一次时又停止了" in zh and "127.0.0.1" not in zh
