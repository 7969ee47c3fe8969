"""Preflight: from an image's declared size alone, refuse a run that can never finish.

Checked before any work whose cost grows with the image (no tile is read, nothing sized by the image
is allocated): the declared pixel count against ``max_pixels`` (``--max-pixels``), and the bytes the
outputs will take against the free space of the filesystem each lands on (outputs on one filesystem
are added up). A few-KB compressed TIFF that declares 10⁶ x 10⁶ px stops here with one line.

Sizes are estimates of what the outputs need at least: ViT feature stores at their raw size (float
features of natural images do not compress), label and probability images (uint8, chunk-compressed)
at :data:`LABEL_COMPRESSION` times less than raw, plus a third for their pyramid levels.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dinosaw_deploy.errors import DinosawError

DEFAULT_MAX_PIXELS = 10**11  # 100 Gpx: above every real scan we know of; raise it with --max-pixels
LABEL_COMPRESSION = 16  # the least a uint8 label/probability chunk is assumed to compress by
PYRAMID = 4 / 3  # levels halving in both axes add a third


@dataclass(frozen=True)
class Planned:
    """One output a run will write: where, and about how many bytes (see the module notes)."""

    path: Path
    nbytes: int
    what: str


def check_pixels(shape: tuple[int, int], max_pixels: int, name: str) -> None:
    """Refuse an image that declares more than ``max_pixels`` pixels."""
    if max_pixels < 1:
        raise DinosawError(f"--max-pixels must be >= 1, got {max_pixels}")
    pixels = int(shape[0]) * int(shape[1])
    if pixels > max_pixels:
        raise DinosawError(f"{name} declares {shape[0]}x{shape[1]} = {pixels:.3g} px, above the limit of "
                           f"{max_pixels:.3g} px; if the scan is real, raise --max-pixels (max_pixels=)")


def feature_store_bytes(shape: tuple[int, int], patch_size: int, channels: int, dtype: str = "float16") -> int:
    """Raw bytes of a (C, H // p, W // p) feature store."""
    itemsize = 2 if dtype == "float16" else 4
    return (int(shape[0]) // patch_size) * (int(shape[1]) // patch_size) * int(channels) * itemsize


def label_bytes(shape: tuple[int, int], bands: int = 1) -> int:
    """Least bytes of a uint8 image of ``bands`` channels with its pyramid (:data:`LABEL_COMPRESSION`)."""
    return int(int(shape[0]) * int(shape[1]) * bands * PYRAMID / LABEL_COMPRESSION)


def check_space(planned: Iterable[Planned]) -> None:
    """Refuse when the outputs planned on one filesystem need more than its free space."""
    needs: dict[int, list[Planned]] = {}
    where: dict[int, tuple[Path, int]] = {}
    for item in planned:
        folder = _existing_folder(item.path)
        try:
            device = os.stat(folder).st_dev
            if device not in where:
                where[device] = (folder, shutil.disk_usage(folder).free)
        except OSError:  # an unreadable target is reported by the writer itself
            continue
        needs.setdefault(device, []).append(item)
    for device, items in needs.items():
        folder, free = where[device]
        need = sum(i.nbytes for i in items)
        if need > free:
            what = " + ".join(f"{i.what} {_size(i.nbytes)}" for i in items)
            raise DinosawError(f"the outputs need about {_size(need)} ({what}) but only {_size(free)} is free on the "
                               f"filesystem of {folder}; free space or write the outputs elsewhere")


@contextmanager
def out_of_space(planned: list[Planned]) -> Iterator[None]:
    """Turn a full disk met while writing ``planned`` -- in this thread or raised here from a writer thread --
    into one :class:`DinosawError` naming the filesystem, its free space and the outputs' estimate."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = Path(exc.filename) if exc.filename else planned[0].path if planned else Path.cwd()
        folder = _existing_folder(where)
        try:
            free = _size(shutil.disk_usage(folder).free)
        except OSError:
            free = "unknown"
        need = _size(sum(i.nbytes for i in planned))
        raise DinosawError(f"no space left while writing {where} ({free} free on the filesystem of {folder}; "
                           f"the outputs need at least about {need}): free space or write elsewhere, then rerun "
                           "the same command to resume the unfinished work") from None


def _existing_folder(path: Path) -> Path:
    """``path``'s nearest folder that exists (the output itself need not exist yet)."""
    folder = Path(path).absolute().parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def _size(nbytes: float) -> str:
    value, unit = float(nbytes), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
