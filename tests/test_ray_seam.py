"""The executor seam on a real Ray cluster (the shared 2-node `ray_cluster` fixture; skipped without
Ray): a worker started as the app starts one, with executor 'ray', trains a student's queued sweep
on the cluster and the store gets the rows a local worker writes (owner columns, job, labels,
losses); a stop request in the store ends its run within ~2 s with what finished kept, and a killed
driver leaves its run 'interrupted'; the CLI as a separate process with the cluster's address and
token: `sweep --executor ray` prints and exports as it does locally with nothing of Ray's on stderr,
a wrong token is one translated line, a SIGTERMed `train` is left 'interrupted' as a local one
(compare and lesson through Ray: tests/test_ray_executor.py)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray_cluster import ray_cluster  # noqa: F401

from mnist_lab.data.datasets import DataConfig
from mnist_lab.lab.experiments import SweepConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.access import Asker
from mnist_lab.service.jobs import JobSpec, StoreRunner
from mnist_lab.service.queue import JobQueue
from mnist_lab.service.worker import Worker, WorkerConfig, spawn_worker
from mnist_lab.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = DataConfig(train_limit=256, test_limit=256)
ALICE = Asker("student:s1", shared=True, student_id="s1", name="Alice")
# what a run's row keeps whichever executor trained it (ids, times, the writing process aside)
SAME = ["experiment", "label", "status", "device", "engine", "params", "seed", "final_test_acc", "epochs_done",
        "stop_reason", "steps_per_epoch", "student_id", "student_name", "workspace"]


def tiny_sweep() -> JobSpec:
    sweep = SweepConfig(conv_layers=(1,), kernel_sizes=(3,), hidden_units=(0,), seeds=2, base_channels=4)
    return JobSpec("sweep", TrainConfig(device="cpu", engine="plain"), TINY, sweep=sweep, label="ray sweep")


def long_job() -> JobSpec:
    """Tiny FC on 20,000 images for 50 epochs: long enough to stop mid-epoch."""
    return JobSpec("train", TrainConfig(epochs=50, device="cpu", progress_every_s=0.05),
                   DataConfig(train_limit=20000), model=PRESETS["tiny-fc"].model, label="long")


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def ray_worker(ray_cluster, tmp_path, monkeypatch):  # noqa: F811 - the fixture of that name
    """A worker subprocess for `db`, started as the app starts one, driving the test cluster."""
    for name, value in ray_cluster.env().items():
        monkeypatch.setenv(name, value)
    procs = []

    def start(db: Path) -> subprocess.Popen:
        proc = spawn_worker(db, parent_pid=None, log=tmp_path / "worker.log", executor="ray",
                            ray_address=ray_cluster.address)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def rows_and_losses(store: ResultStore, job_id: str) -> tuple[pd.DataFrame, list[list[float]]]:
    runs = store.visible_runs(None)
    runs = runs[runs["job_id"] == job_id].sort_values("seed").reset_index(drop=True)
    its = store.iterations(list(runs["run_id"]))
    return runs, [list(its[its["run_id"] == run_id]["loss"]) for run_id in runs["run_id"]]


def test_a_ray_worker_trains_a_students_queued_sweep_as_a_local_worker_does(ray_worker, tmp_path, monkeypatch):
    ray_db, local_db = tmp_path / "ray.sqlite", tmp_path / "local.sqlite"
    jobs = {}
    for db in (ray_db, local_db):  # queued as the app queues a signed-in student's job
        jobs[db] = StoreRunner(ResultStore(db), asker=ALICE).submit(tiny_sweep())
    worker = ray_worker(ray_db)
    view = StoreRunner(ResultStore(ray_db), asker=ALICE).wait(jobs[ray_db], timeout=240)
    log = (tmp_path / "worker.log").read_text()
    assert view is not None and view.status == "finished", log
    assert "serving" in log and "Ray 127.0.0.1:" in log and worker.poll() is None  # alive for the next job
    assert "gcs_client" not in log and "rpc_client" not in log and "SIGTERM handler" not in log  # Ray's own noise
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a one-CPU Ray task's threads: the same losses bit for bit
    try:
        Worker(WorkerConfig(db=str(local_db), warm=False)).run(max_jobs=1)
    finally:
        torch.set_num_threads(threads)
    (ray_runs, ray_losses), (local_runs, local_losses) = (rows_and_losses(ResultStore(db), jobs[db])
                                                          for db in (ray_db, local_db))
    assert len(ray_runs) == 2 and list(ray_runs["status"]) == ["finished", "finished"]
    assert set(ray_runs["student_id"]) == {"s1"} and set(ray_runs["student_name"]) == {"Alice"}
    assert set(ray_runs["workspace"]) == {"student:s1"} and ray_runs["group_id"].nunique() == 1
    pd.testing.assert_frame_equal(ray_runs[SAME], local_runs[SAME])
    assert ray_losses == local_losses and all(len(losses) == 4 for losses in ray_losses)  # 256 / 64
    queue = JobQueue(ResultStore(ray_db))
    assert queue.job(jobs[ray_db])["runs_total"] == 2


def test_a_stop_in_the_store_ends_a_ray_run_within_two_seconds_and_a_killed_driver_leaves_it_interrupted(
        ray_worker, tmp_path):
    db = tmp_path / "ray.sqlite"
    store = ResultStore(db)
    runner = StoreRunner(store, asker=ALICE)
    first, second = runner.submit(long_job()), runner.submit(long_job())
    worker = ray_worker(db)

    def training(job_id: str) -> bool:
        runs = store.job_runs(job_id)
        return len(runs) == 1 and runs["iterations_done"].item() > 0

    wait_until(lambda: training(first), timeout=180, what="the run's first iterations in the store")
    asked = time.monotonic()
    assert runner.stop(first)
    view = runner.wait(first, timeout=30, every_s=0.02)
    took = time.monotonic() - asked
    print(f"stop -> job stopped in the store: {took:.2f} s")
    assert view.status == "stopped" and view.stop_reason == "stopped by you", (tmp_path / "worker.log").read_text()
    assert took < 2.0, f"the stop took {took:.2f} s"
    [run_id] = store.job_runs(first)["run_id"]
    run = store.runs([run_id])
    assert run["status"].item() == "stopped" and run["stop_reason"].item() == "stopped by you"
    its = store.iterations([run_id])
    assert 0 < len(its) < 50 * 313 and list(its["iteration"]) == list(range(1, len(its) + 1))  # kept, no gap
    assert len(store.epochs([run_id])) == run["epochs_done"].item()
    # the same worker takes the next job; killed under it, it leaves run and job 'interrupted' as a local one
    wait_until(lambda: training(second), timeout=120, what="the second job's first iterations")
    worker.kill()  # SIGKILL: the driver cannot say why; its tasks die with it (Ray: their owner is gone)
    worker.wait(30)
    queue = JobQueue(ResultStore(db))  # the next opening (the app, a new worker) marks what was cut short
    [run_id] = queue.store.job_runs(second)["run_id"]
    run = queue.store.runs([run_id])
    assert run["status"].item() == "interrupted" and str(worker.pid) in run["stop_reason"].item()
    job = queue.job(second)
    assert job["status"] == "interrupted" and str(worker.pid) in job["stop_reason"]


def cli(*argv: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_lab", *argv], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_the_cli_trains_a_sweep_on_ray(ray_cluster, tmp_path):  # noqa: F811
    """A separate process, `python -m mnist_lab sweep --executor ray --ray-address ADDR`, with the cluster's
    token in its environment only: the address and the token are what it joins with."""
    db, out = tmp_path / "cli.sqlite", tmp_path / "out"
    env = {k: v for k, v in ray_cluster.env().items() if k not in ("MNIST_LAB_RAY_ADDRESS", "RAY_ADDRESS")}
    done = cli("sweep", "--conv-layers", "1", "--kernel-sizes", "3", "--seeds", "2", "--base-channels", "4",
               "--out", str(out), "--executor", "ray", "--ray-address", ray_cluster.address, "--train-limit", "256",
               "--device", "cpu", "--engine", "plain", "--quiet", "--db", str(db), env=env)
    assert done.returncode == 0, done.stderr
    assert "test accuracy (mean ± sd)" in done.stdout and "±" in done.stdout
    assert done.stderr == "", done.stderr  # nothing of Ray's own (its C++ core's lines, its warnings)
    assert len((out / "sweep.csv").read_text().splitlines()) == 1 + 2
    store = ResultStore(db)
    runs = store.visible_runs(None)
    assert list(runs["experiment"]) == ["sweep", "sweep"] and set(runs["workspace"]) == {"local"}
    assert set(runs["status"]) == {"finished"} and len(store.iterations()) == 2 * 4
    [job] = JobQueue(store).jobs(limit=10)
    assert job["kind"] == "sweep" and job["status"] == "finished" and set(runs["job_id"]) == {job["job_id"]}


def test_the_cli_with_a_wrong_token_is_one_line_and_writes_nothing(ray_cluster, tmp_path):  # noqa: F811
    db = tmp_path / "cli.sqlite"
    env = {**ray_cluster.env(), "RAY_AUTH_TOKEN": "0" * 32}
    started = time.monotonic()
    done = cli("train", "--preset", "tiny-fc", "--executor", "ray", "--ray-address", ray_cluster.address,
               "--train-limit", "64", "--quiet", "--db", str(db), "--lang", "zh", env=env, timeout=120)
    took = time.monotonic() - started
    print(f"wrong token refused in {took:.1f} s; stderr {done.stderr!r}")
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("错误") and "令牌" in done.stderr, done.stderr
    assert "RAY_AUTH_TOKEN" in done.stderr and "Traceback" not in done.stderr and not db.exists()
    assert took < 60


def test_a_killed_cli_ray_run_is_interrupted_as_a_local_one(ray_cluster, tmp_path):  # noqa: F811
    """ray.init makes SIGTERM a sys.exit (the run would be 'failed: SystemExit'); the CLI keeps its own."""
    db = tmp_path / "cli.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "mnist_lab", "train", "--preset", "tiny-fc", "--epochs", "50",
                             "--train-limit", "20000", "--device", "cpu", "--executor", "ray", "--ray-address",
                             ray_cluster.address, "--quiet", "--db", str(db)],
                            env=ray_cluster.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def training() -> bool:
            if not db.exists():
                return False
            return len(ResultStore(db).iterations()) > 0
        wait_until(training, timeout=180, what="the CLI run's first iterations in the store")
        proc.terminate()  # SIGTERM, as a shell's kill or a scheduler's
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -15, err  # killed by the signal, as a local CLI run is (no SystemExit)
    queue = JobQueue(ResultStore(db))  # the next opening marks what was cut short
    [job] = queue.jobs(limit=10)
    [run_id] = queue.store.job_runs(job["job_id"])["run_id"]
    run = queue.store.runs([run_id])
    assert run["status"].item() == "interrupted" and str(proc.pid) in run["stop_reason"].item()
    assert job["status"] == "interrupted" and "SystemExit" not in str(job.get("error"))
