"""A class's work as data, for the teacher: each student's progress through lab 5 (the report's
rules: findings.py's slices, report.is_lab_run, the week-2 lessons), and the class's pooled
experiment (every student's runs with the same settings, one run per configuration and seed, read
by sweep_reading.read_sweep and experiments.compare_reading). The pages and the CLI word it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mnist_lab.codec import to_row
from mnist_lab.data.datasets import DATASETS
from mnist_lab.errors import writing
from mnist_lab.i18n import N_, Message, integer
from mnist_lab.lab.experiments import SweepConfig, compare_reading, summarize_over_seeds
from mnist_lab.lab.findings import (
    COMPARE_CELLS,
    CONTEXT,
    GRID_CELL,
    GRID_CONTEXT,
    context_keys,
    factor_slices,
    finished_runs,
    has_spread,
    pick_slice,
    picked_comparisons,
    shared_settings,
    verdicts_from,
)
from mnist_lab.lab.lessons import EXPERIMENT as LESSON_EXPERIMENT
from mnist_lab.lab.lessons import LESSONS, group_lesson
from mnist_lab.lab.report import LAB_PRESET, is_lab_run
from mnist_lab.lab.sweep_reading import SweepReading, read_sweep
from mnist_lab.nets.presets import PRESETS
from mnist_lab.paths import csv_text, write_files
from mnist_lab.runs.store import ResultStore
from mnist_lab.training.loop import TrainConfig

DONE, PARTIAL, MISSING = "done", "partial", "missing"  # a step's state; app_lib/widgets.py WORDS words them
STEPS = ("lab_net", "depth", "kernel", "compare")  # lab 5's requirements 1-3, then the FC-vs-CNN comparison
PROGRESS_COLUMNS = ["student_id", "student_name", "on_roster", "lab_net", "depth", "kernel", "compare",
                    "lessons", "lessons_total", "lab5_done", "runs", "finished", "last_activity"]

# n: distinct seeds pooled (one run per configuration and seed: two students with the same settings and seed
# trained the same run; the earliest such run is kept); mean/sd: test accuracy fraction (sample sd over the n);
# students: distinct student_ids that trained the cell (before deduplication); runs: finished runs before
# deduplication; duplicates = runs - n; not_learned/diverged/learned/text as experiments.summarize_over_seeds.
GRID_COLUMNS = ["conv_layers", "kernel_size", "n", "mean", "sd", "students", "runs", "duplicates",
                "not_learned", "diverged", "learned", "text"]
COMPARE_POOL_COLUMNS = ["model", "pixels", "n", "mean", "sd", "students", "runs", "duplicates",
                        "not_learned", "diverged", "learned", "text"]
CELLS = COMPARE_CELLS  # the comparison's order
# What the runs of one comparison share beside its two networks: training and data (not the pixel order).
COMPARE_SHARED = ["epochs", "batch_size", "optimizer", "lr", "momentum", "dataset", "normalize", "train_limit",
                  "test_limit"]
COMPARE_NET = [c for c in CONTEXT if c not in COMPARE_SHARED and c != "permute_pixels"]  # one network's settings
LAB5_ROW = to_row(PRESETS[LAB_PRESET].model)  # the lab's network as store cells
# The columns the progress and the readings use: a narrow frame is much faster to take row subsets of.
USED_COLUMNS = list(dict.fromkeys([*CONTEXT, *LAB5_ROW, "run_id", "experiment", "group_id", "status", "started_at",
                                   "seed", "params", "seconds", "final_test_acc", "verdict", "student_id",
                                   "student_name"]))
TABLES = ("progress", "pooled_grid", "pooled_compare")  # write_class_tables' CSVs
# A grid's set: what its runs share (GRID_CONTEXT) and the first block's channels, from which the sweep's
# family doubles (a different starting width is a different experiment); a pooled grid's settings have both.
GRID_SET = [*GRID_CONTEXT, "first_channels"]


# ------------------------------------------------------------------------------ the runs

def class_runs(store: ResultStore) -> pd.DataFrame:
    """Every run with an owner (student_id != ''): store.visible_runs(None) rows plus `verdict`
    (findings.with_verdicts semantics), the epochs read once for all."""
    runs = store.visible_runs(None)
    runs = runs[runs["student_id"] != ""].reset_index(drop=True)
    # plain Python strings: the pages and the pooling take many small row subsets, which numpy's take
    # does far faster than Arrow's (pandas' default string columns); copy() puts the columns back in one block
    runs = runs.astype({c: object for c in runs.columns if pd.api.types.is_string_dtype(runs[c])}).copy()
    return verdicts_from(runs, store.epochs() if len(runs) else None)


def student_runs(runs: pd.DataFrame, student_id: str) -> pd.DataFrame:
    """That student's rows, newest first."""
    mine = runs[runs["student_id"] == student_id]
    return mine.sort_values(["started_at", "run_id"], ascending=[False, True])


