"""model.onnx in the export: for each kind of network (the Lab-5 CNN, a plain FC net, residual blocks
with identity and projection shortcuts, BatchNorm conv blocks, an FC net on permuted pixels), trained
one epoch on a small subset, onnxruntime agrees with PyTorch on the whole 10,000-image MNIST test set
(the same class for every image whose PyTorch top two logits are not within 1e-5; logits within
1e-4); the metadata says what the input must be; a permuted run's model needs the permuted input.
Without the onnx extra the export is whole but for model.onnx and says how to get it, in one line."""
from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

PAGE = Path(__file__).resolve().parents[1] / "app_pages" / "inspect.py"

pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install 'mnist-lab[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install 'mnist-lab[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'mnist-lab[onnx]'")
import onnx  # noqa: E402

from mnist_lab.cli.main import main  # noqa: E402
from mnist_lab.data.datasets import DataConfig, prepare_data  # noqa: E402
from mnist_lab.lab import export as ex  # noqa: E402
from mnist_lab.lab import inspection as ir  # noqa: E402
from mnist_lab.lab.experiments import run_single  # noqa: E402
from mnist_lab.nets.blocks.conv import ConvStage  # noqa: E402
from mnist_lab.nets.blocks.residual import Residual  # noqa: E402
from mnist_lab.nets.model import ModelConfig  # noqa: E402
from mnist_lab.nets.presets import PRESETS, cnn_config, fc_config  # noqa: E402
from mnist_lab.runs.recorder import Recorder  # noqa: E402
from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.training.loop import TrainConfig  # noqa: E402

RESIDUAL = ModelConfig(conv_channels=(), blocks=(  # 1x28x28 -> 8x14x14 -> 8x14x14 -> 16x7x7 -> flatten -> 10
    ConvStage((8,), 3, "same", batch_norm=True),
    Residual(8), Residual(16, stride=2)))  # an identity shortcut, then a strided 1x1 projection
NETS = {  # name: (network, permuted pixels, train images)
    "lab5": (PRESETS["lab5"].model, False, 512),
    "tiny-fc": (PRESETS["tiny-fc"].model, False, 2000),
    "residual": (RESIDUAL, False, 1000),
    "batch-norm": (cnn_config(2, 3, 8, batch_norm=True), False, 512),
    "permuted-fc": (fc_config((32,)), True, 2000),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mnist_raw):
    """Each network trained one epoch (Adam, so a tiny subset learns something) and kept:
    name -> (store, LoadedRun, model.onnx's bytes from the exported zip)."""
    tmp = tmp_path_factory.mktemp("onnx")
    store = ResultStore(tmp / "results.sqlite")
    out = {}
    for name, (model_cfg, permute, n_train) in NETS.items():
        data_cfg = DataConfig(train_limit=n_train, test_limit=500, permute_pixels=permute)
        result = run_single(model_cfg, TrainConfig(epochs=1, optimizer="adam", lr=0.003, engine="plain"), data_cfg,
                            record=Recorder(store), data=prepare_data(data_cfg, raw=mnist_raw))
        run = ir.load_run(store, result.run_id)
        notes = []
        with zipfile.ZipFile(ex.export_run(run, tmp / name, on_note=notes.append)) as zf:
            assert notes == [] and "model.onnx" in zf.namelist()
            out[name] = (store, run, zf.read("model.onnx"), zf.read("README.md").decode())
    return out


@pytest.mark.parametrize("name", list(NETS))
def test_onnxruntime_agrees_with_pytorch_on_the_10000_test_images(runs, mnist_raw, name):
    _store, run, onnx_bytes, _readme = runs[name]
    assert len(mnist_raw.x_test) == 10_000
    check = ex.check_onnx_on_images(run, onnx_bytes, mnist_raw.x_test, mnist_raw.y_test)
    assert check.n == 10_000
    assert check.differ == 0, check  # a different class only where PyTorch's top two are within 1e-5
    assert check.same + check.differ_near_tie == 10_000
    assert check.logits_close and check.max_abs_diff < ex.LOGITS_ATOL, check
    assert abs(check.onnx_correct - check.torch_correct) <= check.differ_near_tie
    # trained: all ten classes come out, far above chance (1,000), so agreeing means something
    assert check.classes_predicted == 10 and check.torch_correct > 3_000, check


def test_the_check_can_fail(runs, mnist_raw):
    """Another network's model.onnx does not pass as this run's."""
    _s, lab5, _o, _r = runs["lab5"]
    _s, bn, bn_onnx, _r = runs["batch-norm"]
    check = ex.check_onnx_on_images(lab5, bn_onnx, mnist_raw.x_test[:2000], mnist_raw.y_test[:2000])
    assert not check.agrees and check.differ > 100 and not check.logits_close


@pytest.mark.parametrize("name", ["lab5", "residual"])
def test_model_onnx_names_no_file_of_the_server(runs, name):
    """The exporter records each node's Python stack trace (this machine's paths: the venv, the app's
    folder); a shared server's student downloads the zip, so export_onnx drops them, keeping the
    node names and scopes Netron shows."""
    _store, _run, onnx_bytes, _readme = runs[name]
    root = str(Path(__file__).resolve().parents[1]).encode()
    assert sys.prefix.encode() not in onnx_bytes and root not in onnx_bytes and b'File "' not in onnx_bytes
    model = onnx.load_from_string(onnx_bytes)
    keys = {p.key for node in model.graph.node for p in node.metadata_props}
    assert ex._STACK_TRACE not in keys and "pkg.torch.onnx.name_scopes" in keys


@pytest.mark.parametrize("name", ["lab5", "permuted-fc"])
def test_the_metadata_says_what_the_input_is_and_whose_network_it_is(runs, name):
    _store, run, onnx_bytes, _readme = runs[name]
    model = onnx.load_from_string(onnx_bytes)
    meta = {p.key: p.value for p in model.metadata_props}
    mean, std = ir.normalization(run.data_cfg)
    assert json.loads(meta["mean"]) == list(mean) and json.loads(meta["std"]) == list(std)
    assert meta["dataset"] == "mnist" and meta["run_id"] == run.run_id
    assert json.loads(meta["class_names"]) == [str(i) for i in range(10)]
    from mnist_lab import __version__
    assert meta["mnist_lab_version"] == __version__
    perm = json.loads(meta["permutation"])
    if run.permutation is None:
        assert perm is None
    else:
        assert perm == run.permutation.tolist() and sorted(perm) == list(range(784))
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == ex.ONNX_INPUT and graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]  # a dynamic batch, then C, H, W
    assert [o.name for o in model.graph.output] == [ex.ONNX_OUTPUT]


