"""Looking inside a run: its weights are kept (safetensors beside the database), reload to exactly
the run's test accuracy and are deleted with it; the confusion matrix, its gallery, feature-map
shapes against the layer table, saliency, the MNIST-style preparation of a drawn digit, hostile
uploads refused, the CLI's inspect and predict, and the Inspect page through AppTest."""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from apptest import SESSION_KEY, result_charts, session_for, student
from PIL import Image
from streamlit.testing.v1 import AppTest

from mnist_lab.cli.main import main
from mnist_lab.data.datasets import DataConfig, permute_pixels, prepare_data, to_float
from mnist_lab.lab import inspection as ir
from mnist_lab.lab.experiments import run_single
from mnist_lab.nets.model import ModelConfig, build_model, summarize
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.runs.weights import SavedRun, weights_path
from mnist_lab.training.loop import TrainConfig

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "inspect.py")


@pytest.fixture(scope="module")
def kept(tmp_path_factory, mnist_raw):
    """A store with three tiny runs (512 images, 1 epoch, 1,000 test images): Lab-5 on normal and
    on permuted pixels (the default engine), and Tiny FC on the plain loop."""
    db = tmp_path_factory.mktemp("inspect") / "results.sqlite"
    store = ResultStore(db)
    out = {"store": store}
    for name, preset, permute, engine in (("lab5", "lab5", False, "auto"), ("lab5_perm", "lab5", True, "auto"),
                                          ("fc", "tiny-fc", False, "plain")):
        data_cfg = DataConfig(train_limit=512, test_limit=1000, permute_pixels=permute)
        data = prepare_data(data_cfg, raw=mnist_raw)
        result = run_single(PRESETS[preset].model, TrainConfig(epochs=1, engine=engine), data_cfg,
                            record=Recorder(store),
                            data=data)
        out[name] = (result, data)
    return out


def test_weights_round_trip_to_the_runs_exact_accuracy(kept, mnist_raw):
    store = kept["store"]
    for name in ("lab5", "lab5_perm", "fc"):
        result, data = kept[name]
        assert result.state_dict is not None
        run = ir.load_run(store, result.run_id)
        assert set(run.model.state_dict()) == set(build_model(result.model_cfg).state_dict())
        for key, value in result.state_dict.items():
            assert torch.equal(run.model.state_dict()[key], value), key
        if data.permutation is None:
            assert run.permutation is None
        else:
            assert torch.equal(run.permutation, data.permutation)
        assert (run.model_cfg, run.train_cfg, run.data_cfg) == (result.model_cfg, result.train_cfg, result.data_cfg)
        conf = ir.confusion(run, *ir.evaluated_images(run, mnist_raw))
        assert conf.n == conf.counts.sum() == 1000
        assert conf.accuracy == result.final_test_acc  # exactly: the same weights, the same images
        assert np.trace(conf.counts) == round(result.final_test_acc * 1000)
        assert conf.counts.sum(axis=1).tolist() == torch.bincount(data.y_test, minlength=10).tolist()
        assert np.allclose(conf.normalized().sum(axis=1), 1.0)


def test_weights_are_safetensors_and_go_with_the_run(tmp_path, tiny_data):
    store = ResultStore(tmp_path / "r.sqlite")
    result = run_single(PRESETS["tiny-fc"].model, TrainConfig(epochs=1), tiny_data.config,
                        record=Recorder(store), data=tiny_data)
    path = weights_path(store.path, result.run_id)
    assert path == tmp_path / "r.sqlite.weights" / f"{result.run_id}.safetensors"
    blob = path.read_bytes()
    assert blob[8:9] == b"{"  # an 8-byte header length, then JSON: no pickle anywhere
    assert store.inspectable([result.run_id, "other"]) == {result.run_id}
    assert store.delete_runs([result.run_id]) == 1
    assert not path.exists() and store.inspectable([result.run_id]) == set()
    with pytest.raises(FileNotFoundError, match="no saved weights"):
        store.load_weights(result.run_id)
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="not a run id"):
            weights_path(store.path, bad)


