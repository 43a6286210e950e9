"""A run's final weights on disk: one safetensors file per run beside the results database
(`<db>.weights/<run_id>.safetensors`) holding the state_dict, the pixel permutation the run
trained on, and its configs as JSON metadata. safetensors only stores tensors: loading never runs code,
and a file is untrusted input, checked whole before use (load_weights: one WeightsError per way it is wrong).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_lab import codec
from mnist_lab.data.datasets import DATASETS, DataConfig
from mnist_lab.errors import ConfigError, WeightsError, is_int, shorten
from mnist_lab.i18n import N_, Message
from mnist_lab.nets.model import ModelConfig, build_model, describe
from mnist_lab.paths import write_file
from mnist_lab.training.loop import TrainConfig
from mnist_lab.training.preflight import check_fits

FORMAT = "mnist_lab-run/1"
PERMUTATION_KEY = "__permutation__"  # not a state_dict key (those are module paths such as conv1.weight)
KEPT_STATUSES = ("finished", "stopped", "diverged")  # how a run that hands its weights over ends (training.loop)
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
_META_KEYS = ("format", "run_id", "status", "test_acc", "model", "train", "data")  # what save_weights writes
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_DTYPE_NAMES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}

# One refusal per way a weights file can be wrong; each names the run (never the file's path) and
# what to do. A crafted file is refused whole, before any of it is used.
_SHORT = N_("The weights file of run {run_id} is empty or cut short ({size} bytes): it was damaged. Delete the run "
            "and train it again.")
_HEADER = N_("The weights file of run {run_id} is not a safetensors file this lab can read: {detail}. It is damaged "
             "or was not written by this lab; delete the run and train it again.")
_UNREADABLE = N_("The weights file of run {run_id} cannot be read ({detail}): it is damaged. Delete the run and train "
                 "it again.")
_FORMAT = N_("The weights file of run {run_id} is not a weights file of this lab (format {value}); delete the run "
             "and train it again.")
_META_UNKNOWN = N_("The weights file of run {run_id} holds entries this lab never writes ({names}): it was not "
                   "written by this lab. Delete the run and train it again.")
_META_MISSING = N_("The weights file of run {run_id} lacks its {names} entry: it was not written by this lab, or is "
                   "damaged. Delete the run and train it again.")
_NOT_JSON = N_("The {field} entry of the weights file of run {run_id} is not JSON text: it was damaged. Delete the "
               "run and train it again.")
_NOT_OBJECT = N_("The {field} entry of the weights file of run {run_id} must be a JSON object of settings; got "
                 "{value}. It was not written by this lab; delete the run and train it again.")
_RUN_ID_MISMATCH = N_("The weights file of run {run_id} says it holds run {value}: it was copied from another run. "
                      "Delete the run and train it again.")
_STATUS = N_("The weights file of run {run_id} gives the status {value}; a run keeps its weights only as {options}. "
             "Delete the run and train it again.")
_TEST_ACC = N_("The weights file of run {run_id} gives the test accuracy {value}; it must be a fraction from 0 to 1, "
               "or null. Delete the run and train it again.")
_SETTINGS = N_("The weights file of run {run_id} holds settings this lab cannot use: {detail}")
_MISSING_KEYS = N_("The weights file of run {run_id} lacks the tensor(s) {names} of its network ({network}): it was "
                   "damaged or altered. Delete the run and train it again.")
_EXTRA_KEYS = N_("The weights file of run {run_id} holds tensor(s) {names} that its network ({network}) does not have: "
                 "it was altered. Delete the run and train it again.")
_SHAPE = N_("In the weights file of run {run_id}, tensor {name} has shape {shape}, but its network needs {want}: it "
            "was altered. Delete the run and train it again.")
_DTYPE = N_("In the weights file of run {run_id}, tensor {name} is {dtype}, but its network needs {want}: it was "
            "altered. Delete the run and train it again.")
_PERMUTATION = N_("The pixel permutation in the weights file of run {run_id} must be {n} int64 positions, each once; "
                  "{detail}. Delete the run and train it again.")
NONFINITE = N_("The weights of run {run_id} contain NaN/inf values (tensor {names}): the run diverged; its "
               "predictions are meaningless.")
NO_WEIGHTS = N_("Run {run_id} has no saved weights (runs trained before weights were kept, and failed or interrupted "
                "runs, have none): train it again to inspect it.")


class NoWeightsError(WeightsError, FileNotFoundError):
    """A run that kept no weights file: a WeightsError (worded through the catalog, refused as one
    line by the CLI) that is also the FileNotFoundError callers of load_weights catch. It names
    nothing of the server, so everyone reads it as it is."""

    @property
    def public(self) -> None:
        return None


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
    nonfinite: tuple[str, ...] = ()  # the tensors holding NaN or inf (a diverged run): load_weights names them


def weights_dir(db_path: str | Path) -> Path:
    return Path(f"{db_path}.weights")


def valid_run_id(run_id: object) -> bool:
    """A run id as the lab writes them: letters, digits and _.- only (never a path or code)."""
    return isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) is not None


def weights_path(db_path: str | Path, run_id: str) -> Path:
    """The file of `run_id`; a run id that could name another place (/, ..) is refused."""
    if not valid_run_id(run_id):
        raise ConfigError("run_id", run_id, "{value!r} is not a run id: copy one from the Runs page or `runs.csv`.")
    return weights_dir(db_path) / f"{run_id}.safetensors"


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
    """The run's weights, permutation and configs; NoWeightsError (a FileNotFoundError) says why there
    are none.

    The file is untrusted input, checked whole before anything is used: its header (against the
    file's size, before safetensors reads it), its metadata (format, run id, status, accuracy,
    the configs decoded by the codec and validated), every tensor's name, shape and dtype against
    the network its configs build (so no tensor is larger than the network's own) and the pixel
    permutation. Each way it can be wrong is a WeightsError naming the run and the problem.
    NaN or infinite weights (a diverged run) are loaded and named in `nonfinite`."""
    path = weights_path(db_path, run_id)
    if not path.is_file():
        raise NoWeightsError(run_id, NO_WEIGHTS)
    entries, meta = _read_header(path, run_id)
    status, test_acc, model_cfg, train_cfg, data_cfg = _check_metadata(meta, run_id)
    _check_tensors(entries, model_cfg, data_cfg, run_id)
    tensors = _read_tensors(path, run_id)
    permutation = tensors.pop(PERMUTATION_KEY, None)
    if permutation is not None and not torch.equal(permutation.sort().values, torch.arange(len(permutation))):
        raise WeightsError(run_id, _PERMUTATION, n=len(permutation), detail=N_("a position is repeated or out of "
                                                                                 "range"))
    nonfinite = tuple(k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    return SavedRun(run_id, model_cfg, train_cfg, data_cfg, tensors, permutation, status, test_acc, nonfinite)


def nonfinite_warning(saved: SavedRun) -> Message | None:
    """The sentence every reader of a run with NaN or infinite weights shows (instead of its
    accuracy or predictions), or None when its weights are all finite."""
    if not saved.nonfinite:
        return None
    return Message(NONFINITE, dict(run_id=saved.run_id, names=", ".join(saved.nonfinite)))


# ------------------------------------------------------------------------ the checks

def _read_header(path: Path, run_id: str) -> tuple[dict[str, dict], dict]:
    """The safetensors header's tensor entries and its metadata, each checked against the file:
    an 8-byte little-endian length, that many bytes of a JSON object, then the tensors' bytes,
    each entry's [begin, end) inside them and as long as its dtype and shape say."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightsError(run_id, _SHORT, size=size)
        n = int.from_bytes(head, "little")
        if n < 2 or n > min(size - 8, MAX_HEADER_BYTES):
            raise WeightsError(run_id, _HEADER, detail=N_("its header claims more bytes than the file holds"))
        blob = f.read(n)
    try:
        header = json.loads(blob)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise WeightsError(run_id, _HEADER, detail=N_("its header is not JSON")) from None
    if not isinstance(header, dict):
        raise WeightsError(run_id, _HEADER, detail=N_("its header is not a table of tensors"))
    meta = header.pop("__metadata__", None)
    if not (isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise WeightsError(run_id, _HEADER, detail=N_("it has no metadata, or metadata that is not text"))
    data_bytes = size - 8 - n
    for entry in header.values():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}
                and isinstance(entry["dtype"], str) and isinstance(entry["shape"], list)
                and all(is_int(d) and 0 <= d < 2**40 for d in entry["shape"])
                and isinstance(entry["data_offsets"], list) and len(entry["data_offsets"]) == 2
                and all(is_int(o) for o in entry["data_offsets"])):
            raise WeightsError(run_id, _HEADER, detail=N_("a tensor's entry is malformed"))
        begin, end = entry["data_offsets"]
        width = _DTYPE_BYTES.get(entry["dtype"])
        if not 0 <= begin <= end <= data_bytes or (width is not None and end - begin != width * math.prod(
                entry["shape"])):
            raise WeightsError(run_id, _HEADER, detail=N_("a tensor's bytes lie outside the file or do not match its "
                                                          "shape"))
    return header, meta


