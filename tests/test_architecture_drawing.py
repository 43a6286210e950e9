"""The network drawn as it is built (issue 28): the diagram's shapes, parameters and formulas are the
summary's (nets.model.summarize, count_params) for every preset and every block type's examples;
residual blocks get their shortcut arcs; the plotly and the report's figures build for every preset;
the Train page draws it and redraws it when a slider moves; the report carries it beside its table."""
from __future__ import annotations

import json
import math
import re

import pytest
from apptest import app_db, open_page
from report_fixtures import add_run
from test_i18n import english_left

from app_lib.arch_chart import architecture_figure
from mnist_lab.i18n import translator, word
from mnist_lab.lab import figures
from mnist_lab.lab.architecture import build_diagram, shape_text
from mnist_lab.lab.report import build_report, to_docx, to_html
from mnist_lab.nets.blocks.base import BLOCK_TYPES
from mnist_lab.nets.model import ModelConfig, count_params, summarize
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.runs.store import ResultStore

EXAMPLES = [b for cls in BLOCK_TYPES.values() for b in cls.examples()]
CJK = re.compile(r"[\u3400-\u9fff]")


def alone(block) -> ModelConfig:
    return ModelConfig(conv_channels=(), blocks=(block,), head="gap-fc")


def check(cfg: ModelConfig) -> None:
    """Every box's rows are the summary's, in order; its shape is its last row's; sizes grow with shape."""
    d, rows = build_diagram(cfg), summarize(cfg)
    assert d.rows == rows and d.params == count_params(cfg) == sum(b.params for b in d.boxes)
    assert d.boxes[0].kind == "input" and d.boxes[0].shape == (cfg.in_channels, cfg.image_size, cfg.image_size)
    for box in d.boxes[1:]:
        assert box.rows and box.shape == box.rows[-1].output_shape, box
    blocks = [b for b in d.boxes if b.kind == "block"]
    assert len(blocks) == len(cfg.stages())
    assert [str(b.label) for b in blocks] == [f"block {i}" for i in range(1, len(cfg.stages()) + 1)]
    maps = [b for b in d.boxes if len(b.shape) == 3]
    for a, b in zip(maps, maps[1:]):  # a bigger side is a taller box, more channels a wider one (sqrt / log scaling)
        assert (a.shape[-1] > b.shape[-1]) <= (a.height >= b.height)
        assert (a.shape[0] > b.shape[0]) <= (a.width >= b.width)
    xs = [b.x for b in d.boxes]
    assert xs == sorted(xs) and all(b.x + b.width < c.x for b, c in zip(d.boxes, d.boxes[1:]))  # no overlap
    flatten = next(b for b in d.boxes if b.rows and b.rows[-1].name == "flatten")
    assert str(flatten.label) == "Flatten"
    assert all(str(b.label) in [r.layer for r in b.rows] for b in d.boxes if b.kind == "head")
    assert flatten.shape == (math.prod(d.boxes[d.boxes.index(flatten) - 1].shape),)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_drawn_with_the_summarys_shapes_and_parameters(name):
    check(PRESETS[name].model)


@pytest.mark.parametrize("block", EXAMPLES, ids=repr)
def test_every_block_types_examples_are_drawn_with_the_summarys_shapes_and_parameters(block):
    check(alone(block))


def test_every_block_type_says_what_it_does_in_the_drawing():
    for block in EXAMPLES:  # every registered type's examples: a new type's drawing_notes are checked too
        box = build_diagram(alone(block)).boxes[1]
        assert box.notes and all(word(m, "zh_CN") != str(m) for m in box.notes if str(m) not in ("ReLU",)), box


def test_kernel_pooling_and_the_flattening_are_annotated():
    d = build_diagram(PRESETS["lab5"].model)
    said = [[str(m) for m in b.notes] for b in d.boxes]
    assert said[1] == ["conv 5×5, valid padding", "max-pool 2×2, then ReLU"]
    assert said[3] == ["flatten 20×4×4 → 320"] and shape_text(d.boxes[3].shape) == "320"
    assert [r.formula for r in d.boxes[1].rows if r.params] == ["10×(1×5×5) + 10 = 260"]
    vgg = build_diagram(PRESETS["vgg16-cifar"].model)
    assert [str(m) for m in vgg.boxes[3].notes] == ["conv 3×3, same padding", "3 convolutions", "BatchNorm",
                                                    "ReLU, then max-pool 2×2"]
    dropped = build_diagram(cnn_config(2, 3, hidden=(32,), dropout=0.25, softmax_before_loss=True))
    check(cnn_config(2, 3, hidden=(32,), dropout=0.25, softmax_before_loss=True))  # every row in a box
    assert [r.name for r in dropped.boxes[-1].rows] == ["drop2", "fc2", "softmax"]
    assert [str(m) for m in dropped.boxes[-2].notes] == ["dropout 0.25", "fully connected", "ReLU"]


