"""What every engine is made of: the reference training step (`PlainStep`, its body written once
and reused by every fast path), the `Stepper` interface the loop drives, the `Engine` base class
(its devices, what it cannot run and why, how it sets up runs), the plain engine, per-batch
augmentation, and model and optimiser set-up. engines.py names the engines and picks one.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.i18n import N_, Message, Worded
from mnist_lab.nets.model import ModelConfig, build_model


class Stepper(Protocol):
    """One training unit's step. `start_epoch` takes this epoch's batch order (a CPU permutation of
    the training set; a list of them for a stack), `step(i)` trains iteration i of the epoch and
    writes its loss to the unit's device-side loss buffer (no host sync)."""

    def start_epoch(self, order) -> None: ...

    def step(self, i: int) -> None: ...


class PlainStep:
    """The reference step: zero_grad, forward, loss, backward, step. Batch i of the epoch is the
    slice i*B:(i+1)*B of the epoch's order (the last one may be short); `augment`, if given,
    transforms each batch on the device before the forward pass. `losses` holds one slot per
    global iteration: (steps,) for one run, (S, steps) for a stack of S runs (stacked.StackedStep)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, x_train: torch.Tensor,
                 y_train: torch.Tensor, batch_size: int, losses: torch.Tensor,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.model, self.optimizer = model, optimizer
        self.x_train, self.y_train, self.losses = x_train, y_train, losses
        self.batch_size, self.augment = batch_size, augment
        self.order = torch.arange(len(x_train), device=x_train.device)
        self.at = 0  # the global iteration: its slot in `losses`
        # d(sum of the runs' losses)/d(each run's loss): backward from it gives each run its own gradient
        self.ones = torch.ones(losses.shape[:-1], device=losses.device)  # () for one run, (S,) for a stack

    def start_epoch(self, order: torch.Tensor) -> None:
        self.order = order.to(self.x_train.device)

    def step(self, i: int) -> None:
        x, y = self.batch(i)
        self.optimizer.zero_grad(set_to_none=True)
        self.update(x, y)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        x, y = self.x_train[idx], self.y_train[idx]
        return (x if self.augment is None else self.augment(x)), y

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """THE step body, which every engine runs (cuda_graph.GraphStep captures it, StackedStep
        runs it over a stack): forward, loss, backward, optimiser step, the loss into its slot."""
        loss = self.loss(x, y)  # (): the run's mean cross-entropy; (S,) for a stack, each member's own
        loss.backward(self.ones)
        self.optimizer.step()
        self.keep(loss.detach())

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)

    def keep(self, loss: torch.Tensor) -> None:
        self.losses[..., self.at] = loss
        self.at += 1


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


def cpu_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of `net`'s state_dict on the CPU, in NCHW (whatever layout training used)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}


# ------------------------------------------------------------------------------------ engines

Run = tuple[ModelConfig, object]  # (model_cfg, train_cfg): one run an engine sets up


def reason_message(reason: str) -> Message:
    """A `can_run` reason (a str) as a Message: a reason with values is an `i18n.Worded` of its one
    message; any other is its own msgid (every plain reason is marked with N_)."""
    return reason.parts[0] if isinstance(reason, Worded) else Message(reason)


@dataclass
class Prepared:
    """What an engine sets up for its runs (one, or a stack): the stepper that trains them and, per
    run, the model that is evaluated and a function that returns its weights on the CPU, under
    the names of build_model's network."""

    stepper: Stepper
    models: list[nn.Module]
    weights: list[Callable[[], dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class Engine:
    """A training path. A subclass says which device types it runs on, what else it cannot run and
    why (`unsupported`), and sets its runs up (`prepare`); the registry (engines.py) names each
    engine and says where 'auto' picks it."""

    name: str
    measured: str = ""  # what a benchmark shows it buys (docs/BENCHMARKS.md), or "" where none does yet
    default_on: tuple[str, ...] = ()  # the device types on which 'auto' asks for it
    lone_run_uses: str | None = None  # a stacking engine: what a lone run that asks for it tries next

    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")  # the device types it runs on
    wrong_device: ClassVar[str] = ""  # why it does not run on another device type
    stacks: ClassVar[bool] = False  # trains two or more runs that differ only in their seed, as one
    side_by_side: ClassVar[bool] = False  # on a GPU, trains beside other units on its own CUDA stream
    settle_s: ClassVar[float] = 0.0  # seconds of steps before its pace is steady (a throughput measurement waits)

    def can_run(self, model_cfg: ModelConfig, train_cfg, device: torch.device, alone: bool = True) -> str | None:
        """Why this engine cannot train this config on `device` (a lone run when `alone`), or None."""
        if device.type not in self.devices:
            return self.wrong_device
        if self.stacks and alone:
            return N_("trains two or more seeds of one config together (sweep, compare); a lone run does not")
        return self.unsupported(model_cfg, train_cfg, device)

    def unsupported(self, model_cfg: ModelConfig, train_cfg, device: torch.device) -> str | None:
        """Why it cannot train this config on a device it runs on, or None."""
        return None

    def warm_up(self, device: torch.device) -> None:
        """Pay a one-time set-up cost (a build, a load) before a run waits for it; never raises."""

    def prepare(self, runs: list[Run], x_train: torch.Tensor, y_train: torch.Tensor,
                losses: torch.Tensor) -> Prepared:
        """Set up `runs` (one run; for a stacking engine two or more that differ only in their seed)
        on x_train's device; run s writes its iteration losses to row s of `losses` (S, steps)."""
        raise NotImplementedError


class PlainEngine(Engine):
    """The reference path: PlainStep on any device, anything the loop supports."""

    def prepare(self, runs, x_train, y_train, losses) -> Prepared:
        [(model_cfg, train_cfg)] = runs
        device = x_train.device
        model = init_model(model_cfg, train_cfg.seed, device)
        x_train = x_train.contiguous(memory_format=fast_memory_format(model_cfg, device))
        augment = Augment(x_train, train_cfg.seed) if train_cfg.augment else None
        step = PlainStep(model, make_optimizer(model, train_cfg), x_train, y_train, train_cfg.batch_size, losses[0],
                         augment)
        return Prepared(step, [model], [lambda: cpu_state(model)])
