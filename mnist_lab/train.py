"""The training engine: data resident on the device, batches as index slices of a per-epoch
randperm, every iteration's loss kept on the device and read back in chunks, progress through
a callback, a cancel flag that keeps everything finished so far.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from .data import DataConfig, TensorData
from .models import ModelConfig, build_model, count_params

OPTIMIZERS = ("sgd", "adam")


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
    eval_batch_size: int = 2000  # test-set chunk; affects memory only, not results
    progress_every_s: float = 0.25  # at most this often an iterations event is sent

    def validate(self, n_train: int | None = None) -> None:
        if not 1 <= self.epochs <= 1000:
            raise ValueError(f"Epochs must be 1 to 1000; got {self.epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"Batch size must be at least 1; got {self.batch_size}.")
        if n_train is not None and self.batch_size > n_train:
            raise ValueError(f"Batch size {self.batch_size} is larger than the {n_train} training images; "
                             "lower the batch size or use more training images.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Optimizer must be one of {', '.join(OPTIMIZERS)}; got '{self.optimizer}'.")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.lr > 10:
            raise ValueError(f"Learning rate must be above 0 and at most 10; got {self.lr}.")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"Momentum must be in [0, 1); got {self.momentum}.")
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; refuse a CUDA device that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"Unknown device '{name}'; use auto, cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("Device 'cuda' was asked for but this machine has no CUDA GPU; use --device cpu or auto.")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Device '{name}' is not supported; use auto, cpu or cuda.")
    return device


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
    """What `on_progress` receives. kind: 'iterations' (new losses), 'epoch', or 'end'."""

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


@dataclass
class RunResult:
    run_id: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data_cfg: DataConfig
    params: int
    device: str
    engine: str  # which training path ran ("plain", ...)
    status: str  # "finished" or "stopped"
    losses: list[float] = field(default_factory=list)  # one per iteration, in order
    epochs: list[EpochMetrics] = field(default_factory=list)
    steps_per_epoch: int = 0
    started_at: str = ""
    seconds: float = 0.0
    data_source: str = ""

    @property
    def final_test_acc(self) -> float | None:
        return self.epochs[-1].test_acc if self.epochs else None


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def init_model(model_cfg: ModelConfig, seed: int, device: torch.device) -> torch.nn.Module:
    """Build with weights drawn from `seed` only, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_cfg)
    model = model.to(device)
    if device.type == "cpu" and model_cfg.kind == "cnn":
        model = model.to(memory_format=torch.channels_last)  # faster CPU convolutions
    return model


@torch.inference_mode()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the whole of x, y; one host sync."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        loss_sum += F.cross_entropy(out, yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    loss, acc = torch.stack([loss_sum, correct.double().to(loss_sum.dtype)]).tolist()
    return loss / len(x), acc / len(x)


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: TensorData,
          on_progress: Callable[[Progress], None] | None = None, cancel: CancelFlag | None = None,
          run_id: str | None = None) -> RunResult:
    """Train one model; return every iteration's loss and every finished epoch's metrics.

    A set `cancel` flag ends the run at the next iteration with status 'stopped'; what was
    finished (iterations, whole epochs) is kept. Same seed and device give the same losses."""
    model_cfg.validate()
    train_cfg.validate(n_train=len(data.x_train))
    device = resolve_device(train_cfg.device)
    if data.device != device:
        data = TensorData(data.x_train.to(device), data.y_train.to(device), data.x_test.to(device),
                          data.y_test.to(device), data.source, data.permutation, data.config)
    emit = on_progress or (lambda event: None)
    run_id = run_id or new_run_id()

    model = init_model(model_cfg, train_cfg.seed, device)
    optimizer = make_optimizer(model, train_cfg)
    order_gen = torch.Generator().manual_seed(train_cfg.seed)  # batch order, on the CPU for portability

    x_train, y_train = data.x_train, data.y_train
    if device.type == "cpu" and model_cfg.kind == "cnn":
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    n, bs = len(x_train), train_cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * train_cfg.epochs
    losses = torch.zeros(total_steps, device=device)  # filled on the device, read back in chunks

    result = RunResult(run_id=run_id, model_cfg=model_cfg, train_cfg=train_cfg, data_cfg=data.config,
                       params=count_params(model), device=device_label(device), engine="plain",
                       status="running", steps_per_epoch=steps_per_epoch,
                       started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       data_source=data.source)
    t0 = time.perf_counter()
    step = 0  # iterations done
    sent = 0  # iterations already handed to the callback
    next_emit = t0 + train_cfg.progress_every_s

    def flush(epoch: int) -> None:
        nonlocal sent
        if step > sent:
            chunk = losses[sent:step].tolist()  # the one host sync for this chunk
            result.losses.extend(chunk)
            elapsed = time.perf_counter() - t0
            eta = elapsed / step * (total_steps - step)
            emit(Progress(run_id, "iterations", epoch, step, total_steps, tuple(chunk), sent + 1,
                          elapsed_s=elapsed, eta_s=eta))
            sent = step

    stopped = False
    for epoch in range(1, train_cfg.epochs + 1):
        epoch_t0 = time.perf_counter()
        model.train()
        if train_cfg.shuffle:
            order = torch.randperm(n, generator=order_gen).to(device)
        else:
            order = torch.arange(n, device=device)
        for i in range(steps_per_epoch):
            if cancel is not None and cancel.is_set():
                stopped = True
                break
            idx = order[i * bs:(i + 1) * bs]
            x, y = x_train[idx], y_train[idx]
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            losses[step] = loss.detach()
            step += 1
            if time.perf_counter() >= next_emit:
                flush(epoch)
                next_emit = time.perf_counter() + train_cfg.progress_every_s
        flush(epoch)
        if stopped:
            break
        test_loss, test_acc = evaluate(model, data.x_test, data.y_test, train_cfg.eval_batch_size)
        epoch_losses = result.losses[(epoch - 1) * steps_per_epoch:epoch * steps_per_epoch]
        metrics = EpochMetrics(epoch, sum(epoch_losses) / len(epoch_losses), test_loss, test_acc,
                               time.perf_counter() - epoch_t0)
        result.epochs.append(metrics)
        elapsed = time.perf_counter() - t0
        emit(Progress(run_id, "epoch", epoch, step, total_steps, metrics=metrics, elapsed_s=elapsed,
                      eta_s=elapsed / step * (total_steps - step)))

    result.status = "stopped" if stopped else "finished"
    result.seconds = time.perf_counter() - t0
    emit(Progress(run_id, "end", len(result.epochs), step, total_steps, elapsed_s=result.seconds,
                  eta_s=0.0, status=result.status))
    return result
