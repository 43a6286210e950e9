"""The training loop: data resident on the device, batches as index slices of a per-epoch
randperm, every iteration's loss kept on the device and read back in chunks, progress through
a callback, a cancel flag that keeps everything finished so far. ONE epoch loop (`_train_units`)
drives the stepper of whichever engine the registry (engines.py) picks (step.py's plain
reference step, cuda_graph.py's CUDA graph, native.py's C++ conv blocks, stacked.py's vmapped
seeds), for `train` and `train_many` alike. Progress goes out as events (events.py): run
started, iteration losses, epoch results, run ended.
"""
from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Protocol

import torch
import torch.nn.functional as F

from mnist_lab.data.datasets import DataConfig, TensorData, normalization
from mnist_lab.errors import ConfigError, need_bool, need_choice, need_float, need_int, need_seed
from mnist_lab.i18n import N_, SEPARATOR, Message, to_stored
from mnist_lab.nets.model import ModelConfig, build_model, count_params, describe
from mnist_lab.training import engines
from mnist_lab.training.engines import ENGINE_NAMES
from mnist_lab.training.events import (
    EpochEnded,
    EpochMetrics,
    Event,
    Iterations,
    RunEnded,
    RunStarted,
    config_dict,
)
from mnist_lab.training.preflight import preflight, resolve_device
from mnist_lab.training.step import Stepper

OPTIMIZERS = ("sgd", "adam")
MAX_EPOCHS = 1000
MAX_EVAL_BATCH = 100_000


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = 0.01
    momentum: float = 0.5  # SGD only
    seed: int = 0  # weight init and batch order
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
    shuffle: bool = True  # a new random batch order every epoch
    eval_batch_size: int = 1000  # test-set chunk; affects memory and speed only, not results
    progress_every_s: float = 0.25  # at most this often an iterations event is sent
    engine: str = "auto"  # one of ENGINE_NAMES; an engine that cannot run this config falls back to "plain"
    # per-batch augmentation on the device, seeded by `seed` (engines.Augment): random crop (4 px
    # padding) and horizontal flip for 3-channel images, shifts of up to 2 px for grey ones
    augment: bool = False
    # train on the images sorted by label (a stable sort: 0s first, then 1s, ...); meant with
    # shuffle=False, to show what an unshuffled order does to training
    sort_by_label: bool = False

    def validate(self, n_train: int | None = None) -> None:
        """Raise ConfigError (a ValueError) naming the field, the value and what to change."""
        need_int("epochs", self.epochs, "Epochs", 1)
        need_int("batch_size", self.batch_size, "Batch size", 64)
        need_choice("optimizer", self.optimizer, "Optimizer", OPTIMIZERS,
                    "Optimizer must be one of {options}; got {value!r}. Pick one of those.")
        need_float("lr", self.lr, "Learning rate", 0.01)
        need_float("momentum", self.momentum, "Momentum", 0.5)
        need_seed("seed", self.seed, "Seed")
        need_bool("shuffle", self.shuffle, "Shuffle")
        need_bool("augment", self.augment, "Augmentation")
        need_bool("sort_by_label", self.sort_by_label, "Sort by label")
        need_int("eval_batch_size", self.eval_batch_size, "Evaluation batch size", 1000)
        need_float("progress_every_s", self.progress_every_s, "Progress interval", 0.25)
        need_choice("engine", self.engine, "Engine", ENGINE_NAMES,
                    "Engine must be one of {options}; got {value!r}. Pick one of those (auto is the fastest).")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise ConfigError("epochs", self.epochs, "Epochs must be 1 to {high}; got {value!r}. Use 1 for a quick "
                              "run.", high=MAX_EPOCHS)
        if self.batch_size < 1:
            raise ConfigError("batch_size", self.batch_size, "Batch size must be at least 1; got {value!r}. Use 64, "
                              "say.")
        if n_train is not None and self.batch_size > n_train:
            raise ConfigError("batch_size", self.batch_size, "Batch size {value!r} is larger than the {n} training "
                              "images; lower the batch size or use more training images.", n=n_train)
        if not 0 < self.lr <= 10:
            raise ConfigError("lr", self.lr, "Learning rate must be above 0 and at most 10; got {value!r}. Try 0.01 "
                              "(SGD) or 0.001 (Adam).")
        if not 0 <= self.momentum < 1:
            raise ConfigError("momentum", self.momentum, "Momentum must be in [0, 1); got {value!r}. Use 0 (none) to "
                              "0.99, e.g. 0.9.")
        if not 1 <= self.eval_batch_size <= MAX_EVAL_BATCH:
            raise ConfigError("eval_batch_size", self.eval_batch_size, "Evaluation batch size must be 1 to {high}; "
                              "got {value!r}. Use 1000, say.", high=MAX_EVAL_BATCH)
        if not 0 <= self.progress_every_s <= 3600:
            raise ConfigError("progress_every_s", self.progress_every_s, "Progress interval must be 0 to 3600 "
                              "seconds; got {value!r}. Use 0.25, say.")
        resolve_device(self.device)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


