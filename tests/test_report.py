"""The lab report: the direction rule, findings from stores written row by row whose results
point up, down, flat or not distinguishably, the sentences that state each direction in Chinese
and English, what a section without runs says to run, the files (HTML, Word, Markdown zip,
findings.json, iterations.csv), CJK figures, the gettext catalog, the CLI and the page."""
from __future__ import annotations

import base64
import json
import re
import string
import warnings
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from report_fixtures import add_compare, add_run, add_softmax_pair, add_sweep, full_store
from streamlit.testing.v1 import AppTest

from mnist_lab import i18n
from mnist_lab.cli import main as cli
from mnist_lab.lab import figures
from mnist_lab.lab.findings import TODO, compute_findings, level_off, moving_mean
from mnist_lab.lab.report import build_report, to_markdown, write_report
from mnist_lab.lab.verdicts import DOWN, FLAT, UNCLEAR, UP, judge
from mnist_lab.nets.presets import PRESETS
from mnist_lab.paths import DB_ENV
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ITERATION_COLUMNS, ResultStore

ROOT = Path(__file__).resolve().parents[1]
# The files whose msgids this catalog covers, and the keywords their sentences go through.
SOURCES = ["mnist_lab/lab/report.py", "mnist_lab/lab/figures.py", "mnist_lab/lab/findings.py", "app_pages/report.py"]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None, "say": None, "para": None}
HEADINGS_ZH = ["实验五 采用卷积神经网络分类MNIST数据集", "【实验内容及总结】",
               "实验要求 1：使用MNIST数据集训练编写好的网络，要求记下每次迭代的损失值；",
               ("实验要求 2：改变卷积神经网络的卷积层和池化层的数量，观察分类准确率。"
                "思考网络层数的多少对分类准确性的影响；"),
               "实验要求 3：改变卷积神经网络的卷积核大小，观察分类的准确率。思考网络卷积核大小对分类准确率的影响。",
               "2. 分析卷积层和池化层对网络的影响。", "3. 分析卷积核大小对网络的影响。",
               "4. 总结卷积神经网络的特点，并说明损失函数在网络训练中的作用。", "实验心得体会"]
needs_cjk = pytest.mark.skipif(figures.cjk_font() is None,
                               reason="no CJK font installed (make fonts, or apt-get install fonts-noto-cjk)")


def text_of(report) -> str:
    return to_markdown(report)


@pytest.fixture
def store(tmp_path) -> ResultStore:
    return ResultStore(tmp_path / "r.sqlite")


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> ResultStore:
    """Read only: a sweep, a comparison, a softmax pair and a single run."""
    return full_store(tmp_path_factory.mktemp("full") / "full.sqlite")


@pytest.fixture(scope="module")
def full_text(full) -> dict[str, str]:
    return {lang: text_of(build_report(full, lang)) for lang in ("en", "zh")}


# ------------------------------------------------------------------------------ the rule

@pytest.mark.parametrize("diff, spread, n, direction, reason", [
    (0.05, 0.0, 1, UNCLEAR, "one_seed"),  # a big gap, but no spread to compare it with
    (0.003, 0.004, 3, UNCLEAR, "within_spread"),
    (-0.004, 0.004, 3, UNCLEAR, "within_spread"),  # equal to the spread does not count
    (0.0005, 0.0002, 3, FLAT, "below_flat"),
    (0.02, 0.004, 3, UP, "beyond_spread"),
    (-0.02, 0.004, 2, DOWN, "beyond_spread"),
])
def test_direction_rule(diff, spread, n, direction, reason):
    c = judge("a", "b", diff, spread, n, flat=0.001)
    assert (c.direction, c.reason) == (direction, reason)


def test_level_off_is_where_the_moving_mean_stays_in_its_band():
    losses = [2.0] * 50 + [0.5] * 150  # a step: window 10, band 0.15 → within it from iteration 59
    ma = moving_mean(losses, 10)
    assert ma[0] == pytest.approx(2.0) and ma[-1] == pytest.approx(0.5)
    assert level_off(ma, 0.15) + 10 == 59
    assert level_off([1.0, 2.0, 3.0], 0.5) is None  # still moving at the end


# ------------------------------------------------------------------------------ section 1

