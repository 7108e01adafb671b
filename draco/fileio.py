"""Atomic file writes: written once for run directories, data files and credential files.

A reader (or a crash) never sees a half-written file: the bytes go to a temporary file in
the target's folder, which then replaces the target in one rename. The temporary file is
created by ``tempfile.mkstemp``, so it is readable by its owner only (mode 0600) whatever the
umask; the renamed file keeps that mode.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["TMP_PREFIX", "atomic_write"]

#: Name prefix of the temporary files (a crash can leave one behind; run directories sweep
#: their own: ``RunDir`` removes stale ``TMP_PREFIX + "ckpt-*"`` files on open).
TMP_PREFIX = ".tmp-"


def _fsync_dir(path: Path) -> None:
    # Makes the rename durable. Not possible on Windows (directories cannot be opened).
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> None:
    """Write a file atomically: ``write(f)`` fills a temp file, which then replaces ``path``.

    1. Create a temp file in the target's folder (same file system, so the rename is atomic;
       mode 0600).
    2. ``write(f)``, flush, fsync.
    3. ``os.replace(temp, path)``, then fsync the folder.
    On any error the temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
