"""draco.tasks.torch.data (IDX reading, lookup), .synthetic, .datasets, and draco-data."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from draco.cli import data as data_cli
from draco.errors import ConfigError, DataError
from draco.tasks.torch import data, download
from draco.tasks.torch.data import (
    IDX_FILES,
    IMAGES_MAGIC,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    find_dataset,
    normalize,
    parse_idx,
    read_idx,
    read_idx_pair,
)
from draco.tasks.torch.datasets import load_dataset
from draco.tasks.torch.synthetic import generate, synthetic_dataset

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# ----------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0000080N unless given)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    m = magic if magic is not None else 0x0800 + a.ndim
    header = m.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    return header + a.tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> bytes:
    raw = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return raw


def small_split(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


def write_fake_dataset(folder: Path, *, gz: bool = True, n_train: int = 50, n_test: int = 20):
    """Four small IDX files; returns base name -> SHA-256 of the decompressed content."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    tr_x, tr_y = small_split(1, n_train)
    te_x, te_y = small_split(2, n_test)
    sums = {}
    for base, arr in (
        (TRAIN_IMAGES, tr_x),
        (TRAIN_LABELS, tr_y),
        (TEST_IMAGES, te_x),
        (TEST_LABELS, te_y),
    ):
        sums[base] = hashlib.sha256(write_idx(folder / (base + ext), arr)).hexdigest()
    return sums


def real_data_root() -> Path | None:
    for root in (os.environ.get("DRACO_DATA"), "/work/shared/data"):
        if root and Path(root, "mnist", TRAIN_IMAGES + ".gz").exists():
            return Path(root)
        if root and Path(root, TRAIN_IMAGES + ".gz").exists():
            return Path(root)
    return None


