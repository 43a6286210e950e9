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
    (["train", "--seed", "99999999999999999999"], ["Seed must be"]),
    (["train", "--train-limit", "10"], ["Batch size 64 is larger than the 10 training images"]),
    (["train", "--kind", "fc", "--conv-channels", "10", "20"], ["no conv blocks"]),
    (["train", "--data-dir", "/nonexistent/mnist"], ["/nonexistent/mnist", "does not exist"]),
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


def test_a_sweep_can_stack_each_cells_seeds(tmp_path, capsys, mnist_raw):
    argv = ["sweep", "--conv-layers", "1", "2", "--kernel-sizes", "3", "--seeds", "2", "--base-channels", "4",
            "--epochs", "1", "--train-limit", "128", "--device", "cpu", "--db", str(tmp_path / "r.sqlite"), "--quiet"]
    assert main([*argv, "--engine", "stacked", "--out", str(tmp_path / "stacked")]) == 0
    assert main([*argv, "--engine", "plain", "--out", str(tmp_path / "plain")]) == 0
    stacked, plain = (pd.read_csv(tmp_path / d / "runs.csv") for d in ("stacked", "plain"))
    assert set(stacked["engine"]) == {"stacked"} and set(plain["engine"]) == {"plain"}
    assert set(stacked["engine_requested"]) == {"stacked"}
    a, b = (pd.read_csv(tmp_path / d / "sweep.csv").sort_values(["conv_layers", "seed"]) for d in ("stacked", "plain"))
    assert a["test_acc"].tolist() == pytest.approx(b["test_acc"].tolist(), abs=0.01)
    assert main(["train", "--engine", "turbo", "--quiet"]) == 2  # argparse's own refusal, as one error line
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


@pytest.mark.slow
def test_lab5_one_epoch_reaches_the_lab_accuracy(tmp_path, mnist_raw):
    """The issue's acceptance run: lab5, 1 epoch on the CPU, ≥ 95.5% and 938 iteration rows."""
    out = tmp_path / "lab5"
    assert main(["train", "--preset", "lab5", "--epochs", "1", "--device", "cpu", "--out", str(out),
                 "--db", str(tmp_path / "r.sqlite"), "--quiet"]) == 0
    iters = pd.read_csv(out / "iterations.csv")
    assert len(iters) == 938
    assert pd.read_csv(out / "epochs.csv").iloc[0].test_acc >= 0.955


def test_unwritable_outputs_are_one_line_errors(tmp_path, capsys, mnist_raw):
    a_file = tmp_path / "file"
    a_file.write_text("")
    common = ["train", "--preset", "tiny-fc", "--train-limit", "64", "--device", "cpu", "--quiet"]
    assert main([*common, "--db", str(tmp_path / "r.sqlite"), "--out", str(a_file)]) == 2
    assert main([*common, "--db", str(a_file / "r.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "Traceback" not in err and "--out and --db" in err


@pytest.mark.slow
def test_ctrl_c_stops_keeps_and_writes_what_finished(tmp_path, mnist_raw):
    """SIGINT after the first epoch: exit 130, the run is 'stopped', its CSVs are written."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mnist_lab", "train", "--preset", "tiny-fc", "--epochs", "50",
                             "--train-limit", "20000", "--device", "cpu", "--db", str(db), "--out", str(out),
                             "--quiet"], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(db, timeout=5) as conn:
                if conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] >= 1:
                    break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    runs = pd.read_csv(out / "runs.csv")
    epochs = pd.read_csv(out / "epochs.csv")
    assert runs.iloc[0].status == "stopped" and runs.iloc[0].epochs_done == len(epochs) >= 1
    assert len(pd.read_csv(out / "iterations.csv")) >= len(epochs) * (20000 // 64 + 1)
