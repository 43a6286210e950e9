"""The command line: same CSV tables as the app, one clear line and exit 2 on bad input."""
from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from mnist_lab.cli.main import main
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.i18n import render_stored
from mnist_lab.runs.store import ResultStore


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
    (["train", "--preset", "vgg16-cifar", "--kernel-size", "5"], ["list of blocks", "--kernel-size"]),
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
    assert 0 < runs.iloc[0].final_test_acc <= 1 and epochs["test_acc"].between(0, 1).all()  # fractions in the CSVs
    assert epochs.iloc[-1].test_acc == pytest.approx(runs.iloc[0].final_test_acc)
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
    assert err.count("error: ") == 2 and "Traceback" not in err and "--out" in err and "--db" in err


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


# ------------------------------------------------------------------------- every bad command line

BIG = "1180591620717411303424"  # 2**70
BAD_COMMAND_LINES = [  # (argv, words the one error line must hold); {file}, {empty}: a file, an empty folder
    ([], ["required"]),
    (["fly"], ["invalid choice"]),
    (["train", "--no-such-flag"], ["unrecognized arguments"]),
    (["train", "--epochs"], ["expected one argument"]),
    (["train", "--epochs", "1.5"], ["--epochs", "'1.5'"]),
    (["train", "--epochs", "0"], ["Epochs must be 1 to 1000; got 0"]),
    (["train", "--epochs", "1001"], ["Epochs must be 1 to 1000"]),
    (["train", "--batch-size", "64.5"], ["--batch-size", "'64.5'"]),
    (["train", "--batch-size", "-3"], ["Batch size must be at least 1; got -3"]),
    (["train", "--batch-size", "nan"], ["--batch-size"]),
    (["train", "--lr", "nan"], ["Learning rate must be a finite number; got nan"]),
    (["train", "--lr", "inf"], ["Learning rate must be a finite number; got inf"]),
    (["train", "--lr", "0"], ["Learning rate must be above 0"]),
    (["train", "--lr", "11"], ["at most 10; got 11.0"]),
    (["train", "--lr", "fast"], ["--lr", "'fast'"]),
    (["train", "--momentum", "1"], ["Momentum must be in [0, 1); got 1.0"]),
    (["train", "--momentum", "-0.1"], ["Momentum"]),
    (["train", "--momentum", "nan"], ["Momentum must be a finite number"]),
    (["train", "--optimizer", "rmsprop"], ["invalid choice: 'rmsprop'"]),
    (["train", "--seed", "-1"], ["Seed must be between 0 and 2**63 - 1; got -1"]),
    (["train", "--seed", str(2**63)], ["Seed must be between 0 and 2**63 - 1"]),
    (["train", "--seed", "1.5"], ["--seed", "'1.5'"]),
    (["train", "--device", "tpu"], ["Unknown device 'tpu'"]),
    (["train", "--device", "mps"], ["Device 'mps' is not supported"]),
    (["train", "--device", "cpu:1"], ["Device 'cpu:1'", "the CPU is one device"]),
    (["train", "--device", "cuda:99"], ["Device 'cuda:99'"]),
    (["train", "--device", ""], ["Unknown device ''"]),
    (["train", "--engine", "turbo"], ["invalid choice: 'turbo'"]),
    (["train", "--train-limit", "0"], ["train_limit must be at least 1 image (got 0)"]),
    (["train", "--train-limit", "-5"], ["train_limit must be at least 1 image (got -5)"]),
    (["train", "--train-limit", "10"], ["Batch size 64 is larger than the 10 training images"]),
    (["train", "--train-limit", "1.5"], ["--train-limit", "'1.5'"]),
    (["train", "--normalize", "zscore"], ["invalid choice: 'zscore'"]),
    (["train", "--permutation-seed", BIG], ["Permutation seed must be between 0 and 2**63 - 1", BIG]),
    (["train", "--permutation-seed", "-5"], ["Permutation seed must be between 0 and 2**63 - 1; got -5"]),
    (["train", "--permutation-seed", "1e3"], ["--permutation-seed", "'1e3'"]),
    (["train", "--data-dir", "/nonexistent/mnist"], ["/nonexistent/mnist", "does not exist"]),
    (["train", "--data-dir", "{file}"], ["is a file, not a directory"]),
    (["train", "--data-dir", "{empty}", "--device", "cpu"], ["{empty}", "cannot be used", "has no train-images"]),
    (["train", "--out", "{file}"], ["--out {file} is a file, not a directory"]),
    (["train", "--out", "{file}/sub"], ["--out {file}/sub cannot be written"]),
    (["train", "--out", "/proc/mnist-lab-out"], ["--out /proc/mnist-lab-out cannot be written"]),
    (["train", "--db", "{empty}"], ["{empty} is a directory, not a file"]),
    (["train", "--db", "{file}/r.sqlite"], ["{file}/r.sqlite cannot be created"]),
    (["train", "--db", "{file}"], ["{file}", "cannot be used", "mv {file} {file}.broken"]),
    (["train", "--preset", "lenet"], ["invalid choice: 'lenet'"]),
    (["train", "--kind", "rnn"], ["invalid choice: 'rnn'"]),
    (["train", "--kind", "fc", "--conv-channels", "10", "20"], ["no conv blocks"]),
    (["train", "--kind", "fc", "--batch-norm"], ["no conv blocks", "batch_norm = True"]),
    (["train", "--conv-channels", "0"], ["Conv block 1 has 0 channels; choose 1 to 512"]),
    (["train", "--conv-channels", "600"], ["Conv block 1 has 600 channels"]),
    (["train", "--conv-channels", "8", "8", "8", "8", "8"], ["A CNN has 1 to 4 conv blocks; got 5"]),
    (["train", "--conv-channels", "8", "8", "8", "8", "--kernel-size", "7"], ["Conv block", "does not fit", "same"]),
    (["train", "--conv-channels", "8.5"], ["--conv-channels", "'8.5'"]),
    (["train", "--kernel-size", "0"], ["Kernel size must be 1 to 9; got 0"]),
    (["train", "--kernel-size", "10"], ["Kernel size must be 1 to 9; got 10"]),
    (["train", "--kernel-size", "4.5"], ["--kernel-size", "'4.5'"]),
    (["train", "--padding", "full"], ["invalid choice: 'full'"]),
    (["train", "--dropout", "1.0"], ["Dropout is a probability in [0, 1); got 1.0"]),
    (["train", "--dropout", "-0.5"], ["Dropout is a probability in [0, 1); got -0.5"]),
    (["train", "--dropout", "nan"], ["Dropout must be a finite number; got nan"]),
    (["train", "--hidden", "0"], ["Hidden layer 1 has 0 units; choose 1 to 4096"]),
    (["train", "--hidden", "5000"], ["Hidden layer 1 has 5000 units"]),
    (["train", "--hidden", "50", "50", "50"], ["A CNN here has 0 to 2 hidden FC layers; got 3"]),
    (["train", "--kind", "fc", "--hidden", *["8"] * 9], ["0 to 8 hidden layers; got 9"]),
    (["train", "--kind", "fc", "--hidden", *["4096"] * 4], ["parameters, more than the 50,000,000"]),
    (["train", "--kind", "fc", "--hidden", *["4096"] * 300], ["0 to 8 hidden layers; got 300"]),
    (["train", "--hidden", "x"], ["--hidden", "'x'"]),
    (["sweep", "--conv-layers", "5"], ["Every conv-layer count must be 1 to 4", "(5,)"]),
    (["sweep", "--kernel-sizes", "0"], ["Every kernel size must be 1 to 9"]),
    (["sweep", "--conv-layers", "4", "--kernel-sizes", "9", "--sweep-padding", "valid"], ["No cell"]),
    (["sweep", "--seeds", "0"], ["at least 1 seed"]),
    (["sweep", "--seeds", "1000"], ["at most 100"]),
    (["sweep", "--base-channels", "0"], ["The first block's channels must be 1 to 512; got 0"]),
    (["sweep", "--hidden-units", "-1"], ["Every hidden width must be 0 to 4096"]),
    (["sweep", "--sweep-padding", "full"], ["invalid choice: 'full'"]),
    (["sweep", "--permutation-seed", BIG], ["Permutation seed", BIG]),
    (["compare", "--seeds", "0"], ["at least 1 seed"]),
    (["compare", "--cnn-preset", "tiny-fc"], ["invalid choice: 'tiny-fc'"]),
    (["compare", "--permutation-seed", "-5"], ["Permutation seed must be between 0 and 2**63 - 1; got -5"]),
    (["compare", "--permutation-seed", BIG], ["Permutation seed", BIG]),
    (["compare", "--lr", "nan"], ["Learning rate must be a finite number"]),
    (["compare", "--out", "{file}"], ["is a file, not a directory"]),
]