# ------------------------------------------------------------------------------ progress

def _lab_net_students(done: pd.DataFrame) -> set[str]:
    """Students with a finished run of the lab's network on the full training set (report.is_lab_run),
    each distinct network and data setting decided once."""
    lab = LAB5_ROW  # the cheap part of is_lab_run first
    done = done[(done["dataset"] == "mnist") & (done["kind"] == lab["kind"])
                & (done["kernel_size"] == lab["kernel_size"]) & (done["conv_channels"] == lab["conv_channels"])]
    if done.empty:
        return set()
    keys = context_keys(done, [c for c in (*LAB5_ROW, "dataset", "permute_pixels", "train_limit") if c in done])
    verdict = {key: is_lab_run(done.loc[index]) for index, key in keys.drop_duplicates().items()}
    return set(done.loc[keys.map(verdict).astype(bool), "student_id"])


def _factor_states(sweeps: pd.DataFrame, factor: str) -> dict[str, str]:
    """Per student with a finished sweep run: DONE where the slice their report reads (findings.pick_slice
    over findings.factor_slices, every student's slices cut at once) has a spread at every level
    (findings.has_spread: no "one_seed" todo); else PARTIAL."""
    slices: dict[str, list[pd.DataFrame]] = {}
    for part in factor_slices(sweeps, factor, by=("student_id",)):
        slices.setdefault(part["student_id"].iloc[0], []).append(part)
    states = {}
    for sid, parts in slices.items():
        picked = pick_slice(parts, factor)
        states[sid] = DONE if picked is not None and has_spread(picked.groupby(factor).size()) else PARTIAL
    return states


