"""Weights files are untrusted input: every crafted variant the issue lists (wrong, missing or extra
tensors, wrong shapes and dtypes, truncated, empty or random files, a header claiming 2**40 bytes,
broken or mistyped metadata, an unknown dataset, bad permutations, hostile status, accuracy and run
id) is one WeightsError naming the run and the problem, never another exception; NaN and inf
weights load and are named by every reader (the CLI's inspect, predict and export, the Inspect
page); a refused file leaves no --out folder; any metadata of strings loads or is refused."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from apptest import result_charts
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_lab import codec, i18n
from mnist_lab.cli.main import main
from mnist_lab.data.datasets import DataConfig, make_permutation
from mnist_lab.errors import WeightsError
from mnist_lab.nets.model import build_model
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore, run_row
from mnist_lab.runs.weights import FORMAT, PERMUTATION_KEY, SavedRun, load_weights, save_weights, weights_path
from mnist_lab.training.loop import TrainConfig

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "inspect.py")
RUN = "crafted-1"
MODEL = PRESETS["lab5"].model


def good_file(permute: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata save_weights writes for an untrained Lab-5 run."""
    torch.manual_seed(0)
    tensors = {k: v.clone() for k, v in build_model(MODEL).state_dict().items()}
    data = DataConfig(test_limit=100, permute_pixels=permute)
    if permute:
        tensors[PERMUTATION_KEY] = make_permutation(28 * 28, 0)
    meta = dict(format=FORMAT, run_id=RUN, status="finished", test_acc="0.5",
                model=json.dumps(codec.to_dict(MODEL)), train=json.dumps(codec.to_dict(TrainConfig())),
                data=json.dumps(codec.to_dict(data)))
    return tensors, meta


def file_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def _raw(header: object, data: bytes = b"") -> bytes:
    """A file in the safetensors layout with any header at all."""
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def _with(**changes) -> bytes:
    tensors, meta = good_file()
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    return file_bytes(tensors, meta)


def _model(**changes) -> str:
    return json.dumps({**codec.to_dict(MODEL), **changes})


def _data(**changes) -> str:
    return json.dumps({**codec.to_dict(DataConfig(test_limit=100)), **changes})


def _tensors(change) -> bytes:
    tensors, meta = good_file()
    change(tensors)
    return file_bytes(tensors, meta)


def _perm(perm: torch.Tensor | None, permute: bool = True) -> bytes:
    tensors, meta = good_file(permute)
    tensors.pop(PERMUTATION_KEY, None)
    if perm is not None:
        tensors[PERMUTATION_KEY] = perm
    return file_bytes(tensors, meta)


def _header_entry(change) -> bytes:
    blob = file_bytes(*good_file())
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    change(header)
    return _raw(header, blob[8 + n:])


def _dup(p: torch.Tensor) -> torch.Tensor:
    p = p.clone()
    p[1] = p[0]
    return p


_GOOD = file_bytes(*good_file())
_KEY = next(iter(good_file()[0]))  # conv1.weight
HOSTILE = 'x"""\nimport os; os.system("touch /tmp/PWNED")\n"""'

