"""The lab's experiments: sweep cells and rows, the FC-vs-CNN comparison, summaries over
seeds, and the plain-language reading computed from the numbers."""
from __future__ import annotations

import threading

import pandas as pd
import pytest

from mnist_lab.data.datasets import DataConfig
from mnist_lab.lab.experiments import (
    COMPARE_COLUMNS,
    SWEEP_COLUMNS,
    CompareConfig,
    SweepConfig,
    compare_default_train,
    read_compare,
    run_compare,
    run_sweep,
    summarize_over_seeds,
)
from mnist_lab.nets.model import count_params, match_fc_width
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.training.loop import TrainConfig

TINY = DataConfig(train_limit=128, test_limit=300)
FAST = TrainConfig(epochs=1, batch_size=64)


def test_sweep_cells_skip_impossible_geometry_with_reason():
    cells, skipped = SweepConfig(conv_layers=(1, 3), kernel_sizes=(3, 9), padding="valid").cells()
    assert [(c[0], c[1]) for c in cells] == [(1, 3), (1, 9), (3, 3)]
    assert len(skipped) == 1 and skipped[0]["conv_layers"] == 3 and skipped[0]["kernel_size"] == 9
    assert "Conv block" in skipped[0]["reason"] and "same" in skipped[0]["reason"]
    # the sweep's family: 16 channels doubling per block, same padding
    assert [c[3].conv_channels for c in SweepConfig(conv_layers=(3,), kernel_sizes=(5,)).cells()[0]] == [(16, 32, 64)]


def test_sweep_refuses_when_nothing_is_valid():
    with pytest.raises(ValueError, match="No cell"):
        SweepConfig(conv_layers=(4,), kernel_sizes=(9,), padding="valid").cells()
    with pytest.raises(ValueError, match="at least 1 seed"):
        SweepConfig(seeds=0).cells()


def test_sweep_one_row_per_run(tmp_path, mnist_raw):
    store = ResultStore(tmp_path / "r.sqlite")
    sweep = SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), hidden_units=(0, 8), seeds=2, base_channels=4)
    result = run_sweep(sweep, FAST, TINY, record=Recorder(store))
    table = result.table
    assert list(table.columns) == SWEEP_COLUMNS
    assert len(table) == 2 * 1 * 2 * 2
    assert sorted(table["seed"].unique()) == [0, 1]
    assert set(table["channels"]) == {"4", "4-8"}
    assert table["status"].eq("finished").all() and table["test_acc"].between(0, 1).all()
    # parameter counts come from the real networks
    row = table[(table.conv_layers == 2) & (table.hidden_units == 8)].iloc[0]
    assert row.params == count_params(sweep.model(2, 3, 8))
    assert set(store.runs()["experiment"]) == {"sweep"} and len(store.runs()) == 8
    summary = summarize_over_seeds(table, ["conv_layers", "kernel_size", "hidden_units"])
    assert len(summary) == 4 and summary["n"].eq(2).all()


def test_sweep_stops_and_keeps_finished_runs(mnist_raw):
    cancel = threading.Event()
    ends = []

    def on_progress(event):
        if event.kind == "end":
            ends.append(event.run_id)
            if len(ends) == 2:
                cancel.set()

    sweep = SweepConfig(conv_layers=(1,), kernel_sizes=(3, 5, 7), seeds=2, base_channels=4)
    result = run_sweep(sweep, FAST, TINY, on_progress=on_progress, cancel=cancel)
    assert result.status == "stopped"
    assert list(result.table["run_id"]) == ends and len(result.table) == 2


def test_compare_matches_fc_to_cnn_and_fills_the_2x2(mnist_raw):
    cfg = CompareConfig(seeds=2)
    models = cfg.models()
    assert models["FC"] == match_fc_width(PRESETS["tiny-cnn"].model)
    assert count_params(models["FC"]) == 6442 and count_params(models["CNN"]) == 6422
    result = run_compare(cfg, compare_default_train(), TINY)
    assert list(result.table.columns) == COMPARE_COLUMNS
    assert len(result.table) == 2 * 2 * 2
    counts = result.table.groupby(["model", "pixels"]).size()
    assert counts.eq(2).all() and len(counts) == 4
    assert set(result.summary.columns) >= {"model", "pixels", "n", "mean", "sd", "text"}
    # the reading quotes this run's own numbers (the CNN on normal pixels, one decimal)
    cnn_normal = result.summary.set_index(["model", "pixels"]).loc[("CNN", "normal"), "mean"]
    assert f"({100 * cnn_normal:.2f}% vs" in result.reading


def test_summary_is_mean_and_sample_sd():
    table = pd.DataFrame(dict(model=["A", "A", "A", "B"], test_acc=[0.90, 0.92, 0.94, 0.5],
                              status=["finished"] * 4))
    s = summarize_over_seeds(table, ["model"]).set_index("model")
    assert s.loc["A", "mean"] == pytest.approx(0.92) and s.loc["A", "sd"] == pytest.approx(0.02)
    assert s.loc["B", "sd"] == 0.0 and s.loc["A", "text"] == "92.00% ± 2.00"
    assert s.loc["B", "text"] == "50.00% (1 run, no spread)"
    stopped = table.assign(status=["finished", "finished", "stopped", "finished"])
    assert summarize_over_seeds(stopped, ["model"]).set_index("model").loc["A", "n"] == 2


