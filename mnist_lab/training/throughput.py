"""Measured training throughput: how long one iteration of THIS network at THIS batch size takes on
this machine, through the engine a lone run of it trains with, and how long one test image takes to
evaluate. The time estimates (service/estimate.py) are built from these figures, not from a
multiply-add count: the same multiply-adds cost very different times in a 13-conv residual stack,
a BatchNorm layer, a global-average-pooling head or the C++ kernels.

A measurement trains a few steps on random images of the dataset's shape (a step costs the same
whatever the pixels) for about MEASURE_S seconds, after an engine's `settle_s`: once per network,
batch size, optimiser, engine and device in a process, and again for a caller that asks for the
machine as it is now when the figure is older than FRESH_S. Two figures are kept per key: the
FASTEST measured (the idle-machine estimate: what a limit uses, so a refusal does not flap with
load) and the LATEST.

What is never measured: a network whose step the multiply-add formula puts above MAX_MEASURED_STEP_S
(a visitor's 900-million-parameter design must not hold a shared server's CPU for minutes), and one
whose measurement fails (out of memory, say): those get the formula's figure (`engine` "formula").
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace

import torch

from mnist_lab.nets.model import ModelConfig, summarize
from mnist_lab.nets.presets import PRESETS
from mnist_lab.training import engines
from mnist_lab.training.events import config_dict

MEASURE_S = 0.4  # seconds of timed training steps per measurement (busy machines vary: 0.2 s swung 1.2-3.7 ms)
MAX_STEPS = 200  # ... but no more steps than this
WARM_STEPS = 1  # untimed first steps: allocation, a graph capture, the kernels' first call
FRESH_S = 60.0  # a measurement younger than this is the machine "now"
MAX_MEASURED_STEP_S = 5.0  # a network the formula puts above this per step is not measured (VGG16: 4)
# The formula's effective multiply-adds per second of a training step and its fixed cost per step,
# from the Lab-5 net (docs/BENCHMARKS.md: 2.5 s per CPU epoch on 2 cores, 0.18 s on an H100). Rough
# by design: it only stands in where nothing was measured.
FORMULA_RATE = {"cpu": (30e9, 0.4e-3), "cuda": (1.5e12, 0.15e-3)}


@dataclass(frozen=True)
class Throughput:
    """One network's cost on one device, through one engine."""

    step_s: float  # one training iteration at the run's batch size
    eval_image_s: float  # evaluating one test image
    setup_s: float  # setting the run up: building the model and the engine's stepper
    engine: str  # the engine a lone run of it trains with
    measured_at: float  # time.monotonic() of the measurement

    def run_seconds(self, epochs: int, n_train: int, n_test: int, batch_size: int) -> float:
        """A run's training time: set-up, then per epoch every iteration and one pass over the test images."""
        steps = math.ceil(n_train / batch_size)
        return self.setup_s + epochs * (steps * self.step_s + n_test * self.eval_image_s)


_LOCK = threading.Lock()  # guards the tables below, never held while measuring
_KEY_LOCKS: dict[tuple, threading.Lock] = {}  # one per key: a network is measured once, others wait for it
_FASTEST: dict[tuple, Throughput] = {}
_LATEST: dict[tuple, Throughput] = {}
_WARM: set[str] = set()  # device types this process has measured on: its one-time start-up is paid


def _key(model_cfg: ModelConfig, train_cfg, device: torch.device) -> tuple:
    """What a step's cost depends on (not the seed, epochs, learning rate or data size)."""
    return (repr(sorted(config_dict(model_cfg).items())), train_cfg.batch_size, train_cfg.optimizer,
            bool(train_cfg.augment), train_cfg.engine, train_cfg.eval_batch_size, str(device))


def throughput(model_cfg: ModelConfig, train_cfg, device: torch.device | str, n_classes: int,
               now: bool = False, measure_missing: bool = True) -> Throughput | None:
    """The cost of training `model_cfg` with `train_cfg` on `device`: the fastest figure measured in
    this process (the idle estimate), or with `now` a figure at most FRESH_S old (measured again
    when older). The first call for a network measures it (about MEASURE_S plus its set-up);
    with `measure_missing` False it returns None instead (a poll while a job trains must not
    measure: that would slow the job)."""
    device = torch.device(device)
    key = _key(model_cfg, train_cfg, device)
    with _LOCK:
        latest = _LATEST.get(key)
        if latest is not None and (not now or time.monotonic() - latest.measured_at < FRESH_S):
            return latest if now else _FASTEST[key]
        if not measure_missing and latest is None:
            return None
        key_lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with key_lock:
        with _LOCK:  # measured by another thread while this one waited
            latest = _LATEST.get(key)
            if latest is not None and (not now or time.monotonic() - latest.measured_at < FRESH_S):
                return latest if now else _FASTEST[key]
        measured = _measure_or_formula(model_cfg, train_cfg, device, n_classes)
        with _LOCK:
            _LATEST[key] = measured
            best = _FASTEST.get(key)
            if best is None or measured.step_s < best.step_s:
                _FASTEST[key] = best = measured
        return measured if now else best


