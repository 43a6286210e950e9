"""Someone else's text in a message (errors.shorten), the atomic writes of the data cache and the
compiled kernels (paths.write_file), and the rebuilt-cache note in the reader's language."""
from __future__ import annotations

import dataclasses
import json
import threading
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from app_lib.shared import rebuilt_note
from mnist_lab import codec, i18n, paths
from mnist_lab.cli import common
from mnist_lab.data import datasets as data
from mnist_lab.data.datasets import CacheRebuiltWarning
from mnist_lab.errors import ConfigError, WeightsError, shorten
from mnist_lab.i18n import Message
from mnist_lab.nets.model import ModelConfig, build_model
from mnist_lab.nets.presets import PRESETS
from mnist_lab.paths import DB_ENV
from mnist_lab.runs.weights import SavedRun, load_weights, save_weights, weights_path
from mnist_lab.training.loop import TrainConfig

HOSTILE = "a\nb\x1b[31mred\u202eX" + "y" * 10_000
RUN = "hostile-1"
APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def assert_one_safe_line(text: str, most: int) -> None:
    assert "\n" not in text and "\x1b" not in text and "\u202e" not in text, text
    assert "\\n" in text and "\\x1b[31m" in text and "\\u202e" in text  # escaped, so it reads as it is
    assert len(text) <= most, len(text)
    assert "y" * 100 not in text  # cut, not pasted whole


def test_shorten_escapes_every_unprintable_character_and_cuts():
    text = shorten(HOSTILE)
    assert len(text) == 80 and text.startswith("'a\\nb\\x1b[31mred\\u202eX") and text.endswith("…")
    assert_one_safe_line(text, 80)
    assert shorten(HOSTILE, quote=False).startswith("a\\nb\\x1b")
    assert shorten("conv1.weight", quote=False) == "conv1.weight" and shorten("ok") == "'ok'"
    assert shorten(5) == "5" and shorten(float("nan")) == "nan" and shorten(None) == "None"
    assert len(shorten(HOSTILE, 20)) == 20
    assert shorten(text) == text and shorten(text, 40) == text[:39] + "…"  # never quoted twice

    class Raw:
        def __repr__(self):
            return "line\nbreak\u2066"
    assert shorten(Raw()) == "line\\nbreak\\u2066"  # an object's own repr is escaped too
    assert shorten({"k": HOSTILE}).startswith("{'k': 'a\\nb") and len(shorten({"k": HOSTILE})) == 80


def test_shortened_text_survives_storing_without_doubled_quotes():
    message = Message("got {value}.", {"value": shorten(HOSTILE)})
    [back] = i18n.from_stored(i18n.to_stored(message))
    assert i18n.word(back) == i18n.word(message) == f"got {shorten(HOSTILE)}."
    assert "''" not in i18n.word(back) and i18n.word(back).startswith("got 'a\\nb")


def _weights_file(tmp_path, **changed: str):
    """A good weights file of a tiny network, its metadata entries then replaced by `changed`."""
    model_cfg = PRESETS["tiny-fc"].model
    run = SavedRun(RUN, model_cfg, TrainConfig(device="cpu"), data.DataConfig(),
                   build_model(model_cfg).state_dict(), None, "finished", 0.5)
    db = tmp_path / "r.sqlite"
    path = save_weights(db, run)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    weights_path(db, RUN).write_bytes(save(tensors, metadata={**meta, **changed}))
    return db


@pytest.mark.parametrize("entry", ["status", "run_id", "format"])
def test_a_hostile_weights_entry_is_one_escaped_short_line(tmp_path, entry):
    db = _weights_file(tmp_path, **{entry: HOSTILE})
    with pytest.raises(WeightsError) as info:
        load_weights(db, RUN)
    for text in (str(info.value), i18n.render(info.value, "zh_CN")):
        assert_one_safe_line(text, 400)
        assert shorten(HOSTILE) in text and "''" not in text and '"\'' not in text


def test_a_hostile_setting_in_a_weights_file_is_cut_inside_its_own_refusal(tmp_path):
    data_json = json.dumps({**codec.to_dict(data.DataConfig()), "dataset": HOSTILE})
    db = _weights_file(tmp_path, data=data_json)
    with pytest.raises(WeightsError) as info:
        load_weights(db, RUN)
    for text in (str(info.value), i18n.render(info.value, "zh_CN")):
        assert_one_safe_line(text, 600)
        assert shorten(HOSTILE) in text and f"'{shorten(HOSTILE)}" not in text  # quoted once


@pytest.mark.parametrize("doc", [{"kernel_size": HOSTILE}, {HOSTILE: 1}, {"blocks": HOSTILE}],
                         ids=["mistyped value", "unknown name", "not a list"])
def test_a_hostile_codec_refusal_is_one_escaped_short_line(doc):
    with pytest.raises(ConfigError) as info:
        codec.from_dict(ModelConfig, doc, "model")
    for text in (str(info.value), i18n.render(info.value, "zh_CN")):
        assert_one_safe_line(text, 400)
    if HOSTILE in doc.values():
        assert info.value.value == HOSTILE  # the refusal keeps what was given; only its message is cut
        stored = i18n.to_stored(Message(info.value.template, info.value.params))
        [back] = i18n.from_stored(stored)
        assert i18n.word(back) == str(info.value)  # stored as a run's reason, shown the same


