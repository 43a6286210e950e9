"""The dashboard's job runner: one training slot with a queue, Stop within a second keeping
partial results, the heartbeat timeout for closed tabs, and errors turned into messages."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial

import pytest

from mnist_lab.experiments import run_single
from mnist_lab.jobs import JobManager
from mnist_lab.models import PRESETS
from mnist_lab.store import ResultStore
from mnist_lab.train import Progress, TrainConfig


@pytest.fixture
def manager():
    m = JobManager(slots=1, heartbeat_timeout_s=60, watchdog_every_s=0.05)
    yield m
    m.shutdown()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def until(release: threading.Event):
    """A job that works until `release` is set (result 'done') or it is cancelled."""
    def fn(on_progress, cancel):
        while not (release.is_set() or cancel.is_set()):
            time.sleep(0.01)
        return "done"
    return fn


def test_jobs_queue_for_the_one_slot_and_know_their_place(manager):
    release = threading.Event()
    first = manager.submit("train", until(release))
    wait_until(lambda: manager.snapshot(first.id).status == "running")
    second, third = manager.submit("train", until(release)), manager.submit("sweep", until(release))
    time.sleep(0.1)
    assert [manager.snapshot(j.id).status for j in (first, second, third)] == ["running", "queued", "queued"]
    assert [manager.snapshot(j.id).position for j in (first, second, third)] == [0, 1, 2]
    release.set()
    assert all(j.wait(5) for j in (first, second, third))
    assert [(j.status, j.result) for j in (first, second, third)] == [("finished", "done")] * 3


def test_a_stopped_queued_job_never_runs(manager):
    release = threading.Event()
    ran = threading.Event()
    first = manager.submit("train", until(release))
    wait_until(lambda: first.status == "running")
    queued = manager.submit("train", lambda on_progress, cancel: ran.set())
    queued.stop()
    assert queued.wait(1.0)
    assert queued.status == "stopped" and queued.snapshot().runs == ()
    release.set()
    assert first.wait(5) and first.status == "finished"
    assert not ran.is_set()


def test_stop_ends_a_real_run_within_a_second_and_keeps_what_it_did(manager, tiny_data, tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    train_cfg = TrainConfig(epochs=500, device="cpu", progress_every_s=0.05)
    job = manager.submit("train", partial(run_single, PRESETS["tiny-fc"].model, train_cfg, tiny_data.config,
                                          store=store, data=tiny_data))
    wait_until(lambda: len(job.snapshot().losses) >= 40, timeout=60)
    t0 = time.monotonic()
    job.stop()
    assert job.wait(1.0), "the run did not end within a second of Stop"
    assert time.monotonic() - t0 < 1.0
    snap = job.snapshot()
    assert snap.status == "stopped" and snap.stop_reason == "stopped by the user"
    result = snap.result
    assert result.status == "stopped" and len(result.losses) >= 40
    assert snap.losses == result.losses  # the UI's buffer saw every iteration the run did
    assert [m.epoch for m in snap.runs[0].epochs] == [m.epoch for m in result.epochs]
    assert len(store.iterations([result.run_id])) == len(result.losses)
    assert store.runs([result.run_id])["status"].item() == "stopped"


def test_a_stop_after_the_work_is_done_does_not_label_a_finished_job_stopped(manager):
    """Stop (or the reaper) can land between the last iteration and the job's end: the result's
    own status decides; a callable whose result has none falls back to the cancel flag."""
    @dataclass
    class Result:
        status: str

    def late_stop(result):
        def fn(on_progress, cancel):
            cancel.set()  # as if Stop arrived just after the last iteration
            return result
        return fn
    finished = manager.submit("train", late_stop(Result("finished")))
    stopped = manager.submit("train", late_stop(Result("stopped")))
    plain = manager.submit("train", late_stop("done"))
    assert all(j.wait(5) for j in (finished, stopped, plain))
    assert [j.snapshot().status for j in (finished, stopped, plain)] == ["finished", "stopped", "stopped"]
    assert finished.snapshot().fraction == 1.0


def test_a_job_whose_page_stopped_polling_is_stopped():
    manager = JobManager(heartbeat_timeout_s=0.5, watchdog_every_s=0.05)
    never = threading.Event()
    watched = manager.submit("train", until(never))
    forgotten = manager.submit("train", until(never))  # queued behind `watched`, never polled
    t_end = time.monotonic() + 1.2
    while time.monotonic() < t_end:  # a page polling `watched` twice a second... then the tab closes
        manager.poll(watched.id)
        time.sleep(0.1)
    assert forgotten.done and forgotten.status == "stopped" and "polled" in forgotten.stop_reason
    assert watched.status == "running"
    assert watched.wait(2.0), "an abandoned running job kept running"
    assert watched.status == "stopped" and "tab closed" in watched.stop_reason
    manager.shutdown()


def test_errors_become_messages_and_keep_partial_progress(manager, tiny_data):
    def fails(on_progress, cancel):
        on_progress(Progress("r1", "iterations", 1, 2, 10, losses=(2.3, 2.2), first_iteration=1))
        raise RuntimeError("CUDA out of memory")
    job = manager.submit("train", fails)
    assert job.wait(5)
    snap = job.snapshot()
    assert snap.status == "failed" and snap.error == "RuntimeError: CUDA out of memory"
    assert snap.losses == [2.3, 2.2] and "Traceback" in snap.error_detail

    too_big = TrainConfig(batch_size=1024, device="cpu")  # the core's own ValueError, shown as is
    job = manager.submit("train", partial(run_single, PRESETS["tiny-fc"].model, too_big, tiny_data.config, data=tiny_data))
    assert job.wait(5) and job.status == "failed"
    assert job.error.startswith("Batch size 1024 is larger than the 512 training images")


def test_progress_of_a_job_of_several_runs(manager):
    gate = threading.Event()

    def two_runs(on_progress, cancel):
        on_progress(Progress("a", "iterations", 1, 10, 10, losses=(1.0,) * 10, first_iteration=1))
        on_progress(Progress("a", "end", 1, 10, 10, status="finished"))
        on_progress(Progress("b", "iterations", 1, 5, 10, losses=(0.5,) * 5, first_iteration=1))
        gate.wait(5)
        return "ok"
    job = manager.submit("sweep", two_runs, runs_total=2)
    wait_until(lambda: len(job.snapshot().runs) == 2)
    snap = job.snapshot()
    assert snap.fraction == pytest.approx(0.75) and snap.eta_s is not None
    assert [r.status for r in snap.runs] == ["finished", "running"] and len(snap.losses) == 15
    gate.set()
    assert job.wait(5) and job.snapshot().fraction == 1.0 and job.snapshot().eta_s == 0.0