def test_gallery_holds_exactly_the_images_misclassified_that_way(kept, mnist_raw):
    result, _ = kept["lab5"]
    run = ir.load_run(kept["store"], result.run_id)
    x, y = ir.evaluated_images(run, mnist_raw)
    conf = ir.confusion(run, x, y)
    pairs = conf.confused_pairs(3)
    assert len(pairs) and (pairs["count"].diff().dropna() <= 0).all()
    t, p = int(pairs["true"][0]), int(pairs["predicted"][0])
    cell = conf.cell(t, p)
    assert len(cell) == conf.counts[t, p] == pairs["count"][0]
    probs = ir.probabilities(run, run.inputs(x[torch.as_tensor(cell)]))
    assert (y[torch.as_tensor(cell)] == t).all() and (probs.argmax(1) == p).all()
    assert np.all(np.diff(conf.confidence[cell]) <= 0)  # most confident first
    wrong = conf.misclassified()
    assert len(wrong) == conf.n - np.trace(conf.counts) and (wrong["true"] != wrong["predicted"]).all()


@pytest.mark.parametrize("cfg", [PRESETS["lab5"].model, PRESETS["padded-16-32"].model,
                                 ModelConfig(conv_channels=(4, 8, 8), kernel_size=3, padding="same", batch_norm=True)])
def test_feature_map_shapes_match_the_layer_table(cfg):
    torch.manual_seed(0)
    saved = SavedRun("r", cfg, TrainConfig(), DataConfig(), build_model(cfg).state_dict(), None, "finished", None)
    run = ir.rebuild(saved)
    maps = ir.feature_maps(run, torch.randn(1, 1, 28, 28))
    rows = {r.name: r.output_shape for r in summarize(cfg) if len(r.output_shape) == 3}
    assert [m.name for m in maps] == list(rows)
    for m in maps:
        assert m.shape == rows[m.name], m.name
        assert m.block == int(m.name[-1])  # conv1, bn1, relu1, pool1 are block 1, ...
    assert ir.first_layer_filters(run).shape == (cfg.conv_channels[0], 1, cfg.kernel_size, cfg.kernel_size)


def test_filters_top3_and_saliency(kept, mnist_raw):
    fc = ir.load_run(kept["store"], kept["fc"][0].run_id)
    assert ir.first_layer_filters(fc).shape == (8, 1, 28, 28)  # each hidden unit's weights as an image
    assert ir.feature_maps(fc, fc.inputs(mnist_raw.x_test[:1])) == []
    run = ir.load_run(kept["store"], kept["lab5_perm"][0].run_id)
    image = mnist_raw.x_test[0].numpy()
    pred = ir.predict(run, image)
    assert len(pred.top) == 3 and pred.top[0][2] >= pred.top[1][2] >= pred.top[2][2]
    assert pred.probs.sum() == pytest.approx(1.0, abs=1e-5)
    x = ir.network_input(run, image)
    assert torch.equal(x, permute_pixels(to_float(torch.from_numpy(image)[None], "mnist"), run.permutation))
    seen = ir.saliency(run, x, pred.top[0][0], original_order=False)
    original = ir.saliency(run, x, pred.top[0][0])
    assert seen.shape == original.shape == (28, 28) and seen.max() > 0
    assert np.array_equal(original.reshape(-1)[run.permutation.numpy()], seen.reshape(-1))


def _stroke(h: int, w: int, box: tuple[int, int, int, int], width: int = 9) -> np.ndarray:
    """A white 'stroke' (an ellipse outline) inside `box` = (top, left, bottom, right) of a black canvas."""
    img = Image.new("L", (w, h))
    from PIL import ImageDraw

    ImageDraw.Draw(img).ellipse((box[1], box[0], box[3], box[2]), outline=255, width=width)
    return np.asarray(img)


