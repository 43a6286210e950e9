"""What the stored runs show, per lab-report section, as data: the numbers used, the direction
concluded (verdicts.py's one rule), the cost in parameters and seconds, and, where a section has
no runs, which experiment to run. No prose: `report.py` words it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mnist_lab import codec
from mnist_lab.data.datasets import DATASETS, MNIST
from mnist_lab.errors import ConfigError
from mnist_lab.lab.experiments import final_train_loss, stored_verdict
from mnist_lab.lab.lessons import stored_lessons
from mnist_lab.lab.verdicts import (
    FLAT_ACC,
    FLAT_LOSS,
    NOT_LEARNED,
    Comparison,
    Group,
    compare_groups,
    judge,
)
from mnist_lab.nets.model import ModelConfig, describe, summarize
from mnist_lab.runs.store import ResultStore

MIN_RUNS = 2  # runs a level (a group) needs before its spread, and so a direction, means anything
LEVEL_BAND = 0.10  # levelled off: the moving mean stays within 10% of its total fall of the final value

# Settings that must be equal for runs to be compared as one experiment (all but the factor).
CONTEXT = ["kind", "conv_layers", "conv_channels", "kernel_size", "padding", "pool_before_relu", "batch_norm",
           "dropout", "hidden", "softmax_before_loss", "epochs", "batch_size", "optimizer", "lr", "momentum",
           "dataset", "normalize", "train_limit", "test_limit", "permute_pixels"]
# The sweep's family doubles channels per block, so conv_channels follows the factor being swept.
FACTOR_FREE = {"conv_layers": ("conv_layers", "conv_channels"), "kernel_size": ("kernel_size",),
               "softmax_before_loss": ("softmax_before_loss",)}

# Where to get the runs a section lacks: the page and the exact command.
TODO = {
    "loss": ("Train", "python -m mnist_lab train --preset lab5 --epochs 1"),
    "depth": ("Sweep: depth × kernel",
              "python -m mnist_lab sweep --conv-layers 1 2 3 --kernel-sizes 5 --seeds 3 --epochs 1"),
    "kernel": ("Sweep: depth × kernel",
               "python -m mnist_lab sweep --conv-layers 2 --kernel-sizes 3 5 7 --seeds 3 --epochs 1"),
    "compare": ("FC vs CNN", "python -m mnist_lab compare --seeds 3 --epochs 1"),
    "softmax": ("Train", "for s in 0 1 2; do python -m mnist_lab train --preset lab5 --epochs 1 --seed $s; "
                         "python -m mnist_lab train --preset lab5 --epochs 1 --seed $s --softmax-before-loss; done"),
}


@dataclass(frozen=True)
class Todo:
    experiment: str  # key of TODO
    page: str
    command: str
    why: str  # "missing" (no runs) or "one_seed" (runs, but no spread)


@dataclass
class Finding:
    section: str  # "loss", "depth", "kernel", "analysis"
    available: bool
    # the headline: loss, last window against first; depth and kernel, last level against first;
    # analysis, how much more the CNN loses to shuffled pixels than the FC net (up: locality)
    direction: str | None = None
    numbers: dict = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    steps: list[Comparison] = field(default_factory=list)  # consecutive levels
    overall: Comparison | None = None  # first level against last
    fixed: dict = field(default_factory=dict)  # settings held equal across the groups
    params: int = 0  # cost: parameters of the largest network involved
    seconds: float = 0.0  # cost: wall time of every run involved
    run_ids: list[str] = field(default_factory=list)
    todo: list[Todo] = field(default_factory=list)


@dataclass
class Findings:
    loss: Finding
    depth: Finding
    kernel: Finding
    analysis: Finding
    runs_considered: int  # finished runs in the store (in the reader's scope)
    devices: list[str]
    data_sources: list[tuple[str, str | None]]  # (English, stored message or None) of each source
    lessons: list = field(default_factory=list)  # lessons.StoredLesson: each week-2 lesson's newest runs
    test_images: list[int] = field(default_factory=list)  # the test images the finished runs evaluated on (each count)

    def sections(self) -> list[Finding]:
        return [self.loss, self.depth, self.kernel, self.analysis]

    def to_dict(self) -> dict:
        """Every section, and the rule its directions follow."""
        rule = dict(spread="sd(A) + sd(B), sample sd over seeds", min_runs_per_group=2, flat_accuracy=FLAT_ACC,
                    flat_loss=FLAT_LOSS, level_off_band=f"{LEVEL_BAND:g} of the moving mean's total fall")
        return _clean(dict(rule=rule, **asdict(self)))


def _clean(value):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _todo(key: str, why: str = "missing") -> Todo:
    page, command = TODO[key]
    return Todo(key, page, command, why)


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _key(value):
    """A settings value comparable across rows (NaN, None and '' alike; 1 and 1.0 alike)."""
    if _blank(value):
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return str(value)


def context_keys(runs: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Each run's settings in `columns` as one comparable tuple (`_key`: NaN, None and '' alike; 1 and
    1.0 alike), each column's distinct values keyed once."""
    keyed = []
    for c in columns:
        codes, distinct = pd.factorize(runs[c].astype(object), use_na_sentinel=False)
        keys = np.empty(len(distinct), dtype=object)
        keys[:] = [_key(v) for v in distinct]
        keyed.append(keys[codes])
    return pd.Series(list(zip(*keyed)) if len(runs) else [], index=runs.index, dtype=object)


