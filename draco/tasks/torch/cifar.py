"""CIFAR-10 from its two standard on-disk versions, read without trusting the files.

The "python version" (``cifar-10-python.tar.gz`` -> ``cifar-10-batches-py/``)::

    data_batch_1 .. data_batch_5, test_batch
        each a pickle (protocol 2, written by Python 2) of a dict with
        'data':   uint8 ndarray (n, 3072): per image the 1024 red, then green, then blue
                  pixels, rows top to bottom (channel-major, C x H x W = 3 x 32 x 32)
        'labels': list of n ints in [0, 10)
        (plus 'batch_label' and 'filenames', which are not used)

The "binary version" (``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/``)::

    data_batch_1.bin .. data_batch_5.bin, test_batch.bin
        n records of 3073 bytes: 1 label byte, then the 3072 pixel bytes as above

Pickle can run arbitrary code while loading, and the folder a worker reads may be named by
the parameter server (the task spec's ``data_dir``). So the python version is read with
``RestrictedUnpickler``, which resolves only the five globals such a file needs (numpy's
array reconstructor, ``ndarray``, ``dtype``, and ``_codecs.encode`` restricted to latin-1,
which Python 3's protocol-2 pickles of bytes use); any other global is refused with a
``DataError`` before it is imported. A file larger than ``MAX_BATCH_FILE_BYTES`` is refused
before it is read (a real batch file is about 31 MB).

Where the files are looked for: like MNIST (``draco.tasks.torch.data``): ``data_dir``, then
``$DRACO_DATA``, then ``draco-data``'s default root; in each root the folder itself,
``cifar-10-batches-py/``, ``cifar-10-batches-bin/``, and the same two under ``cifar10/``
(where ``draco-data cifar10`` puts them). A folder counts when it holds all six files of one
version; the python version wins in a tie.

Content check: the loader checks the format (shapes, dtypes, counts, label range), not the
content: the per-file checksums of the extracted files are not published. ``draco-data
cifar10`` verifies the SHA-256 of the downloaded archive. A worker that trains on different
files computes different gradients and is located as a liar by the code, like any other.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np

from draco.errors import DataError
from draco.tasks.torch.data import data_home

NAME = "cifar10"
N_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
N_PIXELS = 3 * 32 * 32  # 3072 bytes per image
RECORD_BYTES = 1 + N_PIXELS  # binary version: label byte + pixels
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
PY_FILES = (*TRAIN_BATCHES, TEST_BATCH)
BIN_FILES = tuple(f + ".bin" for f in PY_FILES)
PY_DIR = "cifar-10-batches-py"
BIN_DIR = "cifar-10-batches-bin"
SUBDIRS = ("", PY_DIR, BIN_DIR, f"{NAME}/{PY_DIR}", f"{NAME}/{BIN_DIR}")
#: A real batch file is 31,035,704 (python) or 30,730,000 (binary) bytes; the cap is twice
#: that, so a hostile file named by the PS cannot make a worker read gigabytes.
MAX_BATCH_FILE_BYTES = 64 * 2**20

#: Per-channel mean / std of the 50,000 training images after scaling to [0, 1] (R, G, B).
CHANNEL_MEAN = (0.4914, 0.4822, 0.4465)
CHANNEL_STD = (0.2470, 0.2435, 0.2616)

# The array reconstructor under both numpy names (1.x wrote "numpy.core.multiarray", which
# the real files name; 2.x writes "numpy._core.multiarray"), taken from ndarray's own reduce
# so no private module is imported by name.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, "latin1"); nothing else.
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused")
    return codecs.encode(text, "latin-1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR batch file needs.

    Everything else (``os.system``, ``builtins.eval``, any class) raises
    ``pickle.UnpicklingError`` instead of being imported, so a hostile file cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR batch file"
            ) from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with ``RestrictedUnpickler`` (latin-1 for Python 2 strings)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _read_capped(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DataError(
                f"{path}: {size} bytes, more than the {max_bytes} a CIFAR-10 batch file may "
                "have; not a CIFAR-10 file"
            )
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _get(batch: dict[Any, Any], key: str) -> Any:
    # Python 2 str keys arrive as str with encoding="latin1"; bytes keys if written as bytes.
    for k in (key, key.encode("ascii")):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_py_batch(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_BATCH_FILE_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """One python-version batch file -> images (n, 3072) uint8, labels (n,) int64.

    Raises
    ------
    DataError
        Too large, unreadable, a pickle with a disallowed global or damaged, or not the
        expected dict of 'data' (uint8, (n, 3072)) and 'labels' (n ints in [0, 10)).
    """
    p = Path(path)
    raw = _read_capped(p, max_bytes)
    try:
        batch = restricted_loads(raw)
    except Exception as exc:  # any unpickling failure means a damaged or hostile file
        raise DataError(f"{p}: not a CIFAR-10 python batch file ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{p}: holds a {type(batch).__name__}, expected a dict")
    try:
        images = _get(batch, "data")
        labels_obj = _get(batch, "labels")
    except KeyError as exc:
        raise DataError(f"{p}: the batch has no {exc.args[0]!r} entry") from None
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != N_PIXELS
    ):
        what = (
            f"{images.dtype} {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise DataError(f"{p}: 'data' is {what}, expected uint8 of shape (n, {N_PIXELS})")
    if not isinstance(labels_obj, (list, np.ndarray)) or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels_obj
    ):
        raise DataError(f"{p}: 'labels' is not a list of integers")
    labels = np.asarray(labels_obj, dtype=np.int64).reshape(-1)
    return images, _check_labels(p, labels, images.shape[0])


def read_bin_batch(
    path: str | os.PathLike[str], *, max_bytes: int = MAX_BATCH_FILE_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """One binary-version batch file -> images (n, 3072) uint8, labels (n,) int64."""
    p = Path(path)
    raw = _read_capped(p, max_bytes)
    if not raw or len(raw) % RECORD_BYTES:
        raise DataError(
            f"{p}: {len(raw)} bytes is not a whole number of {RECORD_BYTES}-byte records; "
            "the file is truncated or not a CIFAR-10 binary batch"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    return np.ascontiguousarray(records[:, 1:]), _check_labels(p, labels, records.shape[0])


def _check_labels(p: Path, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.shape != (n,):
        raise DataError(f"{p}: {labels.size} labels for {n} images")
    if n == 0:
        raise DataError(f"{p}: holds no images")
    if int(labels.min()) < 0 or int(labels.max()) >= N_CLASSES:
        raise DataError(f"{p}: a label lies outside [0, {N_CLASSES})")
    return labels


def search_path(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders ``find_cifar10`` looks in, in order."""
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get("DRACO_DATA")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(data_home())
    return [root / sub if sub else root for root in roots for sub in SUBDIRS]


