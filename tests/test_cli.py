"""The command line: same CSV tables as the app, one clear line and exit 2 on bad input."""
from __future__ import annotations

import pandas as pd
import pytest

from mnist_lab.cli import main
from mnist_lab.store import EPOCH_COLUMNS, ITERATION_COLUMNS, RUN_COLUMNS


def test_presets_lists_the_four_networks(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, params in (("lab5", "8490"), ("padded-16-32", "417482"), ("tiny-fc", "6442"), ("tiny-cnn", "6422")):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert params in line


@pytest.mark.parametrize("argv, words", [
    (["train", "--conv-channels", "8", "8", "8", "8", "--kernel-size", "7"], ["Conv block", "same"]),
    (["train", "--batch-size", "0"], ["Batch size"]),
    (["train", "--lr", "-1"], ["Learning rate"]),
    (["train", "--device", "tpu"], ["device"]),
    (["train", "--train-limit", "0"], ["train_limit"]),
    (["sweep", "--conv-layers", "4", "--kernel-sizes", "9", "--sweep-padding", "valid"], ["No cell"]),
    (["compare", "--seeds", "0"], ["seed"]),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys, tmp_path):
    assert main([*argv, "--db", str(tmp_path / "r.sqlite"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err


def test_train_writes_the_three_tables(tmp_path, capsys, mnist_raw):
    out = tmp_path / "out"
    code = main(["train", "--preset", "tiny-cnn", "--epochs", "2", "--train-limit", "200", "--batch-size", "50",
                 "--device", "cpu", "--out", str(out), "--db", str(tmp_path / "r.sqlite"), "--quiet"])
    assert code == 0
    runs, epochs, iters = (pd.read_csv(out / f"{t}.csv") for t in ("runs", "epochs", "iterations"))
    assert list(runs.columns) == RUN_COLUMNS and list(epochs.columns) == EPOCH_COLUMNS
    assert list(iters.columns) == ITERATION_COLUMNS
    assert len(runs) == 1 and runs.iloc[0].params == 6422 and runs.iloc[0].status == "finished"
    assert len(epochs) == 2 and len(iters) == 2 * 4  # 200 images / batch 50 = 4 steps per epoch
    assert iters["epoch"].tolist() == [1] * 4 + [2] * 4
    printed = capsys.readouterr().out
    assert "6,422 parameters" in printed and "8 iterations" in printed


def test_sweep_and_compare_write_their_tables(tmp_path, capsys, mnist_raw):
    common = ["--epochs", "1", "--train-limit", "128", "--device", "cpu", "--db", str(tmp_path / "r.sqlite"),
              "--quiet"]
    assert main(["sweep", "--conv-layers", "1", "2", "--kernel-sizes", "3", "--seeds", "2", "--base-channels", "4",
                 "--out", str(tmp_path / "sweep"), *common]) == 0
    sweep = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert len(sweep) == 4 and set(sweep["conv_layers"]) == {1, 2}
    assert len(pd.read_csv(tmp_path / "sweep" / "runs.csv")) == 4
    assert "mean ± sd" in capsys.readouterr().out

    assert main(["compare", "--seeds", "1", "--out", str(tmp_path / "cmp"), *common]) == 0
    compare = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert list(compare.columns) == ["model", "pixels", "seed", "params", "test_acc", "run_id"]
    assert len(compare) == 4 and set(compare["params"]) == {6442, 6422}
    printed = capsys.readouterr().out
    assert "FC: 6,442 parameters vs CNN: 6,422 parameters" in printed and "permuted" in printed


@pytest.mark.slow
def test_lab5_one_epoch_reaches_the_lab_accuracy(tmp_path, mnist_raw):
    """The issue's acceptance run: lab5, 1 epoch on the CPU, ≥ 95.5% and 938 iteration rows."""
    out = tmp_path / "lab5"
    assert main(["train", "--preset", "lab5", "--epochs", "1", "--device", "cpu", "--out", str(out),
                 "--db", str(tmp_path / "r.sqlite"), "--quiet"]) == 0
    iters = pd.read_csv(out / "iterations.csv")
    assert len(iters) == 938
    assert pd.read_csv(out / "epochs.csv").iloc[0].test_acc >= 0.955
