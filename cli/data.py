"""``draco-data``: download MNIST / Fashion-MNIST and verify them by SHA-256.

Examples::

    draco-data mnist                        # into $DRACO_DATA/mnist or ~/.local/share/draco/mnist
    draco-data mnist fashion-mnist --dir ~/data
    draco-data mnist --dir ~/data --check   # verify what is there, download nothing

``--dir ROOT`` is a data root: each dataset goes to ``ROOT/<name>/`` under torchvision's
gzipped file names, which is where ``--data-dir ROOT`` / ``DRACO_DATA=ROOT`` look. Every file
is decompressed in memory and its SHA-256 compared with the known value before it is written
(atomically); a mismatch tries the next mirror, and nothing unverified is ever kept.
Files already present and verified are not downloaded again.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from draco.errors import DataError, DracoError
from draco.rundir import atomic_write
from draco.train.data import IDX_DATASETS, IDX_FILES, SHA256, data_home, read_bytes

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
    """``$DRACO_DATA`` if set, else ``draco.train.data.data_home()``."""
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


def check_dataset(name: str, root: str | os.PathLike[str]) -> list[str]:
    """Problems with the files of ``name`` under ``root/name`` (empty list = all verified)."""
    folder = Path(root).expanduser() / name
    problems = []
    for base in IDX_FILES:
        present = [p for p in (folder / base, folder / (base + ".gz")) if p.is_file()]
        if not present:
            problems.append(f"{folder / base}[.gz] is missing")
        elif not any(_verified(p, SHA256[name][base]) for p in present):
            problems.append(f"{present[0]} fails its SHA-256 check")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="draco-data",
        description="Download MNIST / Fashion-MNIST (IDX, gzipped) and verify them by SHA-256.",
    )
    parser.add_argument("datasets", nargs="+", choices=IDX_DATASETS, help="what to download")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"data root; files go to DIR/<dataset>/ (default: $DRACO_DATA, else {data_home()})",
    )
    parser.add_argument(
        "--mirror",
        action="append",
        default=None,
        help="base URL to download from instead of the built-in mirrors (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--force", action="store_true", help="download even verified files")
    parser.add_argument(
        "--check", action="store_true", help="only verify the files present; download nothing"
    )
    args = parser.parse_args(argv)
    root = args.dir if args.dir is not None else default_root()
    status = 0
    for name in dict.fromkeys(args.datasets):
        if args.check:
            problems = check_dataset(name, root)
            for p in problems:
                print(f"draco-data: {p}", file=sys.stderr)
            if problems:
                status = 1
            else:
                print(f"{name}: all files in {Path(root) / name} verified")
            continue
        mirrors = None
        if args.mirror:
            mirrors = [m if m.endswith("/") else m + "/" for m in args.mirror]
        try:
            folder = download_dataset(
                name, root, mirrors=mirrors, timeout=args.timeout, force=args.force
            )
        except DracoError as exc:
            print(f"draco-data: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}: ready in {folder} (use --data-dir {root} or DRACO_DATA={root})")
    return status


if __name__ == "__main__":
    sys.exit(main())
