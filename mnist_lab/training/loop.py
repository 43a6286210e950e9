"""The training loop: data resident on the device, batches as index slices of a per-epoch
randperm, every iteration's loss kept on the device and read back in chunks, progress through
a callback, a cancel flag that keeps everything finished so far. ONE epoch loop (`_train_units`)
drives every engine's stepper (engines.py: the plain reference step, `fast.py`'s CUDA graph,
`native.py`'s C++ conv blocks, `stacked.py`'s vmapped seeds), for `train` and `train_many` alike.
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
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from mnist_lab.data.datasets import DATASETS, DataConfig, TensorData, normalization
from mnist_lab.errors import ConfigError, need_bool, need_choice, need_float, need_int, need_seed
from mnist_lab.i18n import N_, SEPARATOR, Message
from mnist_lab.nets.models import ModelConfig, build_model, count_params, describe, summarize
from mnist_lab.training import engines
from mnist_lab.training.engines import ENGINE_NAMES as ENGINES  # noqa: F401 - the names a TrainConfig may ask for
from mnist_lab.training.engines import fast_memory_format, init_model, make_optimizer  # noqa: F401 - re-exported

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
    engine: str = "auto"  # one of ENGINES; an engine that cannot run this config falls back to "plain"
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
        need_choice("engine", self.engine, "Engine", ENGINES,
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


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; refuse a device that is not there."""
    if not isinstance(name, str):
        raise ConfigError("device", name, "Device must be a name; got {value!r}. Use 'auto', 'cpu' or 'cuda'.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError("device", name, "Unknown device {value!r}; use auto, cpu or cuda.") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("device", name, "Device {value!r} is not supported; use auto, cpu or cuda.")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ConfigError("device", name, "Device {value!r}: the CPU is one device; use cpu (or auto).")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", name, "Device {value!r} was asked for but this machine has no CUDA GPU; use "
                              "--device cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("device", name, "Device {value!r} does not exist: this machine has {n} CUDA GPU(s), "
                              "use cuda:0 to cuda:{last}.", n=torch.cuda.device_count(),
                              last=torch.cuda.device_count() - 1)
    return device


def check_fits(model_cfg: ModelConfig, data: TensorData) -> None:
    """A network built for one image shape and number of classes refuses a dataset of another."""
    want = (model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size)
    got = tuple(data.x_train.shape[1:])
    if got != want:
        field = "in_channels" if got[0] != want[0] else "image_size"
        raise ConfigError(field, getattr(model_cfg, field), "The network expects {want} images but dataset {dataset!r} "
                          "has {got}: set the model's in_channels and image_size to match ({field} = {value!r}).",
                          want="×".join(map(str, want)), got="×".join(map(str, got)), dataset=data.config.dataset,
                          field=field)
    n_classes = DATASETS[data.config.dataset].n_classes
    if model_cfg.n_classes != n_classes:
        raise ConfigError("n_classes", model_cfg.n_classes, "The network has {value!r} outputs but dataset {dataset!r} "
                          "has {n} classes: set n_classes to {n}.", dataset=data.config.dataset, n=n_classes)


