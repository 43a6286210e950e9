"""Issue 21 on the command line: every command's bad lines end with one `error:` line and exit 2,
no traceback, and leave nothing behind (no file under --out or the working folder, no row in
--db); a flag a run would ignore is refused by name; a line accepted with an adjustment says so on
stderr. In-process (`main`) but for a real process's one line and its double Ctrl-C."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mnist_lab import i18n, paths
from mnist_lab.cli.main import main
from mnist_lab.data import datasets
from mnist_lab.lab import export
from mnist_lab.lab.inspection import load_run
from mnist_lab.runs import weights
from mnist_lab.runs.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
HUGE = "99999999999999999999"  # beyond int64: must meet a bound, never an OverflowError
TRAINS = ("train", "sweep", "compare", "lesson")


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, mnist_raw) -> tuple[Path, str]:
    """A folder holding r.sqlite with one finished run and its weights (for inspect, predict, export)."""
    folder = tmp_path_factory.mktemp("kept")
    assert main(["train", "--preset", "tiny-fc", "--train-limit", "128", "--device", "cpu", "--quiet",
                 "--db", str(folder / "r.sqlite")]) == 0
    [run_id] = ResultStore(folder / "r.sqlite").runs()["run_id"]
    with sqlite3.connect(folder / "r.sqlite") as conn:  # everything in the file itself, none in its -wal
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return folder, run_id


@pytest.fixture
def place(tmp_path, kept_run, monkeypatch):
    """A working folder (the cwd) with a copy of the kept database, a file, an empty folder."""
    work = tmp_path / "work"
    shutil.copytree(kept_run[0], work)
    (work / "a-file").write_text("not a database, not a folder, not an image")
    (work / "empty").mkdir()
    monkeypatch.chdir(work)
    return work


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with its size and mtime (SQLite's -wal/-shm aside)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if not p.name.endswith(("-wal", "-shm", "-journal"))}


def rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("runs", "jobs", "epochs", "iterations", "workers")}


def run_line(line: str, work: Path, run_id: str) -> tuple[int, str, str]:
    argv = line.format(run=run_id, out=work / "out", file=work / "a-file", empty=work / "empty").split()
    if argv[0] in (*TRAINS, "worker", "report", "inspect", "predict", "export") and "--db" not in argv:
        argv += ["--db", str(work / "r.sqlite")]
    if argv[0] in TRAINS:
        argv += ["--quiet", "--device", "cpu"] if "--device" not in argv else ["--quiet"]
    return main(argv)


# (line, words the one error line holds). {run}: the kept run; {out}: a folder that does not exist
# yet; {file}: a plain file; {empty}: an empty folder. Train commands get --db, --quiet, --device cpu.
REFUSED = [
    ("presets --seed 1", ["unrecognized arguments: --seed 1"]),
    # flags the network would ignore (--batch-norm's refusal is the network's own)
    ("train --preset tiny-fc --kernel-size 3", ["Preset 'tiny-fc'", "--kernel-size does not apply"]),
    ("train --preset tiny-fc --padding same", ["Preset 'tiny-fc'", "--padding does not apply"]),
    ("train --preset tiny-fc --pool-before-relu", ["--pool-before-relu does not apply"]),
    ("train --kind fc --kernel-size 5", ["Preset 'lab5' with kind 'fc'", "--kernel-size does not apply"]),
    ("train --preset tiny-fc --batch-norm", ["no conv blocks", "batch_norm = True"]),
    ("train --preset vgg16-cifar --dataset cifar10 --padding same", ["list of blocks", "--padding"]),
    # settings the run would ignore
    ("train --permutation-seed 3", ["--permutation-seed", "--permute-pixels, which is not given"]),
    ("train --optimizer adam --momentum 0.9", ["--momentum 0.9 does nothing with the Adam optimiser"]),
    ("train --preset lab5 --optimizer adam --momentum 0", ["--momentum 0.0 does nothing"]),
    ("sweep --seed 3", ["sweep trains each network with seeds 0 to 2 (--seeds 3), so --seed does not apply"]),
    ("sweep --seeds 2 --seed 0", ["seeds 0 to 1 (--seeds 2)"]),
    ("sweep --permutation-seed 7", ["--permutation-seed"]),
    ("sweep --optimizer adam --momentum 0.5", ["Adam"]),
    ("compare --seed 1", ["compare trains each network with seeds 0 to 2"]),
    ("compare --permute-pixels", ["--permute-pixels does not apply"]),
    # every numeric flag meets a bound
    (f"train --train-limit {HUGE}", ["MNIST has 60,000 images"]),
    ("train --train-limit 10000000", ["choose at most 60,000"]),
    (f"train --epochs {HUGE}", ["Epochs must be 1 to 1000"]),
    (f"train --batch-size {HUGE}", ["Batch size"]),
    ("train --lr 1e999", ["Learning rate must be a finite number"]),
    ("train --momentum=-inf", ["Momentum must be a finite number"]),
    ("train --dropout inf", ["Dropout must be a finite number"]),
    (f"train --seed {HUGE}", ["Seed must be between 0 and 2**63 - 1"]),
    (f"train --kernel-size {HUGE}", ["Kernel size must be 1 to 9"]),
    (f"train --conv-channels {HUGE}", ["channels"]),
    (f"train --hidden {HUGE}", ["Hidden layer 1"]),
    (f"train --permute-pixels --permutation-seed {HUGE}", ["Permutation seed must be between"]),
    (f"sweep --seeds {HUGE}", ["at most 100"]),
    (f"sweep --conv-layers {HUGE}", ["Every conv-layer count must be 1 to 4"]),
    (f"sweep --base-channels {HUGE}", ["The first block's channels must be 1 to 512"]),
    (f"sweep --hidden-units {HUGE}", ["Every hidden width must be 0 to 4096"]),
    ("sweep --kernel-sizes nan", ["--kernel-sizes", "'nan'"]),
    (f"compare --seeds {HUGE}", ["at most 100"]),
    ("compare --epochs 0", ["Epochs must be 1 to 1000"]),
    (f"lesson softmax --test-limit {HUGE}", ["MNIST has 10,000 images"]),
    (f"lesson softmax --train-limit {HUGE}", ["MNIST has 60,000 images"]),
    (f"lesson softmax --seeds {HUGE}", ["1 to 100 seeds"]),
    (f"lesson softmax --epochs {HUGE}", ["A lesson trains 1 to 1000 epochs"]),
    ("lesson softmax --epochs 0", ["epochs must be at least 1"]),
    (f"worker --slot {HUGE}", ["--slot must be 0 to 1023"]),
    ("worker --slot -1", ["--slot must be 0 to 1023"]),
    ("worker --max-job-seconds nan", ["--max-job-seconds must be a number of seconds above 0"]),
    ("worker --idle-exit -5", ["--idle-exit must be a number of seconds above 0"]),
    (f"worker --nice {HUGE}", ["--nice must be 0 to 19"]),
    ("worker --max-jobs 0", ["--max-jobs must be 1 to 1000000; got 0"]),
    (f"worker --parent-pid {HUGE}", ["--parent-pid must be 1 to 4194304"]),
    ("worker --parent-pid -5", ["--parent-pid must be 1 to"]),
    # the executor: a Ray address the local executor would ignore, a Ray worker's device (the node's)
    ("train --ray-address 10.0.0.1:6379", ["--ray-address '10.0.0.1:6379' is only for the Ray executor"]),
    ("lesson softmax --executor local --ray-address h:1", ["--ray-address 'h:1' is only for the Ray executor"]),
    ("worker --ray-address 10.0.0.1:6379", ["is only for the Ray executor"]),
    ("sweep --executor bogus", ["invalid choice: 'bogus'"]),
    ("worker --executor ray --device cpu", ["a Ray worker's runs train on the device their node picks"]),
    # choices, names and paths
    ("train --device bogus", ["Unknown device 'bogus'"]),
    ("train --optimizer rmsprop", ["invalid choice: 'rmsprop'"]),
    ("lesson softmax --seed 1", ["unrecognized arguments: --seed 1"]),  # never an abbreviation of --seeds
    ("train --train-lim 5", ["unrecognized arguments: --train-lim 5"]),
    ("lesson", ["Name a lesson"]),
    ("lesson nope", ["Unknown lesson 'nope'"]),
    ("lesson shuffle --dataset cifar10", ["The lesson does not run on 'cifar10'"]),
    ("lesson softmax --device bogus", ["Unknown device 'bogus'"]),
    ("worker --device bogus", ["Unknown device 'bogus'"]),
    ("report", ["the following arguments are required: --out"]),
    ("inspect ../etc --out {out}", ["No run ../etc"]),
    ("inspect no-such-run --out {out}", ["No run no-such-run"]),
    ("inspect {run} --out {file}", ["is a file, not a directory"]),
    ("inspect {run} --out /proc/mnist-lab-out", ["cannot be written"]),
    ("predict no-such-run {file}", ["No run no-such-run"]),
    ("predict {run} {empty}/none.png", ["is not a file"]),
    ("export ../../x --out {out}", ["No run ../../x"]),
    ("export {run} --out {file}", ["is a file, not a directory"]),
    ("export {run} --db /proc/version --out {out}", ["/proc/version"]),
    # outputs and data: refused whole, the --out folder made for the check removed again
    ("train --out {file}", ["is a file, not a directory"]),
    ("train --out {out}/deeper --db {file}", ["cannot be used"]),
    ("train --out {out} --data-dir {empty}", ["cannot be used", "has no train-images"]),
    ("train --dataset cifar10 --preset cifar-course --data-dir {empty} --out {out}", ["CIFAR-10 directory"]),
    ("sweep --conv-layers 1 --kernel-sizes 3 --data-dir {empty} --out {out}", ["cannot be used"]),
    ("compare --data-dir {empty} --out {out}", ["cannot be used"]),
    ("lesson softmax --out {file}", ["is a file, not a directory"]),
]


@pytest.mark.parametrize("line, words", REFUSED, ids=[line[:70] for line, _ in REFUSED])
def test_a_refused_line_is_one_error_line_exit_2_and_leaves_nothing(line, words, place, kept_run, capsys):
    counts, before = rows(place / "r.sqlite"), snapshot(place)
    code = run_line(line, place, kept_run[1])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err + out, err
    assert "note:" not in err  # a refused line says nothing of adjustments it will not make
    for word in words:
        assert word.format(out=place / "out", file=place / "a-file", empty=place / "empty") in err, err
    assert snapshot(place) == before  # no file, no folder (--out), nothing rewritten
    assert rows(place / "r.sqlite") == counts  # no job row, no run row
    assert "iterations on" not in out


def test_without_cifar_data_a_train_line_leaves_no_job_row(place, kept_run, tmp_cache, monkeypatch, capsys):
    """No --data-dir, nothing cached or downloadable: the job is refused before its row is written."""
    def offline(root, spec):
        raise ConnectionError("no internet in this test")

    monkeypatch.setattr(datasets, "load_cifar10_from_torchvision", offline)
    counts, before = rows(place / "r.sqlite"), snapshot(place)
    code = run_line("train --dataset cifar10 --preset cifar-course --out {out}", place, kept_run[1])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: CIFAR-10 could not be loaded") and "Traceback" not in err
    assert snapshot(place) == before and rows(place / "r.sqlite") == counts
    store = ResultStore(place / "r.sqlite")
    assert store.runs()["run_id"].tolist() == [kept_run[1]]  # the kept run only: no new, no failed run
    with sqlite3.connect(place / "r.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'failed'").fetchone()[0] == 0


def test_a_repeated_sweep_value_is_trained_once_and_said(place, kept_run, capsys):
    code = run_line("sweep --conv-layers 1 1 --kernel-sizes 3 3 --hidden-units 0 --seeds 2 --base-channels 4 "
                    "--epochs 1 --train-limit 128 --out {out}", place, kept_run[1])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "note: --conv-layers lists a value more than once: training 1 once each." in err
    assert "note: --kernel-sizes lists a value more than once: training 3 once each." in err
    assert "--hidden-units" not in err  # given once: nothing to say
    sweep = (place / "out" / "sweep.csv").read_text().splitlines()
    assert len(sweep) == 1 + 2  # one cell × 2 seeds, not four identical runs counted as n=4
    summary = next(line for line in out.splitlines() if line.split()[:3] == ["1", "3", "0"])
    assert summary.split()[3] == "2"  # n counts distinct seeds


def test_sort_by_label_trains_without_shuffling_and_says_so(place, kept_run, capsys):
    code = run_line("train --preset tiny-fc --sort-by-label --train-limit 128", place, kept_run[1])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.strip() == ("note: --sort-by-label trains on the images in label order, which shuffling would undo: "
                           "training with --no-shuffle.")
    newest = ResultStore(place / "r.sqlite").runs().sort_values("started_at").iloc[-1]
    assert newest["sort_by_label"] and not newest["shuffle"]


def test_an_adjustment_is_said_in_the_readers_language(place, kept_run, capsys):
    code = run_line("train --preset tiny-fc --sort-by-label --no-shuffle --train-limit 128 --lang zh", place,
                    kept_run[1])
    assert code == 0 and capsys.readouterr().err == ""  # --no-shuffle given: nothing adjusted
    code = run_line("train --preset tiny-fc --sort-by-label --train-limit 128 --lang zh", place, kept_run[1])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.strip() == "注意：--sort-by-label 按标签顺序训练图像，而打乱顺序会抵消这一点：按 --no-shuffle 训练。"
    newest = ResultStore(place / "r.sqlite").runs().sort_values("started_at").iloc[-1]
    assert newest["sort_by_label"] and not newest["shuffle"]  # adjusted as said
    code = run_line("train --preset tiny-fc --kernel-size 3 --lang zh", place, kept_run[1])
    err = capsys.readouterr().err
    assert code == 2 and "预设 'tiny-fc'" in err and "--kernel-size 对它不适用" in err


# ------------------------------------------------------------------ inspect, export and report leave nothing

def _unavailable(cfg):
    raise datasets.DataUnavailableError("{title} could not be loaded in this test.", title="MNIST")


@pytest.mark.parametrize("line", ["inspect {run} --out {out}/a/b", "export {run} --out {out}/a/b"])
def test_a_refusal_after_the_out_check_removes_the_folders_it_made(line, place, kept_run, monkeypatch, capsys):
    """The data unavailable (inspect) or the run refused by the exporter (export): found after --out
    was checked (and made), so the folders made for it are removed again."""
    monkeypatch.setattr(datasets, "load_raw", _unavailable)
    monkeypatch.setattr(export, "TORCHVISION_DATASETS", {})
    before = snapshot(place)
    assert run_line(line, place, kept_run[1]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert ("could not be loaded in this test" if line.startswith("inspect") else "knows no torchvision") in err
    assert snapshot(place) == before and not (place / "out").exists()


@pytest.mark.parametrize("argv", [["inspect", "no-such-run"], ["export", "no-such-run"], ["report"],
                                  ["predict", "no-such-run", "x.png"]])
def test_without_db_a_refused_line_creates_no_default_database(argv, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(cache))
    monkeypatch.delenv(paths.DB_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "out")] if argv[0] != "predict" else []
    assert main([*argv, *out]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: No results database at {cache / 'results.sqlite'}: train something first, or " \
                          "pass the right --db.", err
    assert not list(tmp_path.iterdir())  # no database, no folder for it, no --out


def test_without_db_the_default_database_is_used_when_it_exists(place, kept_run, monkeypatch, capsys):
    monkeypatch.setenv(paths.DB_ENV, str(place / "r.sqlite"))
    assert main(["export", kept_run[1], "--out", str(place / "out")]) == 0
    assert (place / "out" / f"run_{kept_run[1]}.zip").is_file(), capsys.readouterr().err


# ------------------------------------------------------------- messages in the reader's language

NO_WEIGHTS_ZH = ("运行 {run_id} 没有保存的权重（在保存权重之前训练的运行，以及失败或中断的运行，都没有权重）："
                 "请重新训练它再查看。")

def test_the_inspect_and_export_refusals_are_said_in_chinese(place, kept_run, monkeypatch, capsys):
    """The refusals that were English f-strings: no weights, not a run id, the exporter's checks."""
    store = ResultStore(place / "r.sqlite")
    run = load_run(store, kept_run[1])
    refusals = []
    for call in (lambda: weights.weights_path(place / "r.sqlite", "../x"),
                 lambda: weights.load_weights(place / "r.sqlite", "no-such-run"),
                 lambda: export.build_script(replace(run, saved=replace(run.saved, run_id="a b"))),
                 lambda: export.build_script(replace(run, saved=replace(run.saved, test_acc=1.5))),
                 lambda: export.build_script(replace(run, saved=replace(run.saved, status=["finished"]))),
                 lambda: export.build_script(replace(run, saved=replace(run.saved, data_cfg=replace(run.data_cfg,
                                                                                                   dataset="nope"))))):
        with pytest.raises(ValueError) as info:
            call()
        refusals.append(info.value)
    said = [i18n.render(exc, "zh_CN") for exc in refusals]
    assert said == ["'../x' 不是运行编号：请从“运行记录”页面或 `runs.csv` 中复制一个。",
                    NO_WEIGHTS_ZH.format(run_id="no-such-run"),
                    "'a b' 不是运行编号：导出器只为本实验室的运行生成脚本。",
                    "该运行保存的测试准确率 1.5 不是 [0, 1] 之间的比例：它的权重文件不是本实验室写的，或已损坏。",
                    "该运行保存的状态 ['finished'] 不是文本：它的权重文件不是本实验室写的，或已损坏。",
                    "导出器不知道与 'nope' 对应的 torchvision 数据集；它只为 CIFAR10, FashionMNIST, MNIST 生成脚本。"]
    assert isinstance(refusals[1], FileNotFoundError)  # what load_weights' callers catch
    # on the command line: a kept run whose weights file is gone, in one Chinese line
    weights.weights_path(place / "r.sqlite", kept_run[1]).unlink()
    assert run_line("inspect {run} --out {out} --lang zh", place, kept_run[1]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "错误：" + NO_WEIGHTS_ZH.format(run_id=kept_run[1]) and not (place / "out").exists()


def test_an_unreadable_weights_file_is_named_as_such(place, kept_run, monkeypatch, capsys):
    def denied(db_path, run_id):
        raise PermissionError(13, "Permission denied", f"{db_path}.weights/{run_id}.safetensors")

    monkeypatch.setattr(weights, "load_weights", denied)
    assert run_line("export {run} --out {out}", place, kept_run[1]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: The weights file of run {kept_run[1]} cannot be read (Permission denied)"), err
    assert "could not be written" not in err and not (place / "out").exists()


def test_the_inspect_page_shows_an_os_error_without_its_path(place, kept_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    secret = "/srv/lab-secret-folder"

    def denied(db_path, run_id):
        raise PermissionError(13, "Permission denied", f"{secret}/{run_id}.safetensors")

    monkeypatch.setattr(weights, "load_weights", denied)
    monkeypatch.setenv(paths.DB_ENV, str(place / "r.sqlite"))
    at = AppTest.from_file(str(ROOT / "app_pages" / "inspect.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    [error] = at.error
    shown = error.value.replace("\\", "")  # markdown-escaped
    assert "could not be read (Permission denied)" in shown and secret not in shown and "safetensors" not in shown


def test_a_real_process_refuses_a_huge_number_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mnist_lab", "worker", "--parent-pid", HUGE, "--db",
                           str(tmp_path / "r.sqlite")], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: --parent-pid must be 1 to") and not list(tmp_path.iterdir())


# A real process that presses Ctrl-C twice at its first iterations (SIGINT to itself from the
# progress callback, so that the two signals are neither merged nor late, however busy the machine).
DOUBLE_CTRL_C = """
import os, signal, sys
from mnist_lab.cli import common
from mnist_lab.training.events import Iterations

show = common.ProgressBar.__call__
def call(self, event):
    if isinstance(event, Iterations) and not os.environ.get("PRESSED"):
        os.environ["PRESSED"] = "1"
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: stop after this iteration
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: abort at once
    show(self, event)
common.ProgressBar.__call__ = call
from mnist_lab.cli.main import main
code = main(sys.argv[1:])
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.exit(code)
"""


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_the_run_and_says_so(tmp_path, mnist_raw):
    """SIGINT twice: exit 130, the run and its job 'interrupted' with 'aborted with a second Ctrl-C'
    (it was 'failed' with no reason, the job's error 'KeyboardInterrupt'), no traceback."""
    db = tmp_path / "r.sqlite"
    proc = subprocess.run([sys.executable, "-c", DOUBLE_CTRL_C, "train", "--preset", "tiny-fc", "--epochs", "5",
                           "--train-limit", "2000", "--device", "cpu", "--db", str(db), "--quiet"], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    err = proc.stderr
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "stopping after this iteration" in err and "aborted: finished iterations and epochs are kept" in err
    [run] = ResultStore(db).runs().itertuples()
    assert run.status == "interrupted" and run.stop_reason == "aborted with a second Ctrl-C"
    with sqlite3.connect(db) as conn:
        status, reason, error = conn.execute("SELECT status, stop_reason, error FROM jobs").fetchone()
    assert status == "interrupted" and "aborted with a second Ctrl-C" in reason and not error
