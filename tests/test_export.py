"""The exported run: its zip holds the weights and a standalone train_<run>.py that, in a fresh
subprocess with only torch and torchvision and a local torchvision-layout MNIST folder,
builds a network with the run's parameter count, reports exactly the run's test accuracy with
--evaluate, and trains printing one loss per iteration (the lab's own losses, same seed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from mnist_lab.cli.main import main
from mnist_lab.data.datasets import DataConfig, encode_idx, prepare_data
from mnist_lab.lab import inspection as ir
from mnist_lab.lab.experiments import run_single
from mnist_lab.lab.export import build_script, export_run, network_source, onnx_unavailable
from mnist_lab.nets.model import ModelConfig, build_model
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.runs.weights import SavedRun
from mnist_lab.training.loop import TrainConfig

RUFF = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory, mnist_raw) -> Path:
    """MNIST in torchvision's layout (ROOT/MNIST/raw/*-ubyte), from the offline copy: the first
    1,000 training images and the whole test set (torchvision reads whatever the files hold)."""
    root = tmp_path_factory.mktemp("torchvision")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in (("train-images-idx3-ubyte", mnist_raw.x_train[:1000]),
                        ("train-labels-idx1-ubyte", mnist_raw.y_train[:1000]),
                        ("t10k-images-idx3-ubyte", mnist_raw.x_test), ("t10k-labels-idx1-ubyte", mnist_raw.y_test)):
        (raw / name).write_bytes(encode_idx(array.numpy().astype("uint8")))
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_raw):
    """Two kept runs: Lab-5 on the plain loop, Tiny CNN on permuted pixels (the default engine)."""
    tmp = tmp_path_factory.mktemp("export")
    store = ResultStore(tmp / "results.sqlite")
    runs = {}
    for name, preset, permute, engine in (("lab5", "lab5", False, "plain"), ("perm", "tiny-cnn", True, "auto")):
        data_cfg = DataConfig(train_limit=256, test_limit=2000, permute_pixels=permute)
        result = run_single(PRESETS[preset].model, TrainConfig(epochs=1, engine=engine), data_cfg,
                            record=Recorder(store),
                            data=prepare_data(data_cfg, raw=mnist_raw))
        folder = tmp / name
        zipfile.ZipFile(export_run(ir.load_run(store, result.run_id), tmp / "zips")).extractall(folder)
        runs[name] = (result, folder)
    return runs


def _run(script: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mnist_lab is not on the path
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                          cwd=script.parent, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("name", ["lab5", "perm"])
def test_the_exported_script_reproduces_the_runs_test_accuracy(exported, mnist_dir, name):
    result, folder = exported[name]
    script = folder / f"train_{result.run_id}.py"
    names = {p.name for p in folder.iterdir()}
    assert names == {script.name, "weights.safetensors", "weights.pt", "run.json", "README.md"} \
        | ({"permutation.pt"} if name == "perm" else set()) \
        | ({"model.onnx"} if onnx_unavailable() is None else set())  # with the onnx extra (tests/test_onnx.py)
    source = script.read_text()
    compile(source, str(script), "exec")
    assert "import mnist_lab" not in source and "from mnist_lab" not in source
    if Path(RUFF).is_file():
        lint = subprocess.run([RUFF, "check", "--isolated", str(script)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
    pt = torch.load(folder / "weights.pt", weights_only=True)
    st = load_safetensors((folder / "weights.safetensors").read_bytes())
    assert set(pt) == set(st) == set(result.state_dict)
    assert all(torch.equal(pt[k], result.state_dict[k]) and torch.equal(st[k], pt[k]) for k in pt)
    out = _run(script, "--data-dir", str(mnist_dir), "--evaluate")
    assert f"{result.params:,} parameters" in out
    correct, n = map(int, re.search(r"test accuracy: [\d.]+% \((\d+)/(\d+)\)", out).groups())
    assert n == 2000 and correct / n == result.final_test_acc  # exactly the run's


def test_a_short_training_prints_one_loss_per_iteration(exported, mnist_dir):
    """The script's loop is the lab's: the same initial weights and batch order give the same
    losses as the run (to the printed 4 decimals, up to float rounding of the CPU layout)."""
    result, folder = exported["lab5"]
    out = _run(folder / f"train_{result.run_id}.py", "--data-dir", str(mnist_dir), "--train-limit", "256",
               "--save", str(folder / "again.pt"))
    lines = re.findall(r"epoch 1 iteration (\d+) loss ([\d.]+)", out)
    assert [int(i) for i, _ in lines] == [1, 2, 3, 4]  # 256 images / batch 64
    assert [float(loss) for _, loss in lines] == pytest.approx(result.losses, abs=2e-4)
    assert "epoch 1: test accuracy" in out and (folder / "again.pt").is_file()


def test_network_source_rebuilds_every_layer():
    """BatchNorm, dropout, same padding, hidden layers and the softmax mistake written out: the
    generated class has the lab network's state_dict keys and shapes and the same outputs."""
    cfg = ModelConfig(conv_channels=(4, 8), kernel_size=3, padding="same", batch_norm=True, dropout=0.25,
                      hidden=(16,), softmax_before_loss=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    run = ir.rebuild(SavedRun("r1", cfg, TrainConfig(), DataConfig(), model.state_dict(), None, "finished", 0.5))
    namespace: dict = {}
    exec(compile("import torch\nfrom torch import nn\n" + network_source(run), "net", "exec"), namespace)  # noqa: S102
    torch.manual_seed(0)
    net = namespace["Net"]()
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), model.state_dict().values()))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(net.eval()(x), model.eval()(x))
    assert "nn.Softmax(dim=1)" in network_source(run) and "nn.Dropout(0.25)" in network_source(run)