@pytest.mark.parametrize("box", [(10, 10, 120, 60), (150, 200, 190, 390), (0, 0, 299, 399), (40, 100, 260, 130)])
def test_a_drawn_digit_is_prepared_as_mnists_were(box):
    digit = ir.prepare_digit(_stroke(300, 400, box))
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert max(h, w) <= 20 and max(h, w) >= 19  # scaled to fit 20x20 (anti-aliasing may blank an edge row)
    bh, bw = box[2] - box[0] + 1, box[3] - box[1] + 1
    assert abs(h / w - bh / bw) < 0.25 * (bh / bw) + 0.1  # aspect kept
    ys, xs = np.indices(digit.shape)
    mass = digit.astype(float)
    assert abs((ys * mass).sum() / mass.sum() - 13.5) <= 0.5
    assert abs((xs * mass).sum() / mass.sum() - 13.5) <= 0.5
    with pytest.raises(ValueError, match="empty"):
        ir.prepare_digit(np.zeros((50, 50)))


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploads_are_decoded_safely_and_hostile_ones_refused():
    paper = Image.new("L", (64, 64), 255)  # dark ink on white paper is inverted to MNIST's white on black
    paper.paste(0, (20, 10, 40, 50))
    ink = ir.grey_ink(ir.decode_image(_png(paper)))
    assert ink[30, 30] == 255 and ink[0, 0] == 0
    with pytest.raises(ir.ImageRefused, match="not an image"):
        ir.decode_image(b"#!/bin/sh\nrm -rf /\n", name="x.png")
    with pytest.raises(ir.ImageRefused, match="MiB"):
        ir.decode_image(_png(paper), max_bytes=100)
    bomb = _png(Image.new("1", (10_000, 10_000)))  # 100 megapixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ir.ImageRefused):
        ir.decode_image(bomb)
    with pytest.raises(ir.ImageRefused, match="pixels"):
        ir.decode_image(_png(Image.new("L", (3000, 3000))), max_pixels=1000 * 1000)
    with pytest.raises(ir.ImageRefused):
        ir.decode_image(_png(paper)[:60])  # truncated


def test_cli_inspect_and_predict(kept, tmp_path, capsys):
    result, _ = kept["lab5"]
    db = str(kept["store"].path)
    assert main(["inspect", result.run_id, "--out", str(tmp_path / "out"), "--db", db]) == 0
    counts = pd.read_csv(tmp_path / "out" / "confusion.csv", index_col=0)
    assert counts.to_numpy().sum() == 1000 and np.trace(counts.to_numpy()) == round(1000 * result.final_test_acc)
    per_class = pd.read_csv(tmp_path / "out" / "per_class.csv")
    assert list(per_class.columns) == ["class_id", "name", "images", "correct", "accuracy"]
    wrong = pd.read_csv(tmp_path / "out" / "misclassified.csv")
    assert len(wrong) == 1000 - np.trace(counts.to_numpy())
    digit = tmp_path / "seven.png"
    Image.fromarray(_stroke(120, 120, (10, 30, 110, 90))).save(digit)
    capsys.readouterr()
    assert main(["predict", result.run_id, str(digit), "--db", db]) == 0
    assert f"{digit}: " in capsys.readouterr().out
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["predict", result.run_id, str(text), "--db", db]) == 2
    assert "is not an image" in capsys.readouterr().err
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG" + b"\0" * ir.MAX_UPLOAD_BYTES)
    assert main(["predict", result.run_id, str(huge), "--db", db]) == 2
    assert "MiB" in capsys.readouterr().err
    assert main(["inspect", "no-such-run", "--out", str(tmp_path / "o2"), "--db", db]) == 2
    assert "No run no-such-run" in capsys.readouterr().err


def test_inspect_page(kept, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MNIST_LAB_DB", str(kept["store"].path))
    result, _ = kept["lab5_perm"]
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["run"] = result.run_id
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="insp_run").value == result.run_id  # the deep link picked it
    assert len(result_charts(at)) >= 1  # the confusion matrix (and the saliency map)
    assert "1,000 test images" in at.caption[0].value and "permuted" in at.caption[0].value
    assert len(at.get("image")) >= 3  # gallery, filters, feature maps
    at.toggle(key="insp_norm").set_value(True).run()
    at.number_input(key="insp_index").set_value(7).run()
    assert not at.exception, at.exception
    fc = kept["fc"][0].run_id
    at.selectbox(key="insp_run").set_value(fc).run()
    assert not at.exception, at.exception
    assert any("no feature maps" in i.value for i in at.info)