def test_residual_blocks_get_shortcut_arcs_and_plain_ones_none():
    d = build_diagram(PRESETS["resnet-small"].model)
    assert [(a.start, a.end) for a in d.arcs] == [(i, i + 1) for i in range(1, 7)]  # each of the six blocks
    assert [str(a.note) for a in d.arcs] == ["+ identity", "+ identity", "+ 1×1 projection", "+ identity",
                                             "+ 1×1 projection", "+ identity"]
    assert build_diagram(PRESETS["plain-small"].model).arcs == ()
    assert build_diagram(PRESETS["lab5"].model).arcs == ()
    fig = architecture_figure(d)
    paths = [s for s in fig.layout.shapes if s.type == "path"]
    assert len(paths) == 6 and all(s.path.startswith("M ") and " Q " in s.path for s in paths)


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_figure_builds_for_every_preset(name):
    d = build_diagram(PRESETS[name].model)
    fig = architecture_figure(d, lang="zh_CN")
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == len(d.boxes)
    assert f"{d.params:,}" in fig.layout.title.text
    hover = fig.data[0].hovertext
    assert len(hover) == len(d.boxes) and all(r.formula in "".join(hover) for r in d.rows if r.params)


@pytest.mark.parametrize("cfg", [p.model for p in PRESETS.values()] + [alone(b) for b in EXAMPLES],
                         ids=[*PRESETS, *map(repr, EXAMPLES)])
def test_in_chinese_the_drawing_shows_no_english_word(cfg):
    """What the figure writes (title, labels, notes, arcs, hovers) passes the pages' Chinese check (test_i18n)."""
    fig = architecture_figure(build_diagram(cfg), _=translator("zh_CN").gettext, lang="zh_CN")
    texts = [fig.layout.title.text, *(a.text for a in fig.layout.annotations), *fig.data[0].hovertext]
    assert not [t for t in texts if english_left(t)], [english_left(t) for t in texts if english_left(t)]


def test_the_report_figure_draws_in_both_languages():
    d = build_diagram(PRESETS["resnet-small"].model)
    for lang in ("en", "zh_CN"):
        png = figures.architecture_figure(d, lambda s: s, cjk=lang != "en", lang=lang)
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_the_train_page_draws_the_network_and_redraws_it_when_a_slider_moves(tmp_path, monkeypatch):
    app_db(tmp_path / "results.sqlite", monkeypatch)
    at = open_page("train", {"lang": "zh_CN"})

    def drawn():
        (chart,) = [c for c in at.get("plotly_chart") if "train_arch_chart" in str(c.proto.id)]
        return json.dumps(json.loads(chart.proto.spec), ensure_ascii=False)

    before = drawn()
    assert "8,490" in before and "输入" in before  # lab5's parameters; the words in Chinese
    at.slider(key="train_kernel").set_value(3).run()
    assert not at.exception, at.exception
    after = drawn()
    k3 = count_params(ModelConfig(conv_channels=(10, 20), kernel_size=3, pool_before_relu=True))
    assert after != before and f"{k3:,}" in after and "3×3" in after and "8,490" not in after


def test_the_report_has_the_network_drawn_beside_its_layer_table(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    try:
        run_id = add_run(store, PRESETS["lab5"].model, 0.97)
        for lang in ("en", "zh_CN"):
            report = build_report(store, lang=lang, run_id=run_id)
            names = [b.name for b in report.figures()]
            assert "network.png" in names
            at = next(i for i, b in enumerate(report.blocks) if b.name == "network.png")
            table = report.blocks[at + 1]
            assert table.kind == "table" and len(table.rows) == len(summarize(PRESETS["lab5"].model))
            assert table.rows[0][0].startswith("conv1: Conv2d(1→10, k5)") and table.rows[0][2] == "260"
            assert bool(CJK.search(report.blocks[at].text)) == (lang != "en")
        assert 'alt="The network of run' in to_html(build_report(store, lang="en", run_id=run_id))
        assert len(to_docx(report)) > 20_000
    finally:
        store.close()


def test_the_inspect_page_draws_the_chosen_runs_network(tmp_path, monkeypatch, tiny_data):
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.lab.experiments import run_single
    from mnist_lab.runs.recorder import Recorder
    from mnist_lab.training.loop import TrainConfig

    store = ResultStore(app_db(tmp_path / "results.sqlite", monkeypatch))
    try:
        cfg = ModelConfig(conv_channels=(), blocks=(BLOCK_TYPES["residual"](4, stride=2),), head="gap-fc")
        run = run_single(cfg, TrainConfig(epochs=1, engine="plain"), DataConfig(train_limit=512, test_limit=1000),
                         record=Recorder(store), data=tiny_data)
    finally:
        store.close()
    at = open_page("inspect", {"run": run.run_id})
    (chart,) = [c for c in at.get("plotly_chart") if "insp_arch_chart" in str(c.proto.id)]
    spec = json.loads(chart.proto.spec)
    assert f"{count_params(cfg):,}" in spec["layout"]["title"]["text"]
    assert [s["type"] for s in spec["layout"]["shapes"]].count("path") == 1  # its one residual shortcut
