"""The week-2 lessons: every lesson this build can run trains end to end on a tiny subset (256
images, 1 epoch, 2 seeds) and its reading matches its numbers; readings built from synthetic
numbers say up, down, flat and not distinguishable where the rule says so; the 'lesson' job
round-trips and is estimated run by run; the CLI, the report section, the Week 2 page (AppTest)
and the catalog entries."""
from __future__ import annotations

import json
import string
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from apptest import result_charts
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from report_fixtures import add_run

from mnist_lab import i18n
from mnist_lab.cli import main as cli
from mnist_lab.lab import lessons
from mnist_lab.lab.lessons import LESSONS, LessonConfig, plan, read_lesson, run_lesson, stored_lessons, summarize_lesson
from mnist_lab.lab.report import build_report
from mnist_lab.lab.verdicts import FLAT_ACC, judge
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.jobs import JobSpec, lesson_jobs, lesson_spec
from mnist_lab.service.policy import estimate_seconds, job_models

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(seeds=2, epochs=1, train_limit=256, test_limit=200)
ZH = i18n.translator("zh_CN").gettext


def tiny(name: str, **kw) -> LessonConfig:
    lesson = LESSONS[name]
    dataset = "mnist" if "mnist" in lesson.datasets else lesson.datasets[0]  # CIFAR-10's files are not here
    return LessonConfig(name, dataset=dataset, **{**TINY, **kw})


# ------------------------------------------------------------------------------ end to end