def _check_metadata(meta: dict[str, str], run_id: str) -> tuple[str, float | None, ModelConfig, TrainConfig,
                                                                   DataConfig]:
    """The metadata's values, each of the type and range the lab writes; the configs decoded by
    the codec and validated as a run's are before it trains (the device aside: inspecting runs
    on the CPU)."""
    if meta.get("format") != FORMAT:
        raise WeightsError(run_id, _FORMAT, value=shorten(meta.get("format")))
    unknown = sorted(set(meta) - set(_META_KEYS))
    if unknown:
        raise WeightsError(run_id, _META_UNKNOWN, names=", ".join(shorten(k, quote=False) for k in unknown))
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise WeightsError(run_id, _META_MISSING, names=", ".join(missing))
    if meta["run_id"] != run_id:
        raise WeightsError(run_id, _RUN_ID_MISMATCH, value=shorten(meta["run_id"]))
    if meta["status"] not in KEPT_STATUSES:
        raise WeightsError(run_id, _STATUS, value=shorten(meta["status"]), options=", ".join(KEPT_STATUSES))
    values = {k: _json(meta[k], k, run_id) for k in ("test_acc", "model", "train", "data")}
    acc = values["test_acc"]
    if acc is not None and not (isinstance(acc, (int, float)) and not isinstance(acc, bool) and math.isfinite(acc)
                                and 0 <= acc <= 1):
        raise WeightsError(run_id, _TEST_ACC, value=shorten(acc))
    for key in ("model", "train", "data"):
        if not isinstance(values[key], dict):
            raise WeightsError(run_id, _NOT_OBJECT, field=key, value=shorten(values[key]))
    try:
        model_cfg = codec.from_dict(ModelConfig, values["model"], "model")
        train_cfg = codec.from_dict(TrainConfig, values["train"], "train")
        data_cfg = codec.from_dict(DataConfig, values["data"], "data")
        if data_cfg.dataset in DATASETS:
            data_cfg = _earlier_limits(data_cfg)
        model_cfg.validate()
        data_cfg.validate()
        check_fits(model_cfg, data_cfg.spec)
        dataclasses.replace(train_cfg, device="cpu").validate(n_train=data_cfg.n_train())
    except ConfigError as exc:
        params = {k: shorten(v) if k == "value" else v for k, v in exc.params.items()}
        raise WeightsError(run_id, _SETTINGS, detail=Message(exc.template, params)) from None
    return meta["status"], None if acc is None else float(acc), model_cfg, train_cfg, data_cfg


