"""Did it learn? The one rule (lab/verdicts.py) at its boundaries, and how a lesson's reading,
the summaries and the CLI say that a run did not learn."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from mnist_lab import i18n
from mnist_lab.lab import lessons
from mnist_lab.lab.experiments import summarize_over_seeds
from mnist_lab.lab.lessons import LESSONS, read_lesson, summarize_lesson
from mnist_lab.lab.verdicts import (
    CHANCE_MARGIN,
    DIVERGED,
    LEARNED,
    LOSS_FRACTION,
    NOT_LEARNED,
    chance,
    did_learn,
    learning_verdict,
    loss_bar,
)

ZH = i18n.translator("zh_CN").gettext


# ------------------------------------------------------------------------------ the rule

def test_the_thresholds_are_chance_plus_ten_points_and_nine_tenths_of_ln_classes():
    assert CHANCE_MARGIN == 0.10 and LOSS_FRACTION == 0.9
    assert chance(10) == pytest.approx(0.1) and chance(100) == pytest.approx(0.01)
    assert loss_bar(10) == pytest.approx(0.9 * math.log(10))  # 2.072
    assert loss_bar(100) == pytest.approx(0.9 * math.log(100))  # 4.145


@pytest.mark.parametrize("acc, loss, n_classes, learned", [
    (0.20, 0.5, 10, True),  # exactly chance + 10 points: learned
    (0.1999, 0.5, 10, False),  # just under
    (0.95, 0.9 * math.log(10), 10, False),  # loss exactly at the bar: not below it
    (0.95, 0.9 * math.log(10) - 1e-6, 10, True),
    (0.11, 1.0, 100, True),  # 100 classes: chance 1%, so 11% learned ...
    (0.11, 1.0, 10, False),  # ... while on 10 classes 11% is at chance
    (0.11, 0.9 * math.log(100), 100, False),
    (0.105, 3.0, 100, False),
    (float("nan"), 0.5, 10, False),
    (0.95, float("nan"), 10, False),
    (0.95, float("inf"), 10, False),
    (None, 0.5, 10, False),
    (0.95, None, 10, False),
])
def test_the_rule_at_its_boundaries(acc, loss, n_classes, learned):
    assert did_learn(acc, loss, n_classes) is learned


def test_diverged_stays_its_own_verdict_and_unfinished_runs_have_none():
    assert learning_verdict("diverged", 0.1, float("nan"), 10) == DIVERGED
    assert learning_verdict("finished", 0.98, 0.05, 10) == LEARNED
    assert learning_verdict("finished", 0.11, 2.30, 10) == NOT_LEARNED
    assert learning_verdict("stopped", 0.98, 0.05, 10) is None


# ------------------------------------------------------------------------------ summaries and readings

def table(*groups) -> pd.DataFrame:
    """Lesson rows: (variant, per-seed accuracies, final training loss)."""
    rows = []
    for label, accs, loss in groups:
        verdict = [learning_verdict("finished", a, loss, 10) for a in accs]
        rows += [dict(variant=label, seed=i, params=8490, batch_size=64, test_acc=a, test_loss=0.1, seconds=2.0,
                      iterations=100, run_id=f"{label}{i}", status="finished", train_loss=loss, verdict=v)
                 for i, (a, v) in enumerate(zip(accs, verdict))]
    return pd.DataFrame(rows, columns=lessons.LESSON_COLUMNS)


def test_the_summary_counts_runs_that_did_not_learn_and_says_so():
    t = table(("A", [0.97, 0.98, 0.975], 0.1), ("B", [0.11, 0.10, 0.12], 2.3))
    s = summarize_over_seeds(t, ["variant"]).set_index("variant")
    assert s.loc["A", "not_learned"] == 0 and bool(s.loc["A", "learned"])
    assert s.loc["B", "not_learned"] == 3 and not bool(s.loc["B", "learned"])
    assert s.loc["B", "text"].endswith(": did not learn")
    assert i18n.mean_sd(0.5, 0.01, 3, not_learned=1) == "50.00% ± 1.00, 1 of 3 did not learn"
    assert "没有学会" in i18n.mean_sd(0.1, 0.01, 3, gettext=ZH, not_learned=3)


def test_sorted_by_label_at_chance_is_read_as_the_lessons_finding_and_the_leaders_agree():
    s = summarize_lesson(table(("shuffled every epoch", [0.930, 0.932, 0.934], 0.3),
                               ("same order every epoch", [0.929, 0.931, 0.933], 0.3),
                               ("sorted by label", [0.101, 0.098, 0.113], 2.4)))
    r = read_lesson(LESSONS["shuffle"], s, "mnist")
    assert [c.verdict for c in r.contrasts] == ["not distinguishable", "did not learn"]
    text = r.render()
    assert text[2].startswith("sorted by label: 10.40% test accuracy against 93.20% for shuffled every epoch, "
                              "82.80 points lower: sorted by label did not learn (chance is 10.00%)")
    assert "sorted by label did not learn, and that is this lesson's finding" in text[-2]
    assert r.best is None
    assert text[-1] == ("Ahead of the rest, but not distinguishable from each other: shuffled every epoch, "
                        "same order every epoch.")
    assert not any("No variant is ahead" in line for line in text)
    zh = r.render(ZH)
    assert "没有学会" in zh[2] and "彼此之间无法区分" in zh[-1]


def test_residual_both_at_chance_is_neither_learned_not_indistinguishable():
    s = summarize_lesson(table(("plain deep CNN", [0.126, 0.126, 0.126], 2.30),
                               ("the same depth with shortcuts", [0.125, 0.127, 0.129], 2.29)))
    r = read_lesson(LESSONS["residual"], s)
    assert r.contrasts[0].verdict == "neither learned"
    text = r.render()
    assert "neither learned" in text[0] and "not distinguishable" not in " ".join(text)
    assert sum("Train longer" in line for line in text) == 2  # what to change, for each variant
    assert text[-1].startswith("No variant learned here")
    assert r.best is None


def test_a_learned_variant_beats_one_that_did_not_as_best():
    s = summarize_lesson(table(("logits into CrossEntropyLoss", [0.97, 0.971, 0.972], 0.2),
                               ("softmax before CrossEntropyLoss", [0.15, 0.16, 0.14], 2.2)))
    r = read_lesson(LESSONS["softmax"], s)
    assert r.best == "logits into CrossEntropyLoss"
    assert r.contrasts[0].verdict == "did not learn"



# ------------------------------------------------------------------------------ the CLI

def test_the_cli_names_a_run_at_chance_and_says_what_to_change(tmp_path, capsys, mnist_raw):
    from mnist_lab.cli.main import main

    code = main(["train", "--preset", "lab5", "--epochs", "1", "--train-limit", "64",
                 "--device", "cpu", "--db", str(tmp_path / "r.sqlite"), "--quiet"])
    assert code == 0  # not learning is a finding, not an error
    out = capsys.readouterr().out
    assert "did not learn: run " in out and "(chance is 10.00%)" in out and "Train longer" in out
    main(["train", "--preset", "lab5", "--epochs", "1", "--train-limit", "64",
          "--device", "cpu", "--db", str(tmp_path / "r.sqlite"), "--quiet", "--lang", "zh_CN"])
    assert "没有学会：运行 " in capsys.readouterr().out


def test_the_cli_lesson_table_marks_a_variant_that_did_not_learn(tmp_path, capsys, mnist_raw):
    from mnist_lab.cli.main import main

    main(["lesson", "softmax", "--seeds", "1", "--train-limit", "64", "--test-limit", "200", "--device", "cpu",
          "--db", str(tmp_path / "r.sqlite"), "--quiet"])
    out = capsys.readouterr().out
    assert "(1 run, no spread): did not learn" in out
    assert "softmax before CrossEntropyLoss did not learn, and that is this lesson's finding" in out


# ------------------------------------------------------------------------------ the report

def test_the_report_says_when_its_requirement_1_run_did_not_learn(tmp_path):
    from report_fixtures import add_run

    from mnist_lab.lab.findings import compute_findings
    from mnist_lab.lab.report import build_report, to_markdown
    from mnist_lab.nets.presets import PRESETS
    from mnist_lab.runs.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    learned = add_run(store, PRESETS["lab5"].model, 0.98)
    add_run(store, PRESETS["lab5"].model, 0.1, losses=[2.30] * 40)  # the newest: at chance, its loss never fell
    assert compute_findings(store).loss.numbers["learned"] is False
    assert compute_findings(store, run_id=learned).loss.numbers["learned"] is True
    en, zh = (to_markdown(build_report(store, lang)) for lang in ("en", "zh"))
    assert "This run did not learn: 10.00% test accuracy" in en and "这次运行没有学会" in zh
    assert "did not learn" not in to_markdown(build_report(store, "en", run_id=learned)).split("## ")[2]


def test_the_report_compares_a_group_at_chance_as_did_not_learn(tmp_path):
    from report_fixtures import add_run

    from mnist_lab.lab.findings import compute_findings
    from mnist_lab.lab.report import build_report, to_markdown
    from mnist_lab.nets.presets import cnn_config
    from mnist_lab.runs.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    for layers, mean, losses in ((1, 0.97, None), (2, 0.98, None), (3, 0.11, [2.30] * 40)):
        for seed, off in enumerate((-0.002, 0.0, 0.002)):
            add_run(store, cnn_config(layers, 5), mean + off, seed=seed, experiment="sweep", group_id="sweep-1",
                    losses=losses, label=f"{layers} conv × k5")
    depth = compute_findings(store).depth
    assert [g.learned for g in depth.groups] == [True, True, False]
    en, zh = (to_markdown(build_report(store, lang)) for lang in ("en", "zh"))
    assert "11.00% ± 0.20: did not learn" in en  # the table's cell
    assert ("test accuracy fell by 86.00 points (97.00% → 11.00%): 3 conv+pool layers did not learn." in en)
    assert "| 2 conv+pool layers | 3 conv+pool layers | -87.00 | 0.40 | did not learn |" in en  # the step table
    assert "没有学会" in zh


def test_fc_vs_cnn_reading_warns_when_a_cell_did_not_learn():
    from mnist_lab.lab.experiments import read_compare

    cells = [("FC", "normal", 0.88, True), ("CNN", "normal", 0.96, True), ("FC", "permuted", 0.85, True),
             ("CNN", "permuted", 0.11, False)]
    s = pd.DataFrame([dict(model=m, pixels=p, n=3, mean=v, sd=0.01, text="", learned=ok) for m, p, v, ok in cells])
    assert read_compare(s).startswith("1 of the four cells did not learn, so the differences below say little")
    assert "did not learn" not in read_compare(s.assign(learned=True))
