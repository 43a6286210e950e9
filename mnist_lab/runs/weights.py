"""A run's final weights on disk: one safetensors file per run beside the results database
(`<db>.weights/<run_id>.safetensors`) holding the state_dict, the pixel permutation the run
trained on, and its configs as JSON metadata. safetensors only stores tensors: loading never runs code.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_lab import codec
from mnist_lab.data.datasets import DataConfig
from mnist_lab.nets.model import ModelConfig
from mnist_lab.paths import write_file
from mnist_lab.training.loop import TrainConfig

FORMAT = "mnist_lab-run/1"
PERMUTATION_KEY = "__permutation__"  # not a state_dict key (those are module paths such as conv1.weight)
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass
class SavedRun:
    """What a weights file holds: enough to rebuild the network and its data exactly."""

    run_id: str
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data_cfg: DataConfig
    state_dict: dict[str, torch.Tensor]
    permutation: torch.Tensor | None  # int64 (H*W,), the fixed pixel order, or None
    status: str  # finished, stopped or diverged
    test_acc: float | None  # the run's last epoch's test accuracy (fraction)


def weights_dir(db_path: str | Path) -> Path:
    return Path(f"{db_path}.weights")


def valid_run_id(run_id: object) -> bool:
    """A run id as the lab writes them: letters, digits and _.- only (never a path or code)."""
    return isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) is not None


def weights_path(db_path: str | Path, run_id: str) -> Path:
    """The file of `run_id`; a run id that could name another place (/, ..) is refused."""
    if not valid_run_id(run_id):
        raise ValueError(f"{run_id!r} is not a run id: copy one from the Runs page or `runs.csv`.")
    return weights_dir(db_path) / f"{run_id}.safetensors"


def _configs_from(meta: dict[str, str]) -> tuple[ModelConfig, TrainConfig, DataConfig]:
    """The configs a weights file's metadata holds, decoded by the one codec (strictly: an unknown
    or mistyped field is a ConfigError naming it; a missing one takes its default)."""
    return (codec.from_json(ModelConfig, meta["model"], "model"), codec.from_json(TrainConfig, meta["train"], "train"),
            codec.from_json(DataConfig, meta["data"], "data"))


def save_weights(db_path: str | Path, run: SavedRun) -> Path:
    """Write `run` (its weights, permutation and configs). Written to a temporary name, then
    renamed (paths.write_file): a reader never sees half a file."""
    from safetensors.torch import save

    path = weights_path(db_path, run.run_id)
    tensors = {k: v.detach().cpu().contiguous() for k, v in run.state_dict.items()}
    if run.permutation is not None:
        tensors[PERMUTATION_KEY] = run.permutation.detach().cpu().to(torch.int64).contiguous()
    meta = dict(format=FORMAT, run_id=run.run_id, status=run.status, test_acc=json.dumps(run.test_acc),
                model=json.dumps(codec.to_dict(run.model_cfg)), train=json.dumps(codec.to_dict(run.train_cfg)),
                data=json.dumps(codec.to_dict(run.data_cfg)))
    return write_file(path, save(tensors, metadata=meta))  # an OSError (a full disk) leaves nothing behind


def load_weights(db_path: str | Path, run_id: str) -> SavedRun:
    """The run's weights, permutation and configs; FileNotFoundError says why there are none."""
    from safetensors import safe_open

    path = weights_path(db_path, run_id)
    if not path.is_file():
        raise FileNotFoundError(f"Run {run_id} has no saved weights (runs trained before weights were kept, and "
                                "failed or interrupted runs, have none): train it again to inspect it.")
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for key in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            tensors[key] = f.get_tensor(key)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a weights file of this lab (format {meta.get('format')!r}).")
    model_cfg, train_cfg, data_cfg = _configs_from(meta)
    permutation = tensors.pop(PERMUTATION_KEY, None)
    return SavedRun(run_id, model_cfg, train_cfg, data_cfg, tensors, permutation, meta.get("status", ""),
                    json.loads(meta.get("test_acc", "null")))


def has_weights(db_path: str | Path, run_ids: Iterable[str]) -> set[str]:
    """The run ids among `run_ids` that have a weights file (one directory listing)."""
    folder = weights_dir(db_path)
    if not folder.is_dir():
        return set()
    present = {p.name[:-len(".safetensors")] for p in folder.glob("*.safetensors")}
    return {r for r in run_ids if r in present}


def delete_weights(db_path: str | Path, run_ids: Iterable[str]) -> int:
    """Remove the weights files of `run_ids`; returns how many there were."""
    n = 0
    for run_id in run_ids:
        try:
            weights_path(db_path, run_id).unlink()
            n += 1
        except (FileNotFoundError, ValueError):
            pass
    return n