def _earlier_limits(data_cfg: DataConfig) -> DataConfig:
    """A train or test limit beyond the dataset, as earlier versions kept them (they meant: all
    of it, and that is what the run trained on), becomes None: the same run, and it validates."""
    spec = data_cfg.spec
    limits = {}
    for name, total in (("train_limit", spec.train_count), ("test_limit", spec.test_count)):
        value = getattr(data_cfg, name)
        if is_int(value) and value > total:
            limits[name] = None
    return dataclasses.replace(data_cfg, **limits) if limits else data_cfg


def _check_tensors(entries: dict[str, dict], model_cfg: ModelConfig, data_cfg: DataConfig, run_id: str) -> None:
    """The file's tensors are exactly the network's state_dict (every name, shape and dtype) and,
    for a permuted-pixel run only, its permutation: int64, one position per pixel. The network is
    built on the meta device: shapes without memory, however large the configs claim it is."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        expected = {k: (list(v.shape), _DTYPE_NAMES.get(v.dtype, str(v.dtype)))
                    for k, v in build_model(model_cfg).state_dict().items()}
    spec = data_cfg.spec
    n_pixels = spec.image_size * spec.image_size
    if data_cfg.permute_pixels:
        expected[PERMUTATION_KEY] = ([n_pixels], "I64")
    if not data_cfg.permute_pixels and PERMUTATION_KEY in entries:
        raise WeightsError(run_id, _PERMUTATION, n=n_pixels, detail=N_("its settings say the pixels were not "
                                                                       "permuted, yet it holds a permutation"))
    missing = [k for k in expected if k not in entries]
    if missing:
        if missing == [PERMUTATION_KEY]:
            raise WeightsError(run_id, _PERMUTATION, n=n_pixels, detail=N_("it holds none"))
        raise WeightsError(run_id, _MISSING_KEYS, names=", ".join(shorten(k, quote=False) for k in missing),
                           network=describe(model_cfg))
    extra = [k for k in entries if k not in expected]
    if extra:
        raise WeightsError(run_id, _EXTRA_KEYS, names=", ".join(shorten(k, quote=False) for k in extra[:5]),
                           network=describe(model_cfg))
    for name, (shape, dtype) in expected.items():
        got = entries[name]
        if name == PERMUTATION_KEY and (got["dtype"] != dtype or got["shape"] != shape):
            raise WeightsError(run_id, _PERMUTATION, n=n_pixels, detail=N_("it is not one int64 position per pixel"))
        if got["shape"] != shape:
            raise WeightsError(run_id, _SHAPE, name=name, shape=shorten(tuple(got["shape"])), want=tuple(shape))
        if got["dtype"] != dtype:
            raise WeightsError(run_id, _DTYPE, name=name, dtype=shorten(got["dtype"], quote=False), want=dtype)


def _read_tensors(path: Path, run_id: str) -> dict[str, torch.Tensor]:
    """Every tensor of a file whose header passed _read_header and _check_tensors; whatever else
    safetensors finds wrong is still one refusal."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - a safetensors handle
    except (SafetensorError, RuntimeError, ValueError, OSError) as exc:
        raise WeightsError(run_id, _UNREADABLE, detail=shorten(str(exc), quote=False)) from None


def _json(text: str, field: str, run_id: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise WeightsError(run_id, _NOT_JSON, field=field) from None


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
