"""The ONE engine registry: the only code that knows engine names. It names each engine (step.py's
plain reference, cuda_graph.py, native.py, stacked.py), says which one 'auto' means on each
device type, and picks the engine a run trains with, or says why the one asked for cannot.
loop.py asks it and drives whatever stepper the chosen engine sets up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mnist_lab.i18n import Message
from mnist_lab.nets.model import ModelConfig
from mnist_lab.training.cuda_graph import GraphEngine
from mnist_lab.training.native import NativeEngine
from mnist_lab.training.stacked import StackedEngine
from mnist_lab.training.step import Engine, PlainEngine, reason_message

AUTO = "auto"  # the fastest measured engine that runs the config on its device (Engine.default_on)

REGISTRY: dict[str, Engine] = {e.name: e for e in (
    PlainEngine("plain", measured="the reference path"),
    GraphEngine("cuda-graph", default_on=("cuda",),
                measured="default on CUDA: faster Lab-5 epochs (bench_train.py, bench_gpu_step.py)"),
    # 1.25x SLOWER than one run after another on the 2-core CPU, not yet measured on a GPU
    # (bench_sweep.py --engine stacked): a cost until a benchmark shows what it buys, so 'auto'
    # does not pick it. A lone run that asks for it has nothing to stack with: on a GPU it
    # replays its own graph.
    StackedEngine("stacked", lone_run_uses="cuda-graph"),
    NativeEngine("cpu-native", default_on=("cpu",),
                 measured="default on the CPU: faster Lab-5 epochs (bench_train.py, bench_native.py)"),
)}
FALLBACK = REGISTRY["plain"]  # what a run trains with when the engine it asked for cannot run it

ENGINE_NAMES = (AUTO, *REGISTRY)  # what a TrainConfig may ask for


@dataclass(frozen=True)
class Choice:
    engine: Engine  # what a lone run trains with
    why_not: str | None  # why the engine asked for ('auto' included) does not run it, or None
    # the same, for a reader in any language: (engine name, its reason as a Message) per engine tried
    why_not_parts: tuple[tuple[str, Message], ...] = ()


def _candidates(requested: str, device: torch.device) -> list[Engine]:
    """The engines a lone run asking for `requested` tries, in order, before the fallback."""
    if requested == AUTO:
        return [e for e in REGISTRY.values() if device.type in e.default_on]
    engine = REGISTRY[requested]
    then = REGISTRY[engine.lone_run_uses] if engine.lone_run_uses else None
    return [engine, then] if then is not None and device.type in then.devices else [engine]


def select(model_cfg: ModelConfig, train_cfg, device: torch.device) -> Choice:
    """The engine a lone run of this config trains with on `device`, and why the one it asked
    for does not run it (None when it does, or when it asked for the fallback)."""
    reasons = []
    for engine in _candidates(train_cfg.engine, device):
        reason = engine.can_run(model_cfg, train_cfg, device)
        if reason is None:
            return Choice(engine, None)
        reasons.append((engine.name, reason))
    return Choice(FALLBACK, "; ".join(f"{name}: {reason}" for name, reason in reasons) or None,
                  tuple((name, reason_message(reason)) for name, reason in reasons))


def warm_up(device: torch.device) -> None:
    """Pay the one-time set-up of every engine that runs on `device`."""
    for engine in REGISTRY.values():
        if device.type in engine.devices:
            engine.warm_up(device)


def asks_to_stack(train_cfg) -> bool:
    """Whether the run asks for an engine that trains runs differing only in their seed as one."""
    engine = REGISTRY.get(train_cfg.engine)
    return engine is not None and engine.stacks


def for_stack(model_cfg: ModelConfig, train_cfg, device: torch.device) -> Engine | None:
    """The engine that trains this run in one stack with the runs that differ from it only in
    their seed, or None where it asked for none or its engine cannot stack this config."""
    engine = REGISTRY.get(train_cfg.engine)
    if engine is not None and engine.stacks and engine.can_run(model_cfg, train_cfg, device, alone=False) is None:
        return engine
    return None
