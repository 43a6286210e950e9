"""The engines: the reference training step (`PlainStep`), the small `Stepper` interface every
fast path implements (fast.GraphStep, stacked.StackedStep; NativeStep, the plain step over the
C++ conv blocks), per-batch augmentation, and ONE registry that says which engine can run a
config and, if not, why. train.py's loop drives whichever stepper the registry gives it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.nets.model import ModelConfig, build_model

# "auto": the fastest measured path that supports the run. "stacked" (train_many only): runs that
# differ only in their seed train as one vmapped network (stacked.py); "auto" does not pick it
# until it is measured faster on a GPU.
ENGINE_NAMES = ("auto", "plain", "cuda-graph", "stacked", "cpu-native")
DEFAULT_ENGINE = {"cpu": "cpu-native", "cuda": "cuda-graph"}  # what "auto" asks for on each device type


class Stepper(Protocol):
    """One training unit's step. `start_epoch` takes this epoch's batch order (a CPU permutation of
    the training set; a list of them for a stack), `step(i)` trains iteration i of the epoch and
    writes its loss to the unit's device-side loss buffer (no host sync)."""

    def start_epoch(self, order) -> None: ...

    def step(self, i: int) -> None: ...


class PlainStep:
    """The reference step: zero_grad, forward, loss, backward, step. Batch i of the epoch is the
    slice i*B:(i+1)*B of the epoch's order (the last one may be short); `augment`, if given,
    transforms each batch on the device before the forward pass."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, x_train: torch.Tensor,
                 y_train: torch.Tensor, batch_size: int, losses: torch.Tensor,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.model, self.optimizer = model, optimizer
        self.x_train, self.y_train, self.losses = x_train, y_train, losses
        self.batch_size, self.augment = batch_size, augment
        self.order = torch.arange(len(x_train), device=x_train.device)
        self.at = 0  # the global iteration: its slot in `losses`

    def start_epoch(self, order: torch.Tensor) -> None:
        self.order = order.to(self.x_train.device)

    def step(self, i: int) -> None:
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        x, y = self.x_train[idx], self.y_train[idx]
        if self.augment is not None:
            x = self.augment(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.losses[self.at] = loss.detach()
        self.at += 1


class NativeStep(PlainStep):
    """The reference step over the C++ conv blocks (native.NativeCNN). Their results are the same for
    any number of kernel threads, so a ThreadGovernor picks that number step by step (fewer while
    another program takes cores); PyTorch's part of the step (the FC layers, the loss, SGD) runs on
    one thread, which keeps a run's losses independent of the machine's thread count."""

    def __init__(self, model, *args, **kwargs):
        from mnist_lab.training.threads import ThreadGovernor

        super().__init__(model, *args, **kwargs)
        self.governor = ThreadGovernor(model.blocks.set_threads, model.blocks.threads)

    def step(self, i: int) -> None:
        from mnist_lab.training.threads import one_torch_thread

        t0 = time.perf_counter()
        with one_torch_thread():
            super().step(i)
        self.governor.after_step(time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ augmentation

class Augment:
    """Per-batch augmentation on the device, drawn from its own generator seeded by the run's seed.
    Chosen by the images' shape: 3-channel images get a random crop of the image padded by 4 px
    (a shift of up to 4 px each way) and a horizontal flip with probability 1/2 (CIFAR-10's
    standard); other images (MNIST-shaped digits) get random shifts of up to 2 px, no flip (a
    mirrored digit is another glyph). The border is filled with each channel's darkest value in
    the training set, which after normalisation is what a black pixel became."""

    def __init__(self, x_train: torch.Tensor, seed: int):
        channels = x_train.shape[1]
        self.pad, self.flip = (4, True) if channels == 3 else (2, False)
        self.fill = x_train.amin(dim=(0, 2, 3)).view(1, -1, 1, 1)  # (1, C, 1, 1)
        device = x_train.device
        # another stream than the seed's own (weights, dropout): a fixed odd multiplier mixes it
        self.generator = torch.Generator(device=device).manual_seed((seed * 6364136223846793005 + 1) % 2**63)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p, device = self.pad, x.device
        padded = self.fill.expand(n, c, h + 2 * p, w + 2 * p).clone()  # (N, C, H+2p, W+2p)
        padded[:, :, p:p + h, p:p + w] = x
        dy, dx = torch.randint(0, 2 * p + 1, (2, n, 1), generator=self.generator, device=device)
        rows = (dy + torch.arange(h, device=device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * p)
        out = padded.gather(2, rows)  # (N, C, H, W+2p): each image's own vertical offset
        cols = (dx + torch.arange(w, device=device)).view(n, 1, 1, w).expand(n, c, h, w)
        out = out.gather(3, cols)  # (N, C, H, W)
        if self.flip:
            mirrored = torch.rand(n, generator=self.generator, device=device) < 0.5
            out = torch.where(mirrored.view(n, 1, 1, 1), out.flip(3), out)
        return out


# ------------------------------------------------------------------------------------ model set-up

def make_optimizer(model: torch.nn.Module, cfg, capturable: bool = False) -> torch.optim.Optimizer:
    """SGD with momentum or Adam. `capturable`: Adam keeps its step count on the device so its
    update can be captured in a CUDA graph (SGD's foreach update needs nothing)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, **({"capturable": True} if capturable else {}))
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def fast_memory_format(model_cfg: ModelConfig, device: torch.device) -> torch.memory_format:
    """The layout the convolutions run fastest in: channels_last (NHWC) for a CNN on the CPU,
    where oneDNN's kernels want it (bench/bench_cpu.py measured it); NCHW otherwise."""
    if device.type == "cpu" and model_cfg.kind == "cnn":
        return torch.channels_last
    return torch.contiguous_format


def init_model(model_cfg: ModelConfig, seed: int, device: torch.device) -> torch.nn.Module:
    """Build with weights drawn from `seed` only, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_cfg)
    return model.to(device, memory_format=fast_memory_format(model_cfg, device))


# ------------------------------------------------------------------------------------ the registry

@dataclass
class Prepared:
    """What an engine sets up for one run: the model that is evaluated, the stepper that trains
    it, and the build_model network whose state_dict is the run's weights."""

    model: nn.Module
    stepper: Stepper
    net: nn.Module


def _plain_can_run(model_cfg, train_cfg, device) -> str | None:
    return None


def _prepare_plain(model_cfg, train_cfg, x_train, y_train, losses) -> Prepared:
    device = x_train.device
    model = init_model(model_cfg, train_cfg.seed, device)
    x_train = x_train.contiguous(memory_format=fast_memory_format(model_cfg, device))
    augment = Augment(x_train, train_cfg.seed) if train_cfg.augment else None
    step = PlainStep(model, make_optimizer(model, train_cfg), x_train, y_train, train_cfg.batch_size, losses, augment)
    return Prepared(model, step, model)


def _graph_can_run(model_cfg, train_cfg, device) -> str | None:
    from mnist_lab.training.cuda_graph import cuda_graph_unsupported

    return cuda_graph_unsupported(model_cfg, train_cfg, device)


def _prepare_graph(model_cfg, train_cfg, x_train, y_train, losses) -> Prepared:
    from mnist_lab.training.cuda_graph import GraphStep, fast_convs

    model = fast_convs(init_model(model_cfg, train_cfg.seed, x_train.device))
    optimizer = make_optimizer(model, train_cfg, capturable=True)
    return Prepared(model, GraphStep(model, optimizer, x_train, y_train, train_cfg.batch_size, losses), model)


def _native_can_run(model_cfg, train_cfg, device) -> str | None:
    from mnist_lab.training.native import native_unsupported

    return native_unsupported(model_cfg, device)


def _prepare_native(model_cfg, train_cfg, x_train, y_train, losses) -> Prepared:
    from mnist_lab.training.native import NativeCNN

    net = init_model(model_cfg, train_cfg.seed, x_train.device)
    model = NativeCNN(net, model_cfg)  # its kernels read NCHW, so the data stays NCHW
    augment = Augment(x_train, train_cfg.seed) if train_cfg.augment else None
    step = NativeStep(model, make_optimizer(model, train_cfg), x_train, y_train, train_cfg.batch_size, losses, augment)
    return Prepared(model, step, model.model)


def _stacked_can_run(model_cfg, train_cfg, device) -> str | None:
    from mnist_lab.training.stacked import stacked_unsupported

    return stacked_unsupported(model_cfg, train_cfg)


@dataclass(frozen=True)
class Engine:
    name: str
    can_run: Callable[[ModelConfig, object, torch.device], str | None]  # why it cannot run a config, or None
    prepare: Callable | None  # (model_cfg, train_cfg, x_train, y_train, losses) -> Prepared; None: not for one run
    measured: str  # what a benchmark shows it buys (docs/BENCHMARKS.md), or "" where none does yet


REGISTRY: dict[str, Engine] = {e.name: e for e in (
    Engine("plain", _plain_can_run, _prepare_plain, "the reference path"),
    Engine("cuda-graph", _graph_can_run, _prepare_graph, "default on CUDA: faster Lab-5 epochs (bench_train.py, "
           "bench_gpu_step.py)"),
    Engine("cpu-native", _native_can_run, _prepare_native, "default on the CPU: faster Lab-5 epochs "
           "(bench_train.py, bench_native.py)"),
    # 1.25x SLOWER than one run after another on the 2-core CPU, not yet measured on a GPU
    # (bench_sweep.py --engine stacked): a cost until a benchmark shows what it buys
    Engine("stacked", _stacked_can_run, None, ""),
)}


def _candidates(requested: str, device: torch.device) -> list[str]:
    """The engines a single run asking for `requested` tries, in order, before 'plain'. A lone run
    that asks for 'stacked' has nothing to stack with: on a GPU it replays its own graph."""
    if requested == "auto":
        return [DEFAULT_ENGINE[device.type]]
    if requested == "stacked":
        return ["stacked", "cuda-graph"] if device.type == "cuda" else ["stacked"]
    return [] if requested == "plain" else [requested]


def why_not(name: str, model_cfg: ModelConfig, train_cfg, device: torch.device, alone: bool = True) -> str | None:
    """Why engine `name` cannot train this config on `device` (a lone run when `alone`), or None."""
    if name == "cuda-graph" and device.type != "cuda":
        return "needs a CUDA device"
    if name == "cpu-native" and device.type != "cpu":
        return "runs on the CPU only"
    if name == "stacked" and alone:
        return ("trains two or more seeds of one config together (sweep, compare); a lone run does not")
    return REGISTRY[name].can_run(model_cfg, train_cfg, device)


def select_engine(model_cfg: ModelConfig, train_cfg, device: torch.device) -> tuple[str, str | None]:
    """(the engine a lone run trains with, why the asked-for one does not run it, or None)."""
    reasons = []
    for name in _candidates(train_cfg.engine, device):
        reason = why_not(name, model_cfg, train_cfg, device)
        if reason is None:
            return name, None
        reasons.append(f"{name}: {reason}")
    return "plain", "; ".join(reasons) or None