@pytest.fixture
def no_default_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make the default search path empty (no $DRACO_DATA, empty data home, no system dirs)."""
    monkeypatch.delenv("DRACO_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"mnist": (), "fashion-mnist": ()})


# ----------------------------------------------------------------------------- IDX reading


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_raw_and_gzipped(tmp_path: Path, suffix: str) -> None:
    images, labels = small_split(0, 7)
    write_idx(tmp_path / ("img" + suffix), images)
    write_idx(tmp_path / ("lab" + suffix), labels)
    got = read_idx(tmp_path / ("img" + suffix), magic=IMAGES_MAGIC)
    assert got.dtype == np.uint8 and got.shape == (7, 28, 28)
    assert np.array_equal(got, images)
    x, y = read_idx_pair(tmp_path / ("img" + suffix), tmp_path / ("lab" + suffix))
    assert x.shape == (7, 784) and y.dtype == np.int64
    assert np.array_equal(y, labels)


def test_read_idx_sha256(tmp_path: Path) -> None:
    raw = write_idx(tmp_path / "lab.gz", np.arange(10, dtype=np.uint8))
    good = hashlib.sha256(raw).hexdigest()  # of the decompressed bytes
    assert read_idx(tmp_path / "lab.gz", sha256=good).shape == (10,)
    with pytest.raises(DataError, match="SHA-256"):
        read_idx(tmp_path / "lab.gz", sha256="0" * 64)


def test_bad_magic(tmp_path: Path) -> None:
    write_idx(tmp_path / "x", np.zeros((2, 28, 28), np.uint8), magic=0x12345678)
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "x")
    # A valid IDX file of the wrong kind: labels where images are expected.
    write_idx(tmp_path / "y", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "y", magic=IMAGES_MAGIC)
    # Non-ubyte type code (0x0D = float).
    with pytest.raises(DataError, match="magic"):
        parse_idx(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated(tmp_path: Path, suffix: str) -> None:
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    p = tmp_path / ("x" + suffix)
    if suffix:
        packed = gzip.compress(raw)
        p.write_bytes(packed[: len(packed) - 9])  # cut the gzip trailer and some data
    else:
        p.write_bytes(raw[:-5])
    with pytest.raises(DataError, match=r"truncated|damaged"):
        read_idx(p)


def test_truncated_header_and_overlong(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="IDX header"):
        parse_idx(b"\x00\x00")
    with pytest.raises(DataError, match="truncated IDX header"):
        parse_idx(bytes([0, 0, 8, 3, 0, 0, 0, 1]))
    with pytest.raises(DataError, match="holds"):
        parse_idx(idx_bytes(np.zeros(4, np.uint8)) + b"\x00")


def test_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "img", np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / "lab", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"5 images but .* 4 labels"):
        read_idx_pair(tmp_path / "img", tmp_path / "lab")


def test_label_out_of_range(tmp_path: Path) -> None:
    write_idx(tmp_path / "img", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "lab", np.array([1, 10], np.uint8))
    with pytest.raises(DataError, match="label 10"):
        read_idx_pair(tmp_path / "img", tmp_path / "lab")


def test_not_a_gzip_file(tmp_path: Path) -> None:
    (tmp_path / "x.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="damaged"):
        read_idx(tmp_path / "x.gz")


def test_normalize() -> None:
    px = np.array([[0, 255, 128]], np.uint8)
    out = normalize(px, 0.5, 0.25)
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_allclose(out, [[-2.0, 2.0, (128 / 255 - 0.5) / 0.25]], atol=1e-6)
    with pytest.raises(TypeError):
        normalize(px.astype(np.float32), 0.5, 0.25)


# ----------------------------------------------------------------------------- lookup


@pytest.mark.usefixtures("no_default_data")
def test_missing_files_name_them_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        find_dataset("mnist", tmp_path / "nowhere")
    msg = str(info.value)
    for base in IDX_FILES:
        assert base in msg
    assert str(tmp_path / "nowhere") in msg
    assert "draco-data mnist --dir" in msg
    assert "synthetic" in msg


@pytest.mark.usefixtures("no_default_data")
def test_partial_folder_names_the_missing_file(tmp_path: Path) -> None:
    write_fake_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / (TEST_LABELS + ".gz")).unlink()
    with pytest.raises(DataError, match=r"missing: t10k-labels-idx1-ubyte\[\.gz\]"):
        find_dataset("mnist", tmp_path)


@pytest.mark.usefixtures("no_default_data")
@pytest.mark.parametrize("layout", ["direct", "mnist", "MNIST/raw"])
def test_data_dir_layouts(tmp_path: Path, layout: str) -> None:
    folder = tmp_path if layout == "direct" else tmp_path / layout
    write_fake_dataset(folder, gz=False)
    files = find_dataset("mnist", tmp_path)
    assert files[TRAIN_IMAGES] == folder / TRAIN_IMAGES


@pytest.mark.usefixtures("no_default_data")
def test_env_and_fallthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_dataset(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("DRACO_DATA", str(tmp_path / "env"))
    assert find_dataset("fashion-mnist")[TEST_IMAGES].parent == tmp_path / "env" / "fashion-mnist"
    # A --data-dir without the files falls through to $DRACO_DATA (the spec carries the
    # server's data_dir to workers, which may keep their files elsewhere).
    files = find_dataset("fashion-mnist", tmp_path / "elsewhere")
    assert files[TRAIN_LABELS].parent == tmp_path / "env" / "fashion-mnist"


def test_load_fake_dataset_unverified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sums = write_fake_dataset(tmp_path / "mnist")
    with pytest.raises(DataError, match="SHA-256"):
        load_dataset("mnist", tmp_path)  # verify=True: these are not the real files
    monkeypatch.setitem(data.SHA256, "mnist", sums)
    monkeypatch.setattr(data, "_CACHE", {})
    ds = load_dataset("mnist", tmp_path)
    assert ds.train_images.shape == (50, 784) and ds.test_labels.shape == (20,)
    assert load_dataset("mnist", tmp_path) is ds  # cached per process


def test_unknown_dataset() -> None:
    with pytest.raises(ConfigError):
        load_dataset("cifar100")
    with pytest.raises(ConfigError):
        find_dataset("cifar10")


# ----------------------------------------------------------------------------- real data


def test_real_mnist() -> None:
    root = real_data_root()
    if root is None:
        pytest.skip(
            "MNIST not found: set DRACO_DATA to a folder holding mnist/ (e.g. ../shared/data)"
        )
    ds = load_dataset("mnist", root)  # verifies the SHA-256 of every file
    assert ds.train_images.shape == (60000, 784) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 784)
    assert np.bincount(ds.train_labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert len(ds.test_labels) == 10000
    x = normalize(ds.train_images[:1000], ds.mean, ds.std)
    assert abs(float(x.mean())) < 0.1 and 0.8 < float(x.std()) < 1.2


def test_real_fashion_mnist() -> None:
    try:
        ds = load_dataset("fashion-mnist")
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST not found (install Debian's dataset-fashion-mnist): {exc}")
    assert ds.train_images.shape == (60000, 784)
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [1000] * 10


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism() -> None:
    ds = synthetic_dataset(0)
    assert ds.train_images.shape == (12000, 784) and ds.train_images.dtype == np.float32
    assert ds.test_images.shape == (2000, 784)
    assert ds.train_labels.dtype == np.int64
    assert np.bincount(ds.train_labels).tolist() == [1200] * 10
    assert np.bincount(ds.test_labels).tolist() == [200] * 10
    assert synthetic_dataset(0) is ds
    again = generate(0)
    assert again.train_images.tobytes() == ds.train_images.tobytes()
    assert again.test_labels.tobytes() == ds.test_labels.tobytes()
    other = generate(1, n_train=100, n_test=10)
    assert not np.array_equal(other.train_images[:5], ds.train_images[:5])
    assert abs(float(ds.train_images.mean())) < 1e-3
    assert load_dataset("synthetic") is ds


def test_synthetic_is_not_separable_by_one_feature() -> None:
    # The best single-feature threshold rule stays far from the > 90 % a model reaches.
    ds = synthetic_dataset(0)
    x, y = ds.train_images[:4000], ds.train_labels[:4000]
    class_means = np.stack([x[y == c].mean(axis=0) for c in range(10)])  # (10, 784)
    spread = class_means.std(axis=0) / x.std(axis=0)
    assert spread.max() < 0.5


# ----------------------------------------------------------------------------- draco-data


def test_download_verifies_and_is_idempotent(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, url = http_root
    sums = write_fake_dataset(served)
    out = tmp_path / "data"
    lines: list[str] = []
    folder = download.download_dataset(
        "mnist", out, mirrors=[url + "missing/", url], sha256=sums, timeout=10, log=lines.append
    )
    assert folder == out / "mnist"
    for base in IDX_FILES:
        assert (folder / (base + ".gz")).read_bytes() == (served / (base + ".gz")).read_bytes()
    assert sum("downloaded" in line for line in lines) == 4
    lines.clear()
    download.download_dataset("mnist", out, mirrors=[url], sha256=sums, log=lines.append)
    assert sum("present and verified" in line for line in lines) == 4


def test_download_rejects_checksum_mismatch(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    served, url = http_root
    write_fake_dataset(served)  # not the real MNIST: the built-in SHA-256 values refuse it
    out = tmp_path / "data"
    with pytest.raises(DataError, match="SHA-256"):
        download.download_dataset("mnist", out, mirrors=[url], timeout=10, log=lambda s: None)
    assert list((out / "mnist").iterdir()) == []  # nothing unverified kept
    status = data_cli.main(["mnist", "--dir", str(out), "--mirror", url, "--timeout", "10"])
    assert status == 1


def test_data_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert data_cli.main(["mnist", "--dir", str(tmp_path), "--check"]) == 1
    assert "missing" in capsys.readouterr().err
    root = real_data_root()
    if root is not None and (root / "mnist").is_dir():
        assert data_cli.main(["mnist", "--dir", str(root), "--check"]) == 0