def test_loss_section_numbers_of_a_known_curve(store):
    rid = add_run(store, PRESETS["lab5"].model, 0.97, epochs=2, steps=100, losses=[2.0] * 50 + [0.5] * 150)
    f = compute_findings(store).loss
    n = f.numbers
    assert f.direction == DOWN and n["run_id"] == rid and n["iterations"] == 200 and n["window"] == 10
    assert n["first_mean"] == pytest.approx(2.0) and n["last_mean"] == pytest.approx(0.5)
    assert n["fell"] == pytest.approx(1.5) and n["fell_frac"] == pytest.approx(0.75)
    assert n["level_off_iteration"] == 59 and n["level_off_frac"] == pytest.approx(59 / 200)
    assert [e["epoch"] for e in n["per_epoch"]] == [1, 2] and n["per_epoch"][-1]["test_acc"] == pytest.approx(0.97)
    assert f.params == 8490 and f.seconds == pytest.approx(2.0)
    en, zh = text_of(build_report(store, "en")), text_of(build_report(store, "zh"))
    assert "fell from 2.000 to 0.500, 75.0% lower" in en and "levelled off after iteration 59 of 200" in en
    assert "从 2.000 降到 0.500，降低了 75.0%" in zh and "第 59 次迭代" in zh


def test_loss_that_rises_or_stays_says_so(store):
    add_run(store, PRESETS["lab5"].model, 0.1, losses=[0.5 + i / 10 for i in range(40)])
    f = compute_findings(store).loss
    assert f.direction == UP
    assert "rose from" in text_of(build_report(store, "en")) and "训练发散了" in text_of(build_report(store, "zh"))
    noisy = add_run(store, PRESETS["lab5"].model, 0.1, losses=[2.3 + (0.05 if i % 2 else -0.05) for i in range(40)])
    f = compute_findings(store, run_id=noisy).loss
    assert f.direction == UNCLEAR and f.numbers["level_off_iteration"] is None
    assert "did not learn" in text_of(build_report(store, "en", run_id=noisy))
    settled = add_run(store, PRESETS["lab5"].model, 0.98, losses=[0.110] * 20 + [0.105] * 20)
    assert compute_findings(store, run_id=settled).loss.direction == FLAT
    assert "stayed flat, 0.110 → 0.105" in text_of(build_report(store, "en", run_id=settled))
    assert "保持平稳，0.110 → 0.105" in text_of(build_report(store, "zh", run_id=settled))


def test_a_run_without_iterations(store):
    rid = add_run(store, PRESETS["lab5"].model, 0.9, losses=[])
    assert not compute_findings(store).loss.available  # the default: says what to train
    with pytest.raises(ValueError, match="0 recorded iteration"):
        compute_findings(store, run_id=rid)


def test_the_newest_finished_run_is_the_default_and_a_run_can_be_chosen(store):
    old = add_run(store, PRESETS["lab5"].model, 0.9)
    new = add_run(store, PRESETS["tiny-fc"].model, 0.8)
    add_run(store, PRESETS["lab5"].model, 0.5, status="stopped")  # newer, not finished
    assert compute_findings(store).loss.numbers["run_id"] == new
    assert compute_findings(store, run_id=old).loss.numbers["run_id"] == old
    with pytest.raises(ValueError, match="No run 'nope'"):
        compute_findings(store, run_id="nope")


# ------------------------------------------------------------------------------ sections 2 and 3

def test_deeper_networks_that_do_better_point_up(store):
    add_sweep(store, {(1, 5): 0.95, (2, 5): 0.97, (3, 5): 0.98})
    f = compute_findings(store).depth
    assert f.direction == UP and [s.direction for s in f.steps] == [UP, UP]
    assert [g.level for g in f.groups] == ["1", "2", "3"] and all(g.n == 3 for g in f.groups)
    assert f.groups[0].mean == pytest.approx(0.95) and f.groups[0].sd == pytest.approx(0.002)
    assert f.overall.diff == pytest.approx(0.03) and f.overall.spread == pytest.approx(0.004)
    assert f.fixed["kernel_size"] == 5 and f.fixed["seeds"] == [0, 1, 2] and not f.todo
    assert "test accuracy rose by 3.00 points (95.00% → 98.00%)" in text_of(build_report(store, "en"))
    assert "测试准确率提高了 3.00 个百分点（95.00% → 98.00%）" in text_of(build_report(store, "zh"))


