"""What the package writes and how: atomic outputs, output ownership, the output checks, file hashes
and fingerprints.

Outputs are written under a temporary name and renamed when complete: no half-written file ever
carries the final name, and a failure leaves the previous file (if any) untouched.

Outputs are owned exclusively: :func:`output_lock` holds an exclusive lock (``filelock``, a
``.X.lock`` file beside each output, removed afterwards) for the whole run, so a second writer of
the same output fails at once with a clear error instead of interleaving with the first. Folders we
create beside an output (``X.work/``, ``X.zarr.partial``) carry a marker file (:data:`MARKER`);
:func:`remove_owned` deletes only folders that carry it, never a user's folder of that name.
Temporary files (``.X.partial-PID.ext``) of a process that no longer runs are cleared by the next
run that writes ``X``.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re
import shutil
import threading
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError

MARKER = ".dinosaw-deploy-owned"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` on success.
    Temporary files of ``path`` left by a killed process (its PID no longer runs) are removed first.

    >>> with atomic_path("out.npy") as tmp:
    ...     np.save(tmp, array)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    _clear_stale_partials(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _clear_stale_partials(path: Path) -> None:
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.partial-(\d+){re.escape(path.suffix)}")
    with suppress(OSError):
        for entry in os.scandir(path.parent if str(path.parent) else "."):
            match = pattern.fullmatch(entry.name)
            if match and not _running(int(match.group(1))) and entry.is_file(follow_symlinks=False):
                with suppress(OSError):
                    os.unlink(entry.path)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def check_output(output: Path, inputs: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """Refuse an output that is an input, lies inside one (e.g. in an input store) or holds one
    (e.g. an old output folder with an input inside) -- even with ``overwrite`` -- and an existing
    output without ``overwrite``, or one in a folder that does not exist."""
    output = Path(output)
    target = resolved(output)
    for item in inputs:
        source = resolved(Path(item))
        if target == source:
            raise DinosawError(f"output {output} is one of the inputs; choose another name")
        if source.is_relative_to(target):
            raise DinosawError(f"output {output} would replace a folder that holds the input {item}; choose "
                               "another name")
        if target.is_relative_to(source):
            raise DinosawError(f"output {output} lies inside the input {item}; choose another place")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise DinosawError(f"{output} exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise DinosawError(f"output directory {output.parent} does not exist")


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with every symbolic link followed; a link loop is one clear error."""
    try:
        return Path(path).resolve()
    except RuntimeError:  # Python < 3.13 reports a loop so; later versions raise OSError(ELOOP)
        raise DinosawError(f"{path} is a symbolic link loop; point it at a real file") from None
    except OSError as exc:
        raise DinosawError(f"{path}: {exc.strerror or exc}") from None


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output: ``dir/X`` -> ``dir/.X.lock``."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


_HELD: dict[Path, int] = {}  # output -> thread that holds its lock in this process


@contextmanager
def output_lock(outputs: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Own ``outputs`` exclusively while the block runs: another process or thread writing any of them
    gets a :class:`DinosawError` at once (the same thread may nest). Lock files are removed on exit."""
    import filelock

    with ExitStack() as stack:
        for output in sorted({Path(p).absolute() for p in outputs}):
            holder = _HELD.get(output)
            if holder == threading.get_ident():
                continue
            lock = filelock.FileLock(lock_path(output), timeout=0)
            try:
                if holder is not None:
                    raise filelock.Timeout(str(lock_path(output)))
                lock.acquire()
            except filelock.Timeout:
                raise DinosawError(f"{output} is being written by another process (lock {lock_path(output)}); "
                                   "wait for it to finish or choose another output") from None
            except OSError as exc:
                raise DinosawError(f"cannot write beside {output}: {exc.strerror or exc}") from None
            _HELD[output] = threading.get_ident()
            stack.callback(_unlock, lock, output)
        yield


def _unlock(lock, output: Path) -> None:
    """Remove the lock file while still holding it, then release: a process that opened the old file
    sees it unlinked and refuses, so two writers never both hold a lock on one output."""
    _HELD.pop(output, None)
    with suppress(OSError):
        os.unlink(lock.lock_file)
    lock.release()


def make_owned_dir(path: str | os.PathLike) -> Path:
    """Create folder ``path`` with our marker file inside."""
    path = Path(path)
    path.mkdir()
    (path / MARKER).touch()
    return path


def is_owned(path: str | os.PathLike) -> bool:
    """True for a folder this package created (it holds :data:`MARKER`)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def remove_owned(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Delete folder ``path`` if we made it; refuse a folder of that name that is not ours, or one
    that holds an input."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not is_owned(path):
        raise DinosawError(f"{path} exists but was not made by dinosaw-deploy; move it away (it is left untouched)")
    target = resolved(path)
    for item in inputs:
        if resolved(Path(item)).is_relative_to(target):
            raise DinosawError(f"{path} holds the input {item}; move the input out of it (left untouched)")
    shutil.rmtree(path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str | os.PathLike) -> str:
    """:func:`file_sha256`, remembered per (resolved path, size, mtime_ns): free when asked again."""
    key = tuple(fingerprint(path).values())
    if key not in _SHA256_CACHE:
        _SHA256_CACHE[key] = file_sha256(path)
    return _SHA256_CACHE[key]


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file cheaply for resuming: resolved path, size, mtime."""
    real = resolved(path)
    stat = real.stat()
    return {"path": str(real), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_npz(raw: bytes, source: str, max_arrays: int, max_array_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of an untrusted ``.npz``: at most ``max_arrays`` plain-number arrays of at most ``max_array_bytes``
    each, every header checked (dtype, shape, size) before its data is read; anything else is one error naming
    ``source``."""
    fmt = np.lib.format
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
            if len(infos) > max_arrays:
                raise DinosawError(f"{source}: {len(infos)} members, at most {max_arrays}")
            for info in infos:
                key = info.filename.removesuffix(".npy")
                if info.filename == key or "/" in key or info.file_size > max_array_bytes + 4096:
                    raise DinosawError(f"{source}: member {info.filename[:60]!r} is not a bounded .npy array")
                with archive.open(info) as member:
                    version = fmt.read_magic(member)
                    if version not in ((1, 0), (2, 0)):
                        raise DinosawError(f"{source}: {key}: unsupported .npy version {version}")
                    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, fortran, dtype = reader(member)
                    if dtype.kind not in "fiub" or dtype.hasobject or dtype.fields is not None:
                        raise DinosawError(f"{source}: {key}: dtype {dtype} is not a plain number type")
                    count = math.prod(shape)
                    if count * dtype.itemsize > max_array_bytes:
                        raise DinosawError(f"{source}: {key} declares shape {shape} ({count * dtype.itemsize} bytes), "
                                           f"more than {max_array_bytes}")
                    body = member.read(count * dtype.itemsize + 1)
                if len(body) != count * dtype.itemsize:
                    raise DinosawError(f"{source}: {key}: {len(body)} data bytes for shape {shape} {dtype}")
                array = np.frombuffer(bytearray(body), dtype=dtype, count=count)
                arrays[key] = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError) as exc:
        raise DinosawError(f"{source}: unreadable ({type(exc).__name__}: {exc})") from None
    return arrays