def _cell_names(runs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    model = runs["kind"].map(lambda k: "FC" if k == "fc" else "CNN")
    pixels = runs["permute_pixels"].map(lambda p: "permuted" if bool(p) and p == p else "normal")
    return model, pixels


def _compare_states(compares: pd.DataFrame) -> dict[str, str]:
    """Per student with a finished compare run: DONE where the comparison their report reads
    (findings.picked_comparisons) has all four cells, each with a spread (findings.has_spread); else PARTIAL."""
    if compares.empty:
        return {}
    picked = picked_comparisons(compares, by="student_id")
    sizes = picked.groupby(["student_id", "cell"]).size()
    return {sid: DONE if len(cells) == len(CELLS) and has_spread(cells) else PARTIAL
            for sid, cells in sizes.groupby(level="student_id")}


def progress_table(runs: pd.DataFrame, roster: Iterable[tuple[str, str]] = ()) -> pd.DataFrame:
    """PROGRESS_COLUMNS, one row per student of `roster` ((学号, 姓名), on_roster True) and per other
    student_id found in `runs` (on_roster False, name from their newest run), sorted by student_id.
    lab_net: DONE = a finished run of the lab's network on the full training set (report.is_lab_run);
    PARTIAL = some other finished run (the report falls back to it); MISSING = none. depth / kernel /
    compare: what the student's own report reads (findings: the slice or comparison it picks): DONE = that
    section available with no "one_seed" todo (>= 2 levels, >= 2 runs at every level; all four cells with
    >= 2 runs each); PARTIAL = any finished run of the experiment but not that; MISSING = none. lessons:
    week-2 lessons with a group with a finished run. lab5_done: lab_net, depth and kernel all DONE.
    runs / finished: every run / the finished ones; last_activity: the newest run's started_at (None without runs)."""
    names = dict(roster)
    owned = runs[runs["student_id"] != ""][[c for c in USED_COLUMNS if c in runs]]
    newest = owned.sort_values(["started_at", "run_id"], ascending=[False, True]).drop_duplicates("student_id")
    found = dict(zip(newest["student_id"], newest["student_name"]))
    ids = sorted(set(names) | set(found))
    done = finished_runs(owned)
    lab_net = _lab_net_students(done)
    any_done = set(done["student_id"])
    sweeps = done[done["experiment"] == "sweep"]
    depth, kernel = _factor_states(sweeps, "conv_layers"), _factor_states(sweeps, "kernel_size")
    compare = _compare_states(done[done["experiment"] == "compare"])
    lessons_done = done[done["experiment"] == LESSON_EXPERIMENT]
    lesson_of = {g: group_lesson(g) for g in lessons_done["group_id"].unique()}
    lesson_names = lessons_done["group_id"].map(lesson_of)
    lessons = lessons_done.assign(_lesson=lesson_names).dropna(subset=["_lesson"]).groupby("student_id")[
        "_lesson"].nunique()
    counts = owned.groupby("student_id").size()
    finished = owned[owned["status"] == "finished"].groupby("student_id").size()
    last = owned.groupby("student_id")["started_at"].max()
    rows = []
    for sid in ids:
        state = dict(lab_net=DONE if sid in lab_net else PARTIAL if sid in any_done else MISSING,
                     depth=depth.get(sid, MISSING), kernel=kernel.get(sid, MISSING), compare=compare.get(sid, MISSING))
        rows.append(dict(student_id=sid, student_name=names.get(sid, found.get(sid, "")), on_roster=sid in names,
                         **state, lessons=int(lessons.get(sid, 0)), lessons_total=len(LESSONS),
                         lab5_done=all(state[s] == DONE for s in ("lab_net", "depth", "kernel")),
                         runs=int(counts.get(sid, 0)), finished=int(finished.get(sid, 0)),
                         last_activity=last.get(sid) if sid in last else None))
    table = pd.DataFrame(rows, columns=PROGRESS_COLUMNS)
    table["last_activity"] = table["last_activity"].astype(object).where(table["last_activity"].notna(), None)
    return table


# ------------------------------------------------------------------------------ the pooled experiment

@dataclass
class PooledGrid:
    settings: dict  # what every pooled run shares: GRID_SET (findings.CONTEXT minus GRID_FREE, "first_channels"),
    # plus "seeds" (sorted)
    cells: pd.DataFrame  # GRID_COLUMNS, sorted by conv_layers, kernel_size
    runs: pd.DataFrame  # the pooled runs after deduplication (store rows + verdict, with student_id; diverged too)
    reading: SweepReading  # sweep_reading.read_sweep(runs): the best cell, requirements 2 and 3, directions
    students: int  # distinct students in this set


@dataclass
class PooledCompare:
    settings: dict  # training and data (COMPARE_SHARED), each network's settings ("cnn", "fc": {} if none), "seeds"
    cells: pd.DataFrame  # COMPARE_POOL_COLUMNS, rows FC/CNN x normal/permuted present (CELLS order)
    runs: pd.DataFrame  # the pooled runs after deduplication
    reading: list[Message]  # experiments.compare_reading over the cells
    students: int


def first_channels(conv_channels) -> int | None:
    """The first conv block's channels of a stored `conv_channels` ("16-32-64" -> 16; None for an FC net)."""
    text = "" if conv_channels is None or conv_channels != conv_channels else str(conv_channels)
    return int(text.split("-")[0]) if text else None


def _pool(part: pd.DataFrame, by: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One set's runs pooled by `by` (the cell): (per-cell counts and summarize_over_seeds, the runs
    kept: one per cell and seed, the earliest, finished and diverged apart)."""
    part = part.sort_values(["started_at", "run_id"])
    kept = part.drop_duplicates([*by, "seed", "status"])
    finished = part[part["status"] == "finished"]
    table = kept.assign(test_acc=kept["final_test_acc"].where(kept["status"] == "finished"))
    summary = summarize_over_seeds(table, by)
    counts = finished.groupby(by, sort=False).agg(students=("student_id", "nunique"), runs=("run_id", "size"))
    cells = summary.merge(counts.reset_index(), on=by, how="left")
    cells["duplicates"] = cells["runs"] - cells["n"]
    return cells, kept


def _ints(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame.astype({c: int for c in columns})


def pooled_grids(runs: pd.DataFrame) -> list[PooledGrid]:
    """Every set of sweep runs sharing all settings but depth/channels/kernel, and the first block's
    channels (GRID_SET), with >= 2 cells; the most cells first, then the most runs (finished, before
    deduplication), then the newest."""
    sweeps = runs[(runs["experiment"] == "sweep") & ((runs["status"] == "diverged") | (
        (runs["status"] == "finished") & runs["final_test_acc"].notna()))]
    if sweeps.empty:
        return []
    sweeps = sweeps.assign(conv_layers=sweeps["conv_layers"].astype(int), kernel_size=sweeps["kernel_size"].astype(int))
    width = sweeps["conv_channels"].map(first_channels)
    keyed = sweeps.assign(_ctx=context_keys(sweeps.assign(first_channels=width), GRID_SET))
    out = []
    for _, part in keyed.groupby("_ctx", sort=False):
        part = part.drop(columns="_ctx")
        done = part[part["status"] == "finished"]
        if len(done[GRID_CELL].drop_duplicates()) < 2:
            continue
        cells, kept = _pool(part, GRID_CELL)
        cells = _ints(cells.dropna(subset=["runs"]), ["conv_layers", "kernel_size", "runs", "duplicates"])
        cells = cells.sort_values(GRID_CELL).reset_index(drop=True)[GRID_COLUMNS]
        settings = shared_settings(done.iloc[0], GRID_CONTEXT)
        settings["first_channels"] = first_channels(done["conv_channels"].iloc[0])
        kept_done = kept[kept["status"] == "finished"]
        settings["seeds"] = sorted({int(s) for s in kept_done["seed"]})
        reading = read_sweep(kept[[c for c in USED_COLUMNS if c in kept]])
        out.append(PooledGrid(settings, cells, kept.reset_index(drop=True), reading, int(done["student_id"].nunique())))
    return sorted(out, key=lambda g: (len(g.cells), int(g.cells["runs"].sum()), g.runs["started_at"].max()),
                  reverse=True)


def _compare_sets(compares: pd.DataFrame) -> pd.Series:
    """Each compare run's set: its job's group keyed by the training and data its runs share and each
    network's settings, so jobs run alike (by any student) pool together."""
    shared = context_keys(compares, COMPARE_SHARED)
    net = context_keys(compares, COMPARE_NET)
    shared_of: dict[str, set] = {}
    nets_of: dict[str, set] = {}
    for group, kind, one_shared, one_net in zip(compares["group_id"], compares["kind"], shared, net):
        shared_of.setdefault(group, set()).add(one_shared)
        nets_of.setdefault(group, set()).add((str(kind), one_net))
    per_group = {g: (tuple(sorted(shared_of[g], key=repr)), tuple(sorted(nets_of[g], key=repr))) for g in shared_of}
    return compares["group_id"].map(per_group)


def pooled_compares(runs: pd.DataFrame) -> list[PooledCompare]:
    """Finished compare runs pooled across students and jobs by their settings (both networks, training,
    data), deduplicated by (network, pixel order, seed); the most cells first, then the most runs
    (finished, before deduplication), then the newest. A comparison's runs are the runs of one job
    (group_id); jobs whose runs share the same training, data and networks pool together."""
    compares = runs[(runs["experiment"] == "compare") & ((runs["status"] == "diverged") | (
        (runs["status"] == "finished") & runs["final_test_acc"].notna()))]
    if compares.empty:
        return []
    model, pixels = _cell_names(compares)
    keyed = compares.assign(model=model, pixels=pixels, _set=_compare_sets(compares))
    out = []
    for _, part in keyed.groupby("_set", sort=False):
        part = part.drop(columns="_set")
        done = part[part["status"] == "finished"]
        if done.empty:
            continue
        cells, kept = _pool(part, ["model", "pixels"])
        cells = _ints(cells.dropna(subset=["runs"]), ["runs", "duplicates"])
        order = [CELLS.index(cell) for cell in zip(cells["model"], cells["pixels"])]
        cells = cells.assign(_order=order).sort_values("_order").reset_index(drop=True)[COMPARE_POOL_COLUMNS]
        settings = shared_settings(done.iloc[0], COMPARE_SHARED)
        for name, kind in (("cnn", "CNN"), ("fc", "FC")):
            net = done[done["model"] == kind]
            settings[name] = shared_settings(net.iloc[0], COMPARE_NET) if len(net) else {}
        settings["seeds"] = sorted({int(s) for s in kept.loc[kept["status"] == "finished", "seed"]})
        out.append(PooledCompare(settings, cells, kept.drop(columns=["model", "pixels"]).reset_index(drop=True),
                                 compare_reading(cells), int(done["student_id"].nunique())))
    return sorted(out, key=lambda c: (len(c.cells), int(c.cells["runs"].sum()), c.runs["started_at"].max()),
                  reverse=True)


# ------------------------------------------------------------------------------ words and files

OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam"}


def settings_text(settings: dict) -> Message:
    """A short description of a pooled set for a selectbox or heading: dataset, epochs, batch size,
    optimiser and lr, training images, e.g. "MNIST, 1 epoch, batch 64, SGD lr 0.01, 6,000 training images",
    and a grid's first block's channels where not the Sweep page's (SweepConfig.base_channels)."""
    spec = DATASETS.get(str(settings.get("dataset")))
    epochs = int(settings.get("epochs") or 0)
    limit = settings.get("train_limit")
    images = (Message.ngettext("{count} training image", "{count} training images", int(limit),
                               count=integer(int(limit))) if limit else Message(N_("all training images")))
    optimizer = str(settings.get("optimizer") or "")
    values = dict(dataset=spec.title if spec else str(settings.get("dataset") or ""),
                  length=Message.ngettext("{n} epoch", "{n} epochs", epochs), batch=settings.get("batch_size"),
                  optimizer=OPTIMIZER_NAMES.get(optimizer, optimizer), lr=f"{float(settings.get('lr') or 0):g}",
                  images=images)
    momentum = settings.get("momentum")
    if optimizer == "sgd" and momentum is not None and float(momentum) != TrainConfig.momentum:
        text = Message(N_("{dataset}, {length}, batch {batch}, {optimizer} lr {lr} momentum {momentum}, {images}"),
                       dict(values, momentum=f"{float(settings['momentum']):g}"))
    else:
        text = Message(N_("{dataset}, {length}, batch {batch}, {optimizer} lr {lr}, {images}"), values)
    width = settings.get("first_channels")
    if width is not None and int(width) != SweepConfig.base_channels:
        return Message(N_("{settings}, {channels} channels in the first block"), dict(settings=text, channels=width))
    return text


def _flat(settings: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}_"))
        elif key == "seeds":
            out[f"{prefix}{key}"] = " ".join(map(str, value))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _with_sets(pools: list, columns: list[str]) -> pd.DataFrame:
    frames = [pool.cells.assign(set=i, **_flat(pool.settings)) for i, pool in enumerate(pools, start=1)]
    if not frames:
        return pd.DataFrame(columns=["set", *columns])
    table = pd.concat(frames, ignore_index=True)
    return table[["set", *columns, *[c for c in table.columns if c not in columns and c != "set"]]]


def pooled_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{"pooled_grid": every grid's cells with a leading `set` column (1 = first) and its settings
    columns; "pooled_compare": likewise}: what the CSVs hold."""
    return {"pooled_grid": _with_sets(pooled_grids(runs), GRID_COLUMNS),
            "pooled_compare": _with_sets(pooled_compares(runs), COMPARE_POOL_COLUMNS)}


def write_class_tables(store: ResultStore, roster: Iterable[tuple[str, str]], out_dir: str | Path) -> dict[str, Path]:
    """progress.csv, pooled_grid.csv, pooled_compare.csv in `out_dir`, each whole or none
    (paths.write_files inside errors.writing(out)); returns name -> path."""
    runs = class_runs(store)
    tables = {"progress": progress_table(runs, roster), **pooled_tables(runs)}
    out = Path(out_dir)
    with writing(out):
        paths = write_files({out / f"{name}.csv": csv_text(tables[name]) for name in TABLES})
    return dict(zip(TABLES, paths))