def _summary(fcn, cnnn, fcp, cnnp):
    rows = [("FC", "normal", fcn), ("CNN", "normal", cnnn), ("FC", "permuted", fcp), ("CNN", "permuted", cnnp)]
    return pd.DataFrame([dict(model=m, pixels=p, n=3, mean=v, sd=0.01, text="") for m, p, v in rows])


def test_reading_follows_the_numbers():
    lesson = read_compare(_summary(0.88, 0.96, 0.85, 0.80))
    assert "beats the FC net by 8.0 points" in lesson and "locality" in lesson
    assert "costs the CNN 16.0 points and the FC net 3.0 points" in lesson
    assert "lead of 8.0 points turns into a deficit of 5.0 points" in lesson
    odd = read_compare(_summary(0.96, 0.88, 0.85, 0.80))
    assert "trails" in odd and "locality" not in odd
    # the CNN 4.5 points below the FC net on permuted pixels: a deficit, never "disappears"
    behind = read_compare(_summary(0.90, 0.97, 0.89, 0.845))
    assert "on permuted pixels it trails the FC net by 4.5 points" in behind and "disappears" not in behind
    assert "turns into a deficit of 4.5 points" in behind
    level = read_compare(_summary(0.90, 0.97, 0.89, 0.892))
    assert "disappears" in level and "deficit" not in level
    kept = read_compare(_summary(0.90, 0.97, 0.85, 0.88))
    assert "shrinks from 7.0 to 3.0 points" in kept and "locality" not in kept
    assert "nothing to compare" in read_compare(_summary(0.9, 0.9, 0.9, 0.9).iloc[:2])
    assert "no spread" in read_compare(_summary(0.88, 0.96, 0.85, 0.80).assign(n=1))


@pytest.mark.slow
def test_compare_on_real_mnist_shows_the_lesson(mnist_raw):
    """The issue's acceptance check: 3 seeds, 1 epoch, full data: the CNN leads on normal
    pixels and falls behind the FC net on permuted pixels."""
    result = run_compare(CompareConfig(seeds=3), compare_default_train(), DataConfig())
    mean = result.summary.set_index(["model", "pixels"])["mean"]
    assert mean["CNN", "normal"] > mean["FC", "normal"]
    assert mean["CNN", "permuted"] < mean["FC", "permuted"]
    assert mean["CNN", "normal"] > 0.93 and mean["FC", "normal"] > 0.80


def test_a_network_for_other_images_is_refused_before_training(mnist_raw):
    from dataclasses import replace

    from mnist_lab.lab.experiments import run_single

    cifar_shaped = replace(PRESETS["lab5"].model, in_channels=3, image_size=32)
    with pytest.raises(ValueError, match=r"in_channels = 3 but MNIST needs 1 \(1×28×28 images, 10 classes\)"):
        run_single(cifar_shaped, FAST, TINY)  # preflight's check_fits, before any data is loaded


@pytest.mark.gpu
def test_sweep_on_a_gpu_trains_side_by_side_and_records_every_run(tmp_path, mnist_raw):
    """On CUDA the sweep's runs share the GPU (train_many); each is stored and matches the
    same run trained alone within float tolerance."""
    from mnist_lab.lab.experiments import run_single

    store = ResultStore(tmp_path / "r.sqlite")
    sweep = SweepConfig(conv_layers=(1, 2), kernel_sizes=(3, 5), seeds=2, base_channels=8)
    cuda = TrainConfig(epochs=2, batch_size=64, device="cuda")
    result = run_sweep(sweep, cuda, TINY, record=Recorder(store))
    assert len(result.table) == 8 and result.table["status"].eq("finished").all()
    assert set(result.table["engine"]) == {"cuda-graph"}
    runs = store.runs().set_index("run_id")
    assert set(runs.index) == set(result.table["run_id"]) and runs["status"].eq("finished").all()
    iters = store.iterations()
    assert iters.groupby("run_id").size().eq(2 * 2).all()  # 128 images / 64 = 2 steps, 2 epochs
    first = result.results[0]
    alone = run_single(first.model_cfg, first.train_cfg, TINY)
    assert alone.losses == pytest.approx(first.losses, rel=1e-3, abs=1e-4)


def test_run_many_records_each_run_with_its_own_epoch_length(tmp_path, mnist_raw):
    from mnist_lab.lab.experiments import run_many

    store = ResultStore(tmp_path / "r.sqlite")
    jobs = [(PRESETS["tiny-fc"].model, TrainConfig(epochs=2, batch_size=bs), f"batch {bs}") for bs in (64, 32)]
    results = run_many(jobs, TINY, record=Recorder(store))
    for result, per_epoch in zip(results, (2, 4)):  # 128 images / 64 and / 32
        iters = store.iterations([result.run_id])
        assert iters["epoch"].tolist() == [1] * per_epoch + [2] * per_epoch


def test_summaries_leave_diverged_runs_out_and_say_how_many():
    table = pd.DataFrame({"model": ["A", "A", "A", "B"], "test_acc": [0.90, 0.94, 0.11, 0.10],
                          "status": ["finished", "finished", "diverged", "diverged"]})
    s = summarize_over_seeds(table, ["model"]).set_index("model")
    assert s.loc["A", "n"] == 2 and s.loc["A", "mean"] == pytest.approx(0.92)  # the diverged run is not averaged in
    assert s.loc["A", "diverged"] == 1 and s.loc["A", "text"] == "92.00% ± 2.83, 1 diverged (not counted)"
    assert "B" not in s.index  # no finished run: nothing to summarise
