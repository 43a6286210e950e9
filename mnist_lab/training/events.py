"""What training reports, as events of plain data: a run started, a chunk of iteration losses, an
epoch's results, the run ended (finished, stopped, diverged or failed; with its final weights).
`to_dict`/`from_dict` turn each into a JSON-safe dict and back (tensors as safetensors bytes,
never pickle), so a process that trains can stream them to the one process that writes the store.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mnist_lab import codec
from mnist_lab.errors import ConfigError
from mnist_lab.i18n import N_

# A config as JSON carries it (`config_dict`), decoded by whoever reads the event with the codec
# (which passes it through when it decodes the event's other fields; `from_dict` checks it is a dict).
ConfigDict = Any


def config_dict(cfg: Any) -> ConfigDict:
    """`cfg` in the form a RunStarted carries it: codec.to_dict as JSON has it (lists, not tuples),
    so an event is equal to itself after crossing JSON."""
    return json.loads(codec.to_json(cfg))


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean of this epoch's iteration losses
    test_loss: float
    test_acc: float  # fraction in [0, 1]
    seconds: float  # wall time of the epoch's training and evaluation


@dataclass(frozen=True, kw_only=True)
class Event:
    """Where a run stands when it reports; every event has these. `kind` names the event on the wire."""

    kind: ClassVar[str] = ""
    run_id: str
    epoch: int  # 1-based epoch in progress (or just finished)
    step: int  # iterations done so far
    total_steps: int
    elapsed_s: float = 0.0  # since the run started


@dataclass(frozen=True, kw_only=True)
class RunStarted(Event):
    """The run is set up and about to take its first step: what trains (its configs as the codec
    writes them: `codec.from_dict(ModelConfig, event.model)`), where, and on which path."""

    kind: ClassVar[str] = "start"
    model: ConfigDict  # config_dict(a ModelConfig)
    train: ConfigDict  # config_dict(a TrainConfig)
    data: ConfigDict  # config_dict(a DataConfig)
    label: str  # for legends, in English: the one asked for, else the network and its data settings
    # the label as data (i18n.to_stored of its Message parts: the one asked for, else the default
    # label's network and data settings), worded in each reader's language
    label_msg: str = ""
    engine: str  # the training path that runs it
    device: str  # e.g. "cpu" or "cuda (NVIDIA H100)"
    params: int
    steps_per_epoch: int
    started_at: str  # ISO 8601, UTC
    data_source: str = ""  # where the data came from, in English (runs.csv)
    data_source_msg: str = ""  # the same as a stored message (i18n.to_stored), worded per reader
    experiment: str = "single"  # which experiment trained it (the lab tags its runs)
    group_id: str = ""  # the runs of one sweep, comparison or lesson share it


@dataclass(frozen=True, kw_only=True)
class Iterations(Event):
    """New iteration losses since the previous event, all of one epoch."""

    kind: ClassVar[str] = "iterations"
    first_iteration: int  # 1-based global iteration number of losses[0]
    losses: tuple[float, ...]
    eta_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class EpochEnded(Event):
    kind: ClassVar[str] = "epoch"
    metrics: EpochMetrics
    eta_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class RunEnded(Event):
    """The run's outcome. None where there is nothing to say (a run that failed before its end
    knows neither its epochs nor its accuracy)."""

    kind: ClassVar[str] = "end"
    status: str  # "finished", "stopped", "diverged", "failed" or "interrupted" (a second Ctrl-C)
    seconds: float
    epochs_done: int | None = None
    final_test_acc: float | None = None
    diverged_at: int | None = None  # 1-based iteration whose loss was NaN or infinite
    message: str = ""  # why the run ended early, for a person (diverged runs), in English
    message_msg: str = ""  # the same as a stored message (i18n.to_stored)
    # the final weights on the CPU (build_model(model_cfg).state_dict()'s keys) and the pixel
    # permutation the run trained on; sent as safetensors bytes
    weights: dict[str, torch.Tensor] | None = dataclasses.field(default=None, repr=False, compare=False)
    permutation: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)


CONFIG_FIELDS = ("model", "train", "data")  # RunStarted's, codec dicts
EVENTS: dict[str, type[Event]] = {cls.kind: cls for cls in (RunStarted, Iterations, EpochEnded, RunEnded)}
TENSOR_FIELDS = ("weights", "permutation")  # RunEnded's, sent as base64 text of safetensors bytes

_NOT_EVENT = N_("{where} is not a training event (its kind must be one of {options}); got {value!r}.")
_MISSING = N_("{where} lacks {names}: it was written by another program or version, or damaged.")
_NOT_CONFIG = N_("{where} must be an object of settings (JSON {{...}}); got {value!r}.")
_NOT_TENSORS = N_("{where} must be base64 text of safetensors bytes; got something else ({detail}).")


def to_dict(event: Event) -> dict[str, Any]:
    """The event as a JSON-safe dict: its `kind`, its fields (configs as the codec writes them),
    a RunEnded's tensors as base64 text of safetensors bytes."""
    plain = dataclasses.replace(event, weights=None, permutation=None) if isinstance(event, RunEnded) else event
    out = {"kind": event.kind, **codec.to_dict(plain)}
    if isinstance(event, RunEnded):
        out["weights"] = _pack(event.weights)
        out["permutation"] = None if event.permutation is None else _pack({"permutation": event.permutation})
    return out


def from_dict(data: Any, where: str = "event") -> Event:
    """The event `to_dict` wrote; anything else is a ConfigError naming what does not fit."""
    if not isinstance(data, Mapping) or not isinstance(data.get("kind"), str) or data["kind"] not in EVENTS:
        kind = data.get("kind") if isinstance(data, Mapping) else data
        raise ConfigError("kind", kind, _NOT_EVENT, where=where, options=", ".join(EVENTS))
    cls = EVENTS[data["kind"]]
    fields = {k: v for k, v in data.items() if k != "kind"}
    missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in fields]
    if missing:
        raise ConfigError(missing[0], None, _MISSING, where=where, names=", ".join(missing))
    if cls is RunStarted:
        for name in CONFIG_FIELDS:
            if not isinstance(fields[name], Mapping):
                place = f"{where}.{name}"
                raise ConfigError(name, fields[name], _NOT_CONFIG, where=place)
            fields[name] = dict(fields[name])
    loose: dict[str, Any] = {}  # what the codec does not decode: the tensors
    if cls is RunEnded:
        for name in TENSOR_FIELDS:
            text = fields.pop(name, None)
            tensors = None if text is None else _unpack(text, f"{where}.{name}")
            loose[name] = tensors.get(name) if tensors is not None and name == "permutation" else tensors
    event = codec.from_dict(cls, fields, where)
    return dataclasses.replace(event, **loose) if loose else event


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _pack(tensors: dict[str, torch.Tensor] | None) -> str | None:
    if tensors is None:
        return None
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    return base64.b64encode(blob).decode("ascii")


def _unpack(text: Any, where: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not isinstance(text, str):
        raise ConfigError(where, text, _NOT_TENSORS, where=where, detail=type(text).__name__)
    try:
        return load(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, UnicodeEncodeError, SafetensorError, ValueError) as exc:
        raise ConfigError(where, text[:40], _NOT_TENSORS, where=where, detail=str(exc)[:80]) from None
