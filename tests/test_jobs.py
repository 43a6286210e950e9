"""Jobs as data in the store, trained by worker processes: specs survive JSON, workers take
jobs in order and one per workspace, a stop request from another process ends a job and keeps
what it did, queue limits hold per workspace, and a worker killed mid-epoch (SIGKILL, SIGTERM,
its server gone) loses no finished epoch and leaves the run marked with the reason."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.i18n import Message, render_stored
from mnist_lab.lab.experiments import CompareConfig, SweepConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import LOCAL_WORKSPACE, ResultStore
from mnist_lab.service.jobs import JobSpec, QueueFullError, StoreRunner
from mnist_lab.service.queue import JobQueue
from mnist_lab.service.worker import Worker, WorkerConfig, spawn_worker
from mnist_lab.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = DataConfig(train_limit=256, test_limit=1000)


def tiny_job(**train) -> JobSpec:
    return JobSpec("train", TrainConfig(device="cpu", **train), TINY, model=PRESETS["tiny-fc"].model)


def long_job() -> JobSpec:
    """Tiny FC on 20,000 images for 50 epochs: long enough to stop or kill mid-epoch."""
    return JobSpec("train", TrainConfig(epochs=50, device="cpu", progress_every_s=0.05),
                   DataConfig(train_limit=20000), model=PRESETS["tiny-fc"].model, label="long")


def wait_until(condition, timeout: float = 120.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "results.sqlite"


@pytest.fixture
def worker_proc(db, tmp_path, monkeypatch):
    """A worker subprocess serving `db`, as the app or a terminal starts one."""
    monkeypatch.setenv("MNIST_LAB_WORKER_WARM", "0")  # its jobs load their own (small) data
    procs = []

    def start(parent_pid: int | None = None) -> subprocess.Popen:
        log = tmp_path / f"worker{len(procs)}.log"
        proc = spawn_worker(db, parent_pid=parent_pid, log=log)
        proc.log = log
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def running_epoch(store: ResultStore, job_id: str, epochs_done: int) -> bool:
    """The job's run has finished `epochs_done` epochs and is part-way through the next."""
    runs = store.job_runs(job_id)
    return len(runs) == 1 and (runs["epochs_done"].fillna(0).item() >= epochs_done and
                               runs["iterations_done"].item() > epochs_done * runs["steps_per_epoch"].item())


# ------------------------------------------------------------------------------------ specs

@pytest.mark.parametrize("spec", [
    tiny_job(epochs=2, lr=0.05),
    JobSpec("sweep", TrainConfig(epochs=1), TINY, sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=2)),
    JobSpec("compare", TrainConfig(), TINY, compare=CompareConfig(seeds=1)),
    JobSpec("train", TrainConfig(), TINY, model=PRESETS["resnet-small"].model),  # a block list
    JobSpec("train", TrainConfig(), TINY, model=PRESETS["vgg16-cifar"].model),
])
def test_a_spec_survives_json_whole(spec):
    again = JobSpec.from_json(spec.to_json())
    assert again == spec
    assert isinstance(again.data, DataConfig) and (again.kind != "compare" or again.compare.cnn == spec.compare.cnn)
    assert again.kind != "train" or type(again.model.blocks) is tuple and again.model.blocks == spec.model.blocks


def test_a_block_with_an_unknown_setting_is_refused_not_dropped():
    text = JobSpec("train", TrainConfig(), TINY, model=PRESETS["resnet-small"].model).to_json()
    with pytest.raises(ValueError, match="no setting widen"):
        JobSpec.from_json(text.replace('"stride"', '"widen"'))


def test_a_spec_with_an_unknown_field_is_refused_not_dropped():
    text = tiny_job().to_json().replace('"batch_size"', '"batch_sise"')
    with pytest.raises(ConfigError, match="no setting batch_sise") as caught:
        JobSpec.from_json(text)
    assert caught.value.field == "job.train"


# ------------------------------------------------------------------------------------ queue

def test_a_workspace_may_queue_two_jobs_behind_its_running_one(db):
    runner = StoreRunner(ResultStore(db), queue_limit=2)
    mine = [runner.submit(tiny_job(), "ws-a") for _ in range(3)]
    with pytest.raises(QueueFullError, match="at most 3"):
        runner.submit(tiny_job(), "ws-a")
    other = runner.submit(tiny_job(), "ws-b")  # another workspace is not held up by ws-a's queue
    assert [runner.poll(j).position for j in mine + [other]] == [1, 2, 3, 4]
    runner.stop(mine[0])  # a queued job stopped: never runs, frees a place
    assert runner.poll(mine[0]).status == "stopped"
    runner.submit(tiny_job(), "ws-a")