def shared_settings(row, columns: list[str]) -> dict:
    """`row`'s settings in `columns`, blanks as None, JSON-safe (what a set of runs shares)."""
    return _clean({c: (None if _blank(row[c]) else row[c]) for c in columns})


def _ints(text) -> tuple[int, ...]:
    return () if _blank(text) else tuple(int(v) for v in str(text).split("-"))


def model_from_row(row) -> ModelConfig:
    """The ModelConfig a stored run was trained with (the codec's store-row form)."""
    return codec.from_row(ModelConfig, row if isinstance(row, dict) else dict(row))


def feature_map(cfg: ModelConfig) -> int:
    """Side in pixels of the last feature map a CNN flattens (the image itself for an FC net)."""
    pools = [r for r in summarize(cfg) if r.name.startswith("pool")]
    return pools[-1].output_shape[1] if pools else cfg.image_size


def _formulas(cfg: ModelConfig) -> list[dict]:
    """Each layer with parameters: its description, count and formula (models.summarize)."""
    return [dict(layer=r.layer, params=r.params, formula=r.formula) for r in summarize(cfg) if r.params]


def _group(level: str, runs: pd.DataFrame) -> Group:
    runs = runs.sort_values("seed")
    acc = [float(v) for v in runs["final_test_acc"]]
    sd = float(pd.Series(acc).std()) if len(acc) > 1 else 0.0
    not_learned = int((runs["verdict"] == NOT_LEARNED).sum()) if "verdict" in runs else 0
    return Group(level=level, n=len(acc), mean=float(sum(acc) / len(acc)), sd=sd, params=int(runs["params"].max()),
                 seconds=float(runs["seconds"].astype(float).mean()), seeds=[int(s) for s in runs["seed"]],
                 run_ids=list(runs["run_id"]), values=acc, learned=2 * not_learned < len(acc))


def finished_runs(runs: pd.DataFrame, experiment: str | None = None) -> pd.DataFrame:
    done = runs[(runs["status"] == "finished") & runs["final_test_acc"].notna()]
    return done if experiment is None else done[done["experiment"] == experiment]


def factor_slices(runs: pd.DataFrame, factor: str, by: tuple[str, ...] = ()) -> list[pd.DataFrame]:
    """Runs split by every setting except `factor` (and by the columns `by`: a class's runs split per
    student at once), each slice with one run per (level, seed): the newest, so a repeated sweep adds
    seeds instead of counting one seed twice. Newest first, each slice where its newest run is."""
    context = [*by, *(c for c in CONTEXT if c not in FACTOR_FREE[factor])]
    runs = runs.sort_values("started_at", ascending=False, kind="stable")
    keys = context_keys(runs, context)
    kept = ~pd.DataFrame({"ctx": keys, "level": runs[factor], "seed": runs["seed"]}).duplicated().to_numpy()
    runs, keys = runs[kept], keys[kept]
    groups = sorted(keys.groupby(keys, sort=False).indices.values(), key=lambda rows: rows[0])
    return [runs.take(rows) for rows in groups]