def _available_bytes(device: torch.device) -> int | None:
    """Memory free for training on `device`, or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    line = next((line for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None)
    return int(line.split()[1]) * 1024 if line else None


def training_bytes(model_cfg: ModelConfig, train_cfg: TrainConfig) -> int:
    """A rough upper estimate of what training needs beyond the data: float32 weights, gradients
    and optimiser state, and every layer's output and its gradient for one batch."""
    rows = summarize(model_cfg)
    params = sum(r.params for r in rows)
    states = 2 if train_cfg.optimizer == "adam" else 1
    activations = sum(math.prod(r.output_shape) for r in rows)
    batch = max(train_cfg.batch_size, train_cfg.eval_batch_size // 2)  # evaluation keeps no gradients
    return 4 * (params * (2 + states) + 3 * activations * batch)


def check_memory(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, before training, a run that would not fit in the device's free memory."""
    need, free = training_bytes(model_cfg, train_cfg), _available_bytes(device)
    if free is not None and need > 0.8 * free:
        raise ConfigError("batch_size", train_cfg.batch_size, "Training this network with batch size {value!r} needs "
                          "about {need:,} MiB, but {device} has {free:,} MiB free: use a smaller batch (and "
                          "evaluation batch) or a smaller network.", need=need // 2**20, free=free // 2**20,
                          device=device.type)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean of this epoch's iteration losses
    test_loss: float
    test_acc: float  # fraction in [0, 1]
    seconds: float  # wall time of the epoch's training and evaluation


@dataclass(frozen=True)
class Progress:
    """What `on_progress` receives. kind: 'start' (the run's engine is known), 'iterations' (new
    losses), 'epoch', or 'end'."""

    run_id: str
    kind: str
    epoch: int  # 1-based epoch in progress (or just finished)
    step: int  # iterations done so far
    total_steps: int
    losses: tuple[float, ...] = ()  # the new iteration losses since the previous event
    first_iteration: int = 0  # 1-based global iteration number of losses[0]
    metrics: EpochMetrics | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    status: str = "running"
    engine: str = ""  # the training path ('start' events)
    message: str = ""  # on 'end': why a run ended early (diverged)
    label: str = ""  # the run's label for legends ('start' events)
    steps_per_epoch: int = 0  # iterations per epoch ('start' events)


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
    message: str = ""  # why the run ended early, for a person (diverged runs)
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
    """The path `train` runs: the asked-for fast engine when it supports this run, else 'plain'.
    'auto' means 'cuda-graph' on a GPU and 'cpu-native' on the CPU (engines.DEFAULT_ENGINE)."""
    return engines.select_engine(model_cfg, train_cfg, device)[0]


def fallback_reason(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> str | None:
    """Why the fast engine asked for ('auto' included) does not run this config on `device`, so
    `train` uses the plain loop; None when it runs, or when 'plain' was asked for."""
    return engines.select_engine(model_cfg, train_cfg, device)[1]


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
    on the CPU, building the cpu-native kernels (a few seconds, once per machine; then a cache
    hit). Then one forward and backward pass of a small CNN. Returns the seconds it took."""
    t0 = time.perf_counter()
    device = resolve_device(str(device))
    if device.type == "cpu":
        from mnist_lab.training.native import NativeUnavailable, load_library

        with contextlib.suppress(NativeUnavailable):  # then training uses the plain loop, and says why
            load_library()
    with torch.random.fork_rng(devices=[]):  # the global RNG stays as it was
        model = build_model(ModelConfig(conv_channels=(4, 8), kernel_size=5, hidden=(16,))).to(device)
    x = torch.zeros(8, 1, 28, 28, device=device)
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
                      data.y_test.to(device), data.source, data.permutation, data.config)


class _RunLog:
    """What every engine does around its steps: the result record, the device-side loss buffer
    read back in chunks, progress events, epoch metrics."""

    def __init__(self, run_id: str, model_cfg: ModelConfig, train_cfg: TrainConfig, data: TensorData,
                 engine: str, emit: Callable[[Progress], None], losses: torch.Tensor | None = None,
                 label: str = ""):
        device = data.device
        self.steps_per_epoch = math.ceil(len(data.x_train) / train_cfg.batch_size)
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        # filled on the device; a run in a stack gets its row of the stack's buffer
        self.losses = torch.zeros(self.total_steps, device=device) if losses is None else losses
        self.result = RunResult(run_id=run_id, model_cfg=model_cfg, train_cfg=train_cfg, data_cfg=data.config,
                                params=count_params(model_cfg), device=device_label(device), engine=engine,
                                status="running", steps_per_epoch=self.steps_per_epoch,
                                started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                data_source=data.source, label=str(label) or run_label(model_cfg, data.config))
        self.weights: Callable[[], dict[str, torch.Tensor]] | None = None  # the run's weights, read at finish()
        self.emit = emit
        self.every_s = train_cfg.progress_every_s
        self.t0 = time.perf_counter()
        self.next_emit = self.t0 + self.every_s
        self.step = 0  # iterations done (or, on the GPU, queued)
        self.sent = 0  # iterations already handed to the callback
        emit(Progress(run_id, "start", 1, 0, self.total_steps, engine=engine, label=self.result.label,
                      steps_per_epoch=self.steps_per_epoch))
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
            self.emit(Progress(self.result.run_id, "iterations", epoch, self.step, self.total_steps, tuple(chunk),
                               emit_first, elapsed_s=time.perf_counter() - self.t0, eta_s=self._eta()))
        if timed:
            self.next_emit = time.perf_counter() + self.every_s

    def _diverge(self, iteration: int, value: float, what: str = "loss") -> None:
        """`iteration`: the one whose loss was not finite, or for the test loss the last one trained."""
        lr = self.result.train_cfg.lr
        self.result.diverged_at = iteration
        when = "at" if what == "loss" else "after"
        self.result.message = (f"The {what} became {value} {when} iteration {iteration}: training diverged. Lower the "
                               f"learning rate (now {lr:g}, try {lr / 10:g}), or use a smaller momentum or batch "
                               "normalisation.")

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
        self.emit(Progress(self.result.run_id, "epoch", epoch, self.step, self.total_steps, metrics=metrics,
                           elapsed_s=time.perf_counter() - self.t0, eta_s=self._eta()))

    def finish(self, stopped: bool) -> RunResult:
        result = self.result
        if self.closed:
            return result
        self.closed = True
        result.status = "diverged" if self.diverged else "stopped" if stopped else "finished"
        if self.weights is not None:
            result.state_dict = self.weights()
        result.seconds = time.perf_counter() - self.t0
        self.emit(Progress(result.run_id, "end", len(result.epochs), self.step, self.total_steps,
                           elapsed_s=result.seconds, eta_s=0.0, status=result.status, message=result.message))
        return result


def _check_run(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TensorData) -> torch.device:
    """Everything that can be checked before training: each config, the data's shape and classes,
    memory. Returns the device."""
    model_cfg.validate()
    train_cfg.validate(n_train=len(data.x_train))
    check_fits(model_cfg, data)
    device = resolve_device(train_cfg.device)
    check_memory(model_cfg, train_cfg, device)
    return device


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TensorData,
          on_progress: Callable[[Progress], None] | None = None, cancel: CancelFlag | None = None,
          run_id: str | None = None, label: str = "") -> RunResult:
    """Train one model; return every iteration's loss, every finished epoch's metrics and the
    final weights.

    A set `cancel` flag ends the run at the next iteration with status 'stopped'; what was
    finished (iterations, whole epochs) is kept. The same seed gives the same losses: bit for bit
    on the CPU, within about 1e-5 on CUDA (cuDNN's backward kernels add with atomics).
    `train_cfg.engine` picks the path; `RunResult.engine` says which one ran."""
    device = _check_run(model_cfg, train_cfg, data)
    data = _on_device(data, device)
    engine = select_engine(model_cfg, train_cfg, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(train_cfg.seed)  # dropout masks follow the seed too
        [[result]] = _train_units([[(model_cfg, train_cfg)]], data, on_progress or (lambda e: None), cancel,
                                  [[run_id or new_run_id()]], [[label]], [engine])
    return result


def train_many(jobs: Sequence[tuple[ModelConfig, TrainConfig]], data: TensorData,
               on_progress: Callable[[Progress], None] | None = None, cancel: CancelFlag | None = None,
               run_ids: Sequence[str] | None = None, labels: Sequence[str] | None = None) -> list[RunResult]:
    """Train every (model_cfg, train_cfg) job; result k is what `train(*jobs[k], data)` returns
    alone. On a GPU the runs the cuda-graph engine supports train side by side, each replaying
    its own graph on its own CUDA stream (the same kernels, so the same losses). Runs that ask
    for engine 'stacked' and differ only in their seed train as one stacked network (stacked.py),
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

    units: dict[torch.device, list[list[int]]] = {}  # per device: groups of job indices trained together
    for group in _stack_groups(jobs, devices):
        units.setdefault(devices[group[0]], []).append(group)
    stacked = {k for groups in units.values() for group in groups for k in group}
    singles = [k for k, (m, t) in enumerate(jobs) if k not in stacked
               and select_engine(m, t, devices[k]) == "cuda-graph" and devices[k] == devices[0]]
    if len(singles) > 1 or (singles and devices[0] in units):
        units.setdefault(devices[0], []).extend([k] for k in singles)
    for device, groups in units.items():
        # A GPU runs the units side by side; a CPU gains nothing from interleaving them, so there
        # each stack trains on its own and its results, timings and Stop are its own.
        for batch in [groups] if device.type == "cuda" else [[group] for group in groups]:
            done = _train_units([[jobs[k] for k in group] for group in batch], _on_device(data, device), emit, cancel,
                                [[run_ids[k] for k in group] for group in batch],
                                [[labels[k] for k in group] for group in batch],
                                ["stacked" if len(group) > 1 else "cuda-graph" for group in batch])
            for group, group_results in zip(batch, done):
                for k, result in zip(group, group_results):
                    results[k] = result
    for k, (model_cfg, train_cfg) in enumerate(jobs):
        if results[k] is None:
            results[k] = train(model_cfg, train_cfg, data, emit, cancel, run_ids[k], labels[k])
    return results


def _stack_groups(jobs: list[tuple[ModelConfig, TrainConfig]], devices: list[torch.device]) -> list[list[int]]:
    """Indices of the jobs that train as stacks: two or more that ask for 'stacked', whose network
    can be stacked, and that differ in nothing but their seed."""
    groups: dict[tuple, list[int]] = {}
    for k, (model_cfg, train_cfg) in enumerate(jobs):
        if train_cfg.engine == "stacked" and engines.why_not("stacked", model_cfg, train_cfg, devices[k],
                                                             alone=False) is None:
            # what may differ besides the seed: how the device is named, and what changes no result
            key = (model_cfg, replace(train_cfg, seed=0, device=str(devices[k]), progress_every_s=0,
                                      eval_batch_size=0), devices[k])
            groups.setdefault(key, []).append(k)
    return [group for group in groups.values() if len(group) > 1]


@dataclass
class _Unit:
    """What `_train_units` steps as one: a single run, or a stack of runs (all sharing one
    TrainConfig but the seed), with its stepper, its stream and where it is."""

    cfg: TrainConfig
    stepper: engines.Stepper
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


# A stack keeps its weights in NCHW even on the CPU (where single runs use channels_last): its
# grouped convolutions ran 1.2x faster that way (docs/BENCHMARKS.md, 2026-11-23).
STACK_LAYOUT = torch.contiguous_format


def _cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `net`'s state_dict on the CPU, in NCHW (whatever layout training used)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}


def _make_unit(jobs: list[tuple[ModelConfig, TrainConfig]], data: TensorData, emit: Callable[[Progress], None],
               run_ids: list[str], labels: list[str], engine: str) -> _Unit:
    """A unit for `jobs` (one run, or a stack when `engine` is 'stacked'), set up by the engine."""
    device = data.device
    model_cfg, train_cfg = jobs[0]
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(device))  # the data was made there
    label_order = torch.sort(data.y_train.cpu(), stable=True).indices if train_cfg.sort_by_label else None
    with _on_stream(stream):
        gens = [torch.Generator().manual_seed(t.seed) for _, t in jobs]  # batch order, on the CPU for portability
        if engine != "stacked":
            log = _RunLog(run_ids[0], model_cfg, train_cfg, data, engine, emit, label=labels[0])
            run = engines.REGISTRY[engine].prepare(model_cfg, train_cfg, data.x_train, data.y_train, log.losses)
            log.weights = lambda: _cpu_state(run.net)
            return _Unit(train_cfg, run.stepper, [log], [run.model], stream, gens, label_order)
        from mnist_lab.training.stacked import StackedModel, StackedStep

        members = [init_model(m, t.seed, device).to(memory_format=STACK_LAYOUT) for m, t in jobs]
        model = StackedModel(members)
        optimizer = make_optimizer(model, train_cfg, capturable=device.type == "cuda")
        steps = math.ceil(len(data.x_train) / train_cfg.batch_size) * train_cfg.epochs
        losses = torch.zeros(len(jobs), steps, device=device)
        logs = [_RunLog(run_id, m, t, data, "stacked", emit, losses=losses[s], label=label)
                for s, ((m, t), run_id, label) in enumerate(zip(jobs, run_ids, labels))]
        for s, log in enumerate(logs):
            log.weights = lambda s=s: model.member_state_dict(s)
        stepper = StackedStep(model, optimizer, data.x_train, data.y_train, train_cfg.batch_size, losses)
        return _Unit(train_cfg, stepper, logs, [model.member(s) for s in range(len(jobs))], stream, gens, label_order)


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
                 emit: Callable[[Progress], None], cancel: CancelFlag | None, run_ids: list[list[str]],
                 labels: list[list[str]], unit_engines: list[str]) -> list[list[RunResult]]:
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