def test_json_that_does_not_parse_names_its_error_shortly():
    with pytest.raises(ConfigError) as info:
        codec.from_json(ModelConfig, "{" + HOSTILE)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


# ---------------------------------------------------------------------------- 13: atomic writes

def test_concurrent_writers_of_one_file_never_collide_or_leave_temporary_files(tmp_path):
    target = tmp_path / "out" / "f.bin"
    blobs = [bytes([i]) * 200_000 for i in range(8)]
    errors: list[BaseException] = []

    def write(blob: bytes) -> None:
        try:
            for _ in range(5):
                paths.write_file(target, blob)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=write, args=(b,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in blobs  # one writer's file, whole
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_the_data_cache_is_written_whole_by_concurrent_loads_and_read_back(tmp_cache, mnist_raw):
    path = tmp_cache / "mnist.npz"
    threads = [threading.Thread(target=data._write_cache, args=(path, mnist_raw)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in tmp_cache.iterdir()] == ["mnist.npz"]  # no temporary file left
    back = data._read_cache(path, data.MNIST)
    assert torch.equal(back.x_train, mnist_raw.x_train) and torch.equal(back.y_test, mnist_raw.y_test)


def test_a_cache_that_cannot_be_written_costs_only_speed(tmp_path, mnist_raw, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(data, "write_file", full)
    data._write_cache(tmp_path / "mnist.npz", mnist_raw)  # no exception
    assert list(tmp_path.iterdir()) == []  # absent: the next load reads the sources again


# ---------------------------------------------------------------------------- 14: the rebuilt cache said

def _rebuilt(path: str) -> CacheRebuiltWarning:
    return CacheRebuiltWarning(data._CACHE_NOT_USED, title="MNIST", path=path,
                               why=f"cannot read {path}: the checksum of its tensors does not match")


@pytest.mark.parametrize("code,words", [("en", "note: The MNIST cache /home/me/.cache/m.npz was not used"),
                                        ("zh_CN", "MNIST 缓存 /home/me/.cache/m.npz 未被使用")])
def test_the_cli_says_a_rebuilt_cache_as_one_note_in_the_readers_language(capsys, code, words):
    common.set_language(code)
    try:
        with pytest.warns(UserWarning, match="something else") as record, common.warnings_as_notes():
            warnings.warn(_rebuilt("/home/me/.cache/m.npz"), stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    finally:
        common.set_language("en")
    err = capsys.readouterr().err
    [note] = [line for line in err.splitlines() if "m.npz" in line]
    assert words in note and len(err.strip().splitlines()) == 1 and "Warning" not in err
    assert [str(w.message) for w in record] == ["something else"]  # any other warning shown as Python shows it


def test_a_cli_command_that_rebuilds_the_cache_prints_the_note(tmp_cache, mnist_raw, monkeypatch, capsys):
    data.load_mnist()  # the cache written
    [cache_file] = tmp_cache.glob("*.npz")
    cache_file.write_bytes(b"not a cache")
    from mnist_lab.cli import main as cli_main

    def lesson_data(args):
        data.load_mnist()
        return 0
    monkeypatch.setattr(cli_main, "build_parser", lambda: _one_command_parser(lesson_data))
    assert cli_main.main(["--lang", "zh_CN", "go"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("注意：MNIST 缓存 ") and str(cache_file) in err, err  # the user's own cache may be named
    assert "Warning" not in err and len(err.strip().splitlines()) == 1


def _one_command_parser(func):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--lang")
    sub = parser.add_subparsers()
    sub.add_parser("go").set_defaults(func=func)
    return parser


@pytest.mark.parametrize("code", ["en", "zh_CN"])
def test_the_app_says_a_rebuilt_cache_without_the_servers_path(monkeypatch, code):
    from app_lib import shared

    monkeypatch.setattr(shared, "_", i18n.translator(code).gettext)
    note = rebuilt_note(_rebuilt("/srv/lab/.cache/mnist.npz"))
    assert "/srv" not in note and "mnist.npz" not in note
    assert ("The MNIST cache was not used (cannot read the cache: the checksum" in note if code == "en" else
            "MNIST 缓存未被使用（cannot read 缓存" in note), note


@pytest.mark.parametrize("code,words", [("en", "The MNIST cache was not used (cannot read the cache: the checksum"),
                                        ("zh_CN", "MNIST 缓存未被使用（cannot read 缓存")])
def test_the_home_page_says_a_rebuilt_cache_once_in_the_sessions_language(mnist_raw, tmp_path, monkeypatch, code,
                                                                          words):
    from streamlit.testing.v1 import AppTest

    from app_lib import shared

    monkeypatch.setenv(DB_ENV, str(tmp_path / "results.sqlite"))
    monkeypatch.setenv("MNIST_LAB_WORKER_WARM", "0")
    rebuilt = dataclasses.replace(mnist_raw, rebuilt=_rebuilt("/srv/lab/.cache/mnist.npz"))
    monkeypatch.setattr(shared, "_raw", lambda dataset: rebuilt)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["lang"] = code
    at.run()  # the home page
    assert not at.exception, at.exception
    said = [i.value.replace("\\", "") for i in at.info if "/srv" in i.value or words[:10] in i.value.replace("\\", "")]
    assert len(said) == 1 and words in said[0] and "/srv" not in said[0], [i.value for i in at.info]
    at.run()  # a rerun of the same session: said once
    assert not [i for i in at.info if words[:10] in i.value.replace("\\", "")]
