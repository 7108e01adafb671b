"""Datasets: IDX files (MNIST, Fashion-MNIST), their lookup on disk, and the ``Dataset`` record.

(CIFAR-10 is read by ``draco.tasks.torch.cifar``; ``draco.tasks.torch.datasets.load_dataset``
picks a loader by name.)

IDX format (LeCun's): a 4-byte magic ``00 00 <type> <ndim>`` (type 0x08 = unsigned byte), then
``ndim`` big-endian int32 sizes, then the data in C order. Images are magic 2051 (ndim 3),
labels magic 2049 (ndim 1). Files may be raw or gzipped; torchvision's names are used:

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

Where the files are looked for, in order (the first folder holding all four wins):

1. ``data_dir`` (``--data-dir``), if given: the folder holding the files, or a parent with a
   ``mnist/`` / ``fashion-mnist/`` subfolder (also torchvision's ``MNIST/raw/`` /
   ``FashionMNIST/raw/``). The search goes on past it: the task spec carries the server's
   ``data_dir`` to every worker, and a worker on another host may keep the files elsewhere.
   That is safe because the known datasets are verified by SHA-256 wherever they are found.
2. ``$DRACO_DATA``, same rule (CI sets ``DRACO_DATA=/path/to/shared/data``).
3. ``draco-data``'s default target ``$XDG_DATA_HOME/draco`` (``~/.local/share/draco``).
4. Fashion-MNIST only: Debian's ``/usr/share/datasets/fashion-mnist`` (package
   ``dataset-fashion-mnist``).

Images are kept as uint8 (n, 784) in memory (a quarter of float32's size: several worker
processes each hold a copy) and normalised per batch with ``normalize``:
``(x / 255 - mean) / std`` in float32, with fixed per-dataset constants.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from draco.errors import ConfigError, DataError

IDX_DATASETS = ("mnist", "fashion-mnist")

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

# SHA-256 of the *decompressed* files. MNIST: /work/shared/data/mnist/README.md (the
# original LeCun files). Fashion-MNIST: computed from Debian's dataset-fashion-mnist package
# (zalandoresearch/fashion-mnist's files, recompressed by Debian, hence hashed decompressed).
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

# Pixel mean / std of the training images, after scaling to [0, 1] (the usual constants).
NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}

N_TRAIN = 60000
N_TEST = 10000
N_CLASSES = 10

# Subfolders of a data root that may hold a dataset (ours, then torchvision's layout).
SUBDIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw", "fashion_mnist"),
}
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held in memory.

    Attributes
    ----------
    name : str
        ``mnist``, ``fashion-mnist``, ``cifar10`` or ``synthetic``.
    train_images, test_images : np.ndarray
        (n, C*H*W), channel-major: uint8 pixels (normalise with ``normalize`` /
        ``channel_lut``) or float32 features that are already normalised (synthetic).
    train_labels, test_labels : np.ndarray
        (n,) int64 in [0, n_classes).
    n_classes : int
    mean, std : float
        Normalisation constants for uint8 pixels: x -> (x/255 - mean)/std (grey images).
    source : str
        Where it came from (a folder, or "generated").
    image_shape : tuple of int
        (C, H, W) of one image: (1, 28, 28) for MNIST-like data, (3, 32, 32) for CIFAR-10.
    channel_mean, channel_std : tuple of float, optional
        Per-channel constants for colour images (they replace ``mean``/``std``).
    augment : bool
        Train with random crops (4-pixel zero padding) and horizontal flips (CIFAR-10).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    n_classes: int
    mean: float
    std: float
    source: str
    image_shape: tuple[int, int, int] = (1, 28, 28)
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None
    augment: bool = False

    @property
    def n_features(self) -> int:
        return int(self.train_images.shape[1])

    def pixel_lut(self) -> np.ndarray:
        """The float32 normalisation table, (C, 256): row c maps channel c's uint8 values."""
        c = self.image_shape[0]
        if self.channel_mean is not None and self.channel_std is not None:
            return channel_lut(self.channel_mean, self.channel_std)
        return np.repeat(normalize_lut(self.mean, self.std)[None, :], c, axis=0)


