"""The SQLite result store: pinned CSV columns, writes as runs progress, deletion, and a
database that survives a training process killed mid-run."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mnist_lab.data.datasets import DataConfig
from mnist_lab.i18n import render_stored
from mnist_lab.lab.experiments import run_single
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import CSV_COLUMNS, EPOCH_COLUMNS, ITERATION_COLUMNS, RUN_COLUMNS, ResultStore
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = DataConfig(train_limit=256, test_limit=500)


def test_csv_columns_are_pinned(tmp_path):
    assert EPOCH_COLUMNS == ["run_id", "epoch", "train_loss", "test_loss", "test_acc", "seconds"]
    assert ITERATION_COLUMNS == ["run_id", "epoch", "iteration", "loss"]
    for required in ("run_id", "status", "params", "device", "engine", "seed", "final_test_acc", "started_at",
                     "conv_channels", "kernel_size", "padding", "hidden", "epochs", "batch_size", "optimizer",
                     "lr", "momentum", "train_limit", "permute_pixels", "torch_version", "mnist_lab_version"):
        assert required in RUN_COLUMNS
    assert RUN_COLUMNS[:15] == ["run_id", "experiment", "group_id", "label", "status", "started_at", "seconds",
                                "device", "engine", "params", "seed", "final_test_acc", "epochs_done", "diverged_at",
                                "message"]


def test_the_csvs_hold_what_was_trained_with_accuracy_as_a_fraction(tmp_path, mnist_raw):
    store = ResultStore(tmp_path / "r.sqlite")
    result = run_single(PRESETS["tiny-cnn"].model, TrainConfig(epochs=1, batch_size=64), TINY, record=Recorder(store))
    paths = store.export_csv(tmp_path / "out")
    runs, epochs, iters = (pd.read_csv(paths[t]) for t in ("runs", "epochs", "iterations"))
    [row] = runs.itertuples()
    assert (row.run_id, row.status, row.params, row.conv_channels, row.hidden) == (result.run_id, "finished", 6422,
                                                                                   "6-6", 50)
    assert row.final_test_acc == pytest.approx(result.final_test_acc) and 0 < row.final_test_acc <= 1
    assert epochs["test_acc"].tolist() == pytest.approx([m.test_acc for m in result.epochs])
    assert iters["loss"].tolist() == pytest.approx(result.losses) and len(iters) == 4


def test_run_is_recorded_while_it_trains(tmp_path, mnist_raw):
    store = ResultStore(tmp_path / "r.sqlite")
    seen = []

    def peek(event):  # the store is written before the UI's callback sees the event
        if event.kind == "epoch":
            seen.append((len(store.epochs()), len(store.iterations())))

    result = run_single(PRESETS["tiny-cnn"].model, TrainConfig(epochs=2, batch_size=64), TINY, record=Recorder(store),
                        on_progress=peek)
    assert seen == [(1, 4), (2, 8)]  # 256 images / 64 = 4 iterations per epoch
    runs = store.runs()
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row.run_id == result.run_id and row.status == "finished" and row.params == 6422
    assert row.epochs_done == 2 and row.final_test_acc == pytest.approx(result.final_test_acc)
    assert row.conv_channels == "6-6" and row.hidden == "50" and row.engine == result.engine
    iters = store.iterations()
    assert iters["loss"].tolist() == pytest.approx(result.losses)
    assert iters["iteration"].tolist() == list(range(1, 9))
    assert iters["epoch"].tolist() == [1] * 4 + [2] * 4


def test_delete_and_filter_by_run(tmp_path, mnist_raw):
    store = ResultStore(tmp_path / "r.sqlite")
    a = run_single(PRESETS["tiny-fc"].model, TrainConfig(epochs=1, seed=1), TINY, record=Recorder(store))
    b = run_single(PRESETS["tiny-fc"].model, TrainConfig(epochs=1, seed=2), TINY, record=Recorder(store))
    assert set(store.runs()["run_id"]) == {a.run_id, b.run_id}
    assert set(store.iterations([a.run_id])["run_id"]) == {a.run_id}
    assert store.delete_runs([a.run_id]) == 1
    assert set(store.runs()["run_id"]) == {b.run_id}
    assert set(store.iterations()["run_id"]) == {b.run_id}
    assert set(store.epochs()["run_id"]) == {b.run_id}
    # a second connection (another app process, or after a restart) sees the same history
    assert set(ResultStore(tmp_path / "r.sqlite").runs()["run_id"]) == {b.run_id}


def test_older_database_gains_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT)")
        conn.execute("INSERT INTO runs VALUES ('old-1', 'finished')")
    store = ResultStore(path)
    runs = store.runs()
    assert list(runs.columns) == CSV_COLUMNS and runs.iloc[0].run_id == "old-1"


@pytest.mark.slow
def test_store_survives_a_killed_process(tmp_path, mnist_raw):
    """SIGKILL a CLI training run after its first epoch: the database opens, keeps the run
    (marked interrupted, since its process is gone), its finished epoch and every iteration
    written up to then."""
    db = tmp_path / "killed.sqlite"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnist_lab", "train", "--preset", "tiny-fc", "--epochs", "50", "--train-limit",
         "20000", "--device", "cpu", "--db", str(db), "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            if db.exists():
                try:
                    with sqlite3.connect(db, timeout=5) as conn:
                        if conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] >= 1:
                            break
                except sqlite3.OperationalError:
                    pass  # tables not created yet
            time.sleep(0.2)
        else:
            pytest.fail("the first epoch never reached the database")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = ResultStore(db)
    runs = store.runs()
    assert len(runs) == 1 and runs.iloc[0].status == "interrupted"
    epochs = store.epochs()
    iters = store.iterations()
    steps_per_epoch = 20000 // 64 + 1
    assert len(epochs) >= 1
    assert len(iters) >= len(epochs) * steps_per_epoch
    assert iters["iteration"].tolist() == list(range(1, len(iters) + 1))  # no gaps, no duplicates
    assert runs.iloc[0].epochs_done == len(epochs)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_runs_left_running_by_a_dead_process_are_marked_interrupted(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    for run_id in ("dead", "alive", "elsewhere", "unknown", "done"):
        store.start_run({c: None for c in RUN_COLUMNS} | {"run_id": run_id, "status": "running"})
    store.finish_run("done", "finished", 1.0)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = __import__("socket").gethostname()
    with sqlite3.connect(path) as conn:
        conn.executemany("UPDATE runs SET owner = ? WHERE run_id = ?", [
            (f"{host}:{gone.pid}", "dead"), ("another-machine:1", "elsewhere"), (None, "unknown")])
    assert store.runs().set_index("run_id").loc["alive", "status"] == "running"  # this very process

    again = ResultStore(path)  # opening the store checks the running runs' processes
    status = again.runs().set_index("run_id")["status"].to_dict()
    assert status == {"dead": "interrupted", "alive": "running", "elsewhere": "running", "unknown": "running",
                      "done": "finished"}
    assert again.mark_interrupted() == 0


def test_a_run_deleted_while_training_leaves_no_orphan_rows(tmp_path, mnist_raw):
    store = ResultStore(tmp_path / "r.sqlite")

    def delete_midway(event):
        if event.kind == "epoch" and event.epoch == 1:
            store.delete_runs([event.run_id])

    run_single(PRESETS["tiny-fc"].model, TrainConfig(epochs=2), TINY, record=Recorder(store), on_progress=delete_midway)
    assert store.runs().empty and store.epochs().empty and store.iterations().empty


def test_run_columns_derive_from_the_config_dataclasses():
    """A new config field is a column without a hand edit; the two that would shadow what
    happened are stored as what was asked for."""
    import dataclasses

    from mnist_lab.nets.model import ModelConfig
    from mnist_lab.runs.store import RENAMED

    for cls in (ModelConfig, TrainConfig, DataConfig):
        for f in dataclasses.fields(cls):
            assert RENAMED.get(f.name, f.name) in RUN_COLUMNS, f.name
    assert {"blocks", "head", "augment", "sort_by_label", "engine_requested", "device_requested"} <= set(RUN_COLUMNS)


def test_a_block_list_is_stored_as_json_and_read_back(tmp_path):
    from mnist_lab.lab.findings import model_from_row
    from mnist_lab.runs.store import run_row

    store = ResultStore(tmp_path / "r.sqlite")
    for name in ("resnet-small", "lab5"):
        model = PRESETS[name].model
        store.start_run(run_row(f"run-{name}", model, TrainConfig(augment=True), TINY, status="finished"))
        row = store.runs().set_index("run_id").loc[f"run-{name}"]
        assert model_from_row(row.to_dict()) == model
        assert row["augment"] in (1, True) and row["engine_requested"] == "auto"
    assert store.runs().set_index("run_id").loc["run-lab5", "blocks"] in ("", None)


def test_a_runs_label_is_stored_as_a_code_beside_its_english(tmp_path):
    """runs.csv keeps the English label; the code beside it (not exported) is worded per reader:
    a lesson variant's msgid in Chinese, a person's own words (braces and all) as given."""
    from mnist_lab.i18n import N_, Message, render_stored
    from mnist_lab.runs.store import run_row

    store = ResultStore(tmp_path / "r.sqlite")
    model = PRESETS["tiny-fc"].model
    labels = {"lesson": "BatchNorm after each convolution", "own": "my {net} run",
              "sweep": Message(N_("{n} conv × {rest}"), {"n": 2, "rest": "k5 + FC 100"}), "default": ""}
    for run_id, label in labels.items():
        store.start_run(run_row(run_id, model, TrainConfig(), TINY, label=label))
    runs = store.visible_runs(None).set_index("run_id")
    assert "label_msg" not in store.runs().columns and list(store.runs().columns) == CSV_COLUMNS
    english = runs["label"].to_dict()
    assert english == {"lesson": "BatchNorm after each convolution", "own": "my {net} run",
                       "sweep": "2 conv × k5 + FC 100", "default": "FC 8-8-10 · 256 images"}
    zh = {r: render_stored(runs.loc[r, "label_msg"], "zh_CN") for r in labels}
    assert zh == {"lesson": "每个卷积之后加批归一化（BatchNorm）", "own": "my {net} run",
                  "sweep": "2 个卷积层 × k5 + FC 100", "default": "FC 8-8-10 · 256 张图像"}
    assert {r: render_stored(runs.loc[r, "label_msg"], "en") for r in labels} == english


def test_a_runs_default_label_is_stored_as_its_parts_and_worded_in_chinese(tmp_path, mnist_raw):
    store = ResultStore(tmp_path / "r.sqlite")
    data = DataConfig(train_limit=256, test_limit=100, permute_pixels=True)
    run_single(PRESETS["tiny-fc"].model, TrainConfig(epochs=1), data, record=Recorder(store))
    row = store.visible_runs(None).iloc[0]
    assert row["label"] == "FC 8-8-10 · permuted pixels · 256 images"  # runs.csv: English, as before
    assert render_stored(row["label_msg"], "en") == row["label"]
    assert render_stored(row["label_msg"], "zh_CN") == "FC 8-8-10 · 打乱的像素 · 256 张图像"


def test_a_dead_process_run_is_ended_by_any_reader_and_its_job_by_the_queue(tmp_path):
    """Opening the store ends the runs of dead processes at once (a CLI `report` needs no queue);
    the queue then ends their job, whose own reason names the worker."""
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    dead = f"{socket.gethostname()}:999999999"  # no such process on this machine
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO jobs (job_id, seq, workspace, kind, status, worker) "
                     "VALUES ('j1', 1, 'local', 'train', 'running', ?)", (dead,))
        conn.execute("INSERT INTO runs (run_id, status, job_id, workspace, owner) "
                     "VALUES ('r1', 'running', 'j1', 'local', ?)", (dead,))
    store = ResultStore(path)
    run = store.runs().iloc[0]
    assert run.status == "interrupted" and run.stop_reason.startswith(f"its process ({dead}) ended before")
    queue = JobQueue(store)
    queue.mark_interrupted()
    job = queue.job("j1")
    assert job["status"] == "interrupted" and "worker process" in render_stored(job["stop_reason"], "en")
    assert store.runs().iloc[0].stop_reason == run.stop_reason  # the reason said first is kept