def test_any_batch_size_runs(runs, mnist_raw):
    _store, run, onnx_bytes, _readme = runs["residual"]
    session = ex.onnx_session(onnx_bytes)
    x = ir.to_network_input(mnist_raw.x_test[:3], run.data_cfg, run.permutation)
    for n in (1, 3):
        (logits,) = session.run(None, {ex.ONNX_INPUT: x[:n].numpy()})
        assert logits.shape == (n, 10)
        with torch.inference_mode():
            assert torch.allclose(torch.from_numpy(logits), run.model(x[:n]), atol=ex.LOGITS_ATOL)


def test_a_permuted_runs_model_needs_the_permuted_input(runs, mnist_raw):
    """Rebuilt from the metadata alone, the permuted input gives the run's accuracy; the plain one does not."""
    _store, run, onnx_bytes, _readme = runs["permuted-fc"]
    meta = {p.key: p.value for p in onnx.load_from_string(onnx_bytes).metadata_props}
    mean, std = torch.tensor(json.loads(meta["mean"])), torch.tensor(json.loads(meta["std"]))
    x = (mnist_raw.x_test.float().div(255).unsqueeze(1) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    permuted = x.flatten(2)[..., json.loads(meta["permutation"])].reshape(x.shape)
    right = ex.check_onnx(run, onnx_bytes, permuted, mnist_raw.y_test)
    wrong = ex.check_onnx(run, onnx_bytes, x, mnist_raw.y_test)
    assert right.differ == 0 and right.onnx_correct == right.torch_correct  # the run's own inputs, made by hand
    assert right.onnx_correct > 7_000 and wrong.onnx_correct < right.onnx_correct - 4_000, (right, wrong)


def test_the_readme_says_how_to_open_it_in_netron(runs):
    readme = runs["permuted-fc"][3]
    assert "`model.onnx`" in readme and "https://netron.app" in readme and "pip install netron" in readme
    assert "permutation" in readme and "float32 (N, 1, 28, 28)" in readme


def test_without_the_onnx_extra_the_export_is_whole_but_model_onnx_and_says_how_to_get_it(
        runs, tmp_path, monkeypatch, capsys):
    store, run, _onnx, _readme = runs["lab5"]
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: find_spec gives None
    assert main(["export", run.run_id, "--out", str(tmp_path), "--db", str(store.path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "mnist-lab[onnx]"' in err[0] and "onnxscript" in err[0], err
    with zipfile.ZipFile(tmp_path / f"run_{run.run_id}.zip") as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
    assert names == {f"train_{run.run_id}.py", "weights.safetensors", "weights.pt", "run.json", "README.md"}
    assert 'pip install "mnist-lab[onnx]"' in readme
    assert main(["--lang", "zh", "export", run.run_id, "--out", str(tmp_path), "--db", str(store.path)]) == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert 'pip install "mnist-lab[onnx]"' in line and "安装" in line, line


def test_an_exporter_failure_leaves_the_rest_of_the_export_whole(runs, monkeypatch):
    _store, run, _onnx, _readme = runs["tiny-fc"]

    def fail(*args, **kwargs):
        raise RuntimeError("/srv/secret/path: cannot trace")

    monkeypatch.setattr(torch.onnx, "export", fail)
    notes = []
    files = zipfile.ZipFile(io.BytesIO(ex.export_zip(run, on_note=notes.append))).namelist()
    assert "model.onnx" not in files and f"train_{run.run_id}.py" in files
    assert len(notes) == 1 and "RuntimeError" in str(notes[0]) and "/srv" not in str(notes[0])


@pytest.mark.parametrize("lang, netron, missing", [("en", "open it in Netron", "Install them with"),
                                                   ("zh_CN", "在 Netron 中打开", "安装后再导出")])
def test_the_inspect_pages_export_tab_says_how_to_open_it_in_netron(runs, monkeypatch, lang, netron, missing):
    from streamlit.testing.v1 import AppTest

    store, run, _onnx, _readme = runs["lab5"]
    monkeypatch.setenv("MNIST_LAB_DB", str(store.path))
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.query_params.update(run=run.run_id, lang=lang)
    at.run()
    assert not at.exception, at.exception
    captions = "\n".join(c.value for c in at.caption)
    assert netron in captions and "netron.app" in captions and missing not in captions
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # the onnx extra missing: the tab says how to get it
    at.run()
    captions = "\n".join(c.value for c in at.caption)
    assert missing in captions and "mnist\\-lab\\[onnx\\]" in captions and netron not in captions
