"""CIFAR-10: both on-disk versions, hostile and damaged files, draco-data cifar10, ResNet-18,
and the deterministic augmentation. No real data: small files in the exact on-disk format."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from draco.cli import data as data_cli
from draco.errors import ConfigError, DataError
from draco.tasks.sampler import PartitionSampler
from draco.tasks.torch import cifar, download
from draco.tasks.torch.datasets import load_dataset
from draco.tasks.torch.models import create_model, param_count
from draco.tasks.torch.task import TorchTask

N_PER_BATCH, N_TEST = 6, 10


def fake_cifar(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Base file name -> (images (n, 3072) uint8, labels (n,)) for the six batch files."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in cifar.PY_FILES:
        n = N_TEST if name == cifar.TEST_BATCH else N_PER_BATCH
        out[name] = (
            rng.integers(0, 256, (n, cifar.N_PIXELS), dtype=np.uint8),
            rng.integers(0, 10, n),
        )
    return out


def write_cifar(folder: Path, version: str = "python", seed: int = 0) -> dict:
    """Write the six files of one version into ``folder``; returns what they hold."""
    folder.mkdir(parents=True, exist_ok=True)
    content = fake_cifar(seed)
    for name, (x, y) in content.items():
        if version == "python":
            (folder / name).write_bytes(cifar.py_batch_bytes(x, y))
        else:
            (folder / (name + ".bin")).write_bytes(cifar.bin_batch_bytes(x, y))
    return content


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # Nothing from the machine's data folders, and a fresh cache per test.
    monkeypatch.delenv("DRACO_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    cifar._CACHE.clear()
    yield
    cifar._CACHE.clear()


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    ("version", "sub"), [("python", cifar.PY_DIR), ("binary", cifar.BIN_DIR), ("python", "")]
)
def test_both_versions_load_exactly(tmp_path: Path, version: str, sub: str) -> None:
    content = write_cifar(tmp_path / "root" / sub if sub else tmp_path / "root", version)
    ds = load_dataset("cifar10", tmp_path / "root")
    train_x = np.concatenate([content[n][0] for n in cifar.TRAIN_BATCHES])
    train_y = np.concatenate([content[n][1] for n in cifar.TRAIN_BATCHES])
    np.testing.assert_array_equal(ds.train_images, train_x)
    np.testing.assert_array_equal(ds.train_labels, train_y)
    np.testing.assert_array_equal(ds.test_images, content[cifar.TEST_BATCH][0])
    np.testing.assert_array_equal(ds.test_labels, content[cifar.TEST_BATCH][1])
    assert ds.image_shape == (3, 32, 32) and ds.augment and ds.train_labels.dtype == np.int64


def test_python_files_name_numpy_as_the_real_files_do() -> None:
    raw = cifar.py_batch_bytes(*fake_cifar()[cifar.TEST_BATCH])
    assert raw[:2] == b"\x80\x02" and b"cnumpy.core.multiarray\n_reconstruct\n" in raw


def test_draco_data_layout_is_found_via_draco_data_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cifar(tmp_path / "cifar10" / cifar.BIN_DIR, "binary")
    monkeypatch.setenv("DRACO_DATA", str(tmp_path))
    version, files = cifar.find_cifar10(None)
    assert version == "binary" and set(files) == set(cifar.BIN_FILES)


def test_missing_file_is_named(tmp_path: Path) -> None:
    write_cifar(tmp_path, "python")
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing: data_batch_3") as err:
        load_dataset("cifar10", tmp_path)
    assert "draco-data cifar10" in str(err.value)


def _expect_bad(path: Path, data: bytes, match: str, version: str = "python") -> None:
    path.write_bytes(data)
    read = cifar.read_py_batch if version == "python" else cifar.read_bin_batch
    with pytest.raises(DataError, match=match) as err:
        read(path)
    assert str(path) in str(err.value)


def test_damaged_python_files_are_named(tmp_path: Path) -> None:
    x, y = fake_cifar()[cifar.TEST_BATCH]
    good = cifar.py_batch_bytes(x, y)
    p = tmp_path / "test_batch"
    _expect_bad(p, good[: len(good) // 2], "not a CIFAR-10 python batch")
    _expect_bad(p, pickle.dumps([1, 2], protocol=2), "expected a dict")
    _expect_bad(p, pickle.dumps({"labels": [1]}, protocol=2), "no 'data' entry")
    bad_labels = cifar.py_batch_bytes(x, np.full(len(y), 10))
    _expect_bad(p, bad_labels, r"outside \[0, 10\)")
    short = pickle.dumps({"data": x, "labels": [1, 2]}, protocol=2)
    _expect_bad(p, short, "2 labels for 10 images")
    wide = pickle.dumps({"data": x[:, :100], "labels": y.tolist()}, protocol=2)
    _expect_bad(p, wide, r"expected uint8 of shape \(n, 3072\)")
    floats = pickle.dumps({"data": x.astype(np.float32), "labels": y.tolist()}, protocol=2)
    _expect_bad(p, floats, "float32")
    text_labels = pickle.dumps({"data": x, "labels": ["a"] * len(y)}, protocol=2)
    _expect_bad(p, text_labels, "not a list of integers")


def test_damaged_binary_files_are_named(tmp_path: Path) -> None:
    x, y = fake_cifar()[cifar.TEST_BATCH]
    good = cifar.bin_batch_bytes(x, y)
    p = tmp_path / "test_batch.bin"
    _expect_bad(p, good[:-1], "not a whole number", "binary")
    _expect_bad(p, b"", "not a whole number", "binary")
    bad = bytearray(good)
    bad[0] = 200  # the first record's label
    _expect_bad(p, bytes(bad), r"outside \[0, 10\)", "binary")


class _RunsCode:
    """Unpickling this would call os.system: the classic malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickles_run_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    x, y = fake_cifar()[cifar.TEST_BATCH]
    p = tmp_path / "test_batch"
    hostile = [
        pickle.dumps(_RunsCode(marker), protocol=2),
        pickle.dumps({"data": x, "labels": list(y), "x": _RunsCode(marker)}, protocol=2),
        # builtins.eval via the text GLOBAL opcode, and a getattr smuggling attempt
        b"\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x00print('hi')\x85R.",
        b"\x80\x02cbuiltins\ngetattr\n.",
        b"\x80\x02cnumpy\nload\n.",
    ]
    for data in hostile:
        _expect_bad(p, data, "is not allowed")
        assert not marker.exists()
    # _codecs.encode is allowed only for latin-1 (what protocol 2 uses for bytes).
    rot13 = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    _expect_bad(p, rot13, "rot13")


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    x, y = fake_cifar()[cifar.TEST_BATCH]
    p = tmp_path / "test_batch"
    p.write_bytes(cifar.py_batch_bytes(x, y))
    with pytest.raises(DataError, match="more than the 1000 a CIFAR-10 batch file may have"):
        cifar.read_py_batch(p, max_bytes=1000)
    cifar.read_py_batch(p, max_bytes=p.stat().st_size)  # the limit is inclusive