def test_deeper_networks_that_do_worse_point_down_and_say_why(full, full_text):
    f = compute_findings(full).depth
    assert f.direction == DOWN and f.numbers["best"] == "1" and f.numbers["feature_map"] == {"1": 14, "2": 7, "3": 3}
    assert f.params == 70282 and f.seconds == pytest.approx(27.0)  # 3 seeds × (2 + 3 + 4) s
    en, zh = full_text["en"], full_text["zh"]
    assert "From 1 conv+pool layer to 3 conv+pool layers, test accuracy fell by 3.50 points" in en
    assert "only 1 epoch(s) of training" in en and "only 3×3 pixels" in en and "vanishing gradients" in en
    assert "从 1 个卷积+池化层 到 3 个卷积+池化层，测试准确率下降了 3.50 个百分点" in zh
    assert "只训练了 1 个轮次" in zh and "梯度消失" in zh


def test_kernel_sizes_within_the_seed_spread_are_not_distinguishable(full, full_text):
    f = compute_findings(full).kernel
    assert f.direction == UNCLEAR and f.overall.reason == "within_spread"
    assert [g.level for g in f.groups] == ["3", "5", "7"] and f.fixed["conv_layers"] == 2
    assert "the two cannot be distinguished" in full_text["en"] and "二者无法区分" in full_text["zh"]


def test_larger_kernels_that_do_worse_say_why(store):
    add_sweep(store, {(2, 3): 0.98, (2, 7): 0.95}, padding="valid")
    f = compute_findings(store).kernel
    assert f.direction == DOWN and f.numbers["feature_map"] == {"3": 5, "7": 2}
    assert [g.params for g in f.groups] == [12810, 27210]  # 160 + 4,640 + 8,010 and 800 + 25,120 + 1,290
    en, zh = text_of(build_report(store, "en")), text_of(build_report(store, "zh"))
    assert "Larger kernels did worse here" in en
    assert "kernel size 7×7 has 27,210 parameters against 12,810 for kernel size 3×3" in en
    assert "smaller feature maps (5×5 against 2×2)" in en
    assert "更大的卷积核在这里效果更差" in zh and "（5×5 对 2×2）" in zh


def test_a_tiny_but_clear_change_is_flat(store):
    add_sweep(store, {(2, 3): 0.9700, (2, 5): 0.9705}, offsets=(-0.0001, 0.0, 0.0001))
    f = compute_findings(store).kernel
    assert f.direction == FLAT
    assert "test accuracy is flat" in text_of(build_report(store, "en"))
    assert "测试准确率持平" in text_of(build_report(store, "zh"))


def test_one_seed_per_setting_cannot_be_distinguished_and_asks_for_seeds(store):
    add_sweep(store, {(1, 5): 0.90, (3, 5): 0.99}, offsets=(0.0,))
    f = compute_findings(store).depth
    assert f.direction == UNCLEAR and f.overall.reason == "one_seed"
    assert [(t.experiment, t.why) for t in f.todo] == [("depth", "one_seed")]
    en = text_of(build_report(store, "en"))
    assert "with 1 seed per setting there is no spread" in en and TODO["depth"][1] in en


def test_a_repeated_sweep_adds_no_seeds_and_other_settings_are_not_pooled(store):
    add_sweep(store, {(1, 5): 0.95, (2, 5): 0.96})
    add_sweep(store, {(1, 5): 0.95, (2, 5): 0.96})  # the same seeds again
    add_sweep(store, {(1, 5): 0.90, (2, 5): 0.92, (3, 5): 0.80}, epochs=3)  # another experiment
    f = compute_findings(store).depth
    assert f.fixed["epochs"] == 3 and [g.n for g in f.groups] == [3, 3, 3]
    assert compute_findings(store).kernel.available is False  # no sweep varies the kernel


# ------------------------------------------------------------------------------ section 4

def test_fc_vs_cnn_shows_locality_and_weight_sharing(full, full_text):
    f = compute_findings(full).analysis
    assert f.direction == UP
    assert [s.direction for s in f.steps] == [UP, DOWN, DOWN, DOWN, UP]
    assert f.steps[4].diff == pytest.approx(0.15)  # CNN loses 16 points, FC 1
    c = f.numbers["compare"]
    assert c["cnn"]["params"] == 6422 and c["fc"]["params"] == 6442
    assert c["weight_sharing"]["params"] == 156 and c["weight_sharing"]["dense_params"] == 784 * 3456 + 3456
    assert f.numbers["softmax"]["comparison"]["direction"] == DOWN
    en, zh = full_text["en"], full_text["zh"]
    assert "shuffling the pixels cost the CNN 15.00 points more than the FC net" in en
    assert "The softmax before the loss hurt" in en and "2,712,960 parameters" in en
    assert "局部性：像素打乱使卷积神经网络比全连接网络多损失了 15.00 个百分点" in zh
    assert "在损失函数之前加 softmax 降低了准确率" in zh and "权值共享" in zh