def test_a_workspace_trains_one_job_at_a_time_however_many_workers(db):
    queue = JobQueue(ResultStore(db))
    runner = StoreRunner(queue.store, queue=queue)
    a1, a2, b1 = runner.submit(tiny_job(), "a"), runner.submit(tiny_job(), "a"), runner.submit(tiny_job(), "b")
    assert queue.claim("w1")["job_id"] == a1
    assert queue.claim("w2")["job_id"] == b1  # a2 waits: workspace a already trains a1
    assert queue.claim("w3") is None
    queue.finish(a1, "finished")
    assert queue.claim("w3")["job_id"] == a2


def test_a_worker_trains_queued_jobs_in_order_and_a_page_need_not_watch(db):
    store = ResultStore(db)
    runner = StoreRunner(store)
    first, second = runner.submit(tiny_job(seed=1)), runner.submit(tiny_job(seed=2, epochs=2))
    bad_spec = tiny_job(batch_size=1024)  # larger than the 256 images: the core's message ...
    with pytest.raises(ValueError, match="Batch size 1024 is larger than the 256 training images"):
        runner.submit(bad_spec)  # ... refused at submit by the pre-flight check, so nothing is queued ...
    bad = "queued-before-the-check"  # ... and a worker handed such a job anyway fails it with the same message
    JobQueue(store).submit(bad, LOCAL_WORKSPACE, bad_spec.kind, bad_spec.title, bad_spec.to_json(), 1)
    Worker(WorkerConfig(db=str(db), warm=False)).run(max_jobs=3)  # nobody polls meanwhile
    views = [runner.poll(j) for j in (first, second, bad)]
    assert [v.status for v in views] == ["finished", "finished", "failed"]
    assert views[0].runs[0].step == 4 and views[1].runs[0].step == 8  # 256 / 64 per epoch, every one stored
    assert views[0].created_at < views[1].created_at
    started = [runner.queue.job(j)["started_at"] for j in (first, second)]
    assert started[0] < started[1]
    assert views[2].error.startswith("Batch size 1024 is larger than the 256 training images")
    runs = store.runs()
    assert set(runs["status"]) == {"finished"} and len(store.iterations()) == 12
    assert set(runs["engine"]) == {"plain"} and (runs["seconds"] > 0).all()


# ------------------------------------------------------------------------------------ stop and kill

def test_stop_from_another_process_ends_the_job_and_keeps_what_it_did(db, worker_proc):
    store = ResultStore(db)
    job_id = StoreRunner(store).submit(long_job())
    worker = worker_proc()
    wait_until(lambda: running_epoch(store, job_id, 1), what="the second epoch")
    code = ("import sys; from mnist_lab.runs.store import ResultStore; from mnist_lab.service.queue import JobQueue; "
            "sys.exit(0 if JobQueue(ResultStore(sys.argv[1])).request_stop(sys.argv[2]) else 1)")
    subprocess.run([sys.executable, "-c", code, str(db), job_id], cwd=ROOT, check=True)
    view = StoreRunner(store).wait(job_id, timeout=30)
    assert view.status == "stopped" and view.stop_reason == "stopped by you"  # its English; the code beside it
    assert render_stored(view.stop_message, "zh_CN") == "由你停止" == render_stored(view.runs[0].stop_message, "zh_CN")
    run = store.runs()
    assert run["status"].item() == "stopped" and run["stop_reason"].item() == "stopped by you"
    done = len(store.iterations())
    # the finished epochs and the iterations after them (none when the stop came as an epoch ended)
    assert run["epochs_done"].item() * 313 <= done < 50 * 313
    assert worker.poll() is None  # the worker lives on for the next job