@pytest.mark.parametrize("name", list(LESSONS))
def test_every_lesson_runs_end_to_end_and_its_reading_matches_its_numbers(name, tmp_path):
    cfg = tiny(name)
    spec = lesson_spec(cfg, device="cpu")
    variants, skipped = plan(cfg, spec.train, spec.data)
    store = ResultStore(tmp_path / "r.sqlite")
    result = run_lesson(cfg, spec.train, spec.data, record=Recorder(store))
    assert result.status == "finished"
    table = result.table
    assert len(table) == 2 * len(variants) == spec.runs_total() and set(table["status"]) == {"finished"}
    assert list(result.summary["variant"]) == [v.label for v in variants]
    for v in variants:  # the summary is the mean and sample sd of the table's runs
        acc = table.loc[table["variant"] == v.label, "test_acc"]
        row = result.summary.set_index("variant").loc[v.label]
        assert row["n"] == 2 and row["mean"] == pytest.approx(acc.mean()) and row["sd"] == pytest.approx(acc.std())
        iters = table.loc[table["variant"] == v.label, "iterations"]
        assert set(iters) == {-(-256 // v.train.batch_size)}  # one epoch of 256 images
    base = result.summary.iloc[0]
    for c, (_, other) in zip(result.reading.contrasts, result.summary.iloc[1:].iterrows()):
        assert c.baseline == base["variant"] and c.variant == other["variant"]
        assert c.comparison == judge(base["variant"], other["variant"], other["mean"] - base["mean"],
                                     base["sd"] + other["sd"], 2, FLAT_ACC)
    text = result.reading.render()
    assert len(text) == len(result.reading.lines) and all(text)
    assert f"{100 * result.summary.iloc[1]['mean']:.2f}%" in text[0]
    assert result.reading.render(ZH) != text  # worded in Chinese too, same numbers
    stored = stored_lessons(store)  # what the report reads back from the store
    assert [s.name for s in stored] == [name]
    assert [r["mean"] for r in stored[0].summary] == pytest.approx(list(result.summary["mean"]))
    assert [r["params"] for r in stored[0].summary] == list(result.summary["params"])


def test_variants_are_the_base_with_one_change():
    cfg = tiny("epoch-batch")
    spec = lesson_spec(cfg, device="cpu")
    variants, _ = plan(cfg, spec.train, spec.data)
    assert [v.train.batch_size for v in variants] == [16, 64, 256]
    assert all(replace(v.train, batch_size=64) == replace(spec.train, batch_size=64) for v in variants)
    assert all(v.model == PRESETS["lab5"].model and v.data == spec.data for v in variants)
    cfg = tiny("normalize")
    norm_spec = lesson_spec(cfg)
    variants, _ = plan(cfg, norm_spec.train, norm_spec.data)
    assert [v.data.normalize for v in variants][:2] == ["none", "half"]
    assert variants[2].data.normalize == "dataset" and spec.data.normalize == "dataset"  # lab5's 'mnist' stats
    softmax = plan(tiny("softmax"), spec.train, spec.data)[0]
    assert [v.model.softmax_before_loss for v in softmax] == [False, True]


def test_full_settings_train_every_image_for_more_epochs():
    quick, full = lesson_spec(LessonConfig("shuffle")), lesson_spec(LessonConfig("shuffle", full=True))
    assert quick.data.train_limit == LESSONS["shuffle"].train_limit and quick.train.epochs == 2
    assert full.data.train_limit is None and full.data.test_limit is None and full.train.epochs == 3
    assert estimate_seconds(full, "cpu") > 5 * estimate_seconds(quick, "cpu")


@pytest.mark.parametrize("cfg, field", [(LessonConfig("nope"), "name"), (LessonConfig("shuffle", seeds=0), "seeds"),
                                        (LessonConfig("shuffle", dataset="svhn"), "dataset"),
                                        (LessonConfig("shuffle", train_limit=0), "train_limit"),
                                        (LessonConfig("shuffle", full="yes"), "full")])
def test_bad_lesson_settings_name_the_field(cfg, field):
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert err.value.field == field


# ------------------------------------------------------------------------------ readings from synthetic numbers

def summary(*groups) -> pd.DataFrame:
    """Rows (variant, per-seed accuracies, params, seconds, iterations) summarised as a lesson's are."""
    rows = []
    for label, accs, params, seconds, iterations in groups:
        rows += [dict(variant=label, seed=i, params=params, batch_size=64, test_acc=a, test_loss=0.1,
                      seconds=seconds, iterations=iterations, run_id=f"{label}{i}", status="finished")
                 for i, a in enumerate(accs)]
    return summarize_lesson(pd.DataFrame(rows, columns=lessons.LESSON_COLUMNS))


def test_a_clear_drop_reads_down_with_its_numbers_and_cost():
    s = summary(("logits into CrossEntropyLoss", [0.97, 0.972, 0.974], 8490, 2.0, 100),
                ("softmax before CrossEntropyLoss", [0.90, 0.91, 0.92], 8490, 3.0, 100))
    r = read_lesson(LESSONS["softmax"], s)
    c = r.contrasts[0]
    assert c.comparison.direction == "down" and c.comparison.diff == pytest.approx(-0.062)
    assert c.comparison.spread == pytest.approx(0.002 + 0.01)
    text = r.render()
    assert text[0] == ("softmax before CrossEntropyLoss: 91.00% test accuracy against 97.20% for logits into "
                       "CrossEntropyLoss, 6.20 points lower, more than the spread over seeds (1.20 points).")
    assert text[1] == ("Cost of softmax before CrossEntropyLoss: 8,490 parameters against 8,490 (+0); 3.00 s per "
                       "run against 2.00 s (1.50×).")
    assert r.best == "logits into CrossEntropyLoss" and text[-1].startswith("Best here: logits into")
    zh = r.render(ZH)
    assert zh[0].startswith("CrossEntropyLoss 之前加 softmax：测试准确率 91.00%")
    assert "6.20 个百分点" in zh[0]


def test_a_rise_reads_up_and_overlapping_seeds_are_not_distinguishable():
    s = summary(("without BatchNorm", [0.950, 0.952, 0.954], 8490, 2.0, 79),
                ("BatchNorm after each convolution", [0.970, 0.972, 0.974], 8550, 2.2, 79))
    r = read_lesson(LESSONS["batchnorm"], s)
    assert r.contrasts[0].comparison.direction == "up" and "2.00 points higher" in r.render()[0]
    assert "(+60)" in r.render()[1]
    s = summary(("without BatchNorm", [0.95, 0.96, 0.97], 8490, 2.0, 79),
                ("BatchNorm after each convolution", [0.955, 0.965, 0.975], 8550, 2.0, 79))
    r = read_lesson(LESSONS["batchnorm"], s)
    assert r.contrasts[0].comparison.direction == "not distinguishable" and r.best is None
    assert r.render()[0].endswith("within the spread over seeds (2.00 points): not distinguishable with 3 seeds.")
    assert r.render()[-1].startswith("No variant is ahead of all the others")


def test_one_seed_and_a_tiny_clear_change():
    s = summary(("without BatchNorm", [0.95], 8490, 2.0, 79),
                ("BatchNorm after each convolution", [0.99], 8550, 2.0, 79))
    r = read_lesson(LESSONS["batchnorm"], s)
    assert r.contrasts[0].comparison.reason == "one_seed" and "not distinguishable with 1 seed" in r.render()[0]
    s = summary(("without BatchNorm", [0.9500, 0.9500], 8490, 2.0, 79),
                ("BatchNorm after each convolution", [0.9505, 0.9505], 8550, 2.0, 79))
    r = read_lesson(LESSONS["batchnorm"], s)
    assert r.contrasts[0].comparison.direction == "flat" and "so flat" in r.render()[0]


def test_epoch_vs_batch_reads_iterations_and_the_best_is_ahead_of_every_other():
    s = summary(("batch size 16", [0.95, 0.951], 8490, 4.0, 625), ("batch size 64", [0.93, 0.931], 8490, 2.0, 157),
                ("batch size 256", [0.94, 0.941], 8490, 1.0, 40))
    r = read_lesson(LESSONS["epoch-batch"], s)
    text = r.render()
    assert text[1] == "batch size 64 takes 157 iterations per run against 625 for batch size 16, for the same " \
                      "training images."
    assert "(0.50×)" in text[2] and "(0.25×)" in text[5]
    assert r.best == "batch size 16"
    s = summary(("batch size 16", [0.95, 0.951], 8490, 4.0, 625), ("batch size 64", [0.96, 0.961], 8490, 2.0, 157),
                ("batch size 256", [0.96, 0.961], 8490, 1.0, 40))
    assert read_lesson(LESSONS["epoch-batch"], s).best is None  # two tie at the top


def test_fewer_than_two_finished_variants_say_so():
    s = summary(("without BatchNorm", [0.95, 0.96], 8490, 2.0, 79))
    r = read_lesson(LESSONS["batchnorm"], s)
    assert not r.contrasts and r.render() == ["Not enough finished runs to compare: at least two variants need a "
                                              "finished run."]


# ------------------------------------------------------------------------------ the job, the estimate, the CLI

def test_a_lesson_job_round_trips_and_is_estimated_run_by_run():
    spec = lesson_spec(LessonConfig("epoch-batch", seeds=2), device="cpu")
    assert JobSpec.from_json(spec.to_json()) == spec
    runs = lesson_jobs(spec)
    assert spec.runs_total() == len(runs) == 6 and [r.train.batch_size for r in runs] == [16, 16, 64, 64, 256, 256]
    assert [r.train.seed for r in runs] == [0, 1] * 3
    assert estimate_seconds(spec, "cpu") == pytest.approx(sum(estimate_seconds(r, "cpu") for r in runs))
    assert len(job_models(spec)) == 6


def test_cli_lists_the_lessons(capsys):
    assert cli.main(["lesson", "--list"]) == 0
    out = capsys.readouterr().out
    for name in LESSONS:
        assert name in out


def test_cli_runs_a_lesson_and_writes_its_tables(tmp_path, capsys):
    code = cli.main(["lesson", "softmax", "--seeds", "2", "--train-limit", "256", "--test-limit", "200",
                     "--device", "cpu", "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out"),
                     "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Softmax before CrossEntropyLoss:" in out and "4 runs (2 variants × 2 seeds) on mnist" in out
    assert "softmax before CrossEntropyLoss:" in out and "test accuracy against" in out
    table = pd.read_csv(tmp_path / "out" / "lesson_softmax.csv")
    assert list(table.columns) == lessons.LESSON_COLUMNS and len(table) == 4


@pytest.mark.parametrize("args, message", [(["lesson"], "Name a lesson"), (["lesson", "nope"], "Unknown lesson 'nope'"),
                                           (["lesson", "softmax", "--seeds", "0"], "1 to 100 seeds")])
def test_cli_bad_lesson_input_is_one_error_line(args, message, capsys, tmp_path):
    assert cli.main(args + ["--db", str(tmp_path / "r.sqlite")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_without_cifar10_says_how_to_get_it_and_where_the_lesson_runs_without(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    code = cli.main(["lesson", "cifar-nets", "--seeds", "1", "--train-limit", "256", "--device", "cpu", "--quiet",
                     "--data-dir", str(empty), "--db", str(tmp_path / "r.sqlite")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    assert f"The CIFAR-10 directory {empty}" in err and "cifar-10-python.tar.gz" in err
    assert err.splitlines()[-1] == "This lesson also runs on mnist, fashion-mnist: add --dataset mnist."


def test_the_cifar_nets_on_mnist_leave_out_vgg16_with_the_reason():
    cfg = tiny("cifar-nets")
    spec = lesson_spec(cfg)
    variants, skipped = plan(cfg, spec.train, spec.data)
    assert [v.label for v in variants] == ["the course's CIFAR-10 net", "LeNet"]
    assert all((v.model.in_channels, v.model.image_size) == (1, 28) for v in variants)
    assert skipped[0].label == "VGG16 with BatchNorm" and "Block 5" in skipped[0].reason
    cifar = LessonConfig("cifar-nets")
    assert cifar.resolved_dataset() == "cifar10"
    variants, skipped = plan(cifar, lesson_spec(cifar).train, lesson_spec(cifar).data)
    assert not skipped and [PRESETS[n].model for n in ("cifar-course", "lenet-cifar", "vgg16-cifar")] == \
        [v.model for v in variants]


# ------------------------------------------------------------------------------ the report

def add_lesson(store, group: str, accs: dict[str, list[float]]) -> None:
    for label, values in accs.items():
        for seed, acc in enumerate(values):
            add_run(store, PRESETS["lab5"].model, acc, seed=seed, experiment="lesson", group_id=group, label=label)


def test_the_report_has_each_lessons_newest_result(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    en = build_report(store, "en")
    assert any(b.text == "python -m mnist_lab lesson --list" for b in en.blocks)  # none run yet: how to
    add_lesson(store, "lesson:softmax:old", {"logits into CrossEntropyLoss": [0.5, 0.5],
                                             "softmax before CrossEntropyLoss": [0.5, 0.5]})
    add_lesson(store, "lesson:softmax:new", {"logits into CrossEntropyLoss": [0.97, 0.972, 0.974],
                                             "softmax before CrossEntropyLoss": [0.90, 0.91, 0.92]})
    stored = stored_lessons(store)
    assert [(s.name, s.group_id) for s in stored] == [("softmax", "lesson:softmax:new")]
    report = build_report(store, "en")
    text = [b.text for b in report.blocks]
    i = text.index("Week 2: the notes' questions as experiments")
    assert text[i + 1] == "Softmax before CrossEntropyLoss"
    assert any("91.00% test accuracy against 97.20%" in t and "6.20 points lower" in t for t in text)
    table = next(b for b in report.blocks[i:] if b.kind == "table")
    assert table.rows[0][:3] == ["logits into CrossEntropyLoss", "3", "97.20% ± 0.20"]
    figure = next(b for b in report.blocks[i:] if b.kind == "figure")
    assert figure.name == "lesson_softmax.png" and figure.png[:4] == b"\x89PNG"
    assert stored[0].values == [pytest.approx([0.97, 0.972, 0.974]), pytest.approx([0.90, 0.91, 0.92])]
    zh = [b.text for b in build_report(store, "zh").blocks]
    assert "第 2 周：讲义中的问题作为实验" in zh and any("6.20 个百分点" in t for t in zh)
    assert report.findings.to_dict()["lessons"][0]["reading"]["contrasts"][0]["comparison"]["direction"] == "down"


# ------------------------------------------------------------------------------ the catalog

def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def test_every_lesson_msgid_has_a_chinese_translation_with_the_same_placeholders():
    with open(i18n.catalog_path("zh_CN"), "rb") as f:
        catalog = read_po(f, locale="zh_CN")
    used = set()
    for source in ("mnist_lab/lab/lessons.py", "mnist_lab/cli/lesson_cmd.py", "app_pages/week2.py"):
        for _, message, _, _ in extract_from_file("python", ROOT / source, keywords=i18n.KEYWORDS):
            if isinstance(message, str) and message:
                used.add(message)
    assert len(used) > 60
    for msgid in sorted(used):
        entry = catalog.get(msgid)
        assert entry is not None and entry.string.strip(), f"not in the zh_CN catalog: {msgid!r}"
        assert _placeholders(entry.string) == _placeholders(msgid), msgid


# ------------------------------------------------------------------------------ the Week 2 page

@pytest.fixture
def app_db(tmp_path, monkeypatch):
    from app_lib.shared import WORKER_IDLE_ENV
    from mnist_lab.paths import DB_ENV

    path = tmp_path / "results.sqlite"
    monkeypatch.setenv(DB_ENV, str(path))
    monkeypatch.setenv(WORKER_IDLE_ENV, "5")
    monkeypatch.setenv("MNIST_LAB_WORKER_WARM", "0")
    yield path
    from app_lib.shared import spawned_workers

    for proc in spawned_workers().values():
        proc.terminate()
        proc.wait(30)


def test_week2_page_runs_a_tiny_lesson_as_a_worker_job(app_db):
    from streamlit.testing.v1 import AppTest

    from mnist_lab.service.jobs import StoreRunner

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.switch_page("app_pages/week2.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Week 2: the notes' questions as experiments"
    for name in LESSONS:  # every lesson shows its question and starts from its own seeds
        at.selectbox(key="w2_lesson").set_value(name).run()
        assert not at.exception, (name, at.exception)
        assert not at.button(key="w2_go_btn").disabled
        assert at.slider(key="w2_seeds").value == LESSONS[name].seeds
    at.selectbox(key="w2_lesson").set_value("softmax").run()
    assert (at.slider(key="w2_seeds").value, at.select_slider(key="w2_images").value) == (3, 10000)
    at.select_slider(key="w2_images").set_value(256).run()
    at.slider(key="w2_seeds").set_value(2).run()
    assert any("4 runs, 1 epoch(s) each" in c.value for c in at.caption)
    at.button(key="w2_go_btn").click().run()
    assert not at.exception, at.exception
    view = StoreRunner(ResultStore(app_db)).wait(at.session_state["_lesson_job"], timeout=180)
    assert view.status == "finished", view.error
    at.run()
    assert not at.exception, at.exception
    assert len(result_charts(at)) == 1  # test accuracy, mean ± sd (softmax compares no seconds)
    assert any("test accuracy against" in i.value for i in at.info)
    assert {"Summary (CSV)", "Runs (CSV)"} <= {b.label for b in at.get("download_button")}
    [summary] = [d for d in at.dataframe if "test accuracy, mean ± sd" in d.value.columns]
    widths = {name: c.get("width") for name, c in json.loads(summary.proto.columns).items() if name != "_index"}
    assert widths == {"variant": "medium", "runs": "small", "test accuracy, mean ± sd": "medium",
                      "parameters": "small", "seconds per run": "small", "iterations per run": "small"}
    assert not any("test accuracy, mean ± sd" in d.value.columns for c in at.columns for d in c.dataframe)  # full width
    at.selectbox(key="w2_lesson").set_value("shuffle").run()  # another lesson: softmax's results are not its own
    assert not at.exception, at.exception
    assert not result_charts(at) and "Summary (CSV)" not in {b.label for b in at.get("download_button")}
    assert [s.value for s in at.subheader] == [LESSONS["shuffle"].title]
    at.selectbox(key="w2_lesson").set_value("softmax").run()  # and back: they are still there
    assert len(result_charts(at)) == 1 and at.session_state["_lesson_job"] == view.id


def test_week2_page_without_cifar10_says_how_to_get_it_and_offers_mnist(app_db, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from mnist_lab.data import datasets as data
    from mnist_lab.service.jobs import StoreRunner

    empty = tmp_path / "no-cifar"
    empty.mkdir()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(empty))  # the worker inherits it: no download is tried
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.switch_page("app_pages/week2.py").run()
    at.selectbox(key="w2_lesson").set_value("cifar-nets").run()
    assert at.radio(key="w2_dataset_cifar-nets").value == "cifar10"
    assert any("CIFAR-10 comes with no package here" in i.value for i in at.info)
    at.select_slider(key="w2_images").set_value(256).run()
    at.slider(key="w2_seeds").set_value(1).run()
    at.button(key="w2_go_btn").click().run()
    view = StoreRunner(ResultStore(app_db)).wait(at.session_state["_lesson_job"], timeout=120)
    assert view.status == "failed" and "CIFAR-10" in view.error and "cifar-10-python.tar.gz" in view.error
    at.run()
    assert not at.exception, at.exception
    assert any("CIFAR" in e.value for e in at.error)  # the job panel shows the data helper's how-to
    assert any("Choose MNIST above" in c.value for c in at.caption)
    at.radio(key="w2_dataset_cifar-nets").set_value("mnist").run()
    assert not at.exception and not at.button(key="w2_go_btn").disabled
    assert any("VGG16 with BatchNorm" in c.value for c in at.caption)  # skipped on 28×28, with the reason


def test_the_residual_lesson_reads_the_final_training_loss_too():
    """At the residual lesson's budget test accuracy swings from seed to seed; the final training
    loss, which shortcuts change, is read by the same rule, in both languages, and shown."""
    def with_loss(groups, losses):
        frame = pd.DataFrame([dict(variant=g[0], seed=i, params=g[2], batch_size=32, test_acc=a, test_loss=0.1,
                                   seconds=g[3], iterations=g[4], run_id=f"{g[0]}{i}", status="finished",
                                   train_loss=lo) for g, ls in zip(groups, losses) for i, (a, lo) in
                              enumerate(zip(g[1], ls))], columns=lessons.LESSON_COLUMNS)
        return summarize_lesson(frame)

    groups = (("plain deep CNN", [0.66, 0.72, 0.89], 172234, 7.0, 157),
              ("the same depth with shortcuts", [0.90, 0.91, 0.76], 174986, 8.0, 157))
    s = with_loss(groups, ([0.83, 0.85, 0.89], [0.66, 0.63, 0.71]))
    assert lessons.loss_texts(s) == ["0.857 ± 0.031", "0.667 ± 0.040"]
    r = read_lesson(LESSONS["residual"], s)
    text = r.render()
    assert "not distinguishable with 3 seeds" in text[0]  # the accuracy: within its spread
    assert text[1] == ("the same depth with shortcuts: final training loss 0.667 against 0.857 for plain deep CNN, "
                       "lower by more than the spread over seeds (0.071): it trains better.")
    assert "训练得更好" in r.render(ZH)[1]
    assert text[-1].startswith("No variant is ahead of all the others in test accuracy")  # says which measure
    flat = read_lesson(LESSONS["residual"], with_loss(groups, ([0.70, 0.75, 0.80], [0.70, 0.74, 0.81]))).render()
    assert "no clear difference (3 seed(s)" in flat[1]
    no_loss = read_lesson(LESSONS["residual"], summary(*groups)).render()  # no training loss known: no loss line
    assert not any("training loss" in line for line in no_loss)
    assert not any("training loss" in line for line in read_lesson(LESSONS["batchnorm"], s).render())