def pick_slice(slices: list[pd.DataFrame], factor: str) -> pd.DataFrame | None:
    """The slice the report reads: the most levels of the factor (two or more), then the most runs,
    then the newest (the first of equals)."""
    ranked = [(s[factor].nunique(), len(s), s["started_at"].max(), -i) for i, s in enumerate(slices)]
    usable = [r for r in ranked if r[0] >= 2]
    return slices[-max(usable)[3]] if usable else None


def has_spread(sizes) -> bool:
    """Whether every group (its number of runs in `sizes`) has MIN_RUNS runs or more: else the section's
    direction has no spread to judge by and its todo says to run more seeds ("one_seed")."""
    return min(sizes) >= MIN_RUNS


def _fixed(part: pd.DataFrame, factor: str) -> dict:
    """The settings a slice's runs share, and their seeds."""
    fixed = shared_settings(part.iloc[0], [c for c in CONTEXT if c not in FACTOR_FREE[factor]])
    fixed["seeds"] = sorted({int(s) for s in part["seed"]})
    return fixed


def factor_finding(runs: pd.DataFrame, section: str, factor: str, todo_key: str) -> Finding:
    """Test accuracy against one factor (conv layers or kernel size) from sweep runs."""
    part = pick_slice(factor_slices(finished_runs(runs, "sweep"), factor), factor)
    if part is None:
        return Finding(section, available=False, todo=[_todo(todo_key)])
    levels = sorted(part[factor].astype(int).unique())
    groups = [_group(str(level), part[part[factor].astype(int) == level]) for level in levels]
    steps = [compare_groups(a, b) for a, b in zip(groups, groups[1:])]
    overall = compare_groups(groups[0], groups[-1])
    best = max(groups, key=lambda g: g.mean)
    maps, formulas = {}, {}
    for level in levels:
        cfg = model_from_row(part[part[factor].astype(int) == level].iloc[0])
        maps[str(level)] = feature_map(cfg)
        formulas[str(level)] = _formulas(cfg)
    numbers = dict(factor=factor, levels=[int(v) for v in levels], best=best.level, feature_map=maps,
                   formulas=formulas, epochs=int(part["epochs"].iloc[0]), padding=part["padding"].iloc[0],
                   batch_norm=bool(part["batch_norm"].iloc[0]))
    todo = [] if has_spread(g.n for g in groups) else [_todo(todo_key, "one_seed")]
    return Finding(section, True, overall.direction, numbers, groups, steps, overall, _fixed(part, factor),
                   params=max(g.params for g in groups), seconds=float(part["seconds"].astype(float).sum()),
                   run_ids=list(part["run_id"]), todo=todo)


# ------------------------------------------------------------------------------ section 1: loss

def moving_mean(losses: list[float], window: int) -> list[float]:
    """Trailing mean over `window` iterations, one value per full window."""
    s = pd.Series(losses, dtype=float).rolling(window).mean().dropna()
    return [float(v) for v in s]