@pytest.mark.parametrize("argv, words", BAD_COMMAND_LINES, ids=[" ".join(a)[:60] or "(nothing)"
                                                                for a, _ in BAD_COMMAND_LINES])
def test_every_bad_command_line_is_one_error_line_and_exit_2_before_training(argv, words, tmp_path, capsys):
    a_file, empty = tmp_path / "a-file", tmp_path / "empty"
    a_file.write_text("not a database, not a folder")
    empty.mkdir()
    fill = lambda text: text.format(file=a_file, empty=empty)  # noqa: E731
    db = tmp_path / "r.sqlite"
    argv = [fill(a) for a in argv]
    # the table's own --db (if any) comes last, so it wins over this default
    full = [*argv[:1], "--db", str(db), "--quiet", *argv[1:]] if argv[:1] in (["train"], ["sweep"], ["compare"]) \
        else argv
    assert main(full) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err, err
    for word in words:
        assert fill(word) in err
    assert "iterations on" not in out  # nothing trained
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0


def test_a_damaged_database_stops_the_cli_before_training(broken_db, tmp_path, capsys):
    code = main(["train", "--preset", "tiny-fc", "--train-limit", "64", "--device", "cpu", "--db", str(broken_db),
                 "--out", str(tmp_path / "out"), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("error:") == 1 and len(err.strip().splitlines()) == 1
    assert str(broken_db) in err and f"mv {broken_db} {broken_db}.broken" in err
    # SQLite's words for the damaged page (which page the fixture hits moves with the tables): both SQLITE_CORRUPT
    assert "malformed" in err or "error code 11" in err
    assert "iterations on" not in out


def test_a_diverging_run_ends_with_exit_3_and_says_where(tmp_path, capsys, mnist_raw):
    """The issue's repro: a wide FC net at lr 10 used to end 'finished' with exit 0."""
    out = tmp_path / "out"
    code = main(["train", "--kind", "fc", "--hidden", "256", "256", "--lr", "10", "--momentum", "0.9",
                 "--batch-size", "16", "--train-limit", "2000", "--device", "cpu", "--db", str(tmp_path / "r.sqlite"),
                 "--out", str(out), "--quiet"])
    printed, err = capsys.readouterr()
    assert code == 3
    runs, iters = pd.read_csv(out / "runs.csv"), pd.read_csv(out / "iterations.csv")
    [row] = runs.itertuples()
    assert row.status == "diverged" and row.diverged_at >= 1 and len(iters) == row.diverged_at - 1
    assert iters["loss"].notna().all() and row.epochs_done == 0  # stopped at once, in the first epoch
    assert f"at iteration {row.diverged_at}" in row.message and "lower the learning rate" in row.message.lower()
    assert f"diverged: run {row.run_id}: {row.message}" in err and ": diverged," in printed


def test_a_diverged_runs_message_is_stored_as_data_and_worded_in_chinese(tmp_path, capsys, mnist_raw):
    db = tmp_path / "r.sqlite"
    code = main(["train", "--kind", "fc", "--hidden", "256", "256", "--lr", "10", "--momentum", "0.9",
                 "--batch-size", "16", "--train-limit", "2000", "--device", "cpu", "--db", str(db), "--quiet",
                 "--lang", "zh"])
    err = capsys.readouterr().err
    assert code == 3
    row = ResultStore(db).visible_runs(None).iloc[0]
    assert row["message"].startswith("The loss became") and "training diverged" in row["message"]  # runs.csv: English
    assert render_stored(row["message_msg"], "en") == row["message"]
    chinese = render_stored(row["message_msg"], "zh_CN")
    assert f"第 {row['diverged_at']} 次迭代时损失值变为" in chinese and "训练发散了" in chinese
    assert f"已发散：运行 {row['run_id']}：{chinese}" in err


def test_a_database_that_fails_while_training_stops_with_one_line(tmp_path, capsys, monkeypatch, mnist_raw):
    from mnist_lab.runs.store import ResultStore, explained

    @explained  # as every method that touches the file
    def disk_full(self, *args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ResultStore, "add_iterations", disk_full)
    db = tmp_path / "r.sqlite"
    code = main(["train", "--preset", "tiny-fc", "--train-limit", "256", "--device", "cpu", "--db", str(db), "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("error:") == 1 and len(err.strip().splitlines()) == 1
    # a full disk is named as such: the database is healthy, never to be moved aside (issue 21)
    assert f"{db} cannot be written: the disk is full (database or disk is full)" in err and ".broken" not in err
    assert ResultStore(db).runs()["status"].item() == "failed"  # the run's row says it did not finish


@pytest.mark.parametrize("line, words", [
    ("train --train-limit 99999999999999999999", "MNIST has 60,000 images in that split"),
    ("train --train-limit 10000000", "choose at most 60,000"),  # never quietly cut to the whole set
    ("lesson softmax --test-limit 99999999999999999999", "MNIST has 10,000 images in that split"),
    ("lesson softmax --epochs 99999999999999999999", "A lesson trains 1 to 1000 epochs"),
    ("worker --slot 99999999999999999999999", "--slot must be 0 to 1023"),
    ("worker --max-job-seconds nan", "--max-job-seconds must be a number of seconds above 0"),
    ("worker --max-job-seconds -1", "--max-job-seconds must be a number of seconds above 0"),
    ("worker --idle-exit -5", "--idle-exit must be a number of seconds above 0"),
    ("worker --idle-exit inf", "--idle-exit must be a number of seconds above 0"),
])
def test_huge_and_non_finite_numbers_are_refused_in_one_line_leaving_nothing(tmp_path, capsys, line, words):
    db = tmp_path / "r.sqlite"
    code = main([*line.split(), "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and words in err and "Traceback" not in err
    assert not db.exists()  # refused before the database is opened


def test_a_limit_beyond_the_dataset_is_a_config_error_in_the_api():
    for config in (DataConfig(train_limit=2**70), DataConfig(test_limit=10_001),
                   DataConfig("cifar10", train_limit=50_001)):
        with pytest.raises(ConfigError) as caught:
            config.validate()
        assert caught.value.field in ("train_limit", "test_limit")
    DataConfig("cifar10", train_limit=50_000, test_limit=10_000).validate()


@pytest.mark.parametrize("line", ["inspect ../etc --out {out}", "export no-such-run --out {out}",
                                  "worker --device bogus", "worker --device cuda:7"])
def test_a_refused_line_leaves_no_folder_and_no_database(tmp_path, capsys, line):
    db, out = tmp_path / "r.sqlite", tmp_path / "out"
    if line.startswith(("inspect", "export")):
        ResultStore(db).close()  # a database exists; the run does not
    before = db.exists()
    code = main([*line.format(out=out).split(), "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1
    assert not out.exists() and db.exists() == before