def test_fc_vs_cnn_the_other_way_round_is_not_called_locality(store):
    add_compare(store, {("FC", "normal"): 0.90, ("CNN", "normal"): 0.92, ("FC", "permuted"): 0.70,
                        ("CNN", "permuted"): 0.91})
    add_softmax_pair(store, 0.95, 0.951)
    f = compute_findings(store).analysis
    assert f.direction == DOWN and f.numbers["softmax"]["comparison"]["direction"] == UNCLEAR
    en = text_of(build_report(store, "en"))
    assert "the opposite of what locality predicts" in en and "Locality:" not in en
    assert "cannot be told from seed noise" in en


# ------------------------------------------------------------------------------ what to run

def test_sections_without_runs_say_what_to_run(store):
    fs = compute_findings(store)
    assert not any(f.available for f in fs.sections())
    assert [t.experiment for f in fs.sections() for t in f.todo] == ["loss", "depth", "kernel", "compare", "softmax"]
    en, zh = text_of(build_report(store, "en")), text_of(build_report(store, "zh"))
    for _key, (_page, command) in TODO.items():
        assert command in en and command in zh
    assert "python -m mnist_lab sweep --conv-layers 1 2 3 --kernel-sizes 5 --seeds 3 --epochs 1" in en
    assert "run the experiment on the “Sweep: depth × kernel” page" in en
    assert "请在“扫描：层数 × 卷积核”页面运行该实验" in zh  # the page as the app names it
    for command in TODO.values():  # every command the report suggests is one the CLI accepts
        if "for s in" not in command[1]:
            cli.build_parser().parse_args(command[1].split()[3:])


def test_a_workspace_sees_only_its_own_runs(store):
    with store.context(workspace="alice"):
        add_sweep(store, {(1, 5): 0.95, (2, 5): 0.97})
    assert compute_findings(store, workspace="alice").depth.available
    assert not compute_findings(store, workspace="bob").depth.available
    assert compute_findings(store, workspace="bob").runs_considered == 0


# ------------------------------------------------------------------------------ files