def find_cifar10(data_dir: str | os.PathLike[str] | None = None) -> tuple[str, dict[str, Path]]:
    """Locate one complete version of CIFAR-10: ("python" | "binary", file name -> path).

    Raises
    ------
    DataError
        No folder holds all six files of either version; names the missing files of every
        folder that holds some, each folder looked in, and the command that downloads them.
    """
    looked: list[str] = []
    for folder in search_path(data_dir):
        for version, names in (("python", PY_FILES), ("binary", BIN_FILES)):
            found = {n: folder / n for n in names if (folder / n).is_file()}
            if len(found) == len(names):
                return version, found
            if found:
                missing = [n for n in names if n not in found]
                looked.append(f"  {folder}  ({version} version, missing: {', '.join(missing)})")
                break
        else:
            looked.append(f"  {folder}")
    root = Path(data_dir).expanduser() if data_dir is not None else Path("DIR")
    raise DataError(
        f"dataset 'cifar10' not found: need {', '.join(PY_FILES)} (python version) or "
        f"{', '.join(BIN_FILES)} (binary version) in one folder. Looked in:\n"
        + "\n".join(looked)
        + f"\nObtain them with `draco-data cifar10 --dir {root}` and pass --data-dir {root} "
        f"or set DRACO_DATA={root}."
    )


_CACHE: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]] = {}
_CACHE_LOCK = threading.Lock()


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None, *, max_bytes: int = MAX_BATCH_FILE_BYTES
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(train images (n, 3072) uint8, train labels (n,) int64, test images, test labels, folder).

    Cached per folder and process (the logical workers of one process share one copy).
    """
    version, files = find_cifar10(data_dir)
    folder = next(iter(files.values())).parent
    key = str(folder.resolve())
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        read = read_py_batch if version == "python" else read_bin_batch
        suffix = "" if version == "python" else ".bin"
        parts = [read(files[b + suffix], max_bytes=max_bytes) for b in TRAIN_BATCHES]
        test_x, test_y = read(files[TEST_BATCH + suffix], max_bytes=max_bytes)
        train_x = np.concatenate([x for x, _ in parts])
        train_y = np.concatenate([y for _, y in parts])
        for a in (train_x, train_y, test_x, test_y):
            a.setflags(write=False)
        out = (train_x, train_y, test_x, test_y, str(folder))
        _CACHE[key] = out
        return out


def py_batch_bytes(images: np.ndarray, labels: np.ndarray, batch_label: str = "batch") -> bytes:
    """A python-version batch file's bytes for uint8 images (n, 3072) and labels (n,).

    Protocol 2 with numpy's array under the name the real files use
    (``numpy.core.multiarray._reconstruct``), keys and field layout as in the real files. For
    tests, and for anyone who wants their own images in this format.
    """
    x = np.ascontiguousarray(images, dtype=np.uint8)
    if x.ndim != 2 or x.shape[1] != N_PIXELS:
        raise ValueError(f"images must be uint8 (n, {N_PIXELS}), got {x.shape}")
    batch = {
        "batch_label": batch_label,
        "labels": [int(v) for v in labels],
        "data": x,
        "filenames": [f"image_{i}.png" for i in range(x.shape[0])],
    }
    raw = pickle.dumps(batch, protocol=2)
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def bin_batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A binary-version batch file's bytes: per image its label byte, then 3072 pixels."""
    x = np.ascontiguousarray(images, dtype=np.uint8)
    y = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    return np.concatenate([y, x], axis=1).tobytes()