# ----------------------------------------------------------------------------- draco-data


def _archive(content: dict, version: str, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    inner = cifar.PY_DIR if version == "python" else cifar.BIN_DIR
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (x, y) in content.items():
            if version == "python":
                data, member = cifar.py_batch_bytes(x, y), name
            else:
                data, member = cifar.bin_batch_bytes(x, y), name + ".bin"
            info = tarfile.TarInfo(f"{inner}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return buf.getvalue()


@pytest.mark.parametrize("version", ["python", "binary"])
def test_draco_data_cifar10_downloads_and_verifies(
    tmp_path: Path, http_root: tuple[Path, str], version: str
) -> None:
    www, url = http_root
    content = fake_cifar(3)
    archive = _archive(content, version)
    name = download.CIFAR_ARCHIVES[version][0]
    (www / name).write_bytes(archive)
    digest = hashlib.sha256(archive).hexdigest()
    root = tmp_path / "data"
    lines: list[str] = []
    folder = download.download_cifar10(
        root, version=version, mirrors=[url], sha256=digest, log=lines.append
    )
    ds = load_dataset("cifar10", root)
    np.testing.assert_array_equal(ds.test_images, content[cifar.TEST_BATCH][0])
    assert folder.parent == root / "cifar10" and "verified" in lines[-1]
    # Present with the recorded archive hash: no second download.
    (www / name).unlink()
    download.download_cifar10(root, version=version, mirrors=[url], sha256=digest, log=lines.append)
    assert "holds the files" in lines[-1]
    assert download.check_dataset("cifar10", root) == []


def test_draco_data_cifar10_refuses_a_wrong_archive(
    tmp_path: Path, http_root: tuple[Path, str]
) -> None:
    www, url = http_root
    archive = _archive(fake_cifar(), "python")
    (www / "cifar-10-python.tar.gz").write_bytes(archive)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="does not match"):
        download.download_cifar10(root, mirrors=[url], log=lambda _: None)  # the real sum
    assert not any((root / "cifar10" / cifar.PY_DIR).iterdir())  # nothing unverified kept
    with pytest.raises(DataError, match="larger than 100 bytes"):
        download.download_cifar10(
            root,
            mirrors=[url],
            sha256=hashlib.sha256(archive).hexdigest(),
            max_archive_bytes=100,
            log=lambda _: None,
        )


def test_draco_data_cifar10_takes_only_the_batch_files(
    tmp_path: Path, http_root: tuple[Path, str]
) -> None:
    www, url = http_root
    escape = tarfile.TarInfo("../../escaped")
    escape.size = 3
    link = tarfile.TarInfo(f"{cifar.PY_DIR}/evil-link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = _archive(fake_cifar(), "python", extra=[escape, link])
    (www / "cifar-10-python.tar.gz").write_bytes(archive)
    root = tmp_path / "deep" / "data"
    download.download_cifar10(
        root, mirrors=[url], sha256=hashlib.sha256(archive).hexdigest(), log=lambda _: None
    )
    files = sorted(p.name for p in (root / "cifar10" / cifar.PY_DIR).iterdir())
    assert files == sorted([*cifar.PY_FILES, "SOURCE"])
    assert not (tmp_path / "escaped").exists() and not (root.parent / "escaped").exists()

    # A batch member that is a link, not a regular file, is refused.
    link_batch = tarfile.TarInfo(f"{cifar.PY_DIR}/{cifar.TEST_BATCH}")
    link_batch.type, link_batch.linkname = tarfile.SYMTYPE, "/etc/passwd"
    content = fake_cifar()
    del content[cifar.TEST_BATCH]
    bad = _archive(content, "python", extra=[link_batch])
    (www / "cifar-10-python.tar.gz").write_bytes(bad)
    with pytest.raises(DataError, match="not a batch file"):
        download.download_cifar10(
            tmp_path / "other",
            mirrors=[url],
            sha256=hashlib.sha256(bad).hexdigest(),
            log=lambda _: None,
        )


def test_draco_data_cli_check_reports_cifar_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert data_cli.main(["cifar10", "--dir", str(tmp_path), "--check"]) == 1
    assert "not found" in capsys.readouterr().err
    write_cifar(tmp_path / "cifar10" / cifar.PY_DIR)
    assert data_cli.main(["cifar10", "--dir", str(tmp_path), "--check"]) == 0


# ----------------------------------------------------------------------------- model, task


def test_resnet18_is_the_cifar_variant() -> None:
    model = create_model("resnet18")
    assert param_count(model) == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    out = model(torch.zeros(2, 3072))
    assert out.shape == (2, 10)


def _task(root: Path, **kw: object) -> TorchTask:
    args: dict = {"model": "resnet18", "dataset": "cifar10", "n_partitions": 3}
    args.update({"batch_size": 2, "seed": 1, "data_dir": str(root), **kw})
    return TorchTask(**args)


def test_model_and_dataset_shapes_must_agree(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    with pytest.raises(ConfigError, match="--model fc takes 1x28x28 images"):
        _task(tmp_path, model="fc")
    with pytest.raises(ConfigError, match="--model resnet18 takes 3x32x32"):
        _task(tmp_path, dataset="synthetic")


def test_augmentation_is_a_crop_and_flip_of_the_padded_image(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    task = _task(tmp_path)
    images = task.data.train_images[task.sampler.indices(4, 1)]
    out = task._augmented(images, 4, 1)
    dy, dx, flip = task.sampler.augmentation(4, 1, 9)
    for i in range(len(images)):
        padded = np.pad(images[i].reshape(3, 32, 32), ((0, 0), (4, 4), (4, 4)))
        crop = padded[:, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        expected = crop[:, :, ::-1] if flip[i] else crop
        np.testing.assert_array_equal(out[i].reshape(3, 32, 32), expected)


def test_augmentation_draws_are_per_round_and_partition() -> None:
    s = PartitionSampler(100, 4, 64, seed=7)
    a = s.augmentation(3, 2, 9)
    for again in (
        s.augmentation(3, 2, 9),
        PartitionSampler(100, 4, 64, seed=7).augmentation(3, 2, 9),
    ):
        for u, v in zip(a, again, strict=True):
            np.testing.assert_array_equal(u, v)
    b = s.augmentation(3, 1, 9)
    assert not np.array_equal(a[0], b[0])
    dy, dx, flip = a
    assert min(dy.min(), dx.min()) >= 0 and max(dy.max(), dx.max()) <= 8
    assert 0 < flip.sum() < 64


def test_cifar_partition_gradients_are_bit_identical(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    task = _task(tmp_path)
    w = task.initial_params()
    x, _ = task.partition_batch(0, 2)
    assert x.shape == (2, 3072) and x.dtype == torch.float32
    g = task.partition_gradients(w, 0, [2])
    assert g.shape == (1, task.dim) and np.isfinite(g).all()
    assert task.running_stats is not None and task.dim == 11_173_962 + 9_620
    # A second task instance (a worker) computes the same bits.
    cifar._CACHE.clear()
    assert _task(tmp_path).partition_gradients(w, 0, [2]).tobytes() == g.tobytes()