def test_report_writes_every_file(full, tmp_path):
    paths = write_report(build_report(full, "zh"), tmp_path / "out")
    assert sorted(paths) == sorted(["report.html", "report.docx", "report_md.zip", "findings.json", "iterations.csv"])
    from docx import Document

    doc = Document(str(paths["report.docx"]))
    headings = [p.text for p in doc.paragraphs if p.style.name.startswith(("Heading", "Title"))]
    for heading in HEADINGS_ZH:
        assert heading in headings
    # + the depth × kernel grid; + the appendix's network drawn and its per-layer table (issue 28)
    assert len(doc.inline_shapes) == 5 + 1 and len(doc.tables) == 7 + 1 + 1
    page = paths["report.html"].read_text("utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 6 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert '<html lang="zh-CN">' in page and "@media print" in page and "src=\"http" not in page
    for heading in HEADINGS_ZH:
        assert heading in page
    with zipfile.ZipFile(paths["report_md.zip"]) as z:
        md = z.read("report.md").decode("utf-8")
        pictures = re.findall(r"\]\((figures/[^)]+)\)", md)
        assert len(pictures) == 6 and all(z.read(p)[:4] == b"\x89PNG" for p in pictures)
    found = json.loads(paths["findings.json"].read_text("utf-8"))
    assert found["lang"] == "zh_CN" and found["rule"]["flat_accuracy"] == 0.001
    assert found["rule"]["min_runs_per_group"] == 2
    assert {k: found[k]["direction"] for k in ("loss", "depth", "kernel", "analysis")} == \
        {"loss": DOWN, "depth": DOWN, "kernel": UNCLEAR, "analysis": UP}
    assert found["depth"]["groups"][0]["values"] == pytest.approx([0.973, 0.975, 0.977])
    iters = pd.read_csv(paths["iterations.csv"])
    assert list(iters.columns) == ITERATION_COLUMNS and len(iters) == 200
    assert set(iters["run_id"]) == {found["loss"]["numbers"]["run_id"]}


def test_the_confusion_matrix_keeps_four_digit_counts_on_one_line(store, tmp_path, monkeypatch):
    """Word sized the matrix's columns to its headers and broke "1,127" inside its cell ("1,12/7"):
    the .docx sets 8 pt type, a fixed layout of equal count columns and no wrapping in a count."""
    from docx import Document
    from docx.oxml.ns import qn
    from docx.shared import Cm, Pt

    from mnist_lab.lab import findings, report

    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    counts = [[1127 if t == p else t + p for p in range(10)] for t in range(10)]
    monkeypatch.setattr(findings, "confusion_numbers", lambda *a, **kw: dict(
        class_names=names, counts=counts, n=sum(map(sum, counts)), accuracy=0.98, pairs=[]))
    add_run(store, PRESETS["lab5"].model, 0.98)
    paths = write_report(build_report(store, "en"), tmp_path / "out")
    doc = Document(str(paths["report.docx"]))
    [matrix] = [t for t in doc.tables if t.cell(0, 0).text == "true / predicted"]
    assert matrix.autofit is False  # w:tblLayout fixed: Word keeps the widths
    section = doc.sections[-1]
    text_width = section.page_width - section.left_margin - section.right_margin
    widths = [c.width for c in matrix.rows[1].cells]
    assert sum(widths) <= text_width and len(set(widths[1:])) == 1
    assert widths[1] >= Cm(1.2)  # 5 characters of 8 pt (about 0.65 cm) and the cell's margins (2 × 0.19 cm)
    for r, row in enumerate(matrix.rows):
        assert [c.width for c in row.cells] == widths
        for c, cell in enumerate(row.cells):
            assert all(run.font.size == Pt(report.COUNT_PT) for p in cell.paragraphs for run in p.runs)
            if r and c:
                assert cell._tc.tcPr.find(qn("w:noWrap")) is not None
    assert [matrix.cell(t + 1, t + 1).text for t in range(10)] == ["1,127"] * 10  # the unbroken number
    page = paths["report.html"].read_text("utf-8")
    assert '<table class="counts">' in page and "td + td { white-space: nowrap;" in page
    assert "<td>1,127</td>" in page


def test_both_languages_give_the_same_numbers(full_text):
    number = re.compile(r"[-+]?\d[\d,]*\.\d+%?|\d{1,3}(?:,\d{3})+")
    assert sorted(number.findall(full_text["en"])) == sorted(number.findall(full_text["zh"]))
    assert i18n.pct(0.9891) == "98.91%" and i18n.integer(1234) == "1,234" and i18n.points(-0.0123) == "-1.23"


@needs_cjk
def test_chinese_figures_have_every_glyph(full):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = build_report(full, "zh")
    missing = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert not missing and not report.warnings
    assert len(report.figures()) == 6  # the network drawn (lab.architecture) in the appendix


def test_without_a_cjk_font_figures_fall_back_to_english(full, monkeypatch):
    monkeypatch.setattr(figures, "cjk_font", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zh = build_report(full, "zh")
    assert not [w for w in caught if "missing from" in str(w.message)]
    assert zh.warnings and "fonts-noto-cjk" in zh.warnings[0]
    en = build_report(full, "en")
    assert [b.png for b in zh.figures()] == [b.png for b in en.figures()]  # the English figures, exactly
    assert zh.blocks[0].text == "实验五 采用卷积神经网络分类MNIST数据集"  # the text stays Chinese


# ------------------------------------------------------------------------------ catalog

def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_msgid_has_a_chinese_translation():
    with open(i18n.catalog_path("zh_CN"), "rb") as f:
        catalog = read_po(f, locale="zh_CN")
    used = set()
    for source in SOURCES:
        for _, message, _, _ in extract_from_file("python", ROOT / source, keywords=KEYWORDS):
            msgid = message if isinstance(message, str) else message[0]
            if msgid:
                used.add(msgid)
    assert len(used) > 100
    for msgid in sorted(used):
        entry = catalog.get(msgid)
        assert entry is not None, f"not in the zh_CN catalog: {msgid!r}"
        assert not entry.fuzzy, msgid
        strings = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        assert all(s.strip() for s in strings), f"no translation: {msgid!r}"
        ids = entry.id if isinstance(entry.id, tuple) else (entry.id,)
        assert all(_placeholders(s) == _placeholders(ids[0]) for s in strings), msgid


def test_translator_and_language_resolution():
    assert i18n.translator("zh").gettext("Lab report") == "实验报告"
    assert i18n.translator("en").gettext("Lab report") == "Lab report"
    zh = i18n.translator("zh_CN")
    assert zh.ngettext("{n} conv+pool layer", "{n} conv+pool layers", 3).format(n=3) == "3 个卷积+池化层"
    assert i18n.translator("en").ngettext("{n} conv+pool layer", "{n} conv+pool layers", 1) == "{n} conv+pool layer"
    assert i18n.resolve_lang("zh-CN") == "zh_CN" and i18n.resolve_lang("EN") == "en"
    assert i18n.resolve_lang(environ={"LANG": "zh_CN.UTF-8"}) == "zh_CN"
    assert i18n.resolve_lang(environ={"LC_ALL": "en_US.UTF-8", "LANG": "zh_CN.UTF-8"}) == "en"
    assert i18n.resolve_lang(environ={"LANGUAGE": "zh_TW:en"}) == "zh_CN"
    assert i18n.resolve_lang(environ={}) == "en"
    with pytest.raises(ValueError, match="choose zh or en"):
        i18n.resolve_lang("fr")


# ------------------------------------------------------------------------------ CLI and page

def test_cli_report_end_to_end(full, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["report", "--out", str(out), "--db", str(full.path), "--lang", "en"]) == 0
    assert "wrote" in capsys.readouterr().out
    page = (out / "report.html").read_text("utf-8")
    assert "Requirement 2: change the number of convolution and pooling layers" in page
    run = compute_findings(full).depth.groups[0].run_ids[0]
    assert cli.main(["report", "--out", str(out), "--db", str(full.path), "--lang", "zh", "--run", run]) == 0
    assert json.loads((out / "findings.json").read_text("utf-8"))["loss"]["numbers"]["run_id"] == run
    assert "实验要求 1" in (out / "report.html").read_text("utf-8")


@pytest.mark.parametrize("args, message", [
    (["--lang", "fr"], "Unknown language 'fr'"),
    (["--run", "nope"], "No run 'nope'"),
    (["--db", "missing.sqlite"], "No results database"),
])
def test_cli_report_bad_input_is_one_error_line(full, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    argv = ["report", "--out", str(tmp_path / "o"), *(["--db", str(full.path)] if "--db" not in args else []), *args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_report_page_shows_the_sections_and_downloads(full, monkeypatch):
    monkeypatch.setenv(DB_ENV, str(full.path))
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    at = AppTest.from_file(str(ROOT / "app_pages" / "report.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "实验五 采用卷积神经网络分类MNIST数据集"
    assert [s.value for s in at.subheader][1:4] == [h for h in HEADINGS_ZH if h.startswith("实验要求")]
    assert len(at.get("download_button")) == 5 and len(at.get("image")) == 6  # iterations.csv too; the network drawn
    run = compute_findings(full).depth.groups[-1].run_ids[0]
    at.session_state["_lang"] = "en"  # what the app's sidebar switch sets (app_lib/lang.py)
    at.selectbox(key="report_run").set_value(run)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value.startswith("Lab 5") and any(f"Run {run}:" in m.value for m in at.markdown)


def test_report_from_runs_that_really_trained(tmp_path, mnist_raw):
    """The store as training writes it (not row by row): a tiny sweep, a one-seed comparison and
    a 2-epoch run on 256 images."""
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.lab.experiments import CompareConfig, SweepConfig, run_compare, run_single, run_sweep
    from mnist_lab.training.loop import TrainConfig

    store = ResultStore(tmp_path / "trained.sqlite")
    tiny, cfg = DataConfig(train_limit=256, test_limit=500), TrainConfig(epochs=1, device="cpu")
    sweep = run_sweep(SweepConfig(conv_layers=(1, 2), kernel_sizes=(5,), seeds=2, base_channels=4), cfg, tiny,
                      record=Recorder(store))
    run_compare(CompareConfig(seeds=1), cfg, tiny, record=Recorder(store))
    single = run_single(PRESETS["lab5"].model, TrainConfig(epochs=2, device="cpu"), tiny, record=Recorder(store))
    fs = compute_findings(store)
    assert fs.loss.numbers["run_id"] == single.run_id and fs.loss.numbers["iterations"] == len(single.losses) == 8
    assert fs.loss.numbers["per_epoch"][-1]["test_acc"] == pytest.approx(single.final_test_acc)
    depth = fs.depth
    assert [g.level for g in depth.groups] == ["1", "2"] and [g.n for g in depth.groups] == [2, 2]
    by_cell = sweep.table.groupby("conv_layers")["test_acc"].mean()
    assert [g.mean for g in depth.groups] == pytest.approx([by_cell[1], by_cell[2]])
    assert depth.numbers["feature_map"] == {"1": 14, "2": 7} and [g.params for g in depth.groups] == \
        [int(p) for p in sweep.table.groupby("conv_layers")["params"].first()]
    assert not fs.kernel.available and fs.kernel.todo[0].why == "missing"
    analysis = fs.analysis
    assert analysis.direction == UNCLEAR and analysis.steps[-1].reason == "one_seed"
    assert [(t.experiment, t.why) for t in analysis.todo] == [("compare", "one_seed"), ("softmax", "missing")]
    paths = write_report(build_report(store, "en"), tmp_path / "out")
    assert len(pd.read_csv(paths["iterations.csv"])) == 8


# English term in a msgid -> the Chinese term its translation must use (docs/GLOSSARY.md)
GLOSSARY = {"test accuracy": "测试准确率", "random seed": "随机种子", "learning rate": "学习率", "momentum": "动量",
            "batch size": "批大小", "epoch": "轮次", "iteration": "迭代", "moving mean": "滑动平均",
            "kernel size": "卷积核", "feature map": "特征图", "fully-connected": "全连接", "parameters": "参数",
            "locality": "局部性", "weight sharing": "权值共享", "translation invariance": "平移不变性",
            "BatchNorm": "批归一化", "permuted": "打乱", "shuffl": "打乱", "conv+pool": "卷积+池化",
            "receptive field": "感受野", "vanishing gradients": "梯度消失", "cross-entropy": "交叉熵",
            "points": "百分点", "mean ± sd": "均值 ± 标准差", "loss": "损失"}


def test_the_catalog_uses_the_glossary_terms():
    from mnist_lab.lab.report import H_REQ2, H_REQ3

    exempt = {H_REQ2, H_REQ3}  # the lab sheet's own words: it says 分类准确率
    with open(i18n.catalog_path("zh_CN"), "rb") as f:
        catalog = read_po(f, locale="zh_CN")
    wrong = []
    for entry in catalog:
        msgid = entry.id if isinstance(entry.id, str) else entry.id[0]
        if not msgid or msgid in exempt:
            continue
        msgstr = entry.string if isinstance(entry.string, str) else entry.string[0]
        msgid = re.sub(r"\(columns [^)]*\)", "", msgid)  # CSV column names stay as they are
        for en, zh in GLOSSARY.items():
            if re.search(r"\b" + re.escape(en), msgid, re.IGNORECASE) and zh not in msgstr:
                wrong.append(f"{en!r} → {zh!r}: {msgid!r} = {msgstr!r}")
    assert not wrong, "\n".join(wrong)


def test_the_report_says_how_many_test_images_its_accuracies_come_from():
    """A demo's examples are scored on 2,000 test images: the report must not say 10,000."""
    import pandas as pd

    from mnist_lab.lab.findings import test_counts
    from mnist_lab.lab.report import tested_on

    full = pd.DataFrame({"dataset": ["mnist", "fashion-mnist"], "test_limit": [None, float("nan")]})
    assert test_counts(full) == [10000]
    mixed = pd.DataFrame({"dataset": ["mnist", "mnist", "mnist"], "test_limit": [2000, None, 2000]})
    assert test_counts(mixed) == [2000, 10000]
    assert test_counts(pd.DataFrame({"dataset": ["mnist"], "test_limit": [50000]})) == [10000]  # at most the set

    class Seen:  # what tested_on reads of the findings
        test_images: list

    seen = Seen()
    for counts, said in (([2000], "2,000"), ([2000, 10000], "2,000–10,000"), ([], "10,000")):
        seen.test_images = counts
        assert tested_on(seen) == said
