"""The lab's experiments on top of `train`: a single run, the conv-layers x kernel-size sweep,
and the equal-parameter FC-vs-CNN comparison on normal and permuted pixels, with summaries
of mean ± standard deviation over seeds. They report through training events (`record`, then
`on_progress`), each run's start tagged with its experiment and group; they hold no store.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import pandas as pd

from mnist_lab.data.datasets import DATASETS, DataConfig, TensorData, prepare_data
from mnist_lab.errors import (
    ConfigError,
    StoreError,
    failure_reason,
    need_bool,
    need_choice,
    need_int,
    need_ints,
    need_seed,
)
from mnist_lab.i18n import N_, Message, mean_sd_texts, render, to_stored
from mnist_lab.lab.verdicts import NOT_LEARNED, learning_verdict
from mnist_lab.nets.blocks.base import KERNEL_RANGE, MAX_CHANNELS
from mnist_lab.nets.model import MAX_CONV_BLOCKS, MAX_WIDTH, ModelConfig, describe, match_fc_width
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.training import engines
from mnist_lab.training.events import Event, RunEnded, RunStarted
from mnist_lab.training.loop import (
    CancelFlag,
    RunResult,
    TrainConfig,
    new_run_id,
    train,
    train_many,
)
from mnist_lab.training.preflight import preflight, resolve_device

EventFn = Callable[[Event], None]

_DATA_MEMO: OrderedDict[tuple, TensorData] = OrderedDict()
_DATA_LOCK = threading.Lock()
# Prepared datasets kept per process (~220 MB each at 60,000 images): 2 covers the FC-vs-CNN
# comparison (normal + permuted); a hosted 1 GB tier may want 1.
DATA_MEMO_SIZE = int(os.environ.get("MNIST_LAB_DATA_MEMO", "2"))
MAX_SEEDS = 100  # runs per cell of a sweep or comparison
MAX_SWEEP_VALUES = 16  # values per sweep axis


def get_data(data_cfg: DataConfig, device: str = "auto") -> TensorData:
    """Prepared tensors on the device, shared by the runs of a process (a few kept)."""
    dev = resolve_device(device)
    key = (data_cfg, str(dev))
    with _DATA_LOCK:
        if key not in _DATA_MEMO:
            _DATA_MEMO[key] = prepare_data(data_cfg, dev)
            while len(_DATA_MEMO) > max(DATA_MEMO_SIZE, 1):
                _DATA_MEMO.popitem(last=False)
        _DATA_MEMO.move_to_end(key)
        return _DATA_MEMO[key]


class _Reporter:
    """Sends each event to `record`, then to `on_progress`, each run's start tagged with its
    experiment and group; knows which runs have started and not ended, so that a failure can end
    them ('failed') and the record says they did not finish."""

    def __init__(self, record: EventFn | None, on_progress: EventFn | None, experiment: str, group_id: str):
        self.record, self.on_progress = record, on_progress
        self.experiment, self.group_id = experiment, group_id
        self.open: dict[str, None] = {}  # run ids started and not ended, in start order

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            event = replace(event, experiment=self.experiment, group_id=self.group_id)
            self.open[event.run_id] = None
        if self.record is not None:
            self.record(event)
        if isinstance(event, RunEnded):  # recorded: a run whose end could not be (a full disk) stays open
            self.open.pop(event.run_id, None)
        if self.on_progress is not None:
            self.on_progress(event)

    def fail_open(self, exc: BaseException) -> None:
        """End every run still open (what it recorded is kept), saying why (errors.failure_reason:
        a second Ctrl-C, a full disk, a refusal, an error by name; never empty): 'interrupted' when
        `exc` is a KeyboardInterrupt, else 'failed'."""
        why = failure_reason(exc)
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        for run_id in list(self.open):
            self.open.pop(run_id)
            if self.record is not None:
                with contextlib.suppress(StoreError):  # the database itself may be what failed
                    self.record(RunEnded(run_id=run_id, epoch=0, step=0, total_steps=0, status=status,
                                         seconds=0.0, message=str(why), message_msg=to_stored(why)))


def run_single(model_cfg: ModelConfig, train_cfg: TrainConfig, data_cfg: DataConfig, *,
               record: EventFn | None = None, on_progress: EventFn | None = None,
               cancel: CancelFlag | None = None, experiment: str = "single", group_id: str = "",
               label: str = "", data: TensorData | None = None, run_id: str | None = None) -> RunResult:
    """Train one model; `record` (a runs.recorder.Recorder, say) gets every event as it happens,
    then `on_progress`. `run_id`: the one its events carry (an executor that retries a run keeps
    it); a new one by default."""
    preflight(model_cfg, train_cfg, data_cfg, n_train=None if data is None else len(data.x_train))  # before data loads
    data = data if data is not None else get_data(data_cfg, train_cfg.device)
    report = _Reporter(record, on_progress, experiment, group_id)
    try:
        return train(model_cfg, train_cfg, data, on_progress=report, cancel=cancel, run_id=run_id, label=label)
    except BaseException as exc:
        report.fail_open(exc)
        raise


def run_many(jobs: list[tuple[ModelConfig, TrainConfig, str | Message]], data_cfg: DataConfig, *,
             record: EventFn | None = None, on_progress: EventFn | None = None,
             cancel: CancelFlag | None = None, experiment: str = "sweep", group_id: str = "") -> list[RunResult]:
    """Train (model, training, label) jobs sharing one dataset. On a GPU, or when they ask for
    a stacking engine, through `train_many` (side by side, or stacked); otherwise one after
    another. Each result is what it would be alone. (The lab's default `Runner`.)"""
    return run_group(jobs, data_cfg, record=record, on_progress=on_progress, cancel=cancel, experiment=experiment,
                     group_id=group_id)


def run_group(jobs: list[tuple[ModelConfig, TrainConfig, str | Message]], data_cfg: DataConfig, *,
              record: EventFn | None = None, on_progress: EventFn | None = None,
              cancel: CancelFlag | None = None, experiment: str = "sweep", group_id: str = "",
              run_ids: list[str] | None = None) -> list[RunResult]:
    """run_many, with the runs' ids given (`run_ids`, one per job; new ones by default): an
    executor that trains a group elsewhere, and retries it, keeps the ids it chose."""
    if not jobs:
        return []
    run_ids = list(run_ids) if run_ids is not None else [new_run_id() for _ in jobs]
    for model_cfg, train_cfg, _ in jobs:
        preflight(model_cfg, train_cfg, data_cfg)  # every run, before any data loads
    data = get_data(data_cfg, jobs[0][1].device)
    together = data.device.type == "cuda" or any(engines.asks_to_stack(t) for _, t, _ in jobs)
    if not together or len(jobs) == 1:
        results = []
        for (model_cfg, train_cfg, label), run_id in zip(jobs, run_ids):
            if cancel is not None and cancel.is_set():
                break
            results.append(run_single(model_cfg, train_cfg, data_cfg, record=record, on_progress=on_progress,
                                      cancel=cancel, experiment=experiment, group_id=group_id, label=label,
                                      data=data, run_id=run_id))
        return results
    report = _Reporter(record, on_progress, experiment, group_id)
    try:
        return train_many([(m, t) for m, t, _ in jobs], data, on_progress=report, cancel=cancel,
                          labels=[label for _, _, label in jobs], run_ids=run_ids)
    except BaseException as exc:
        report.fail_open(exc)
        raise


class Runner(Protocol):
    """What trains a list of (network, training, label) jobs on one dataset for the lab's
    experiments: `run_many` (this process), or an executor's (service.ray_executor.RayRunner: a
    cluster). Results in `jobs` order; those not begun after a Stop are left out."""

    def __call__(self, jobs: list[tuple[ModelConfig, TrainConfig, str | Message]], data_cfg: DataConfig, *,
                 record: EventFn | None = None, on_progress: EventFn | None = None,
                 cancel: CancelFlag | None = None, experiment: str = "sweep",
                 group_id: str = "") -> list[RunResult]: ...


# ------------------------------------------------------------------------------------ sweep

@dataclass(frozen=True)
class SweepConfig:
    conv_layers: tuple[int, ...] = (1, 2, 3)
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    hidden_units: tuple[int, ...] = (0,)  # width of one hidden FC layer; 0 = none
    seeds: int = 3  # runs per cell, with seeds 0 .. seeds-1
    base_channels: int = 16  # first block's channels, doubling every block
    padding: str = "same"
    pool_before_relu: bool = False

    def model(self, layers: int, kernel: int, hidden: int) -> ModelConfig:
        return cnn_config(layers, kernel, base_channels=self.base_channels, padding=self.padding,
                          hidden=(hidden,) if hidden else (), pool_before_relu=self.pool_before_relu)

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the field, the value and what to change."""
        lo, hi = KERNEL_RANGE
        for name, label, what, low, high, example in (
                ("conv_layers", N_("Conv layers"), N_("conv-layer count"), 1, MAX_CONV_BLOCKS, (1, 2, 3)),
                ("kernel_sizes", N_("Kernel sizes"), N_("kernel size"), lo, hi, (3, 5, 7)),
                ("hidden_units", N_("Hidden units"), N_("hidden width"), 0, MAX_WIDTH, (0,))):
            value = need_ints(name, getattr(self, name), label, example)
            if not value:
                raise ConfigError(name, value, "Choose at least one {what} ({name} is empty).", what=what, name=name)
            if not 1 <= len(value) <= MAX_SWEEP_VALUES:
                raise ConfigError(name, value, "A sweep takes at most {high} values of {name}; got {value!r}. "
                                  "Use fewer.",
                                  high=MAX_SWEEP_VALUES, name=name)
            for v in value:
                if not low <= v <= high:
                    raise ConfigError(name, value, "Every {what} must be {low} to {high}; {name} = {value!r} has "
                                      "{v!r}: use values from {low} to {high}.", what=what, low=low, high=high,
                                      name=name, v=v)
        need_int("seeds", self.seeds, "Seeds", 3)
        if not 1 <= self.seeds <= MAX_SEEDS:
            raise ConfigError("seeds", self.seeds, "A sweep needs at least 1 seed per cell (at most {high}); got "
                              "{value!r}. Use 3, say.", high=MAX_SEEDS)
        need_int("base_channels", self.base_channels, "Base channels", 16)
        if not 1 <= self.base_channels <= MAX_CHANNELS:
            raise ConfigError("base_channels", self.base_channels, "The first block's channels must be 1 to {high}; "
                              "got {value!r}. Use 16, say.", high=MAX_CHANNELS)
        need_choice("padding", self.padding, "Padding", ("valid", "same"))
        need_bool("pool_before_relu", self.pool_before_relu, "Pool before ReLU")

    def cells(self) -> tuple[list[tuple[int, int, int, ModelConfig]], list[dict]]:
        """(valid cells as (layers, kernel, hidden, cfg), skipped cells with the reason: its English
        `reason` and the ConfigError as `error`)."""
        self.validate()
        valid, skipped = [], []
        for layers in self.conv_layers:
            for kernel in self.kernel_sizes:
                for hidden in self.hidden_units:
                    cfg = self.model(layers, kernel, hidden)
                    try:
                        cfg.validate()
                    except ValueError as exc:
                        skipped.append(dict(conv_layers=layers, kernel_size=kernel, hidden_units=hidden,
                                            reason=str(exc), error=exc))  # error: for a UI to word it
                        continue
                    valid.append((layers, kernel, hidden, cfg))
        if not valid:
            raise ConfigError("kernel_sizes", self.kernel_sizes, "No cell of this sweep is a valid network "
                              "(kernel_sizes = {value!r}, conv_layers = {layers!r}); use smaller kernels, fewer "
                              "layers or 'same' padding:\n{reasons}",
                              layers=self.conv_layers, reasons="\n".join(s["reason"] for s in skipped))
        return valid, skipped


SWEEP_COLUMNS = ["run_id", "conv_layers", "kernel_size", "hidden_units", "channels", "seed", "params",
                 "status", "epochs_done", "train_loss", "test_loss", "test_acc", "seconds", "engine", "device",
                 "verdict"]


@dataclass
class SweepResult:
    results: list[RunResult]
    table: pd.DataFrame  # SWEEP_COLUMNS, one row per run
    skipped: list[dict] = field(default_factory=list)  # invalid cells and why
    status: str = "finished"  # or "stopped"


def sweep_runs(sweep: SweepConfig, train_cfg: TrainConfig) -> tuple[list[tuple[ModelConfig, TrainConfig, Message]],
                                                                    list[tuple[int, int, int, int]], list[dict]]:
    """The sweep's runs in training order: (network, training, label) of each valid cell and seed,
    their (conv layers, kernel, hidden, seed) keys, and the cells skipped (`sweep.cells()`'s)."""
    cells, skipped = sweep.cells()
    jobs, keys = [], []
    for layers, kernel, hidden, cfg in cells:
        for seed in range(sweep.seeds):
            rest = f"k{kernel}" + (f" + FC {hidden}" if hidden else "")  # the architecture: no words to translate
            label = Message(N_("{n} conv × {rest}"), {"n": layers, "rest": rest})
            jobs.append((cfg, replace(train_cfg, seed=seed), label))
            keys.append((layers, kernel, hidden, seed))
    return jobs, keys, skipped


def run_sweep(sweep: SweepConfig, train_cfg: TrainConfig, data_cfg: DataConfig, *,
              record: EventFn | None = None, on_progress: EventFn | None = None,
              cancel: CancelFlag | None = None, runner: Runner = run_many) -> SweepResult:
    """Every valid (conv layers, kernel, hidden) cell, `sweep.seeds` times; one row per run;
    `runner` trains them (run_many: in this process)."""
    jobs, keys, skipped = sweep_runs(sweep, train_cfg)
    results = runner(jobs, data_cfg, record=record, on_progress=on_progress, cancel=cancel, experiment="sweep",
                       group_id="sweep-" + new_run_id())
    rows = []
    for result, (layers, kernel, hidden, seed) in zip(results, keys):
        last = result.epochs[-1] if result.epochs else None
        rows.append(dict(run_id=result.run_id, conv_layers=layers, kernel_size=kernel, hidden_units=hidden,
                         channels="-".join(map(str, result.model_cfg.conv_channels)), seed=seed,
                         params=result.params, status=result.status, epochs_done=len(result.epochs),
                         train_loss=last.train_loss if last else None, test_loss=last.test_loss if last else None,
                         test_acc=last.test_acc if last else None, seconds=result.seconds,
                         engine=result.engine, device=result.device, verdict=run_verdict(result)))
    stopped = len(results) < len(jobs) or any(r.status == "stopped" for r in results)
    return SweepResult(results, pd.DataFrame(rows, columns=SWEEP_COLUMNS), skipped,
                       "stopped" if stopped else "finished")


def sweep_table(runs: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """SWEEP_COLUMNS rows rebuilt from a sweep's stored runs and epochs (what a page shows for a
    job trained by a worker, or reopened later)."""
    last = epochs.sort_values("epoch").groupby("run_id").last() if len(epochs) else pd.DataFrame()
    rows = []
    for r in runs.itertuples():
        end = last.loc[r.run_id] if r.run_id in last.index else None
        hidden = str(r.hidden or "")
        rows.append(dict(run_id=r.run_id, conv_layers=int(r.conv_layers), kernel_size=int(r.kernel_size),
                         hidden_units=int(hidden.split("-")[0]) if hidden else 0, channels=r.conv_channels,
                         seed=int(r.seed), params=int(r.params), status=r.status, epochs_done=int(r.epochs_done or 0),
                         train_loss=None if end is None else end["train_loss"],
                         test_loss=None if end is None else end["test_loss"],
                         test_acc=None if end is None else end["test_acc"], seconds=r.seconds, engine=r.engine,
                         device=r.device,
                         verdict=stored_verdict(r.status, None if end is None else end["test_acc"],
                                                None if end is None else end["train_loss"], r.dataset)))
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


# ------------------------------------------------------------------------------------ FC vs CNN

@dataclass(frozen=True)
class CompareConfig:
    cnn: ModelConfig = PRESETS["tiny-cnn"].model
    fc: ModelConfig | None = None  # None: the FC net whose parameter count is closest to the CNN's
    seeds: int = 3  # runs per cell, seeds 0 .. seeds-1
    permutation_seed: int = 0  # picks the one fixed pixel permutation

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the field, the value and what to change."""
        if not isinstance(self.cnn, ModelConfig) or self.cnn.kind != "cnn":
            raise ConfigError("cnn", self.cnn, "The comparison's cnn must be a ModelConfig of kind 'cnn'; got "
                              "{value!r}. Use a CNN config, e.g. the tiny-cnn preset's.")
        if self.fc is not None and (not isinstance(self.fc, ModelConfig) or self.fc.kind != "fc"):
            raise ConfigError("fc", self.fc, "The comparison's fc must be None (matched to the CNN) or a ModelConfig "
                              "of kind 'fc'; got {value!r}. Use None to match the CNN's size.")
        need_int("seeds", self.seeds, "Seeds", 3)
        if not 1 <= self.seeds <= MAX_SEEDS:
            raise ConfigError("seeds", self.seeds, "The comparison needs at least 1 seed (at most {high}); got "
                              "{value!r}. Use 3, say.", high=MAX_SEEDS)
        need_seed("permutation_seed", self.permutation_seed, "Permutation seed")

    def models(self) -> dict[str, ModelConfig]:
        self.validate()
        self.cnn.validate()
        fc = self.fc or match_fc_width(self.cnn)
        fc.validate()
        return {"FC": fc, "CNN": self.cnn}


COMPARE_COLUMNS = ["model", "pixels", "seed", "params", "test_acc", "run_id", "architecture", "status", "verdict"]


@dataclass
class CompareResult:
    results: list[RunResult]
    table: pd.DataFrame  # COMPARE_COLUMNS, one row per run
    summary: pd.DataFrame  # model, pixels, n, mean, sd, text
    status: str = "finished"

    @property
    def reading(self) -> str:
        return read_compare(self.summary)


def compare_default_train() -> TrainConfig:
    """The course notes' setting for both tiny nets: SGD lr 0.01, momentum 0.5, batch 64, 1 epoch."""
    p = PRESETS["tiny-cnn"]
    return TrainConfig(epochs=1, batch_size=p.batch_size, optimizer=p.optimizer, lr=p.lr, momentum=p.momentum)


def run_compare(compare: CompareConfig, train_cfg: TrainConfig, data_cfg: DataConfig, *,
                record: EventFn | None = None, on_progress: EventFn | None = None,
                cancel: CancelFlag | None = None, runner: Runner = run_many) -> CompareResult:
    """FC and CNN, each on normal and on permuted pixels (one fixed permutation), `seeds` times;
    `runner` trains them (run_many: in this process)."""
    models = compare.models()
    group_id = "compare-" + new_run_id()
    results, rows = [], []
    for pixels, permute in (("normal", False), ("permuted", True)):
        cell_data_cfg = replace(data_cfg, permute_pixels=permute, permutation_seed=compare.permutation_seed)
        keys = [(name, cfg, seed) for name, cfg in models.items() for seed in range(compare.seeds)]
        # a label is a str or a Message (shown in the reader's language; its English in runs.csv)
        jobs = [(cfg, replace(train_cfg, seed=seed), Message(N_("{model} / {pixels}"), dict(model=name, pixels=pixels)))
                for name, cfg, seed in keys]
        done = runner(jobs, cell_data_cfg, record=record, on_progress=on_progress, cancel=cancel,
                        experiment="compare", group_id=group_id)
        results += done
        rows += [dict(model=name, pixels=pixels, seed=seed, params=r.params, test_acc=r.final_test_acc,
                      run_id=r.run_id, architecture=describe(cfg), status=r.status, verdict=run_verdict(r))
                 for r, (name, cfg, seed) in zip(done, keys)]
    expected = 2 * len(models) * compare.seeds
    status = "stopped" if len(results) < expected or any(r.status == "stopped" for r in results) else "finished"
    table = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    return CompareResult(results, table, summarize_over_seeds(table, ["model", "pixels"]), status)


def compare_table(runs: pd.DataFrame, compare: CompareConfig, epochs: pd.DataFrame | None = None) -> pd.DataFrame:
    """COMPARE_COLUMNS rows rebuilt from a comparison's stored runs (and their epochs, for the verdict)."""
    models = compare.models()
    loss = final_train_loss(epochs)
    rows = []
    for r in runs.itertuples():
        name = "FC" if r.kind == "fc" else "CNN"
        acc = None if r.status != "finished" or r.final_test_acc != r.final_test_acc else r.final_test_acc
        rows.append(dict(model=name, pixels="permuted" if r.permute_pixels else "normal", seed=int(r.seed),
                         params=int(r.params), test_acc=acc, run_id=r.run_id, architecture=describe(models[name]),
                         status=r.status, verdict=stored_verdict(r.status, acc, loss.get(r.run_id), r.dataset)))
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def run_verdict(result: RunResult) -> str | None:
    """verdicts.learning_verdict of a run just trained: learned, did not learn, diverged (None: stopped)."""
    last = result.epochs[-1] if result.epochs else None
    return learning_verdict(result.status, None if last is None else last.test_acc,
                            None if last is None else last.train_loss, DATASETS[result.data_cfg.dataset].n_classes)


def stored_verdict(status: str, test_acc, train_loss, dataset: str) -> str | None:
    """verdicts.learning_verdict of a stored run (its dataset's classes; an unknown dataset: None)."""
    spec = DATASETS.get(str(dataset))
    if spec is None:
        return None
    blank = lambda v: v is None or v != v  # noqa: E731  (NaN)
    return learning_verdict(status, None if blank(test_acc) else float(test_acc),
                            None if blank(train_loss) else float(train_loss), spec.n_classes)


def final_train_loss(epochs: pd.DataFrame | None) -> dict[str, float]:
    """Each run's last epoch's training loss, from the store's epochs frame."""
    if epochs is None or not len(epochs):
        return {}
    last = epochs.sort_values("epoch").groupby("run_id").last()
    return {str(k): float(v) for k, v in last["train_loss"].items()}


def summarize_over_seeds(table: pd.DataFrame, by: list[str], value: str = "test_acc") -> pd.DataFrame:
    """Mean, sample standard deviation and count `n` of `value` per group, over finished runs
    only; `diverged` counts the group's runs whose loss became NaN or infinite (never averaged in),
    `not_learned` its finished runs that did not learn (verdicts.did_learn, from a `verdict` column),
    `learned` whether most of its finished runs learned, and `text` says so."""
    done = table.dropna(subset=[value])
    if "status" in done:
        done = done[done["status"] == "finished"]
    grouped = done.groupby(by, sort=False)[value]
    out = grouped.agg(n="count", mean="mean", sd="std").reset_index()
    out["sd"] = out["sd"].fillna(0.0)
    if "status" in table and len(out):
        counts = table[table["status"] == "diverged"].groupby(by, sort=False).size()
        out["diverged"] = [int(counts.get(key if len(by) > 1 else key[0], 0))
                           for key in out[by].itertuples(index=False, name=None)]
    else:
        out["diverged"] = 0
    if "verdict" in done and len(out):
        counts = done[done["verdict"] == NOT_LEARNED].groupby(by, sort=False).size()
        out["not_learned"] = [int(counts.get(key if len(by) > 1 else key[0], 0))
                              for key in out[by].itertuples(index=False, name=None)]
    else:
        out["not_learned"] = 0
    out["learned"] = 2 * out["not_learned"] < out["n"]
    out["text"] = mean_sd_texts(out)  # English; a page or the CLI words it again in its language
    return out


def diverged_runs(results: list[RunResult]) -> list[RunResult]:
    return [r for r in results if r.status == "diverged"]


_LOCALITY = N_("convolution and pooling help only while neighbouring pixels belong together, and the permutation "
               "destroys that locality, while the FC net never used pixel positions")
# The CNN against the FC net, on normal digits (first half of a sentence) and on permuted pixels (second half).
_VERSUS = {"normal": {"beats": N_("On normal digits the CNN beats the FC net by {lead} points ({cnn}% vs {fc}%);"),
                      "trails": N_("On normal digits the CNN trails the FC net by {lead} points ({cnn}% vs {fc}%);"),
                      "ties": N_("On normal digits the CNN ties with the FC net ({cnn}% vs {fc}%);")},
           "permuted": {"beats": N_("on permuted pixels it beats the FC net by {lead} points ({cnn}% vs {fc}%)."),
                        "trails": N_("on permuted pixels it trails the FC net by {lead} points ({cnn}% vs {fc}%)."),
                        "ties": N_("on permuted pixels it ties with the FC net ({cnn}% vs {fc}%).")}}


def compare_reading(summary: pd.DataFrame) -> list[Message]:
    """A plain-language reading of the 2x2 result, computed from the numbers, as sentences
    (templates with their values) that a page or the CLI renders in its language."""
    cell = {(r.model, r.pixels): r for r in summary.itertuples()}
    need = [("FC", "normal"), ("CNN", "normal"), ("FC", "permuted"), ("CNN", "permuted")]
    if any(k not in cell for k in need):
        return [Message(N_("Not every cell has a finished run yet, so there is nothing to compare."))]
    fcn, cnnn, fcp, cnnp = (100 * cell[k].mean for k in need)
    lead_normal, lead_permuted = cnnn - fcn, cnnp - fcp  # the CNN's lead in points; negative: it trails
    one, acc = "{:.1f}".format, "{:.2f}".format  # points here: one decimal; accuracies (%) as everywhere: two

    def versus(pixels: str, lead: float, cnn: float, fc: float) -> Message:
        word = "ties" if abs(lead) < 0.05 else "beats" if lead > 0 else "trails"
        return Message(_VERSUS[pixels][word], dict(lead=one(abs(lead)), cnn=acc(cnn), fc=acc(fc)))

    lines = []
    bad = sum(not bool(getattr(cell[k], "learned", True)) for k in need)
    if bad:  # verdicts.did_learn: a cell at chance makes every difference below say little
        lines.append(Message(N_("{n} of the four cells did not learn, so the differences below say little: train "
                                "longer (more epochs or more training images) or try another learning rate."),
                             dict(n=bad)))
    lines += [versus("normal", lead_normal, cnnn, fcn), versus("permuted", lead_permuted, cnnp, fcp),
             Message(N_("Shuffling the pixels costs the CNN {cnn} points and the FC net {fc} points."),
                     dict(cnn=one(cnnn - cnnp), fc=one(fcn - fcp)))]
    if lead_normal > 0 and lead_permuted < -0.5:
        lines.append(Message(N_("With the same number of parameters the CNN's lead of {lead} points turns into a "
                                "deficit of {deficit} points: {why}."),
                             dict(lead=one(lead_normal), deficit=one(-lead_permuted), why=_LOCALITY)))
    elif lead_normal > 0 and abs(lead_permuted) <= 0.5:
        lines.append(Message(N_("With the same number of parameters the CNN's lead of {lead} points disappears on "
                                "permuted pixels: {why}."), dict(lead=one(lead_normal), why=_LOCALITY)))
    elif lead_normal > 0 and lead_permuted < lead_normal:
        lines.append(Message(N_("The CNN's lead shrinks from {before} to {after} points but does not vanish here; "
                                "with more seeds or epochs the picture may change."),
                             dict(before=one(lead_normal), after=one(lead_permuted))))
    elif lead_normal > 0:
        lines.append(Message(N_("The CNN keeps its lead even on permuted pixels here; with more seeds or epochs "
                                "the picture may change.")))
    else:
        lines.append(Message(N_("The CNN did not win on normal pixels in these runs, which is unusual: "
                                "try more seeds or another epoch.")))
    sds = [100 * cell[k].sd for k in need]
    n = min(cell[k].n for k in need)
    if n > 1:
        lines.append(Message(N_("Spread over {n} seeds: standard deviations between {low} and {high} points."),
                             dict(n=n, low=f"{min(sds):.2f}", high=f"{max(sds):.2f}")))
    else:
        lines.append(Message(N_("One seed per cell gives no spread: run 3 or more seeds before trusting a gap of a "
                                "point or two.")))
    return lines


def read_compare(summary: pd.DataFrame, lang: str | None = "en") -> str:
    """compare_reading's sentences as one paragraph in `lang` (English unless told)."""
    return " ".join(render(m, lang) for m in compare_reading(summary))