def forget() -> None:
    """Drop every figure (tests; a machine whose load or hardware changed)."""
    with _LOCK:
        _FASTEST.clear()
        _LATEST.clear()


def forward_macs(cfg: ModelConfig) -> int:
    """Multiply-adds of one forward pass of one image (convolutions and linear layers)."""
    return sum(row.macs for row in summarize(cfg))  # each block type counts its own layers' rows


def formula(model_cfg: ModelConfig, train_cfg, device: torch.device) -> Throughput:
    """The multiply-add formula's figure: forward + backward (3x the forward's multiply-adds) of a
    batch, one forward of a test image; what stands in where nothing was measured."""
    rate, per_step = FORMULA_RATE.get(device.type, FORMULA_RATE["cpu"])
    macs = forward_macs(model_cfg)
    return Throughput(3 * macs * train_cfg.batch_size / rate + per_step, macs / rate, 0.0, "formula",
                      time.monotonic())


def _measure_or_formula(model_cfg: ModelConfig, train_cfg, device: torch.device, n_classes: int) -> Throughput:
    rough = formula(model_cfg, train_cfg, device)
    if rough.step_s > MAX_MEASURED_STEP_S:
        return rough
    try:
        return measure(model_cfg, train_cfg, device, n_classes)
    except Exception:  # noqa: BLE001 - out of memory, a kernel refusing the sizes: the training will say why
        return rough
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the server process keeps no memory the worker's runs need


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_cfg: ModelConfig, train_cfg, device: torch.device, n_classes: int) -> Throughput:
    """Time a few training steps and evaluations of this network, as a lone run trains it, on
    random images of its input shape. Leaves the global RNG as it was (the runs draw from it). The
    first measurement on a device type in a process first measures a small network and discards
    that: it pays the process's one-time start-up (about a second on the CPU), which no run pays again."""
    if device.type not in _WARM:
        _WARM.add(device.type)
        small = PRESETS["tiny-cnn"].model
        measure(replace(small, in_channels=model_cfg.in_channels, image_size=model_cfg.image_size),
                replace(train_cfg, batch_size=64, augment=False), device, n_classes)
    engine = engines.select(model_cfg, train_cfg, device).engine
    batch = train_cfg.batch_size
    slots = 4  # distinct batches the steps cycle through
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        shape = (model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size)
        x = torch.randn(slots * batch, *shape, device=device)
        y = torch.randint(0, n_classes, (slots * batch,), device=device)
        losses = torch.zeros(1, WARM_STEPS + 11 * MAX_STEPS, device=device)  # a slot per step
        engine.warm_up(device)  # a one-time cost (the C++ kernels' load) a run does not pay again
        t0 = time.perf_counter()
        prepared = engine.prepare([(model_cfg, replace(train_cfg, seed=0))], x, y, losses)
        stepper, order = prepared.stepper, torch.arange(len(x))

        def step(i: int) -> None:  # the 4 batches over and over: a new "epoch" of them every 4 steps
            if i % slots == 0:
                stepper.start_epoch(order)  # (the CUDA graph step keeps its own position in the order)
            stepper.step(i % slots)
        for i in range(WARM_STEPS):
            step(i)
        _sync(device)
        first = time.perf_counter() - t0
        done = WARM_STEPS
        settled = time.perf_counter() + engine.settle_s  # e.g. the native engine's thread count, chosen as it goes
        while first < MEASURE_S and time.perf_counter() < settled and done < 10 * MAX_STEPS:
            step(done)
            done += 1
        steps, start = 0, time.perf_counter()
        # one timed step at least; more while under MEASURE_S, unless the first step alone took longer
        # (a big network): then no measurement costs much more than two steps (a shared server
        # measures what a visitor asks for)
        while steps < 1 or (first < MEASURE_S and steps < MAX_STEPS
                            and (steps < 2 or time.perf_counter() - start < MEASURE_S)):
            step(done + steps)
            steps += 1
            if device.type == "cuda" and steps % 8 == 0:
                _sync(device)
        _sync(device)
        # the mean step, over up to 200 steps or MEASURE_S: not the median, which on a busy machine hides
        # the steps that waited for a core (tiny-fc beside a busy process: median 0.6 s an epoch, 2.2 s real)
        step_s = (time.perf_counter() - start) / steps
        setup = max(first - WARM_STEPS * step_s, 0.0)  # set-up and the first step's extra cost
    # A test image costs about a third of a training image (one forward pass against forward +
    # backward): within 25% of the evaluation timed alone for every preset (Lab-5 18 against 16-22 µs,
    # resnet-small 0.40 against 0.43 ms, VGG16 4.2 against 4.1 ms on 2 idle CPU cores), and steadier
    # than timing it on a busy machine.
    return Throughput(step_s, step_s / batch / 3, setup, engine.name, time.monotonic())
