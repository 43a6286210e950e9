"""The offline copy of an MNIST-shaped dataset written out as the four original IDX files in
torchvision's layout (OUT/MNIST/raw/train-images-idx3-ubyte, ...), so a program with only torch
and torchvision (a run's exported script) reads it with download=False. Checked against the
dataset's published counts and MD5s before writing and read back after.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mnist_lab.data.datasets import (
    DATASETS,
    IDX_FILES,
    DataFileError,
    DatasetSpec,
    RawSplits,
    encode_idx,
    load_dataset,
)
from mnist_lab.errors import ConfigError, need_choice, writing
from mnist_lab.i18n import N_
from mnist_lab.paths import write_files


@dataclass(frozen=True)
class IdxCopy:
    """Where the four files are (`folder`: OUT/<torchvision folder>/raw), whether this call wrote
    them (False: a correct copy was already there and left alone), and where the data came from."""

    spec: DatasetSpec
    folder: Path
    paths: tuple[Path, ...]
    written: bool
    source: RawSplits | None = None  # the data written (None when nothing was)


def idx_spec(dataset: str) -> DatasetSpec:
    """The spec of a dataset that has an IDX form; a ConfigError for any other name (CIFAR-10's
    files are Python pickles, not IDX)."""
    need_choice("dataset", dataset, "Dataset", tuple(DATASETS), "Unknown dataset {value!r}. Choose one of: {options}.")
    spec = DATASETS[dataset]
    if spec.file_format != "idx":
        raise ConfigError("dataset", dataset, "{title} has no IDX form (its files are Python pickles): only {names} "
                          "can be written as IDX files.", title=spec.title,
                          names=", ".join(s.title for s in DATASETS.values() if s.file_format == "idx"))
    return spec


def idx_folder(spec: DatasetSpec, out_dir: str | Path) -> Path:
    """OUT/<folder>/raw, where torchvision's MNIST and FashionMNIST classes look."""
    return Path(out_dir) / spec.folder / "raw"


def _md5(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "md5").hexdigest()
    except OSError:
        return None


def _names() -> tuple[str, ...]:
    return tuple(name for pair in IDX_FILES.values() for name in pair)


def _matches(spec: DatasetSpec, folder: Path) -> bool:
    """Every one of the four files there, a plain file with its published MD5."""
    return all((folder / name).is_file() and not (folder / name).is_symlink()
               and _md5(folder / name) == spec.md5[name] for name in _names())


def write_idx(dataset: str | DatasetSpec, out_dir: str | Path, data_dir: str | None = None) -> IdxCopy:
    """Write `dataset` (MNIST or Fashion-MNIST, from the sources `load_dataset` uses: `data_dir`,
    the offline package, the cache) as its four IDX files under `out_dir` in torchvision's layout.
    A copy already there whose files have the published MD5s is left alone; otherwise the four
    are written whole (paths.write_files) and read back: each file's MD5 must be the published
    one. Refusals: ConfigError (a dataset with no IDX form), DataUnavailableError, OutputError."""
    spec = dataset if isinstance(dataset, DatasetSpec) else idx_spec(dataset)
    folder = idx_folder(spec, out_dir)
    paths = tuple(folder / name for name in _names())
    if _matches(spec, folder):
        return IdxCopy(spec, folder, paths, written=False)
    raw = load_dataset(spec, data_dir)  # verified: counts per class and each split's MD5
    arrays = {"train": (raw.x_train, raw.y_train), "test": (raw.x_test, raw.y_test)}
    blobs = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        x, y = arrays[split]
        blobs[folder / images_name] = encode_idx(x.numpy())
        blobs[folder / labels_name] = encode_idx(y.numpy().astype("uint8"))
    with writing(out_dir):  # all four or none (a full disk, a read-only folder: an OutputError saying so)
        write_files(blobs)
    for path in paths:  # read back: what is on the disk is what torchvision will read
        md5 = _md5(path)
        if md5 != spec.md5[path.name]:
            for written in paths:  # no copy that torchvision would read as the original is left behind
                written.unlink(missing_ok=True)
            raise DataFileError(N_("{path} has MD5 {md5} once written, not the original {stem}'s {want}: the "
                                   "disk did not keep it whole."), path=str(path), md5=md5, stem=path.name,
                                want=spec.md5[path.name])
    return IdxCopy(spec, folder, paths, written=True, source=raw)