def normalize_lut(mean: float, std: float) -> np.ndarray:
    """The 256-entry float32 table v -> (v/255 - mean)/std, computed in float32.

    Normalising through this table (a gather) is exact and bit-identical everywhere.
    """
    v = np.arange(256, dtype=np.float32)
    return ((v / np.float32(255.0) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def channel_lut(means: tuple[float, ...], stds: tuple[float, ...]) -> np.ndarray:
    """Per-channel tables, float32 (C, 256): row c is ``normalize_lut(means[c], stds[c])``."""
    if len(means) != len(stds):
        raise ValueError(f"{len(means)} channel means but {len(stds)} stds")
    return np.stack([normalize_lut(m, s) for m, s in zip(means, stds, strict=True)])


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 pixels of any shape -> float32 ``(x/255 - mean)/std``, same shape."""
    if images.dtype != np.uint8:
        raise TypeError(f"normalize expects uint8 pixels, got {images.dtype}")
    return normalize_lut(mean, std)[images]


# ----------------------------------------------------------------------------- IDX reading


def read_bytes(path: Path) -> bytes:
    """The (decompressed) content of ``path``; DataError if unreadable."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a truncated gzip stream raises EOFError.
        raise DataError(f"cannot read {path}: {exc}; the file is damaged, obtain it again") from exc


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes (unsigned byte type only) into a uint8 array of the declared shape.

    Checks: the magic's two zero bytes and type 0x08, the header length, and that the data
    length equals the product of the sizes exactly (truncated or over-long files fail).
    """
    if len(data) < 4:
        raise DataError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero0, zero1, dtype_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        magic = int.from_bytes(data[:4], "big")
        raise DataError(
            f"{source}: bad IDX magic number 0x{magic:08x} (expected 0x0000080N, unsigned "
            "bytes); not an IDX file of unsigned bytes, or damaged"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(
            f"{source}: IDX header declares shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(data) - header}; the file is truncated or damaged"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(
    path: str | os.PathLike[str],
    *,
    magic: int | None = None,
    sha256: str | None = None,
) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a read-only uint8 array.

    Parameters
    ----------
    path : path
        The file.
    magic : int, optional
        Required magic number (``IMAGES_MAGIC`` / ``LABELS_MAGIC``).
    sha256 : str, optional
        Required SHA-256 (hex) of the decompressed content.

    Raises
    ------
    DataError
        Unreadable, bad magic, truncated, or checksum mismatch.
    """
    p = Path(path)
    data = read_bytes(p)
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256.lower():
            raise DataError(
                f"{p}: SHA-256 of the content is {digest}, expected {sha256}; the file is "
                "damaged or a different file: delete it and obtain it again"
            )
    if magic is not None and len(data) >= 4 and int.from_bytes(data[:4], "big") != magic:
        raise DataError(
            f"{p}: bad IDX magic number 0x{int.from_bytes(data[:4], 'big'):08x}, expected "
            f"0x{magic:08x} ({'images' if magic == IMAGES_MAGIC else 'labels'})"
        )
    return parse_idx(data, source=str(p))


def read_idx_pair(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    *,
    n_classes: int = N_CLASSES,
    images_sha256: str | None = None,
    labels_sha256: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, rows*cols) uint8 and labels (n,) int64 from an IDX image/label file pair.

    Checks the magics, that the counts match, and that labels lie in [0, n_classes).
    """
    images = read_idx(images_path, magic=IMAGES_MAGIC, sha256=images_sha256)
    labels = read_idx(labels_path, magic=LABELS_MAGIC, sha256=labels_sha256)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; the files do not belong together"
        )
    if labels.size and int(labels.max()) >= n_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside [0, {n_classes})")
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


# ----------------------------------------------------------------------------- lookup


def data_home() -> Path:
    """``draco-data``'s default target: ``$XDG_DATA_HOME/draco`` or ``~/.local/share/draco``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "draco"


def _idx_file(folder: Path, base: str) -> Path | None:
    # Raw first: it loads faster than the gzipped copy when both exist.
    for candidate in (folder / base, folder / (base + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _candidates(name: str, root: Path) -> list[Path]:
    return [root, *(root / sub for sub in SUBDIRS[name])]


def search_path(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders ``find_dataset`` looks in for dataset ``name``, in order."""
    if name not in IDX_DATASETS:
        raise ConfigError(
            f"{name!r} is not an IDX dataset; choose one of {', '.join(IDX_DATASETS)}"
        )
    folders: list[Path] = []
    if data_dir is not None:
        folders += _candidates(name, Path(data_dir).expanduser())
    env = os.environ.get("DRACO_DATA")
    if env:
        folders += _candidates(name, Path(env).expanduser())
    folders += _candidates(name, data_home())
    folders += list(SYSTEM_DIRS[name])
    return folders


def find_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Locate the four IDX files of dataset ``name``: base file name -> path.

    Raises
    ------
    DataError
        No folder on the search path holds all four files; the message names the missing
        files, every folder looked in, and the command that downloads them.
    """
    looked: list[str] = []
    for folder in search_path(name, data_dir):
        found = {base: _idx_file(folder, base) for base in IDX_FILES}
        if all(found.values()):
            return {base: p for base, p in found.items() if p is not None}
        if folder.is_dir() and any(found.values()):
            missing = [b for b, p in found.items() if p is None]
            looked.append(f"  {folder}  (missing: {', '.join(m + '[.gz]' for m in missing)})")
        else:
            looked.append(f"  {folder}")
    root = Path(data_dir).expanduser() if data_dir is not None else data_home()
    raise DataError(
        f"dataset {name!r} not found: need {', '.join(b + '[.gz]' for b in IDX_FILES)} "
        "in one folder. Looked in:\n" + "\n".join(looked) + "\n"
        f"Obtain them with `draco-data {name} --dir {root}` (it writes {root / name}; or copy "
        f"the files there) and pass --data-dir {root} or set DRACO_DATA={root}; "
        "or use --dataset synthetic, which needs no files."
    )


_CACHE: dict[tuple[str, str, bool], Dataset] = {}
_CACHE_LOCK = threading.Lock()


def load_idx_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> Dataset:
    """Load MNIST or Fashion-MNIST (cached per process: logical workers share one copy).

    ``verify`` checks the SHA-256 of each decompressed file against ``SHA256[name]``.
    """
    files = find_dataset(name, data_dir)
    key = (name, str(files[TRAIN_IMAGES].parent.resolve()), verify)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        sums = SHA256[name] if verify else {}
        train_x, train_y = read_idx_pair(
            files[TRAIN_IMAGES],
            files[TRAIN_LABELS],
            images_sha256=sums.get(TRAIN_IMAGES),
            labels_sha256=sums.get(TRAIN_LABELS),
        )
        test_x, test_y = read_idx_pair(
            files[TEST_IMAGES],
            files[TEST_LABELS],
            images_sha256=sums.get(TEST_IMAGES),
            labels_sha256=sums.get(TEST_LABELS),
        )
        for split, x in (("train", train_x), ("test", test_x)):
            if x.shape[1] != 784:
                raise DataError(
                    f"{name} {split} images are {x.shape[1]} pixels, expected 28x28 = 784"
                )
        mean, std = NORMALIZATION[name]
        ds = Dataset(
            name=name,
            train_images=train_x,
            train_labels=train_y,
            test_images=test_x,
            test_labels=test_y,
            n_classes=N_CLASSES,
            mean=mean,
            std=std,
            source=str(files[TRAIN_IMAGES].parent),
        )
        _CACHE[key] = ds
        return ds