# (name, file bytes, a phrase the refusal must hold)
VARIANTS = [
    ("missing key", _tensors(lambda t: t.pop(_KEY)), f"lacks the tensor(s) {_KEY}"),
    ("extra key", _tensors(lambda t: t.update(evil=torch.zeros(3))), "holds tensor(s) evil"),
    ("wrong shape", _tensors(lambda t: t.update({_KEY: torch.zeros(3, 1, 5, 5)})), "has shape (3, 1, 5, 5)"),
    ("wrong dtype", _tensors(lambda t: t.update({_KEY: t[_KEY].double()})), "is F64, but its network needs F32"),
    ("empty", b"", "empty or cut short (0 bytes)"),
    ("seven bytes", b"\x01" * 7, "empty or cut short (7 bytes)"),
    ("truncated", _GOOD[:len(_GOOD) // 2], "lie outside the file"),
    ("truncated header", _GOOD[:200], "claims more bytes"),
    ("random bytes", bytes(torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(1)).tolist()),
     "claims more bytes"),
    ("2**40 header", struct.pack("<Q", 2**40) + b"{}", "claims more bytes"),
    ("header not JSON", struct.pack("<Q", 4) + b"\xff{[x", "header is not JSON"),
    ("header nested", struct.pack("<Q", 100_000) + b"[" * 100_000, "header is not JSON"),
    ("header a list", _raw([1, 2]), "not a table of tensors"),
    ("no metadata", _raw({}), "no metadata"),
    ("metadata not text", _raw({"__metadata__": {"format": 1}}), "no metadata"),
    ("tensor entry malformed", _header_entry(lambda h: h[_KEY].update(shape="big")), "entry is malformed"),
    ("offsets beyond the file", _header_entry(lambda h: h[_KEY].update(data_offsets=[0, 2**40])),
     "lie outside the file"),
    ("unknown dtype", _header_entry(lambda h: h[_KEY].update(dtype="X99")), "is X99"),
    ("wrong format", _with(format="pickle/1"), "format 'pickle/1'"),
    ("no model", _with(model=None), "lacks its model entry"),
    ("no status", _with(status=None), "lacks its status entry"),
    ("extra metadata", _with(payload="rm -rf"), "entries this lab never writes (payload)"),
    ("model a JSON list", _with(model="[1, 2]"), "model entry"),
    ("model a number", _with(model="5"), "must be a JSON object"),
    ("model broken JSON", _with(model='{"kind": '), "model entry of the weights file of run crafted-1 is not JSON"),
    ("model nested deeply", _with(model="[" * 100_000), "is not JSON"),
    ("model unknown field", _with(model=_model(evil=1)), "has no setting evil"),
    ("model mistyped field", _with(model=_model(kernel_size="5")), "model.kernel_size"),
    ("model for colour images", _with(model=_model(in_channels=3)), "in_channels = 3"),
    ("model too large", _with(model=_model(conv_channels=[100000, 100000])), "100000 channels"),
    ("unknown dataset", _with(data=_data(dataset="imagenet")), "Unknown dataset 'imagenet'"),
    ("train lr NaN", _with(train=json.dumps({**codec.to_dict(TrainConfig()), "lr": float("nan")})),
     "Learning rate must be a finite number"),
    ("data a list", _with(data="[]"), "data entry"),
    ("permutation wrong length", _perm(torch.arange(700)), "784 int64 positions"),
    ("permutation duplicates", _perm(_dup(make_permutation(784, 0))), "repeated or out of range"),
    ("permutation out of range", _perm(torch.arange(784) + 5), "repeated or out of range"),
    ("permutation float", _perm(torch.arange(784).float()), "one int64 position per pixel"),
    ("permutation 2-D", _perm(torch.arange(784).reshape(28, 28)), "one int64 position per pixel"),
    ("permutation missing", _perm(None), "it holds none"),
    ("permutation unasked", _perm(torch.arange(784), permute=False), "not permuted, yet it holds"),
    ("status hostile", _with(status=HOSTILE), "gives the status"),
    ("status running", _with(status="running"), "gives the status 'running'"),
    ("test_acc NaN", _with(test_acc="NaN"), "gives the test accuracy nan"),
    ("test_acc 1.5", _with(test_acc="1.5"), "gives the test accuracy 1.5"),
    ("test_acc true", _with(test_acc="true"), "gives the test accuracy True"),
    ("test_acc text", _with(test_acc='"0.5"'), "gives the test accuracy '0.5'"),
    ("test_acc not JSON", _with(test_acc="0.5.5"), "test_acc entry"),
    ("run id mismatch", _with(run_id="other-run"), "says it holds run 'other-run'"),
    ("run id hostile", _with(run_id=HOSTILE), "copied from another run"),
]


def _plant(db: Path, blob: bytes, run_id: str = RUN) -> Path:
    path = weights_path(db, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("name,blob,phrase", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_each_crafted_file_is_one_refusal_naming_the_problem(tmp_path, name, blob, phrase):
    db = tmp_path / "r.sqlite"
    _plant(db, blob)
    with pytest.raises(WeightsError) as info:
        load_weights(db, RUN)
    message = str(info.value)
    assert type(info.value) is WeightsError and info.value.run_id == RUN
    assert phrase in message, message
    assert RUN in message and str(tmp_path) not in message  # the run, never a server path
    assert len(message) < 600  # a crafted value is cut short, not pasted whole
    assert i18n.render(info.value, "zh") != message  # worded in Chinese (the detail of a bad setting too)


def test_a_good_file_loads_and_so_do_settings_an_earlier_version_wrote(tmp_path):
    db = tmp_path / "r.sqlite"
    tensors, meta = good_file(permute=True)
    _plant(db, file_bytes(tensors, meta))
    saved = load_weights(db, RUN)
    assert saved.nonfinite == () and saved.test_acc == 0.5 and saved.status == "finished"
    assert torch.equal(saved.permutation, tensors[PERMUTATION_KEY]) and saved.data_cfg.permute_pixels
    assert set(saved.state_dict) == set(tensors) - {PERMUTATION_KEY}
    # a run trained on a GPU, with a train limit beyond MNIST (earlier versions cut it to all 60,000)
    tensors, meta = good_file()
    meta.update(train=json.dumps({**codec.to_dict(TrainConfig()), "device": "cuda:3"}),
                data=_data(train_limit=10_000_000), test_acc="null")
    meta.pop("train")
    meta["train"] = json.dumps({**codec.to_dict(TrainConfig()), "device": "cuda:3"})
    _plant(db, file_bytes(tensors, meta))
    saved = load_weights(db, RUN)
    assert saved.train_cfg.device == "cuda:3" and saved.data_cfg.train_limit is None and saved.test_acc is None
    # and what save_weights writes loads back exactly
    run = SavedRun("saved-2", MODEL, TrainConfig(), DataConfig(), tensors, None, "diverged", 0.1)
    save_weights(db, run)
    again = load_weights(db, "saved-2")
    assert (again.model_cfg, again.status, again.test_acc) == (MODEL, "diverged", 0.1)
    assert all(torch.equal(again.state_dict[k], v) for k, v in tensors.items())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weights_load_and_are_named(tmp_path, value):
    db = tmp_path / "r.sqlite"
    tensors, meta = good_file()
    tensors["fc1.bias"][3] = value
    _plant(db, file_bytes(tensors, meta))
    saved = load_weights(db, RUN)
    assert saved.nonfinite == ("fc1.bias",)
    from mnist_lab.runs.weights import nonfinite_warning

    text = str(nonfinite_warning(saved))
    assert "NaN/inf" in text and "fc1.bias" in text and "diverged" in text


# ---------------------------------------------------------------------------------- the CLI

@pytest.fixture
def db(tmp_path):
    """A database holding run `crafted-1` (finished) and `nan-run`, whose weights the tests plant."""
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    for run_id in (RUN, "nan-run"):
        store.start_run(run_row(run_id, MODEL, TrainConfig(), DataConfig(test_limit=100), status="finished"))
    store.close()
    return path


def _digit(tmp_path: Path) -> Path:
    from PIL import Image

    img = Image.new("L", (64, 64))
    img.paste(255, (28, 10, 36, 54))
    path = tmp_path / "one.png"
    img.save(path)
    return path


@pytest.mark.parametrize("name", ["missing key", "truncated", "random bytes", "2**40 header", "model a JSON list",
                                  "unknown dataset", "permutation duplicates", "status hostile"])
def test_the_cli_refuses_a_crafted_file_in_one_line_and_writes_nothing(db, tmp_path, capsys, name):
    _plant(db, dict((v[0], v[1]) for v in VARIANTS)[name])
    canary = Path("/tmp/PWNED")
    before = canary.exists()
    for argv in (["inspect", RUN, "--out", str(tmp_path / "o1")], ["export", RUN, "--out", str(tmp_path / "o2")],
                 ["predict", RUN, str(_digit(tmp_path))], ["export", RUN, "--out", str(tmp_path / "o3"), "--lang",
                                                           "zh"]):
        assert main([*argv, "--db", str(db)]) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert err.startswith(("error: ", "错误：")) and RUN in err and str(db.parent) not in err
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))
    assert canary.exists() == before


def test_the_cli_names_nan_weights(db, tmp_path, capsys):
    tensors, meta = good_file()
    tensors["fc1.weight"][0, 0] = float("nan")
    meta["run_id"], meta["status"] = "nan-run", "diverged"
    _plant(db, file_bytes(tensors, meta), "nan-run")
    assert main(["inspect", "nan-run", "--out", str(tmp_path / "o"), "--db", str(db)]) == 0
    out = capsys.readouterr()
    assert "NaN/inf" in out.err and "fc1.weight" in out.err and "%" not in out.out  # no bare accuracy
    assert (tmp_path / "o" / "confusion.csv").is_file()
    assert main(["predict", "nan-run", str(_digit(tmp_path)), "--db", str(db)]) == 2
    out = capsys.readouterr()
    assert "NaN/inf" in out.err and "nan%" not in out.out and "Traceback" not in out.err
    assert main(["export", "nan-run", "--out", str(tmp_path / "e"), "--db", str(db), "--lang", "zh"]) == 0
    out = capsys.readouterr()
    assert "NaN/inf" in out.err and out.err.startswith("警告") and (tmp_path / "e" / "run_nan-run.zip").is_file()


# ---------------------------------------------------------------------------------- the Inspect page

def test_the_inspect_page_refuses_a_crafted_file_and_names_nan_weights(db, monkeypatch):
    from streamlit.testing.v1 import AppTest

    _plant(db, dict((v[0], v[1]) for v in VARIANTS)["unknown dataset"])
    tensors, meta = good_file()
    tensors["conv2.bias"][:] = float("inf")
    meta["run_id"] = "nan-run"
    _plant(db, file_bytes(tensors, meta), "nan-run")
    monkeypatch.setenv("MNIST_LAB_DB", str(db))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["run"] = RUN
    at.run()
    assert not at.exception, at.exception
    shown = at.error[0].value.replace("\\", "") if len(at.error) == 1 else ""  # markdown-escaped
    assert "imagenet" in shown and RUN in shown and str(db.parent) not in shown
    at.selectbox(key="insp_run").set_value("nan-run").run()
    assert not at.exception, at.exception
    shown = at.warning[0].value.replace("\\", "") if len(at.warning) == 1 else ""
    assert "NaN/inf" in shown and "conv2.bias" in shown
    assert not result_charts(at)  # no confusion matrix of meaningless predictions


# ---------------------------------------------------------------------------------- any metadata

_, _META = good_file()
_TEXT = st.text(max_size=30) | st.sampled_from(["null", "[]", "{}", "0.5", "NaN", "1e999", '"x"', "[" * 2000,
                                                "finished", "diverged", RUN, FORMAT])


@settings(max_examples=150, deadline=None)
@given(changes=st.dictionaries(st.sampled_from([*_META, "extra"]) | st.text(max_size=8),
                               _TEXT | st.builds(lambda k, v: json.dumps({**json.loads(_META["model"]), k: v}),
                                                 st.sampled_from(list(json.loads(_META["model"]))),
                                                 st.none() | st.integers() | st.floats() | st.text(max_size=5)),
                               max_size=4),
       dropped=st.sets(st.sampled_from(list(_META)), max_size=2))
def test_any_metadata_of_strings_loads_or_is_refused(tmp_path_factory, changes, dropped):
    db = tmp_path_factory.mktemp("meta") / "r.sqlite"
    tensors, meta = good_file()
    meta = {k: v for k, v in {**meta, **changes}.items() if k not in dropped}
    _plant(db, file_bytes(tensors, meta))
    try:
        saved = load_weights(db, RUN)
    except WeightsError as exc:
        assert RUN in str(exc) and isinstance(i18n.render(exc, "zh"), str)
    else:
        assert saved.status in ("finished", "stopped", "diverged") and saved.run_id == RUN
        assert saved.test_acc is None or 0 <= saved.test_acc <= 1


def test_a_bad_setting_is_worded_whole_in_the_readers_language(tmp_path):
    """The refusal carries the setting's own refusal (an i18n.Message), worded by the same catalog."""
    db = tmp_path / "r.sqlite"
    _plant(db, dict((v[0], v[1]) for v in VARIANTS)["unknown dataset"])
    with pytest.raises(WeightsError) as info:
        load_weights(db, RUN)
    zh = i18n.render(info.value, "zh")
    assert zh.startswith(f"运行 {RUN} 的权重文件含有本实验室无法使用的设置：") and "未知的数据集 'imagenet'" in zh
    assert str(info.value) == (f"The weights file of run {RUN} holds settings this lab cannot use: Unknown dataset "
                               "'imagenet'. Choose one of: mnist, fashion-mnist, cifar10.")


def test_the_report_shows_no_confusion_matrix_for_nan_weights_or_a_refused_file(db):
    from mnist_lab.lab.findings import confusion_numbers

    _plant(db, dict((v[0], v[1]) for v in VARIANTS)["truncated"])
    tensors, meta = good_file()
    tensors["fc1.bias"][0] = float("nan")
    meta["run_id"] = "nan-run"
    _plant(db, file_bytes(tensors, meta), "nan-run")
    store = ResultStore(db)
    assert confusion_numbers(store, RUN) is None and confusion_numbers(store, "nan-run") is None
