"""The one pre-flight check, run before any data loads (by the experiments, the lessons, the
CLI, the job runner's submit and the pages) and again by the loop against the data in hand:
every config is valid, the network fits the dataset's images and classes, the batch fits the
training images, the device exists and training fits in its free memory. Each refusal is a
ConfigError naming the field, the value and what to change.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch

from mnist_lab.data.datasets import DataConfig, DatasetSpec
from mnist_lab.errors import ConfigError
from mnist_lab.nets.model import ModelConfig, summarize


class TrainSettings(Protocol):
    """What this module reads of a training.loop.TrainConfig (the loop imports this module, so
    it names the config by what it uses)."""

    device: str
    optimizer: str
    batch_size: int
    eval_batch_size: int

    def validate(self, n_train: int | None = None) -> None: ...


def preflight(model_cfg: ModelConfig, train_cfg: TrainSettings, data_cfg: DataConfig,
              n_train: int | None = None) -> torch.device:
    """Refuse (ConfigError) a run that cannot train, before anything is loaded or built: each
    config's own checks, the network against the dataset spec, the batch size against the
    training images (`n_train`, else the number `data_cfg` uses), the device and its memory.
    Returns the device the run trains on."""
    check_configs(model_cfg, train_cfg, data_cfg, n_train)
    device = resolve_device(train_cfg.device)
    check_memory(model_cfg, train_cfg, device)
    return device


def check_configs(model_cfg: ModelConfig, train_cfg: TrainSettings, data_cfg: DataConfig,
                  n_train: int | None = None) -> None:
    """preflight's checks of the configs alone (each config, the network against the dataset spec,
    the batch size against the training images), not of a device's memory: for a run that another
    machine trains (a Ray node checks its own)."""
    model_cfg.validate()
    data_cfg.validate()
    check_fits(model_cfg, data_cfg.spec)
    train_cfg.validate(n_train=data_cfg.n_train() if n_train is None else n_train)


def check_fits(model_cfg: ModelConfig, spec: DatasetSpec) -> None:
    """Refuse a network built for another input shape or number of classes than `spec`'s, naming
    the model field and the value it needs; it reads the spec only, so it runs before any data
    is loaded."""
    for fld, want in (("in_channels", spec.channels), ("image_size", spec.image_size),
                      ("n_classes", spec.n_classes)):
        value = getattr(model_cfg, fld)
        if value != want:
            raise ConfigError(fld, value, "The network has {field} = {value!r} but {title} needs {want} ({shape} "
                              "images, {n} classes): set {field} to {want}, or choose a network made for {title}.",
                              field=fld, want=want, title=spec.title,
                              shape=f"{spec.channels}×{spec.image_size}×{spec.image_size}", n=spec.n_classes)


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


def training_bytes(model_cfg: ModelConfig, train_cfg: TrainSettings) -> int:
    """A rough upper estimate of what training needs beyond the data: float32 weights, gradients
    and optimiser state, and every layer's output and its gradient for one batch."""
    rows = summarize(model_cfg)
    params = sum(r.params for r in rows)
    states = 2 if train_cfg.optimizer == "adam" else 1
    activations = sum(math.prod(r.output_shape) for r in rows)
    batch = max(train_cfg.batch_size, train_cfg.eval_batch_size // 2)  # evaluation keeps no gradients
    return 4 * (params * (2 + states) + 3 * activations * batch)


def check_memory(model_cfg: ModelConfig, train_cfg: TrainSettings, device: torch.device) -> None:
    """Refuse, before training, a run that would not fit in the device's free memory."""
    need, free = training_bytes(model_cfg, train_cfg), _available_bytes(device)
    if free is not None and need > 0.8 * free:
        raise ConfigError("batch_size", train_cfg.batch_size, "Training this network with batch size {value!r} needs "
                          "about {need:,} MiB, but {device} has {free:,} MiB free: use a smaller batch (and "
                          "evaluation batch) or a smaller network.", need=need // 2**20, free=free // 2**20,
                          device=device.type)