def test_export_refuses_what_it_cannot_write(exported, tmp_path, capsys):
    from torch import nn

    from mnist_lab.lab.export import layer_call

    result, folder = exported["lab5"]
    db = str(folder.parent / "results.sqlite")
    run = ir.load_run(ResultStore(db), result.run_id)
    svhn = ir.rebuild(SavedRun("r2", run.model_cfg, run.train_cfg, DataConfig(dataset="svhn"), run.saved.state_dict,
                               None, "finished", None))
    with pytest.raises(ValueError, match="no torchvision dataset for 'svhn'"):
        build_script(svhn)
    with pytest.raises(ValueError, match="cannot write a torch.nn.modules.activation.GELU"):
        layer_call(nn.GELU(), {})
    assert main(["export", result.run_id, "--out", str(tmp_path), "--db", db]) == 0
    assert (tmp_path / f"run_{result.run_id}.zip").is_file()
    assert main(["export", "../etc", "--out", str(tmp_path), "--db", db]) == 2
    assert "No run ../etc" in capsys.readouterr().err


def test_a_fashion_mnist_run_is_inspected_and_exported_with_its_class_names(tmp_path):
    """Another dataset through the same path: the spec's class names, an upload resized (not
    digit-centred), and the script's torchvision FashionMNIST giving exactly the run's accuracy."""
    import io

    from PIL import Image

    from mnist_lab.data.datasets import DataUnavailableError, load_raw

    data_cfg = DataConfig(dataset="fashion-mnist", train_limit=256, test_limit=500)
    try:
        raw = load_raw(data_cfg)
    except DataUnavailableError:
        pytest.skip("no offline Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist)")
    store = ResultStore(tmp_path / "results.sqlite")
    result = run_single(ModelConfig(conv_channels=(6, 6), hidden=(50,)), TrainConfig(epochs=1), data_cfg,
                        record=Recorder(store))
    run = ir.load_run(store, result.run_id)
    assert run.class_names[0] == "T-shirt/top" and len(run.class_names) == 10
    assert ir.confusion(run, *ir.evaluated_images(run)).accuracy == result.final_test_acc
    picture = io.BytesIO()
    Image.new("RGB", (90, 60), "white").save(picture, format="PNG")
    assert ir.prepare_upload(ir.decode_image(picture.getvalue()), run).shape == (28, 28)
    root = tmp_path / "torchvision"
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for name, array in (("train-images-idx3-ubyte", raw.x_train[:300]), ("train-labels-idx1-ubyte", raw.y_train[:300]),
                        ("t10k-images-idx3-ubyte", raw.x_test), ("t10k-labels-idx1-ubyte", raw.y_test)):
        (folder / name).write_bytes(encode_idx(array.numpy().astype("uint8")))
    zipfile.ZipFile(export_run(run, tmp_path / "zip")).extractall(tmp_path / "x")
    script = tmp_path / "x" / f"train_{result.run_id}.py"
    assert "datasets.FashionMNIST" in script.read_text()
    out = _run(script, "--data-dir", str(root), "--evaluate")
    correct, n = map(int, re.search(r"\((\d+)/(\d+)\)", out).groups())
    assert n == 500 and correct / n == result.final_test_acc