def _inspect(db: Path, monkeypatch, query: dict, who=None) -> AppTest:
    monkeypatch.setenv("MNIST_LAB_DB", str(db))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params.update(query)
    if who is not None:  # shared mode: signed in as `who` (AppTest sends no cookie; the session keeps it)
        at.session_state[SESSION_KEY] = session_for(who)
    at.run()
    assert not at.exception, at.exception
    return at


def _all_text(at: AppTest) -> str:
    kinds = ("markdown", "caption", "error", "warning", "info", "title", "subheader", "code")
    return "\n".join(str(getattr(e, "value", "")) for kind in kinds for e in at.get(kind))


HOSTILE_UPLOADS = {  # file name, bytes, what the one error says (English, then the catalog's Chinese)
    "50 MB": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(50 * 2**20), "50.0 MiB; images up to 5 MiB", "50.0 MiB"),
    "not an image": ("digit.png", b"#!/bin/sh\ntouch /tmp/PWNED\n", "is not an image this lab reads", "不是"),
    "an image bomb": ("bomb.png", None, "declares more pixels than this lab accepts (up to 16,777,216)", "解压炸弹"),
    "4500×4000": ("wide.png", None, "4500×4000 pixels; up to 16,777,216 pixels are accepted", "4500×4000"),
    "a truncated PNG": ("cut.png", None, "could not be decoded as an image", "无法"),
    "a markdown name": ("[x](https://evil.example) " + "n" * 200 + ".png", b"GIF89a-not-really",
                        "is not an image this lab reads", "不是"),
}


@pytest.mark.parametrize("case", list(HOSTILE_UPLOADS))
def test_the_inspect_page_refuses_a_hostile_upload_in_one_translated_line(case, kept, monkeypatch):
    name, blob, english, chinese = HOSTILE_UPLOADS[case]
    if case == "an image bomb":  # 100 megapixels declared in a few kB
        blob = _png(Image.new("1", (10_000, 10_000)))
        assert len(blob) < 100_000
    elif case == "4500×4000":  # under PIL's own bomb limit, over this lab's
        blob = _png(Image.new("1", (4500, 4000)))
    elif case == "a truncated PNG":
        paper = Image.new("L", (64, 64), 255)
        paper.paste(0, (20, 10, 40, 50))
        blob = _png(paper)[:-40]
    result, _ = kept["lab5"]
    for lang, words in (("en", english), ("zh_CN", chinese)):
        at = _inspect(kept["store"].path, monkeypatch, {"run": result.run_id, "lang": lang})
        at.get("file_uploader")[0].upload(name, blob, "image/png").run()
        assert not at.exception, at.exception
        [error] = [e.value for e in at.error]
        assert words in error.replace("\\", ""), error
        assert "Traceback" not in error and str(kept["store"].path.parent) not in error  # no server path
        assert "](" not in error.replace("\\]\\(", "") and len(error) < 600  # the name shown as text, shortened
        assert not any("what the network receives" in str(c) for c in at.get("image"))  # nothing predicted


def test_the_inspect_page_predicts_a_good_upload(kept, monkeypatch):
    result, _ = kept["lab5"]
    at = _inspect(kept["store"].path, monkeypatch, {"run": result.run_id})
    at.get("file_uploader")[0].upload("seven.png", _png(Image.fromarray(_stroke(120, 120, (10, 30, 110, 90)))),
                                      "image/png").run()
    assert not at.exception and not at.error
    assert any("%" in m.value for m in at.markdown)  # its top-3


