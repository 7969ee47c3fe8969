"""What the package writes and how: atomic outputs, the output checks, file hashes and fingerprints.

Outputs are written under a temporary name and renamed when complete: no half-written file ever
carries the final name, and a failure leaves the previous file (if any) untouched.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dinosaw_deploy.errors import DinosawError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` on success.

    >>> with atomic_path("out.npy") as tmp:
    ...     np.save(tmp, array)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_output(output: Path, inputs: list[Path], overwrite: bool) -> None:
    """Refuse to overwrite an input, or an existing output without ``overwrite``."""
    output = Path(output)
    if any(output.resolve() == Path(p).resolve() for p in inputs if Path(p).exists()):
        raise DinosawError(f"output {output} is one of the inputs; choose another name")
    if output.exists() and not overwrite:
        raise DinosawError(f"{output} exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise DinosawError(f"output directory {output.parent} does not exist")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file cheaply for resuming: resolved path, size, mtime."""
    path = Path(path)
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