@dataclass
class RunResult:
    run_id: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data_cfg: DataConfig
    params: int
    device: str
    engine: str  # which training path ran: "plain", "cuda-graph", "stacked" or "cpu-native"
    status: str  # "finished", "stopped" or "diverged" (the loss became NaN or infinite)
    losses: list[float] = field(default_factory=list)  # one per iteration, in order
    epochs: list[EpochMetrics] = field(default_factory=list)
    steps_per_epoch: int = 0
    started_at: str = ""
    seconds: float = 0.0
    data_source: str = ""
    diverged_at: int | None = None  # 1-based iteration whose loss was NaN or infinite
    message: str = ""  # why the run ended early, for a person (diverged runs), in English
    message_msg: str = ""  # the same as a stored message (i18n.to_stored), worded in each reader's language
    # the final weights on the CPU, keys exactly those of build_model(model_cfg).state_dict(),
    # for finished, stopped and diverged runs alike (the inspect and export features read them)
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    label: str = ""

    @property
    def final_test_acc(self) -> float | None:
        return self.epochs[-1].test_acc if self.epochs else None


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def select_engine(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> str:
    """The name of the engine `train` runs: the one asked for when it supports this run, else the
    plain loop; what 'auto' means on each device type is the registry's (engines.select)."""
    return engines.select(model_cfg, train_cfg, device).engine.name


def fallback_reason(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> str | None:
    """Why the fast engine asked for ('auto' included) does not run this config on `device`, so
    `train` uses the plain loop; None when it runs, or when the plain loop was asked for."""
    return engines.select(model_cfg, train_cfg, device).why_not


def fallback_reasons(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> list[tuple[str, Message]]:
    """`fallback_reason` as data, for a reader in any language: (engine, why it cannot run it) for
    each engine tried; [] when the engine asked for runs it."""
    return list(engines.select(model_cfg, train_cfg, device).why_not_parts)


def label_parts(model_cfg: ModelConfig, data_cfg: DataConfig) -> list[Message]:
    """A run's default label as data: its network (the architecture, the same in every language)
    and the data settings that change results when they are not the lab's defaults
    (normalisation, permuted pixels, a subset), each a msgid with its values."""
    parts = [Message.verbatim(describe(model_cfg))]
    if normalization(data_cfg.normalize, data_cfg.dataset) != normalization("dataset", data_cfg.dataset):
        parts.append(Message(N_("{n} normalisation"), {"n": data_cfg.normalize}))
    if data_cfg.permute_pixels:
        parts.append(Message(N_("permuted pixels")))
    if data_cfg.train_limit is not None:
        parts.append(Message(N_("{n} images"), {"n": f"{data_cfg.train_limit:,}"}))
    return parts


def run_label(model_cfg: ModelConfig, data_cfg: DataConfig) -> str:
    """A run's default label in English (the runs table's `label`, runs.csv)."""
    return SEPARATOR.join(str(part) for part in label_parts(model_cfg, data_cfg))


def warm_up(device: str | torch.device = "auto") -> float:
    """Pay the one-time start-up costs of `device` before anyone waits for them: on CUDA, cuDNN
    and cuBLAS (about 4.6 s of the first run in a fresh process on an H100, docs/BENCHMARKS.md);
    each engine's own (engines.warm_up: on the CPU, building the cpu-native kernels, a few
    seconds once per machine, then a cache hit). Then one forward and backward pass of a small
    CNN. Returns the seconds it took."""
    t0 = time.perf_counter()
    device = resolve_device(str(device))
    engines.warm_up(device)
    with torch.random.fork_rng(devices=[]):  # the global RNG stays as it was
        cfg = ModelConfig(conv_channels=(4, 8), kernel_size=5, hidden=(16,))
        model = build_model(cfg).to(device)
    x = torch.zeros(8, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)  # (B, C, H, W)
    F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long, device=device)).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def epoch_order(n: int, shuffle: bool, generator: torch.Generator) -> torch.Tensor:
    """This epoch's batch order: a permutation of range(n) drawn on the CPU (same on every device)."""
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


@torch.inference_mode()
def _evaluate_sums(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   cancel: CancelFlag | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(summed cross-entropy, number correct) over x, y as device tensors; no host sync.
    None when `cancel` is set part-way (a big network on a CPU evaluates for many seconds)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        if cancel is not None and cancel.is_set():
            model.train(was_training)
            return None
        out = model(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        loss_sum += F.cross_entropy(out, yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    return loss_sum, correct


def _read_sums(loss_sum: torch.Tensor, correct: torch.Tensor, n: int) -> tuple[float, float]:
    loss, acc = torch.stack([loss_sum, correct.double().to(loss_sum.dtype)]).tolist()  # one host sync
    return loss / n, acc / n


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the whole of x, y; one host sync."""
    return _read_sums(*_evaluate_sums(model, x, y, batch_size), len(x))


def _on_device(data: TensorData, device: torch.device) -> TensorData:
    if data.device == device:
        return data
    return TensorData(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device),
                      data.y_test.to(device), data.source, data.permutation, data.config, data.origin)


# Why a run diverged, by what became NaN or infinite: the training loss (at the iteration it did)
# or the test loss (after the last iteration trained)
_DIVERGED = {
    "loss": N_("The loss became {value} at iteration {iteration}: training diverged. Lower the learning rate (now "
               "{lr}, try {lower}), or use a smaller momentum or batch normalisation."),
    "test loss": N_("The test loss became {value} after iteration {iteration}: training diverged. Lower the learning "
                    "rate (now {lr}, try {lower}), or use a smaller momentum or batch normalisation."),
}

class _RunLog:
    """What every engine does around its steps: the result record, the device-side loss buffer
    read back in chunks, progress events, epoch metrics."""

    def __init__(self, run_id: str, model_cfg: ModelConfig, train_cfg: TrainConfig, data: TensorData,
                 engine: str, emit: Callable[[Event], None], losses: torch.Tensor | None = None,
                 label: str = ""):
        device = data.device
        self.steps_per_epoch = math.ceil(len(data.x_train) / train_cfg.batch_size)
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        # filled on the device; a run in a stack gets its row of the stack's buffer
        self.losses = torch.zeros(self.total_steps, device=device) if losses is None else losses
        self.result = RunResult(run_id=run_id, model_cfg=model_cfg, train_cfg=train_cfg, data_cfg=data.config,
                                params=count_params(model_cfg), device=device_label(device), engine=engine,
                                status="running", steps_per_epoch=self.steps_per_epoch,
                                started_at=datetime.now(timezone.utc).isoformat(),
                                data_source=data.source, label=str(label) or run_label(model_cfg, data.config))
        self.weights: Callable[[], dict[str, torch.Tensor]] | None = None  # the run's weights, read at finish()
        self.emit = emit
        self.every_s = train_cfg.progress_every_s
        self.t0 = time.perf_counter()
        self.next_emit = self.t0 + self.every_s
        self.step = 0  # iterations done (or, on the GPU, queued)
        self.sent = 0  # iterations already handed to the callback
        self.permutation = data.permutation  # sent with the weights: the pixel order they were trained on
        r = self.result
        emit(RunStarted(run_id=run_id, epoch=1, step=0, total_steps=self.total_steps, model=config_dict(model_cfg),
                        train=config_dict(train_cfg), data=config_dict(data.config), label=r.label,
                        label_msg=to_stored([label] if isinstance(label, Message) else [Message(label)] if label
                                            else label_parts(model_cfg, data.config)),
                        engine=engine, device=r.device, params=r.params, steps_per_epoch=self.steps_per_epoch,
                        started_at=r.started_at, data_source=r.data_source,
                        data_source_msg=to_stored([data.origin]) if data.origin is not None else ""))
        self.closed = False  # finish() has run (a diverged run in a stack ends before the others)

    def _eta(self) -> float:
        return (time.perf_counter() - self.t0) / self.step * (self.total_steps - self.step)

    def due(self) -> bool:
        return time.perf_counter() >= self.next_emit

    @property
    def diverged(self) -> bool:
        return self.result.diverged_at is not None

    def flush(self, epoch: int, timed: bool = False) -> None:
        """Read the new losses back (one host sync) and send them as one 'iterations' event.
        A NaN or infinite loss among them marks the run diverged: the losses before it are kept,
        and the engine stops the run (`diverged`)."""
        if self.step > self.sent and not self.diverged:
            chunk = self.losses[self.sent:self.step].tolist()
            bad = next((j for j, loss in enumerate(chunk) if not math.isfinite(loss)), None)
            if bad is not None:
                self._diverge(self.sent + bad + 1, chunk[bad])
                chunk, self.step = chunk[:bad], self.sent + bad
            self.result.losses.extend(chunk)
            emit_first, self.sent = self.sent + 1, self.step
            if chunk:  # a run whose first unread loss diverged has none to send
                self.emit(Iterations(run_id=self.result.run_id, epoch=epoch, step=self.step,
                                     total_steps=self.total_steps, first_iteration=emit_first, losses=tuple(chunk),
                                     elapsed_s=time.perf_counter() - self.t0, eta_s=self._eta()))
        if timed:
            self.next_emit = time.perf_counter() + self.every_s

    def _diverge(self, iteration: int, value: float, what: str = "loss") -> None:
        """`iteration`: the one whose loss was not finite, or for the test loss the last one trained."""
        lr = self.result.train_cfg.lr
        self.result.diverged_at = iteration
        message = Message(_DIVERGED[what], dict(value=str(value), iteration=iteration, lr=f"{lr:g}",
                                                lower=f"{lr / 10:g}"))
        self.result.message, self.result.message_msg = str(message), to_stored(message)

    def epoch_done(self, epoch: int, epoch_t0: float, test_loss: float, test_acc: float) -> None:
        if self.diverged:
            return
        if not (math.isfinite(test_loss) and math.isfinite(test_acc)):  # weights blew up between two losses
            self._diverge(self.step, test_loss, what="test loss")
            return
        n = self.steps_per_epoch
        epoch_losses = self.result.losses[(epoch - 1) * n:epoch * n]
        metrics = EpochMetrics(epoch, sum(epoch_losses) / len(epoch_losses), test_loss, test_acc,
                               time.perf_counter() - epoch_t0)
        self.result.epochs.append(metrics)
        self.emit(EpochEnded(run_id=self.result.run_id, epoch=epoch, step=self.step, total_steps=self.total_steps,
                             metrics=metrics, elapsed_s=time.perf_counter() - self.t0, eta_s=self._eta()))

    def finish(self, stopped: bool) -> RunResult:
        result = self.result
        if self.closed:
            return result
        self.closed = True
        result.status = "diverged" if self.diverged else "stopped" if stopped else "finished"
        if self.weights is not None:
            result.state_dict = self.weights()
        result.seconds = time.perf_counter() - self.t0
        self.emit(RunEnded(run_id=result.run_id, epoch=len(result.epochs), step=self.step,
                           total_steps=self.total_steps, elapsed_s=result.seconds, status=result.status,
                           seconds=result.seconds, epochs_done=len(result.epochs),
                           final_test_acc=result.final_test_acc, diverged_at=result.diverged_at,
                           message=result.message, message_msg=result.message_msg, weights=result.state_dict,
                           permutation=self.permutation))
        return result


def _check_run(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TensorData) -> torch.device:
    """The pre-flight check against the data in hand (its own number of training images).
    Returns the device."""
    return preflight(model_cfg, train_cfg, data.config, n_train=len(data.x_train))


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TensorData,
          on_progress: Callable[[Event], None] | None = None, cancel: CancelFlag | None = None,
          run_id: str | None = None, label: str = "") -> RunResult:
    """Train one model; return every iteration's loss, every finished epoch's metrics and the
    final weights.

    A set `cancel` flag ends the run at the next iteration with status 'stopped'; what was
    finished (iterations, whole epochs) is kept. The same seed gives the same losses: bit for bit
    on the CPU, within about 1e-5 on CUDA (cuDNN's backward kernels add with atomics).
    `train_cfg.engine` picks the path; `RunResult.engine` says which one ran."""
    device = _check_run(model_cfg, train_cfg, data)
    data = _on_device(data, device)
    engine = engines.select(model_cfg, train_cfg, device).engine
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(train_cfg.seed)  # dropout masks follow the seed too
        [[result]] = _train_units([[(model_cfg, train_cfg)]], data, on_progress or (lambda e: None), cancel,
                                  [[run_id or new_run_id()]], [[label]], [engine])
    return result


def train_many(jobs: Sequence[tuple[ModelConfig, TrainConfig]], data: TensorData,
               on_progress: Callable[[Event], None] | None = None, cancel: CancelFlag | None = None,
               run_ids: Sequence[str] | None = None, labels: Sequence[str] | None = None) -> list[RunResult]:
    """Train every (model_cfg, train_cfg) job; result k is what `train(*jobs[k], data)` returns
    alone. On a GPU the runs whose engine trains side by side (cuda-graph) do, each replaying its
    own graph on its own CUDA stream (the same kernels, so the same losses). Runs that ask for a
    stacking engine and differ only in their seed train as one stacked network (stacked.py),
    alongside the others on a GPU; the rest run one after another. Events from all runs go to
    `on_progress`, told apart by run_id."""
    jobs = list(jobs)
    for model_cfg, train_cfg in jobs:
        _check_run(model_cfg, train_cfg, data)
    run_ids = list(run_ids) if run_ids is not None else [new_run_id() for _ in jobs]
    labels = list(labels) if labels is not None else [""] * len(jobs)
    emit = on_progress or (lambda e: None)
    results: list[RunResult | None] = [None] * len(jobs)
    devices = [resolve_device(t.device) for _, t in jobs]

    # per device: the units trained together, each an engine and the indices of its jobs
    units: dict[torch.device, list[tuple[engines.Engine, list[int]]]] = {}
    for engine, group in _stack_groups(jobs, devices):
        units.setdefault(devices[group[0]], []).append((engine, group))
    stacked = {k for unit in units.values() for _, group in unit for k in group}
    singles = [(engine, [k]) for k, (m, t) in enumerate(jobs) if k not in stacked and devices[k] == devices[0]
               and (engine := engines.select(m, t, devices[k]).engine).side_by_side]
    if len(singles) > 1 or (singles and devices[0] in units):
        units.setdefault(devices[0], []).extend(singles)
    for device, device_units in units.items():
        # A GPU runs the units side by side; a CPU gains nothing from interleaving them, so there
        # each stack trains on its own and its results, timings and Stop are its own.
        for batch in [device_units] if device.type == "cuda" else [[unit] for unit in device_units]:
            done = _train_units([[jobs[k] for k in group] for _, group in batch], _on_device(data, device), emit,
                                cancel, [[run_ids[k] for k in group] for _, group in batch],
                                [[labels[k] for k in group] for _, group in batch], [engine for engine, _ in batch])
            for (_, group), group_results in zip(batch, done):
                for k, result in zip(group, group_results):
                    results[k] = result
    for k, (model_cfg, train_cfg) in enumerate(jobs):
        if results[k] is None:
            results[k] = train(model_cfg, train_cfg, data, emit, cancel, run_ids[k], labels[k])
    return results


def _stack_groups(jobs: list[tuple[ModelConfig, TrainConfig]],
                  devices: list[torch.device]) -> list[tuple[engines.Engine, list[int]]]:
    """The jobs that train as stacks, with the engine that stacks them: two or more that ask for
    a stacking engine that can stack their network, and that differ in nothing but their seed."""
    groups: dict[tuple, tuple[engines.Engine, list[int]]] = {}
    for k, (model_cfg, train_cfg) in enumerate(jobs):
        if (engine := engines.for_stack(model_cfg, train_cfg, devices[k])) is not None:
            # what may differ besides the seed: how the device is named, and what changes no result
            key = (model_cfg, replace(train_cfg, seed=0, device=str(devices[k]), progress_every_s=0,
                                      eval_batch_size=0), devices[k])
            groups.setdefault(key, (engine, []))[1].append(k)
    return [(engine, group) for engine, group in groups.values() if len(group) > 1]


@dataclass
class _Unit:
    """What `_train_units` steps as one: a single run, or a stack of runs (all sharing one
    TrainConfig but the seed), with its stepper, its stream and where it is."""

    cfg: TrainConfig
    stepper: Stepper
    logs: list[_RunLog]
    models: list[torch.nn.Module]  # one per run, for the test evaluation
    stream: torch.cuda.Stream | None
    order_gens: list[torch.Generator]
    label_order: torch.Tensor | None = None  # sort_by_label: the training images' stable order by label
    epoch: int = 1
    i: int = 0  # iteration within the epoch
    epoch_t0: float = 0.0

    def start_epoch(self, n: int) -> None:
        self.epoch_t0 = time.perf_counter()
        orders = [epoch_order(n, self.cfg.shuffle, gen) for gen in self.order_gens]
        if self.label_order is not None:  # the same draws, over the label-sorted training set
            orders = [self.label_order[order] for order in orders]
        self.stepper.start_epoch(orders if len(self.logs) > 1 else orders[0])  # a stack has 2 or more runs


def _on_stream(stream: torch.cuda.Stream | None):
    """Make `stream` current (a unit's CUDA stream), or do nothing on the CPU (no stream)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _make_unit(jobs: list[tuple[ModelConfig, TrainConfig]], data: TensorData, emit: Callable[[Event], None],
               run_ids: list[str], labels: list[str], engine: engines.Engine) -> _Unit:
    """A unit for `jobs` (one run, or a stack for a stacking engine), set up by the engine."""
    device = data.device
    model_cfg, train_cfg = jobs[0]
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(device))  # the data was made there
    label_order = torch.sort(data.y_train.cpu(), stable=True).indices if train_cfg.sort_by_label else None
    with _on_stream(stream):
        gens = [torch.Generator().manual_seed(t.seed) for _, t in jobs]  # batch order, on the CPU for portability
        steps = math.ceil(len(data.x_train) / train_cfg.batch_size) * train_cfg.epochs
        losses = torch.zeros(len(jobs), steps, device=device)  # run s's iteration losses in row s
        logs = [_RunLog(run_id, m, t, data, engine.name, emit, losses=losses[s], label=label)
                for s, ((m, t), run_id, label) in enumerate(zip(jobs, run_ids, labels))]
        run = engine.prepare(jobs, data.x_train, data.y_train, losses)
        for log, weights in zip(logs, run.weights):
            log.weights = weights
        return _Unit(train_cfg, run.stepper, logs, run.models, stream, gens, label_order)


def _end_diverged(active: list[_Unit]) -> None:
    """Finish every diverged run at once; a unit all of whose runs diverged stops stepping (a
    stack's other seeds train on: each member's weights are its own)."""
    for unit in list(active):
        for log in unit.logs:
            if log.diverged:
                with _on_stream(unit.stream):
                    log.finish(False)
        if all(log.closed for log in unit.logs):
            active.remove(unit)


def _train_units(units_jobs: list[list[tuple[ModelConfig, TrainConfig]]], data: TensorData,
                 emit: Callable[[Event], None], cancel: CancelFlag | None, run_ids: list[list[str]],
                 labels: list[list[str]], unit_engines: list[engines.Engine]) -> list[list[RunResult]]:
    """THE epoch loop, for one run (`train`) or several units of runs on one device
    (`train_many`), stepped in turn: on a GPU each unit (one run, or a stack of runs) on its own
    CUDA stream, host syncs only to read losses back and at epoch ends; on the CPU one step after
    another, each loss checked at once (reading it costs nothing there). Returns each unit's results."""
    device = data.device
    on_gpu = device.type == "cuda"
    units = [_make_unit(jobs, data, emit, ids, names, engine)
             for jobs, ids, names, engine in zip(units_jobs, run_ids, labels, unit_engines)]

    active = list(units)
    stopped = False
    marks: deque[list[torch.cuda.Event]] = deque()  # one event per active stream, every 8 rounds
    rounds = 0
    while active:
        if cancel is not None and cancel.is_set():
            stopped = True
            break
        ending = []
        for unit in active:
            with _on_stream(unit.stream):
                if unit.i == 0:
                    unit.start_epoch(len(data.x_train))
                unit.stepper.step(unit.i)
            unit.i += 1
            for log in unit.logs:
                log.step += 1
            if unit.i == unit.logs[0].steps_per_epoch:
                ending.append(unit)
        rounds += 1
        if not on_gpu:  # a NaN ends its run at once
            for unit in active:
                for log in unit.logs:
                    if not log.closed and not math.isfinite(log.losses[log.step - 1].item()):
                        log.flush(unit.epoch)
            _end_diverged(active)
            ending = [unit for unit in ending if unit in active]
        if on_gpu and rounds % 8 == 0:  # keep at most ~24 rounds queued: progress, cancel and epoch ends stay prompt
            marks.append([unit.stream.record_event() for unit in active])
            if len(marks) > 2:
                for event in marks.popleft():
                    event.synchronize()
        if active and active[0].logs[0].due():  # progress first: a Stop it prompts skips the evaluation
            for unit in active:
                with _on_stream(unit.stream):
                    for log in unit.logs:
                        log.flush(unit.epoch, timed=True)
            _end_diverged(active)
            ending = [unit for unit in ending if unit in active]
        if ending:
            sums = []
            for unit in ending:  # queue every evaluation before waiting for any
                with _on_stream(unit.stream):
                    sums.append([_evaluate_sums(model, data.x_test, data.y_test, unit.cfg.eval_batch_size, cancel)
                                 for model in unit.models])
            if any(s is None for unit_sums in sums for s in unit_sums):  # stopped while evaluating
                stopped = True
                break
            for unit, unit_sums in zip(ending, sums):
                for log, (loss_sum, correct) in zip(unit.logs, unit_sums):
                    with _on_stream(unit.stream):
                        log.flush(unit.epoch)
                        test_loss, test_acc = _read_sums(loss_sum, correct, len(data.x_test))
                    log.epoch_done(unit.epoch, unit.epoch_t0, test_loss, test_acc)
                unit.epoch, unit.i = unit.epoch + 1, 0
                if unit.epoch > unit.cfg.epochs:
                    active.remove(unit)
                    with _on_stream(unit.stream):
                        for log in unit.logs:
                            log.finish(False)
            _end_diverged(active)
    for unit in active:
        with _on_stream(unit.stream):
            for log in unit.logs:
                log.flush(unit.epoch)
            for log in unit.logs:
                log.finish(stopped)
    return [[log.result for log in unit.logs] for unit in units]
