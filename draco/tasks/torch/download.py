"""Download MNIST / Fashion-MNIST / CIFAR-10 and verify them by SHA-256 (``draco-data``).

A data root ``ROOT`` holds each dataset in ``ROOT/<name>/`` under torchvision's gzipped file
names (``download_dataset``), which is where ``--data-dir ROOT`` / ``DRACO_DATA=ROOT`` look.
Every file is decompressed in memory and its SHA-256 compared with the known value
(``draco.tasks.torch.data.SHA256``) before it is written (atomically); a mismatch tries the
next mirror, and nothing unverified is ever kept. Files already present and verified are not
downloaded again.

CIFAR-10 comes as one archive (163 MB; ``download_cifar10``): it is streamed to a temporary
file (at most ``CIFAR_MAX_ARCHIVE_BYTES``) while its SHA-256 is computed, and only when that
matches are the six batch files taken out of it: exactly those member names, regular files of
at most ``draco.tasks.torch.cifar.MAX_BATCH_FILE_BYTES`` each, never a path from the archive
itself (no traversal, no links). Each file is then checked by the loader (restricted
unpickler, shapes, labels) and written atomically; the archive's hash is recorded in
``SOURCE`` next to them. ``check_dataset`` verifies what is there and downloads nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from draco.errors import DataError
from draco.fileio import atomic_write
from draco.tasks.torch import cifar
from draco.tasks.torch.data import IDX_DATASETS, IDX_FILES, SHA256, data_home, read_bytes

DATASETS = (*IDX_DATASETS, cifar.NAME)
#: The archives at https://www.cs.toronto.edu/~kriz/cifar.html, with their SHA-256 (also
#: pinned by Keras's and TFDS's loaders); version -> (file name, folder inside, sha256).
CIFAR_ARCHIVES: dict[str, tuple[str, str, str]] = {
    "python": (
        "cifar-10-python.tar.gz",
        cifar.PY_DIR,
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    ),
    "binary": (
        "cifar-10-binary.tar.gz",
        cifar.BIN_DIR,
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    ),
}
CIFAR_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CIFAR_MAX_ARCHIVE_BYTES = 256 * 2**20  # the archives are 170,498,071 and 170,052,171 bytes
_CHUNK = 2**20

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}
MAX_DOWNLOAD_BYTES = 64 * 2**20  # the largest file (Fashion-MNIST train images) is 26 MB


def default_root() -> Path:
    """``$DRACO_DATA`` if set, else ``draco.tasks.torch.data.data_home()``."""
    env = os.environ.get("DRACO_DATA")
    return Path(env).expanduser() if env else data_home()


def _verified(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(read_bytes(path)).hexdigest() == sha256
    except DataError:
        return False


def _fetch(url: str, timeout: float) -> bytes:
    """GET ``url`` (at most ``MAX_DOWNLOAD_BYTES``); raises OSError / URLError on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data = resp.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise OSError(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes, refused")
    return data


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    mirrors: Sequence[str] | None = None,
    sha256: dict[str, str] | None = None,
    timeout: float = 60.0,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Download dataset ``name`` into ``root/name`` and verify it; returns that folder.

    Parameters
    ----------
    name : str
        ``mnist`` or ``fashion-mnist``.
    root : path
        Data root (created if missing).
    mirrors : sequence of str, optional
        Base URLs tried in order (each ends with ``/``); default ``MIRRORS[name]``.
    sha256 : dict, optional
        Base file name -> SHA-256 of the decompressed file; default ``SHA256[name]``.
    timeout : float
        Seconds per HTTP request.
    force : bool
        Download even files that are present and verify.

    Raises
    ------
    DataError
        A file could not be obtained from any mirror, or never matched its checksum.
    """
    if name not in IDX_DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(IDX_DATASETS)}")
    sums = SHA256[name] if sha256 is None else sha256
    urls = tuple(MIRRORS[name] if mirrors is None else mirrors)
    folder = Path(root).expanduser() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder}: {exc}") from exc
    for base in IDX_FILES:
        target = folder / (base + ".gz")
        present = [p for p in (folder / base, target) if p.is_file()]
        if not force and any(_verified(p, sums[base]) for p in present):
            log(f"{name}: {base} present and verified")
            continue
        errors: list[str] = []
        for mirror in urls:
            url = mirror + base + ".gz"
            try:
                packed = _fetch(url, timeout)
                content = gzip.decompress(packed)
            except (OSError, EOFError, zlib.error, urllib.error.URLError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            digest = hashlib.sha256(content).hexdigest()
            if digest != sums[base]:
                errors.append(f"{url}: SHA-256 {digest} does not match {sums[base]}")
                continue
            _write_bytes(target, packed)
            # A stale raw copy would shadow the verified .gz (the reader prefers raw files).
            raw = folder / base
            if raw.is_file() and not _verified(raw, sums[base]):
                raw.unlink()
            log(f"{name}: {base} downloaded from {mirror} and verified")
            break
        else:
            raise DataError(
                f"could not obtain {base} for {name}:\n  "
                + "\n  ".join(errors)
                + "\nCheck the network (or --mirror URL), or copy the files into "
                f"{folder} by hand."
            )
    return folder


def _fetch_to_file(url: str, target: Path, timeout: float, max_bytes: int) -> str:
    """Stream ``url`` into ``target`` (at most ``max_bytes``); returns the SHA-256 (hex)."""
    digest = hashlib.sha256()
    total = 0
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(target, "wb") as out:
        while chunk := resp.read(_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise OSError(f"{url}: larger than {max_bytes} bytes, refused")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _cifar_members(archive: Path, inner: str, version: str) -> dict[str, bytes]:
    """The six batch files of a verified archive: base name -> bytes, checked by the loader."""
    names = cifar.PY_FILES if version == "python" else cifar.BIN_FILES
    wanted = {f"{inner}/{n}": n for n in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                base = wanted.get(member.name)
                if base is None:
                    continue  # readme, batches.meta: not needed; anything else: ignored
                if not member.isreg() or member.size > cifar.MAX_BATCH_FILE_BYTES:
                    raise DataError(f"{archive}: member {member.name} is not a batch file")
                f = tar.extractfile(member)
                if f is None:
                    raise DataError(f"{archive}: member {member.name} cannot be read")
                out[base] = f.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: not a readable .tar.gz archive ({exc})") from exc
    missing = [n for n in names if n not in out]
    if missing:
        raise DataError(
            f"{archive}: the archive lacks {', '.join(inner + '/' + m for m in missing)}"
        )
    return out


def download_cifar10(
    root: str | os.PathLike[str],
    *,
    version: str = "python",
    mirrors: Sequence[str] | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    force: bool = False,
    max_archive_bytes: int = CIFAR_MAX_ARCHIVE_BYTES,
    log: Callable[[str], None] = print,
) -> Path:
    """Download CIFAR-10 (``version`` "python" or "binary") into ``root/cifar10/<folder>``.

    Parameters
    ----------
    root : path
        Data root (created if missing).
    version : str
        Which archive: the pickled "python" batches or the "binary" records.
    mirrors : sequence of str, optional
        Base URLs tried in order (each ends with ``/``); default ``CIFAR_MIRRORS``.
    sha256 : str, optional
        The archive's SHA-256 (hex); default ``CIFAR_ARCHIVES[version]``'s.
    timeout : float
        Seconds per HTTP request (per read).
    force : bool
        Download even if the folder holds the files from an archive with this hash.
    max_archive_bytes : int
        Refuse a larger download.

    Returns
    -------
    Path
        The folder holding the six batch files.

    Raises
    ------
    DataError
        No mirror delivered an archive with the right SHA-256 and the six batch files.
    """
    if version not in CIFAR_ARCHIVES:
        raise DataError(f"unknown CIFAR-10 version {version!r}; choose python or binary")
    archive_name, inner, default_sum = CIFAR_ARCHIVES[version]
    expected = (sha256 or default_sum).lower()
    names = cifar.PY_FILES if version == "python" else cifar.BIN_FILES
    folder = Path(root).expanduser() / cifar.NAME / inner
    source = folder / "SOURCE"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder}: {exc}") from exc
    recorded = source.read_text().split() if source.is_file() else []
    if not force and recorded[:1] == [expected] and all((folder / n).is_file() for n in names):
        log(f"cifar10: {folder} holds the files of the archive with SHA-256 {expected}")
        return folder
    read = cifar.read_py_batch if version == "python" else cifar.read_bin_batch
    errors: list[str] = []
    for mirror in CIFAR_MIRRORS if mirrors is None else mirrors:
        url = mirror + archive_name
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
            archive = Path(tmp) / archive_name
            try:
                digest = _fetch_to_file(url, archive, timeout, max_archive_bytes)
            except (OSError, urllib.error.URLError) as exc:
                errors.append(f"{url}: {exc}")
                continue
            if digest != expected:
                errors.append(f"{url}: SHA-256 {digest} does not match {expected}")
                continue
            try:
                members = _cifar_members(archive, inner, version)
                for base, data in members.items():  # the loader's checks, before writing
                    (Path(tmp) / base).write_bytes(data)
                    read(Path(tmp) / base)
            except DataError as exc:
                errors.append(f"{url}: {exc}")
                continue
            for base, data in members.items():
                _write_bytes(folder / base, data)
        atomic_write(source, lambda f: f.write(f"{expected}  {archive_name}\n".encode()))
        log(f"cifar10: {archive_name} downloaded from {mirror}, verified, {len(names)} files")
        return folder
    raise DataError(
        f"could not obtain {archive_name}:\n  "
        + "\n  ".join(errors)
        + f"\nCheck the network (or --mirror URL), or unpack the archive into {folder} by hand."
    )


def check_cifar10(root: str | os.PathLike[str]) -> list[str]:
    """Problems with CIFAR-10 under ``root`` (empty list = one complete version that loads).

    The format is checked (the loader's checks); the content cannot be: no per-file checksums
    are published (``SOURCE`` names the archive the files came from).
    """
    try:
        cifar._CACHE.clear()  # a fresh read: the check must look at the files as they are now
        cifar.load_cifar10(Path(root).expanduser() / cifar.NAME)
    except DataError as exc:
        return [str(exc)]
    return []


def check_dataset(name: str, root: str | os.PathLike[str]) -> list[str]:
    """Problems with the files of ``name`` under ``root/name`` (empty list = all verified)."""
    if name == cifar.NAME:
        return check_cifar10(root)
    folder = Path(root).expanduser() / name
    problems = []
    for base in IDX_FILES:
        present = [p for p in (folder / base, folder / (base + ".gz")) if p.is_file()]
        if not present:
            problems.append(f"{folder / base}[.gz] is missing")
        elif not any(_verified(p, SHA256[name][base]) for p in present):
            problems.append(f"{present[0]} fails its SHA-256 check")
    return problems


def fetch(
    name: str,
    root: str | os.PathLike[str],
    *,
    cifar_version: str = "python",
    mirrors: Sequence[str] | None = None,
    timeout: float = 60.0,
    force: bool = False,
) -> Path:
    """Download and verify dataset ``name`` of ``DATASETS`` into ``root``; its folder.

    ``mirrors``: base URLs (each ending in ``/``) instead of the built-in ones; ``timeout``:
    seconds per request; ``force``: download even verified files. Raises DracoError.
    """
    if name == cifar.NAME:
        return download_cifar10(
            root, version=cifar_version, mirrors=mirrors, timeout=timeout, force=force
        )
    return download_dataset(name, root, mirrors=mirrors, timeout=timeout, force=force)
