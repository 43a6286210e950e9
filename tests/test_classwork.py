"""The class's progress and pooled experiment (lab/classwork.py), from runs written without training."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from mnist_lab.errors import OutputError
from mnist_lab.i18n import render
from mnist_lab.lab import classwork as cw
from mnist_lab.lab.classwork import DONE, MISSING, PARTIAL
from mnist_lab.lab.findings import compute_findings
from mnist_lab.nets.model import match_fc_width
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.identity import student_workspace
from tests.class_fixtures import LAB5, add_run, lab5_complete, lab5_half, sweep_model


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "class.sqlite")
    yield s
    s.close()


def sweep(store, sid, name, cells, seeds, acc=lambda layers, kernel, seed: 0.96, lr=None, status="finished",
          channels=16):
    for layers, kernel in cells:
        for seed in seeds:
            add_run(store, student_id=sid, student_name=name, experiment="sweep",
                    model=cnn_config(layers, kernel, base_channels=channels),
                    seed=seed, acc=acc(layers, kernel, seed), group_id=f"sweep-{sid}", train_limit=6000, lr=lr,
                    status=status)


def compare(store, sid, name, seeds, group, epochs=1, acc=None):
    cnn = PRESETS["tiny-cnn"].model
    acc = acc or {("FC", False): 0.90, ("CNN", False): 0.96, ("FC", True): 0.89, ("CNN", True): 0.80}
    for permute in (False, True):
        for label, model in (("FC", match_fc_width(cnn)), ("CNN", cnn)):
            for seed in seeds:
                add_run(store, student_id=sid, student_name=name, experiment="compare", model=model, seed=seed,
                        acc=acc[label, permute] + 0.001 * seed, permute=permute, group_id=group, epochs=epochs,
                        train_limit=6000)


def row(table: pd.DataFrame, sid: str) -> dict:
    return table.set_index("student_id").loc[sid].to_dict()


# ------------------------------------------------------------------------------ progress

def test_three_students_done_half_and_nothing(store):
    lab5_complete(store, "2026001", "张三")
    lab5_half(store, "2026002", "李四")
    roster = [("2026001", "张三"), ("2026002", "李四"), ("2026003", "王五")]
    table = cw.progress_table(cw.class_runs(store), roster)
    assert list(table.columns) == cw.PROGRESS_COLUMNS
    assert list(table["student_id"]) == ["2026001", "2026002", "2026003"]
    steps = table.set_index("student_id")[list(cw.STEPS)]
    assert steps.loc["2026001"].tolist() == [DONE, DONE, DONE, MISSING]
    assert steps.loc["2026002"].tolist() == [DONE, MISSING, MISSING, MISSING]
    assert steps.loc["2026003"].tolist() == [MISSING] * 4
    assert table["lab5_done"].tolist() == [True, False, False]
    assert table["on_roster"].tolist() == [True, True, True]
    assert table["runs"].tolist() == [9, 1, 0] and table["finished"].tolist() == [9, 1, 0]
    first, nothing = row(table, "2026001"), row(table, "2026003")
    assert first["student_name"] == "张三" and first["last_activity"].startswith("2026-03-02T")
    assert nothing["student_name"] == "王五" and nothing["last_activity"] is None
    assert first["lessons"] == 0 and first["lessons_total"] == len(cw.LESSONS)


def test_a_student_not_on_the_roster_is_listed_with_the_name_of_the_newest_run(store):
    add_run(store, student_id="2026009", student_name="赵六", experiment="single", model=LAB5)
    add_run(store, student_id="2026009", student_name="赵 六", experiment="single", model=LAB5)
    table = cw.progress_table(cw.class_runs(store), [("2026001", "张三")])
    assert table[["student_id", "student_name", "on_roster"]].values.tolist() == [
        ["2026001", "张三", True], ["2026009", "赵 六", False]]


def test_runs_without_an_owner_are_not_the_class(store):
    with store.context(workspace="teacher"):
        lab5_half(store, "", "")
    assert cw.class_runs(store).empty
    assert cw.progress_table(cw.class_runs(store)).empty


def test_one_seed_or_one_level_is_under_way(store):
    lab5_complete(store, "2026001", "张三", seeds=1)
    sweep(store, "2026002", "李四", [(1, 5), (1, 3)], seeds=(0, 1))  # two kernels, one depth
    table = cw.progress_table(cw.class_runs(store)).set_index("student_id")
    assert table.loc["2026001", ["depth", "kernel", "lab5_done"]].tolist() == [PARTIAL, PARTIAL, False]
    assert table.loc["2026002", ["lab_net", "depth", "kernel"]].tolist() == [PARTIAL, PARTIAL, DONE]


def test_lab_net_partial_compare_and_lessons(store):
    add_run(store, student_id="s1", student_name="A", experiment="single", model=LAB5, train_limit=6000)
    add_run(store, student_id="s1", student_name="A", experiment="single", model=LAB5, status="stopped")
    compare(store, "s1", "A", seeds=(0, 1), group="compare-1")
    compare(store, "s2", "B", seeds=(0,), group="compare-2")
    for n, lesson in enumerate(("shuffle", "shuffle", "softmax")):
        add_run(store, student_id="s2", student_name="B", experiment="lesson", model=LAB5, seed=n,
                group_id=f"lesson:{lesson}:{n}", train_limit=6000)
    add_run(store, student_id="s2", student_name="B", experiment="lesson", model=LAB5, group_id="lesson:head:9",
            status="stopped")
    table = cw.progress_table(cw.class_runs(store)).set_index("student_id")
    assert table.loc["s1", ["lab_net", "compare", "lessons", "runs", "finished"]].tolist() == [
        PARTIAL, DONE, 0, 10, 9]  # a run on 6,000 images is not requirement 1's run
    assert table.loc["s2", ["lab_net", "compare", "lessons", "runs", "finished"]].tolist() == [
        PARTIAL, PARTIAL, 2, 8, 7]


def _report_states(store, runs: pd.DataFrame, sid: str) -> dict[str, str]:
    """What the student's own report (findings.compute_findings over their workspace) says of depth,
    kernel and the comparison, as progress states."""
    found = compute_findings(store, workspace=student_workspace(sid))
    mine = runs[(runs["student_id"] == sid) & (runs["status"] == "finished")]
    states = {}
    for step, finding, available, experiment in (
            ("depth", found.depth, found.depth.available, "sweep"),
            ("kernel", found.kernel, found.kernel.available, "sweep"),
            ("compare", found.analysis, "compare" in found.analysis.numbers, "compare")):
        todo = [t for t in finding.todo if t.experiment == step]
        assert not available or all(t.why == "one_seed" for t in todo)
        tried = (mine["experiment"] == experiment).any()
        states[step] = DONE if available and not todo else PARTIAL if available or tried else MISSING
    return states


def test_progress_says_what_each_students_report_says(store):
    """Progress and the student's report read the same sweep slice and comparison (findings' picking),
    for every student of a small class with mixed histories: the rules cannot drift apart."""
    cells_2x2 = [(1, 3), (1, 5), (2, 3), (2, 5)]
    sweep(store, "s01", "A", cells_2x2, seeds=(0, 1))  # then a newer 3-depth sweep on one seed (another lr):
    sweep(store, "s01", "A", [(1, 5), (2, 5), (3, 5)], seeds=(0,), lr=0.05)  # the report reads it: one seed
    sweep(store, "s02", "B", cells_2x2, seeds=(0, 1))
    sweep(store, "s02", "B", [(1, 3), (1, 5), (1, 7)], seeds=(0,), lr=0.05)  # likewise for the kernel
    sweep(store, "s03", "C", cells_2x2, seeds=(0,))  # one seed
    sweep(store, "s04", "D", [(1, 5), (2, 5)], seeds=(0, 1))  # two depths, one kernel
    sweep(store, "s05", "E", cells_2x2, seeds=(0, 1))
    sweep(store, "s05", "E", [(2, 3), (2, 5)], seeds=(2,), status="diverged")  # diverged: not a seed
    sweep(store, "s06", "F", [(1, 5)], seeds=(0,), status="diverged")  # nothing finished
    compare(store, "s07", "G", seeds=(0, 1), group="compare-7a")
    compare(store, "s07", "G", seeds=(0,), group="compare-7b")  # newest with all four cells: one seed
    compare(store, "s08", "H", seeds=(0, 1), group="compare-8a")
    add_run(store, student_id="s08", student_name="H", experiment="compare", model=PRESETS["tiny-cnn"].model,
            group_id="compare-8b", train_limit=6000)  # newer, one cell: the report keeps the full one
    compare(store, "s09", "I", seeds=(0, 1), group="compare-9")
    add_run(store, student_id="s09", student_name="I", experiment="compare", model=PRESETS["tiny-cnn"].model,
            group_id="compare-9", train_limit=6000, seed=1, permute=True, status="diverged")
    compare(store, "s10", "J", seeds=(0,), group="compare-10", acc={("FC", False): 0.9, ("CNN", False): 0.96,
                                                                   ("FC", True): 0.89, ("CNN", True): 0.8})
    runs = cw.class_runs(store)
    roster = [(f"s{i:02d}", "") for i in range(1, 13)]
    table = cw.progress_table(runs, roster).set_index("student_id")
    for sid in table.index:
        assert table.loc[sid, ["depth", "kernel", "compare"]].to_dict() == _report_states(store, runs, sid), sid
    states = table[["depth", "kernel", "compare"]]
    assert states.loc["s01"].tolist() == [PARTIAL, DONE, MISSING]  # any slice with 2 seeds once made it DONE
    assert states.loc["s02"].tolist() == [DONE, PARTIAL, MISSING]
    assert states.loc["s03"].tolist() == [PARTIAL, PARTIAL, MISSING]
    assert states.loc["s04"].tolist() == [DONE, PARTIAL, MISSING]
    assert states.loc["s05"].tolist() == [DONE, DONE, MISSING]
    assert states.loc["s06"].tolist() == [MISSING, MISSING, MISSING]
    assert states["compare"].loc[["s07", "s08", "s09", "s10", "s11"]].tolist() == [PARTIAL, DONE, DONE, PARTIAL,
                                                                                   MISSING]


def test_student_runs_newest_first(store):
    lab5_complete(store, "s1", "A")
    lab5_half(store, "s2", "B")
    runs = cw.class_runs(store)
    mine = cw.student_runs(runs, "s1")
    assert len(mine) == 9 and set(mine["student_id"]) == {"s1"}
    assert mine["started_at"].is_monotonic_decreasing
    assert {"verdict", "student_name", "workspace"} <= set(runs.columns)


# ------------------------------------------------------------------------------ the pooled grid

TWO_BY_ONE = [(1, 5), (2, 5)]


def test_the_same_settings_and_seed_count_once(store):
    sweep(store, "s1", "A", TWO_BY_ONE, seeds=(0,), acc=lambda a, k, s: 0.96)
    sweep(store, "s2", "B", TWO_BY_ONE, seeds=(0,), acc=lambda a, k, s: 0.95)  # the same runs, trained again
    (grid,) = cw.pooled_grids(cw.class_runs(store))
    assert list(grid.cells.columns) == cw.GRID_COLUMNS
    cell = grid.cells.iloc[0].to_dict()
    assert (cell["conv_layers"], cell["kernel_size"]) == (1, 5)
    assert (cell["n"], cell["runs"], cell["students"], cell["duplicates"]) == (1, 2, 2, 1)
    assert cell["mean"] == pytest.approx(0.96)  # the earliest is kept
    assert len(grid.runs) == 2 and set(grid.runs["student_id"]) == {"s1"}
    assert grid.students == 2 and grid.settings["seeds"] == [0]


def test_different_seeds_add_up_and_the_numbers_are_pinned(store):
    sweep(store, "s1", "A", TWO_BY_ONE, seeds=(0,), acc=lambda a, k, s: 0.96 + 0.01 * a)
    sweep(store, "s2", "B", TWO_BY_ONE, seeds=(1,), acc=lambda a, k, s: 0.98 + 0.01 * a)
    sweep(store, "s3", "C", TWO_BY_ONE, seeds=(1, 2), acc=lambda a, k, s: 0.97 + 0.01 * a)
    (grid,) = cw.pooled_grids(cw.class_runs(store))
    cells = grid.cells.set_index(["conv_layers", "kernel_size"])
    one = cells.loc[(1, 5)]
    assert (one["n"], one["runs"], one["students"], one["duplicates"]) == (3, 4, 3, 1)
    assert one["mean"] == pytest.approx((0.97 + 0.99 + 0.98) / 3)
    assert one["sd"] == pytest.approx(0.01)
    assert one["text"] == "98.00% ± 1.00"
    assert cells.loc[(2, 5), "mean"] == pytest.approx(0.99)
    assert grid.settings["seeds"] == [0, 1, 2] and grid.settings["lr"] == 0.01
    assert grid.settings["train_limit"] == 6000 and "conv_layers" not in grid.settings


def test_other_settings_are_another_set_and_the_largest_set_comes_first(store):
    sweep(store, "s1", "A", TWO_BY_ONE, seeds=(0, 1))
    sweep(store, "s2", "B", [(1, 3), (1, 5), (2, 5)], seeds=(0,), lr=0.05)
    sweep(store, "s3", "C", [(1, 5)], seeds=(0, 1, 2), lr=0.1)  # one cell: no grid
    grids = cw.pooled_grids(cw.class_runs(store))
    assert [g.settings["lr"] for g in grids] == [0.05, 0.01]  # more cells first
    assert [len(g.cells) for g in grids] == [3, 2]
    sweep(store, "s4", "D", [(1, 3), (2, 3), (3, 3)], seeds=(0,))  # the lr 0.01 set grows to 5 cells
    assert [g.settings["lr"] for g in cw.pooled_grids(cw.class_runs(store))] == [0.01, 0.05]


def test_another_first_block_width_is_another_set(store):
    sweep(store, "s1", "A", TWO_BY_ONE, seeds=(0, 1), channels=8, acc=lambda a, k, s: 0.95)
    sweep(store, "s2", "B", TWO_BY_ONE, seeds=(0, 1), channels=32, acc=lambda a, k, s: 0.98)
    runs = cw.class_runs(store)
    grids = cw.pooled_grids(runs)
    assert sorted(g.settings["first_channels"] for g in grids) == [8, 32]
    for grid in grids:
        assert grid.cells[["n", "runs", "duplicates", "students"]].values.tolist() == [[2, 2, 0, 1]] * 2
        assert len(grid.runs) == 4 and grid.runs["student_id"].nunique() == 1
        width = grid.settings["first_channels"]
        assert grid.cells["mean"].tolist() == pytest.approx([0.95 if width == 8 else 0.98] * 2)
        text = cw.settings_text(grid.settings)
        assert render(text, "en").endswith(f", {width} channels in the first block")
        assert render(text, "zh_CN").endswith(f"，第一个卷积块 {width} 个通道")
    table = cw.pooled_tables(runs)["pooled_grid"]
    assert sorted(set(table["first_channels"])) == [8, 32] and table["duplicates"].sum() == 0
    sweep(store, "s3", "C", TWO_BY_ONE, seeds=(0,))  # the Sweep page's width is not said
    (usual,) = [g for g in cw.pooled_grids(cw.class_runs(store)) if g.settings["first_channels"] == 16]
    assert "channels" not in render(cw.settings_text(usual.settings), "en")


def test_a_finished_and_a_diverged_run_of_one_cell_and_seed(store):
    sweep(store, "s1", "A", TWO_BY_ONE, seeds=(0,), acc=lambda a, k, s: 0.97)
    sweep(store, "s2", "B", [(1, 5)], seeds=(0,), acc=lambda a, k, s: 0.5, status="diverged")
    sweep(store, "s3", "C", [(1, 5)], seeds=(0,), acc=lambda a, k, s: 0.93)  # the same run again, later
    (grid,) = cw.pooled_grids(cw.class_runs(store))
    cell = grid.cells.set_index(["conv_layers", "kernel_size"]).loc[(1, 5)]
    assert cell[["n", "diverged", "runs", "duplicates", "students"]].tolist() == [1, 1, 2, 1, 2]
    assert cell["mean"] == pytest.approx(0.97) and cell["sd"] == 0  # the earliest finished run, once
    kept = grid.runs[(grid.runs["conv_layers"] == 1) & (grid.runs["kernel_size"] == 5)]
    assert sorted(zip(kept["student_id"], kept["status"])) == [("s1", "finished"), ("s2", "diverged")]
    assert grid.settings["seeds"] == [0]


def test_runs_that_did_not_learn_or_diverged_are_counted_not_averaged(store):
    sweep(store, "s1", "A", TWO_BY_ONE, seeds=(0, 1), acc=lambda a, k, s: 0.97)
    add_run(store, student_id="s2", student_name="B", experiment="sweep", model=sweep_model(1, 5), seed=2,
            acc=0.11, train_limit=6000, loss_start=2.3, loss_end=2.3)  # at chance: did not learn
    add_run(store, student_id="s3", student_name="C", experiment="sweep", model=sweep_model(2, 5), seed=3,
            acc=0.5, train_limit=6000, status="diverged")
    (grid,) = cw.pooled_grids(cw.class_runs(store))
    cells = grid.cells.set_index(["conv_layers", "kernel_size"])
    assert cells.loc[(1, 5), ["n", "not_learned", "diverged", "runs"]].tolist() == [3, 1, 0, 3]
    assert cells.loc[(1, 5), "mean"] == pytest.approx((0.97 * 2 + 0.11) / 3)  # in the mean, said apart
    assert cells.loc[(1, 5), "text"].endswith("1 of 3 did not learn")
    assert cells.loc[(2, 5), ["n", "diverged", "runs", "students"]].tolist() == [2, 1, 2, 1]
    assert cells.loc[(2, 5), "mean"] == pytest.approx(0.97)  # the diverged run is not averaged
    assert bool(cells.loc[(2, 5), "learned"])


def test_the_class_together_reads_a_direction_no_student_alone_can(store):
    for seed, sid in enumerate(("s1", "s2", "s3")):
        sweep(store, sid, sid, TWO_BY_ONE, seeds=(seed,), acc=lambda a, k, s: 0.95 + 0.02 * a + 0.001 * s)
    runs = cw.class_runs(store)
    assert set(cw.progress_table(runs)["depth"]) == {PARTIAL}  # one seed each
    (grid,) = cw.pooled_grids(runs)
    first, overall = grid.reading.depth[:2]
    assert "rose by" in overall.template and overall.params["diff"] == "2.00"
    assert grid.reading.kernel == []
    assert grid.reading.best.template.startswith("Best: ")


# ------------------------------------------------------------------------------ the pooled comparison

def test_comparisons_pool_across_jobs_and_students(store):
    compare(store, "s1", "A", seeds=(0,), group="compare-1")
    compare(store, "s2", "B", seeds=(0, 1), group="compare-2")
    compare(store, "s3", "C", seeds=(0, 1), group="compare-3", epochs=2)  # other settings: another set
    pooled = cw.pooled_compares(cw.class_runs(store))
    assert [p.settings["epochs"] for p in pooled] == [1, 2]  # the most runs first
    first = pooled[0]
    assert list(first.cells.columns) == cw.COMPARE_POOL_COLUMNS
    assert first.cells[["model", "pixels"]].values.tolist() == [list(c) for c in cw.CELLS]
    assert first.cells[["n", "runs", "students", "duplicates"]].values.tolist() == [[2, 3, 2, 1]] * 4
    fc = first.cells.iloc[0]
    assert fc["mean"] == pytest.approx(0.9005) and fc["sd"] == pytest.approx(0.001 / math.sqrt(2))
    assert first.students == 2 and first.settings["seeds"] == [0, 1]
    assert first.settings["cnn"]["kind"] == "cnn" and first.settings["fc"]["kind"] == "fc"
    assert first.reading[0].template.startswith("On normal digits the CNN beats the FC net")
    assert len(first.runs) == 8


# ------------------------------------------------------------------------------ words and files

def test_settings_text_in_both_languages():
    settings = dict(dataset="mnist", epochs=1, batch_size=64, optimizer="sgd", lr=0.01, momentum=0.5,
                    train_limit=6000.0)
    text = cw.settings_text(settings)
    assert render(text, "en") == "MNIST, 1 epoch, batch 64, SGD lr 0.01, 6,000 training images"
    assert render(text, "zh_CN") == "MNIST，1 个轮次，批大小 64，SGD 学习率 0.01，6,000 张训练图像"
    other = dict(settings, epochs=3, optimizer="sgd", momentum=0.9, train_limit=None, lr=0.05)
    assert render(cw.settings_text(other), "en") == ("MNIST, 3 epochs, batch 64, SGD lr 0.05 momentum 0.9, all "
                                                     "training images")
    assert render(cw.settings_text(other), "zh_CN") == ("MNIST，3 个轮次，批大小 64，SGD 学习率 0.05 动量 0.9，"
                                                        "全部训练图像")
    adam = dict(settings, optimizer="adam", lr=0.001, momentum=0.5, dataset="fashion-mnist")
    assert render(cw.settings_text(adam), "en") == ("Fashion-MNIST, 1 epoch, batch 64, Adam lr 0.001, 6,000 training "
                                                    "images")


def test_write_class_tables(store, tmp_path):
    lab5_complete(store, "2026001", "张三")
    compare(store, "2026001", "张三", seeds=(0, 1), group="compare-1")
    out = tmp_path / "out"
    paths = cw.write_class_tables(store, [("2026001", "张三"), ("2026002", "李四")], out)
    assert sorted(paths) == ["pooled_compare", "pooled_grid", "progress"]
    assert sorted(p.name for p in out.iterdir()) == ["pooled_compare.csv", "pooled_grid.csv", "progress.csv"]
    progress = pd.read_csv(paths["progress"], dtype={"student_id": str})
    assert list(progress.columns) == cw.PROGRESS_COLUMNS
    assert progress[["student_id", "lab5_done"]].values.tolist() == [["2026001", True], ["2026002", False]]
    grid = pd.read_csv(paths["pooled_grid"])
    assert list(grid.columns[:13]) == ["set", *cw.GRID_COLUMNS]
    assert {"lr", "epochs", "train_limit", "seeds"} <= set(grid.columns) and set(grid["set"]) == {1}
    assert len(grid) == 4 and grid["seeds"].iloc[0] == "0 1"
    pooled = pd.read_csv(paths["pooled_compare"])
    assert list(pooled.columns[:13]) == ["set", *cw.COMPARE_POOL_COLUMNS] and len(pooled) == 4
    assert {"cnn_kernel_size", "fc_hidden", "epochs"} <= set(pooled.columns)


def test_empty_tables_still_have_their_columns(store, tmp_path):
    tables = cw.pooled_tables(cw.class_runs(store))
    assert list(tables["pooled_grid"].columns) == ["set", *cw.GRID_COLUMNS]
    assert list(tables["pooled_compare"].columns) == ["set", *cw.COMPARE_POOL_COLUMNS]
    paths = cw.write_class_tables(store, [], tmp_path / "empty")
    assert pd.read_csv(paths["progress"]).columns.tolist() == cw.PROGRESS_COLUMNS


def test_a_refused_folder_writes_nothing(store, tmp_path):
    lab5_half(store, "2026001", "张三")
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(OutputError):
        cw.write_class_tables(store, [], blocker)
    with pytest.raises(OutputError):
        cw.write_class_tables(store, [], blocker / "inside")
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith("class.sqlite")} == {"taken"}
    assert blocker.read_text() == "a file where the folder should be"