def loss_window(n: int) -> int:
    """Iterations per moving-mean window: a twentieth of the run, 2 to 100 (1 for a run of < 4)."""
    return 1 if n < 4 else min(100, max(2, n // 20))


def level_off(ma: list[float], band: float) -> int | None:
    """Index into `ma` from which on it stays within `band` of its final value (None: only the
    final value is, so it is still moving)."""
    if not ma or band <= 0:
        return None
    final, tol = ma[-1], 1e-9 * max(abs(ma[-1]), 1.0)  # rounding must not move the boundary
    i = len(ma)
    while i > 0 and abs(ma[i - 1] - final) <= band + tol:
        i -= 1
    return i if i < len(ma) - 1 else None  # only the final value itself: still moving


def newest_finished(runs: pd.DataFrame) -> str | None:
    done = runs[runs["status"] == "finished"]
    return None if done.empty else str(done.sort_values("started_at", ascending=False).iloc[0]["run_id"])


def loss_finding(store: ResultStore, runs: pd.DataFrame, run_id: str | None, picked: bool = True) -> Finding:
    """Section 1: a run's every-iteration loss, where it levelled off, its per-epoch accuracy.
    `picked`: the reader chose `run_id` (one that cannot be read is refused); else it is a default
    (one without a loss curve leaves the section to do)."""
    chosen = run_id is not None and picked
    run_id = run_id or newest_finished(runs)
    if run_id is None:
        return Finding("loss", available=False, todo=[_todo("loss")])
    if run_id not in set(runs["run_id"]):
        raise ConfigError("run", run_id, "No run '{value}' in the results database (or not one you may see).")
    row = runs[runs["run_id"] == run_id].iloc[0]
    iters = store.iterations([run_id])
    losses = [float(v) for v in iters["loss"]]
    if len(losses) < 2 and not chosen:
        return Finding("loss", available=False, todo=[_todo("loss")])
    if len(losses) < 2:
        raise ConfigError("run", run_id, "Run '{value}' has {n} recorded iteration(s); choose a run that trained.",
                          n=len(losses))
    w = loss_window(len(losses))
    ma = moving_mean(losses, w)
    first, last = losses[:w], losses[-w:]
    sd = lambda xs: float(pd.Series(xs).std()) if len(xs) > 1 else 0.0  # noqa: E731
    trend = judge("first", "last", ma[-1] - ma[0], sd(first) + sd(last), w, FLAT_LOSS)
    fell = ma[0] - ma[-1]
    band = LEVEL_BAND * fell if fell > 0 else 0.0
    idx = level_off(ma, band)
    level_it = None if idx is None else int(iters["iteration"].iloc[idx + w - 1])  # ma[i] ends at iteration i+w
    epochs = store.epochs([run_id])
    per_epoch = [dict(epoch=int(e.epoch), train_loss=float(e.train_loss), test_loss=float(e.test_loss),
                      test_acc=float(e.test_acc)) for e in epochs.itertuples()]
    settings = {c: (None if _blank(row[c]) else row[c]) for c in
                ("label", "label_msg", "experiment", "kind", "conv_channels", "kernel_size", "padding", "epochs",
                 "batch_size", "optimizer", "lr", "momentum", "seed", "device", "engine", "dataset", "normalize",
                 "train_limit", "permute_pixels", "data_source", "data_source_msg", "started_at",
                 "softmax_before_loss")}
    numbers = dict(run_id=run_id, iterations=len(losses), window=w, first_mean=ma[0], last_mean=ma[-1],
                   first_loss=losses[0], last_loss=losses[-1], fell=fell, fell_frac=fell / ma[0] if ma[0] else 0.0,
                   band=band, level_off_iteration=level_it,
                   level_off_frac=None if level_it is None else level_it / len(losses),
                   steps_per_epoch=0 if _blank(row["steps_per_epoch"]) else int(row["steps_per_epoch"]),
                   per_epoch=per_epoch, final_test_acc=float(row["final_test_acc"]), settings=_clean(settings),
                   learned=row.get("verdict") != NOT_LEARNED,
                   final_train_loss=per_epoch[-1]["train_loss"] if per_epoch else None,
                   confusion=confusion_numbers(store, run_id))
    return Finding("loss", True, trend.direction, numbers, overall=trend, params=int(row["params"]),
                   seconds=float(row["seconds"]), run_ids=[run_id])


def confusion_numbers(store: ResultStore, run_id: str, pairs: int = 5) -> dict | None:
    """The run's confusion matrix on its test set and its most confused pairs, when its weights
    are kept (None otherwise, or when its data cannot be loaded here)."""
    from mnist_lab.data.datasets import DataUnavailableError
    from mnist_lab.lab.inspection import confusion, evaluated_images, load_run

    if run_id not in store.inspectable([run_id]):
        return None
    try:
        run = load_run(store, run_id)
        if run.saved.nonfinite:  # a diverged run's NaN weights: its confusion matrix means nothing
            return None
        conf = confusion(run, *evaluated_images(run))
    except (OSError, ValueError, DataUnavailableError):  # a refused weights file (WeightsError) among them
        return None
    return dict(class_names=conf.class_names, counts=conf.counts.tolist(), n=conf.n, accuracy=conf.accuracy,
                pairs=conf.confused_pairs(pairs).to_dict("records"))


# ------------------------------------------------------------------------------ section 4: analysis

COMPARE_CELLS = [("FC", "normal"), ("CNN", "normal"), ("FC", "permuted"), ("CNN", "permuted")]


def compare_cell(kind, permute) -> tuple[str, str]:
    """A compare run's cell: (FC or CNN, normal or permuted)."""
    return "CNN" if kind == "cnn" else "FC", "permuted" if bool(permute) else "normal"


def picked_comparisons(runs: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """The comparison the report reads, for all `runs` or per value of the column `by` (a class's
    students at once): of the finished compare runs, the job (group) with the most of its four cells
    (FC/CNN × normal/permuted), then the newest (the first of equals); its runs, each with its `cell`."""
    done = finished_runs(runs, "compare")
    cell = pd.Series([compare_cell(k, p) for k, p in zip(done["kind"], done["permute_pixels"])], index=done.index,
                     dtype=object)
    jobs = pd.DataFrame({"owner": done[by] if by else 0, "group": done["group_id"], "cell": cell.map("/".join),
                         "newest": done["started_at"]}, index=done.index)
    ranked = jobs.groupby(["owner", "group"], sort=False).agg(cells=("cell", "nunique"), newest=("newest", "max"))
    best = ranked.sort_values(["cells", "newest"], ascending=False, kind="stable").reset_index()
    best = best.drop_duplicates("owner")
    chosen = pd.MultiIndex.from_frame(jobs[["owner", "group"]]).isin(pd.MultiIndex.from_frame(best[["owner", "group"]]))
    return done[chosen].assign(cell=cell[chosen])


def compare_cells(runs: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """The comparison the report reads (picked_comparisons): each of its cells' runs."""
    picked = picked_comparisons(runs).drop(columns="cell")
    return {compare_cell(k, p): c for (k, p), c in picked.groupby(["kind", picked["permute_pixels"].astype(bool)])}


def _softmax_pair(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Finished runs with softmax before the loss, and the same settings without it."""
    done = finished_runs(runs).copy()
    done["softmax_before_loss"] = done["softmax_before_loss"].map(lambda v: bool(_key(v)))
    best = None
    for part in factor_slices(done, "softmax_before_loss"):
        with_sm, without = part[part["softmax_before_loss"]], part[~part["softmax_before_loss"]]
        if len(with_sm) and len(without):
            key = (min(len(with_sm), len(without)), part["started_at"].max())
            if best is None or key > best[0]:
                best = (key, (without, with_sm))
    return None if best is None else best[1]


def _weight_sharing(cfg: ModelConfig) -> dict:
    """The first conv layer's parameters against a fully-connected layer with the same input and output."""
    rows = summarize(cfg)
    conv = next(r for r in rows if r.name == "conv1")
    n_in = cfg.in_channels * cfg.image_size**2
    n_out = math.prod(conv.output_shape)
    dense = n_in * n_out + n_out
    return dict(layer=conv.layer, params=conv.params, formula=conv.formula, outputs=n_out, inputs=n_in,
                dense_params=dense, dense_formula=f"{n_in}×{n_out} + {n_out} = {dense}",
                ratio=dense / conv.params)


def analysis_finding(runs: pd.DataFrame) -> Finding:
    """Section 4: FC vs CNN on normal and permuted pixels (locality, weight sharing), parameter
    formulas, and what a softmax before the loss does."""
    cells = compare_cells(runs)
    numbers: dict = {}
    groups, steps, todo, ids, seconds, params = [], [], [], [], 0.0, 0
    direction = None
    need = COMPARE_CELLS
    if all(k in cells for k in need):
        g = {k: _group(f"{k[0]} / {k[1]}", cells[k]) for k in need}
        groups = list(g.values())
        cnn_vs_fc = compare_groups(g[("FC", "normal")], g[("CNN", "normal")])
        cnn_vs_fc_perm = compare_groups(g[("FC", "permuted")], g[("CNN", "permuted")])
        cnn_shuffle = compare_groups(g[("CNN", "normal")], g[("CNN", "permuted")])
        fc_shuffle = compare_groups(g[("FC", "normal")], g[("FC", "permuted")])
        spread = sum(x.sd for x in groups)
        # how much more the CNN loses to shuffling than the FC net: the locality it relied on
        gap = judge("FC drop", "CNN drop", (g[("CNN", "normal")].mean - g[("CNN", "permuted")].mean)
                    - (g[("FC", "normal")].mean - g[("FC", "permuted")].mean), spread,
                    min(x.n for x in groups), FLAT_ACC)
        steps = [cnn_vs_fc, cnn_vs_fc_perm, cnn_shuffle, fc_shuffle, gap]
        direction = gap.direction
        cnn_cfg = model_from_row(cells[("CNN", "normal")].iloc[0])
        fc_cfg = model_from_row(cells[("FC", "normal")].iloc[0])
        numbers["compare"] = dict(
            epochs=int(cells[("CNN", "normal")]["epochs"].iloc[0]),
            cnn=dict(architecture=describe(cnn_cfg), params=g[("CNN", "normal")].params, formulas=_formulas(cnn_cfg)),
            fc=dict(architecture=describe(fc_cfg), params=g[("FC", "normal")].params, formulas=_formulas(fc_cfg)),
            weight_sharing=_weight_sharing(cnn_cfg))
        for frame in cells.values():
            ids += list(frame["run_id"])
            seconds += float(frame["seconds"].astype(float).sum())
        params = max(x.params for x in groups)
        if not has_spread(x.n for x in groups):
            todo.append(_todo("compare", "one_seed"))
    else:
        todo.append(_todo("compare"))
    pair = _softmax_pair(runs)
    if pair is not None:
        without, with_sm = _group("without softmax", pair[0]), _group("softmax before the loss", pair[1])
        sm = compare_groups(without, with_sm)
        numbers["softmax"] = dict(without=asdict(without), with_softmax=asdict(with_sm), comparison=asdict(sm),
                                  label=str(pair[0]["label"].iloc[0]), epochs=int(pair[0]["epochs"].iloc[0]))
        ids += without.run_ids + with_sm.run_ids
        seconds += without.seconds * without.n + with_sm.seconds * with_sm.n
        params = max(params, without.params)
        if sm.n_min < 2:
            todo.append(_todo("softmax", "one_seed"))
    else:
        todo.append(_todo("softmax"))
    return Finding("analysis", bool(groups) or pair is not None, direction, _clean(numbers), groups, steps,
                   steps[-1] if steps else None, params=params, seconds=seconds, run_ids=ids, todo=todo)


def with_verdicts(store: ResultStore, runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` (store rows) with each run's `verdict` (experiments.stored_verdict: did it learn?)."""
    return verdicts_from(runs, store.epochs(list(runs["run_id"])) if len(runs) else None)


def verdicts_from(runs: pd.DataFrame, epochs: pd.DataFrame | None) -> pd.DataFrame:
    """`with_verdicts` from epochs already read (the store's epochs frame, any superset of the runs')."""
    if not len(runs):
        return runs.assign(verdict=[])
    loss = final_train_loss(epochs)
    columns = (runs[c].tolist() for c in ("status", "final_test_acc", "run_id", "dataset"))
    return runs.assign(verdict=[stored_verdict(status, acc, loss.get(run_id), dataset)
                                for status, acc, run_id, dataset in zip(*columns)])


def compute_findings(store: ResultStore, run_id: str | None = None, workspace: str | None = None,
                     picked: bool = True) -> Findings:
    """Every section's finding from the runs `workspace` may see (None: all of them);
    section 1 reads `run_id` (default: the newest finished run; `picked`: the reader chose it)."""
    runs = with_verdicts(store, store.visible_runs(workspace))
    done = finished_runs(runs)
    return Findings(loss=loss_finding(store, runs, run_id, picked),
                    depth=factor_finding(runs, "depth", "conv_layers", "depth"),
                    kernel=factor_finding(runs, "kernel", "kernel_size", "kernel"),
                    analysis=analysis_finding(runs), runs_considered=len(done),
                    devices=sorted({str(d) for d in done["device"] if not _blank(d)}),
                    data_sources=sorted({(str(d), None if _blank(m) else str(m)) for d, m in
                                         zip(done["data_source"], done["data_source_msg"]) if not _blank(d)}),
                    lessons=stored_lessons(store, workspace), test_images=test_counts(done))


def test_counts(done: pd.DataFrame) -> list[int]:
    """How many test images the finished runs were scored on, each count once (a run with a test
    limit, e.g. a demo's example, saw fewer than its dataset's test set)."""
    counts = set()
    for name, limit in zip(done["dataset"], done["test_limit"]):
        spec = DATASETS.get(str(name), MNIST)
        counts.add(spec.test_count if _blank(limit) else min(int(limit), spec.test_count))
    return sorted(counts)


# ------------------------------------------------------------------------------ requirements 2 and 3: the grid

GRID_FREE = ("conv_layers", "conv_channels", "kernel_size")  # what a depth × kernel sweep varies
GRID_CONTEXT = [c for c in CONTEXT if c not in GRID_FREE]  # what the runs of one depth × kernel grid share
GRID_CELL = ["conv_layers", "kernel_size"]


def grid_cells(part: pd.DataFrame) -> int:
    """How many (conv layers, kernel) cells a set of sweep runs fills."""
    return len(part[GRID_CELL].drop_duplicates())


def sweep_sets(runs: pd.DataFrame) -> list[pd.DataFrame]:
    """Every set of finished sweep runs that share all settings but depth, channels and kernel
    (GRID_CONTEXT), each with one run per (cell, seed): the newest."""
    done = finished_runs(runs, "sweep")
    if done.empty:
        return []
    keyed = done.assign(_ctx=context_keys(done, GRID_CONTEXT))
    return [part.sort_values("started_at", ascending=False).drop_duplicates([*GRID_CELL, "seed"])
            .drop(columns="_ctx") for _, part in keyed.groupby("_ctx", sort=False)]


def sweep_grid(runs: pd.DataFrame) -> dict | None:
    """The whole depth × kernel sweep: of the sweep runs that share every other setting, the set
    with the most (conv layers, kernel) cells, then the most runs, then the newest; one run per
    (cell, seed), the newest. {'layers': [...], 'kernels': [...], 'cells': {(layers, kernel): Group},
    'fixed': the shared settings}; None without a sweep of two cells or more."""
    parts = sweep_sets(runs)
    if not parts:
        return None
    part = max(parts, key=lambda p: (grid_cells(p), len(p), p["started_at"].max()))
    if grid_cells(part) < 2:
        return None
    layers, kernels = part["conv_layers"].astype(int), part["kernel_size"].astype(int)
    grid = {(int(a), int(k)): _group(f"{int(a)}×{int(k)}", part[(layers == a) & (kernels == k)])
            for a, k in sorted({(int(a), int(k)) for a, k in zip(layers, kernels)})}
    fixed = shared_settings(part.iloc[0], GRID_CONTEXT)
    fixed["seeds"] = sorted({int(s) for s in part["seed"]})
    return dict(layers=sorted({a for a, _ in grid}), kernels=sorted({k for _, k in grid}), cells=grid,
                fixed=fixed)