def test_kill_9_mid_epoch_loses_no_finished_epoch_and_marks_the_run(db, worker_proc):
    store = ResultStore(db)
    job_id = StoreRunner(store).submit(long_job())
    worker = worker_proc()
    wait_until(lambda: running_epoch(store, job_id, 2), what="the third epoch")
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    queue = JobQueue(ResultStore(db))  # the next opening (the app, a new worker) marks what was cut short
    kept = queue.store
    run = kept.runs()
    assert run["status"].item() == "interrupted"
    assert "ended before" in run["stop_reason"].item() and str(worker.pid) in run["stop_reason"].item()
    epochs = kept.epochs()
    assert list(epochs["epoch"]) == list(range(1, run["epochs_done"].item() + 1)) and len(epochs) >= 2
    assert run["engine"].item() == "plain" and run["seconds"].item() >= epochs["seconds"].sum() - 1e-6 > 0
    its = kept.iterations()
    assert list(its["iteration"]) == list(range(1, len(its) + 1)) and len(its) >= 2 * 313  # no gap, no half row
    job = queue.job(job_id)
    assert job["status"] == "interrupted" and str(worker.pid) in job["stop_reason"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_worker_ends_cleanly_and_says_why(db, worker_proc, sig):
    store = ResultStore(db)
    job_id = StoreRunner(store).submit(long_job())
    worker = worker_proc()
    wait_until(lambda: running_epoch(store, job_id, 1), what="the second epoch")
    worker.send_signal(sig)
    assert worker.wait(30) == 0
    log = worker.log.read_text()
    assert "terminate called" not in log and "Traceback" not in log
    run = ResultStore(db).runs()
    assert run["status"].item() == "interrupted"
    assert run["stop_reason"].item() == f"the worker was stopped ({signal.Signals(sig).name}) while it trained"
    assert render_stored(ResultStore(db).visible_runs(None)["stop_reason_msg"].item(), "zh_CN") == \
        f"训练过程中训练进程被停止了（{signal.Signals(sig).name}）"
    queue = JobQueue(store)
    assert queue.job(job_id)["status"] == "interrupted" and not queue.live_workers()


def test_a_worker_whose_server_is_gone_stops_and_marks_the_run(db, worker_proc):
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # stands in for streamlit
    store = ResultStore(db)
    job_id = StoreRunner(store).submit(long_job())
    worker = worker_proc(parent_pid=server.pid)
    wait_until(lambda: running_epoch(store, job_id, 1), what="the second epoch")
    server.kill()
    server.wait()
    assert worker.wait(30) == 0
    run = ResultStore(db).runs()
    assert run["status"].item() == "interrupted" and "server stopped" in run["stop_reason"].item()
    assert run["epochs_done"].item() >= 1


def test_one_worker_per_slot(db):
    store = JobQueue(ResultStore(db))  # who holds the slots
    live = Worker(WorkerConfig(db=str(db), warm=False))
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    wait_until(lambda: any(w["worker"] == live.id for w in store.live_workers()), what="the worker to register")
    second = Worker(WorkerConfig(db=str(db), warm=False))
    second.id = "otherhost:42"  # another process; slot 0 is held by a live worker
    assert second.run(max_jobs=1) == 1
    assert [w["worker"] for w in store.live_workers()] == [live.id]
    live.quit_reason = Message.verbatim("the test ended")
    thread.join(10)
    assert not thread.is_alive() and store.live_workers() == []


def test_a_worker_started_by_the_app_gives_running_jobs_the_device(db):
    """A spec asking for 'auto' trains on the worker's own device."""
    store = ResultStore(db)
    job_id = StoreRunner(store).submit(replace(tiny_job(), train=TrainConfig(device="auto")))
    Worker(WorkerConfig(db=str(db), device="cpu", warm=False)).run(max_jobs=1)
    assert JobQueue(store).job(job_id)["status"] == "finished" and store.runs()["device"].item() == "cpu"


def test_a_job_over_the_workers_time_limit_is_stopped_as_timed_out(db):
    store = ResultStore(db)
    job_id = StoreRunner(store).submit(long_job())
    Worker(WorkerConfig(db=str(db), warm=False, max_job_s=4.0)).run(max_jobs=1)  # data loading counts too
    view = StoreRunner(store).poll(job_id)
    assert view.status == "stopped" and view.stop_reason.startswith("timed out")
    run = store.runs()
    assert run["status"].item() == "stopped" and run["stop_reason"].item().startswith("timed out")
    assert 0 < len(store.iterations()) < 50 * 313


def test_a_worker_process_started_under_its_predecessors_id_ends_what_that_one_left_running(tmp_path):
    """A restarted container gives its worker the same pid, so the job a killed worker left 'running'
    names a live process: the new one. A worker process started by the CLI (fresh_process) knows it
    has trained nothing yet and ends those rows 'interrupted'; a worker inside another process
    (fresh_process False: the process may be training) leaves them alone."""
    from mnist_lab.runs.store import owner_id, run_row

    def left_running(db):
        store = ResultStore(db)
        with store.context(job_id="old-job"):
            store.start_run(run_row("old-run", PRESETS["tiny-fc"].model, TrainConfig(), DataConfig()))
        JobQueue(store).start_inline("old-job", "local", "train", "t", "{}", 1)  # worker: this process's id
        store.close()

    def statuses(db):
        store = ResultStore(db)
        return store.runs().iloc[0]["status"], JobQueue(store).job("old-job")["status"]

    kept, ended = tmp_path / "kept.sqlite", tmp_path / "ended.sqlite"
    for db in (kept, ended):
        left_running(db)
        assert JobQueue(ResultStore(db)).job("old-job")["worker"] == owner_id()
    Worker(WorkerConfig(db=str(kept), warm=False, device="cpu")).run(max_jobs=0)
    assert statuses(kept) == ("running", "running")
    Worker(WorkerConfig(db=str(ended), warm=False, device="cpu", fresh_process=True)).run(max_jobs=0)
    assert statuses(ended) == ("interrupted", "interrupted")
    store = ResultStore(ended)
    assert "killed or crashed" in render_stored(JobQueue(store).job("old-job")["stop_reason"], "en")