def test_a_residual_network_is_inspected_and_exported_with_its_block_source(exported, mnist_dir, tmp_path):
    """A block-list network (models.ResidualBlock): the weights file reads its block list back,
    the confusion matrix gives its accuracy, and the script carries the block's own source."""
    from dataclasses import replace

    from mnist_lab.nets.blocks.residual import ResidualBlock
    from mnist_lab.nets.model import summarize

    cfg = replace(PRESETS["resnet-small"].model, in_channels=1, image_size=28)
    store = ResultStore(tmp_path / "results.sqlite")
    result = run_single(cfg, TrainConfig(epochs=1, lr=0.05, momentum=0.9, engine="plain"),
                        DataConfig(train_limit=128, test_limit=2000), record=Recorder(store))
    run = ir.load_run(store, result.run_id)
    assert run.model_cfg == cfg
    x, y = ir.evaluated_images(run)
    assert ir.confusion(run, x, y).accuracy == result.final_test_acc
    rows = {r.name: r.output_shape for r in summarize(cfg)}
    maps = ir.feature_maps(run, run.inputs(x[:1]))
    assert all(m.shape == rows[m.name] for m in maps if m.name in rows) and any("." in m.name for m in maps)
    zipfile.ZipFile(export_run(run, tmp_path / "zip")).extractall(tmp_path / "x")
    script = tmp_path / "x" / f"train_{result.run_id}.py"
    assert "class ResidualBlock(nn.Module):" in script.read_text() and ResidualBlock.__doc__.split()[0] in \
        script.read_text()
    out = _run(script, "--data-dir", str(mnist_dir), "--evaluate")
    correct, n = map(int, re.search(r"\((\d+)/(\d+)\)", out).groups())
    assert f"{result.params:,} parameters" in out and correct / n == result.final_test_acc


HOSTILE = [
    'x"""\nimport os; os.system("touch {marker}")\n"""',  # the repro: out of the docstring
    "x'''\nopen({marker!r}, 'w')\n'''",
    '"; open("{marker}", "w"); x = "',
    "\\\nopen('{marker}', 'w')  # a backslash joining lines",
    "{{run_id}} {{0}} %s ${{HOME}}",  # format and shell placeholders stay text
    "\u2028\u2029\x00\x1b[31m red",  # line separators, a NUL and an escape code
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_a_weights_files_text_never_becomes_code_in_the_exported_script(exported, tmp_path, payload):
    """Everything outside that reaches the script (here a crafted weights file's status) is a
    Python literal: the script parses to the same statements, holds the text as a string, and
    running it never runs the text."""
    import ast
    import dataclasses

    result, folder = exported["lab5"]
    run = ir.load_run(ResultStore(folder.parent / "results.sqlite"), result.run_id)
    marker = tmp_path / "PWNED"
    status = payload.format(marker=str(marker))
    hostile = dataclasses.replace(run, saved=dataclasses.replace(run.saved, status=status))
    script, plain = build_script(hostile), build_script(run)

    def shape(source: str) -> list[str]:  # the statements, with every string constant blanked
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                node.value = ""
        return [ast.dump(statement) for statement in tree.body]

    assert shape(script) == shape(plain)
    strings = [n.value for n in ast.walk(ast.parse(script)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert f"{status}, test accuracy {100 * result.final_test_acc:.2f}%" in strings
    path = tmp_path / "train_hostile.py"
    path.write_text(script, encoding="utf-8")
    _run(path, "--help")
    assert not marker.exists()


@pytest.mark.parametrize("field, value, words", [
    ("test_acc", "0.5", "not a fraction"), ("test_acc", float("nan"), "not a fraction"),
    ("test_acc", 2.0, "not a fraction"),
    ("status", ["finished"], "not text"), ("run_id", 'r"""\nimport os', "is not a run id"),
])
def test_a_crafted_weights_file_is_refused_before_a_script_is_written(exported, field, value, words):
    import dataclasses

    result, folder = exported["lab5"]
    run = ir.load_run(ResultStore(folder.parent / "results.sqlite"), result.run_id)
    with pytest.raises(ValueError, match=words):
        build_script(dataclasses.replace(run, saved=dataclasses.replace(run.saved, **{field: value})))
