"""``draco-data``: download MNIST / Fashion-MNIST / CIFAR-10 and verify them by SHA-256.

Examples::

    draco-data mnist                        # into $DRACO_DATA/mnist or ~/.local/share/draco/mnist
    draco-data mnist fashion-mnist --dir ~/data
    draco-data mnist --dir ~/data --check   # verify what is there, download nothing
    draco-data cifar10 --dir ~/data         # ~/data/cifar10/cifar-10-batches-py/
    draco-data cifar10 --cifar-version binary --dir ~/data   # .../cifar-10-batches-bin/

CIFAR-10 comes as one archive (163 MB): it is streamed to a temporary file (at most
``CIFAR_MAX_ARCHIVE_BYTES``) while its SHA-256 is computed, and only when that matches are
the six batch files taken out of it: exactly those member names, regular files of at most
``draco.tasks.torch.cifar.MAX_BATCH_FILE_BYTES`` each, never a path from the archive itself (no
traversal, no links). Each file is then checked by the loader (restricted unpickler, shapes,
labels) and written atomically; the archive's hash is recorded in ``SOURCE`` next to them.

``--dir ROOT`` is a data root: each dataset goes to ``ROOT/<name>/`` under torchvision's
gzipped file names, which is where ``--data-dir ROOT`` / ``DRACO_DATA=ROOT`` look. Every file
is decompressed in memory and its SHA-256 compared with the known value before it is written
(atomically); a mismatch tries the next mirror, and nothing unverified is ever kept.
Files already present and verified are not downloaded again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from draco.errors import DracoError
from draco.tasks.torch.data import data_home
from draco.tasks.torch.download import (
    CIFAR_ARCHIVES,
    DATASETS,
    check_dataset,
    default_root,
    fetch,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="draco-data",
        description="Download MNIST / Fashion-MNIST (IDX, gzipped) and CIFAR-10 and verify "
        "them by SHA-256.",
    )
    parser.add_argument("datasets", nargs="+", choices=DATASETS, help="what to download")
    parser.add_argument(
        "--cifar-version",
        choices=tuple(CIFAR_ARCHIVES),
        default="python",
        help="CIFAR-10 archive: the pickled python batches (default) or the binary records",
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
            folder = fetch(
                name,
                root,
                cifar_version=args.cifar_version,
                mirrors=mirrors,
                timeout=args.timeout,
                force=args.force,
            )
        except DracoError as exc:
            print(f"draco-data: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}: ready in {folder} (use --data-dir {root} or DRACO_DATA={root})")
    return status


if __name__ == "__main__":
    sys.exit(main())