def test_a_new_drawing_is_offered_on_the_feature_map_tab_at_once(kept, monkeypatch):
    """The drawing and upload live in a fragment, whose reruns leave the feature-map and trace tabs
    as they were drawn: a digit that appears, goes, or changes while either shows it reruns the page."""
    import streamlit

    reruns = []
    real_rerun = streamlit.rerun
    monkeypatch.setattr(streamlit, "rerun", lambda *a, **kw: (reruns.append(1), real_rerun(*a, **kw)))
    result, _ = kept["lab5"]
    at = _inspect(kept["store"].path, monkeypatch, {"run": result.run_id})
    assert at.radio(key="insp_source").disabled and not reruns
    seven = _png(Image.fromarray(_stroke(120, 120, (10, 30, 110, 90))))
    at.get("file_uploader")[0].upload("seven.png", seven, "image/png").run()
    assert not at.exception, at.exception
    assert not at.radio(key="insp_source").disabled and len(reruns) == 1
    at.radio(key="insp_source").set_value("your drawing").run()
    assert len(reruns) == 1  # the same drawing: nothing to draw again
    top3 = [m.value for m in at.markdown if m.value.startswith("1. ")]
    digit_tab = [m.value for m in at.markdown if " · " in m.value and "%" in m.value]
    assert top3 and digit_tab and top3[0].split("\n")[0].split(" ", 1)[1] in digit_tab[0]  # the maps tab's image
    at.get("file_uploader")[0].upload("zero.png", _png(Image.fromarray(_stroke(120, 120, (20, 20, 100, 100)))),
                                      "image/png").run()
    assert len(reruns) == 2 and not at.exception  # another drawing while the maps tab shows the drawing

    at.radio(key="insp_source").set_value("a test image").run()
    at.radio(key="insp_tr_source").set_value("your drawing").run()  # the trace tab shows it now (issue 28)
    assert len(reruns) == 2
    at.get("file_uploader")[0].upload("seven.png", seven, "image/png").run()
    assert len(reruns) == 3 and not at.exception  # another drawing while only the trace tab shows the drawing


def test_filters_are_drawn_apart_with_transparent_gaps():
    from app_lib.inspect_charts import mosaic

    filters = np.random.default_rng(0).normal(size=(6, 5, 5))
    grid = mosaic(filters, columns=4, scale=9)
    assert grid.shape == (2 * 45 + 9, 4 * 45 + 3 * 9, 4) and grid.dtype == np.uint8
    opaque = grid[..., 3] == 255
    assert opaque.sum() == 6 * 45 * 45  # every tile whole, nothing else
    assert not opaque[:, 45:54].any() and not opaque[45:54, :].any()  # the gaps: the page shows through
    assert grid[:45, :45, 0].min() == 0 and grid[:45, :45, 0].max() == 255  # each tile to its own min..max
    assert (grid[:45, :45, 0] == grid[:45, :45, 2]).all()  # grey


@pytest.mark.parametrize("asked", ["../../../etc/passwd", "99999999999999999999999", "\u202e𝟗\u0301 ☃",
                                   "x" * 5000, "no-such-run"])
def test_a_hostile_run_link_opens_nothing_it_names(asked, kept, monkeypatch):
    result, _ = kept["lab5"]
    at = _inspect(kept["store"].path, monkeypatch, {"run": asked})
    [warning] = [w.value for w in at.warning]
    assert "This link has values the page cannot use" in warning and len(warning) < 400
    assert at.selectbox(key="insp_run").value in kept["store"].runs()["run_id"].tolist()
    assert at.query_params["run"] == at.selectbox(key="insp_run").value  # the URL names what is shown


def test_a_link_to_another_workspaces_run_opens_only_your_own(tmp_path, tiny_data, monkeypatch):
    """Shared mode: a run id in the link is honoured only among the session's own runs; another
    workspace's run is neither loaded nor named, and the answer is the same as for no such run."""
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    db = tmp_path / "results.sqlite"
    store = ResultStore(db)
    mine, theirs = student("s1"), student("s2")
    ids = {}
    for who in (mine, theirs):
        with store.context(job_id=f"j-{who.student_id}", workspace=who.workspace, student_id=who.student_id,
                           student_name=who.name):
            ids[who] = run_single(PRESETS["tiny-fc"].model, TrainConfig(epochs=1, engine="plain"), tiny_data.config,
                                  record=Recorder(store), data=tiny_data).run_id
    at = _inspect(db, monkeypatch, {"run": ids[theirs]}, who=mine)
    picker = at.selectbox(key="insp_run")
    assert picker.value == ids[mine] and len(picker.options) == 1 and ids[mine] in picker.options[0]
    [warning] = [w.value for w in at.warning]
    nothing = _inspect(db, monkeypatch, {"run": "no-such-run-at-all"}, who=mine).warning[0].value
    assert warning.replace(ids[theirs].replace("-", "\\-"), "X") == nothing.replace("no\\-such\\-run\\-at\\-all", "X")
    assert ids[theirs] not in _all_text(at).replace("\\", "").replace(f"run={ids[theirs]}", "")  # only echoed once
    assert at.query_params["run"] == ids[mine]
    stranger = _inspect(db, monkeypatch, {"run": ids[theirs]})  # a session no one signed in to: no runs at all
    assert any("No run can be inspected yet" in i.value for i in stranger.info)
    assert not stranger.get("selectbox")


def test_the_lab_report_shows_the_runs_confusion_matrix(kept):
    from mnist_lab.lab.report import build_report

    result, _ = kept["lab5"]
    for lang, pairs in (("en", "The pairs it confused most"), ("zh", "最常混淆")):
        report = build_report(kept["store"], lang, run_id=result.run_id)
        table = next(b for b in report.blocks if b.kind == "table" and b.header[1:] == [str(c) for c in range(10)])
        counts = np.array([[int(v.replace(",", "")) for v in row[1:]] for row in table.rows])
        assert counts.sum() == 1000 and np.trace(counts) == round(1000 * result.final_test_acc)
        assert any(pairs in b.text for b in report.blocks if b.kind == "p")
    assert report.findings.loss.numbers["confusion"]["n"] == 1000


def test_the_inspect_strings_have_chinese_translations():
    """Every msgid of the Inspect page and the inspect/predict/export commands is in zh_CN, with
    the same placeholders (the report's own are checked in test_report.py)."""
    import string

    from babel.messages.extract import extract_from_file
    from babel.messages.pofile import read_po

    from mnist_lab import i18n

    with open(i18n.catalog_path("zh_CN"), "rb") as f:
        catalog = read_po(f, locale="zh_CN")
    root = Path(__file__).resolve().parents[1]
    names = lambda text: {n for _, n, _, _ in string.Formatter().parse(text) if n is not None}  # noqa: E731
    used = {m for source in ("app_pages/inspect.py", "mnist_lab/cli/inspect_cmd.py")
            for _, m, _, _ in extract_from_file("python", root / source, keywords={"_": None})}
    assert len(used) > 40
    for msgid in used:
        entry = catalog.get(msgid)
        assert entry is not None and entry.string.strip(), f"not in the zh_CN catalog: {msgid!r}"
        assert names(entry.string) == names(msgid), msgid


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("preset", ["lab5", "resnet-small"])  # resnet-small: convolutions inside its blocks
def test_two_sessions_computing_feature_maps_of_one_shared_run_get_their_own(preset):
    """The Inspect page shares one LoadedRun between sessions: concurrent feature maps of two
    images each match that image's maps computed alone, and the shared network keeps no hook."""
    import threading

    torch.manual_seed(0)
    cfg = PRESETS[preset].model
    if (cfg.in_channels, cfg.image_size) != (1, 28):
        cfg = replace(cfg, in_channels=1, image_size=28)
    saved = SavedRun("r", cfg, TrainConfig(), DataConfig(), build_model(cfg).state_dict(), None, "finished", None)
    run = ir.rebuild(saved)
    images = [torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    alone = [ir.feature_maps(run, x) for x in images]
    assert alone[0] and [m.name for m in alone[0]] == [m.name for m in alone[1]]
    if preset == "resnet-small":
        assert any("." in m.name for m in alone[0])  # a block's own convolutions are reported too
    rounds, barrier, got, errors = 8, threading.Barrier(2), [[], []], []

    def session(k: int) -> None:
        try:
            for _ in range(rounds):
                barrier.wait()
                got[k].append(ir.feature_maps(run, images[k]))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
    threads = [threading.Thread(target=session, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for k in (0, 1):
        assert len(got[k]) == rounds
        for maps in got[k]:
            assert [m.name for m in maps] == [m.name for m in alone[k]]
            for m, want in zip(maps, alone[k]):
                np.testing.assert_allclose(m.maps, want.maps, rtol=1e-5, atol=1e-6, err_msg=m.name)
    assert _hooks(run.model) == 0
