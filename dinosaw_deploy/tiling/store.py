"""The on-disk feature map of a tiled run: a zarr v3 group holding one chunked (C, h, w) array.

Layout of ``feats.zarr``::

    zarr.json            group attributes: format, complete, grid (TileGrid.to_dict), image
                         (ImageInfo.to_dict: pixel size, vendor, page, level...), intensity_range,
                         engine, dtype, run (what must match to resume), progress
    features/            (C, h, w) float16/float32, chunks (C, 64, 64), zstd

While running, the store lives at ``feats.zarr.partial``, which carries the marker file of
:func:`dinosaw_deploy.files.make_owned_dir` (a folder of that name we did not make is never
deleted). Rows are written in whole chunk rows, and after each write ``progress`` records
``rows_done`` (patch rows on disk, a multiple of the chunk height) and ``tiles_done`` (tiles whose
output lies entirely above: never recomputed). A rerun with the same ``run`` record resumes there;
anything else starts over. Only at the end is ``complete`` set and the directory renamed to its
final name, so an unfinished store never carries it.
(:func:`dinosaw_deploy.files.atomic_path` is not used here: its per-process temporary name is
deleted on failure, and a resumable run needs a stable one that survives.)
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import is_owned, make_owned_dir, remove_owned
from dinosaw_deploy.tiling.grid import TileGrid

FORMAT = "dinosaw-deploy/features"
FORMAT_VERSION = 1
ARRAY = "features"
CHUNK = 64


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished store lives: ``feats.zarr`` -> ``feats.zarr.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(record))


class PatchGrid(Protocol):
    """Stitched patch features, read by patch coordinates (:class:`FeatureStore`, :class:`ArrayGrid`)."""

    shape: tuple[int, int, int]

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray: ...


class ArrayGrid:
    """An in-memory (C, h, w) feature array as a :class:`PatchGrid`."""

    def __init__(self, features: np.ndarray) -> None:
        self.array = np.asarray(features, dtype=np.float32)
        if self.array.ndim != 3:
            raise DinosawError(f"patch features must be (C, h, w), got {self.array.shape}")
        self.shape = self.array.shape

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        return self.array[:, y0 : y0 + h, x0 : x0 + w]


class FeatureStore:
    """A finished feature store, read-only. ``FeatureStore.open("feats.zarr")``."""

    def __init__(self, path: Path, group: Any):
        self.path = path
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.array = group[ARRAY]

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureStore":
        """Open a complete store; unfinished, foreign or newer-format stores raise DinosawError."""
        import zarr

        path = Path(path)
        if not path.is_dir():
            unfinished = partial_path(path)
            hint = f" (an unfinished run is at {unfinished}; rerun it to finish)" if unfinished.is_dir() else ""
            raise DinosawError(f"feature store not found: {path}{hint}")
        try:
            group = zarr.open_group(path, mode="r")
            attrs = dict(group.attrs)
        except Exception as exc:
            raise DinosawError(f"{path}: not a readable zarr store ({type(exc).__name__}: {exc})") from None
        if attrs.get("format") != FORMAT or ARRAY not in group:
            raise DinosawError(f"{path}: not a dinosaw-deploy feature store")
        if attrs.get("format_version", 0) > FORMAT_VERSION:
            raise DinosawError(
                f"{path}: feature store format {attrs['format_version']} is newer than this package reads; upgrade it"
            )
        if not attrs.get("complete"):
            raise DinosawError(f"{path}: the feature store is unfinished (its run was interrupted); rerun it")
        return cls(path, group)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, h, w)."""
        return tuple(self.array.shape)

    @property
    def embed_dim(self) -> int:
        return self.shape[0]

    @property
    def patch_size(self) -> int:
        return int(self.grid.patch_size)

    @property
    def grid(self) -> TileGrid:
        """The tile grid the features were made with (a malformed record is a DinosawError)."""
        record = self.attrs.get("grid")
        try:
            grid = TileGrid.from_dict(record)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DinosawError(f"{self.path}: invalid tile-grid record in the store ({type(exc).__name__}: "
                               f"{exc})") from None
        if (grid.grid_h, grid.grid_w) != tuple(self.shape[1:]):
            raise DinosawError(f"{self.path}: the tile-grid record ({grid.grid_h}x{grid.grid_w} patches) does not "
                               f"match the stored features {self.shape}")
        return grid

    @property
    def image(self) -> dict[str, Any]:
        """The source image's record (ImageInfo.to_dict()): pixel_size, vendor, page, level..."""
        return self.attrs["image"]

    @property
    def intensity_range(self) -> tuple[float, float]:
        try:
            lo, hi = self.attrs["intensity_range"]
            return float(lo), float(hi)
        except (KeyError, TypeError, ValueError) as exc:
            raise DinosawError(f"{self.path}: invalid intensity_range record ({exc})") from None

    def read(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        """Patch features [:, y0:y0+height, x0:x0+width] as float32 (patch coordinates)."""
        _, h, w = self.shape
        if y0 < 0 or x0 < 0 or height < 1 or width < 1 or y0 + height > h or x0 + width > w:
            raise DinosawError(f"patch region ({y0}, {x0}, {height}, {width}) is outside the {h}x{w} feature grid")
        return np.asarray(self.array[:, y0 : y0 + height, x0 : x0 + width], dtype=np.float32)


class FeatureStoreWriter:
    """Writes finished patch rows in order into ``<path>.partial``, resuming a matching partial store."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        grid: TileGrid,
        channels: int,
        dtype: str,
        attrs: dict[str, Any],
        run: dict[str, Any],
    ):
        import zarr

        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.grid = grid
        self.run = _jsonable(run)
        self.rows_done = 0
        self._pending: list[np.ndarray] = []
        group = self._resumable()
        try:
            if group is None:
                remove_owned(self.partial)  # ours from an older run; a folder that is not ours is refused
                make_owned_dir(self.partial)
                group = zarr.open_group(self.partial, mode="a")
                group.create_array(
                    ARRAY,
                    shape=(channels, grid.grid_h, grid.grid_w),
                    chunks=(channels, CHUNK, CHUNK),
                    dtype=dtype,
                    fill_value=0,
                    dimension_names=("channel", "y", "x"),
                )
                group.attrs.update(
                    _jsonable({"format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
                               "grid": grid.to_dict(), **attrs, "run": self.run, "progress": self._progress()})
                )
        except OSError as exc:
            raise self._write_error(exc) from None
        self._group = group
        self._array = group[ARRAY]
        self._next = self.rows_done

    def _resumable(self):
        """The partial store's group if it belongs to this very run, else None."""
        import zarr

        if not is_owned(self.partial):
            return None
        try:
            group = zarr.open_group(self.partial, mode="r+")
            attrs = dict(group.attrs)
        except Exception:
            return None
        if attrs.get("format") != FORMAT or attrs.get("run") != self.run or ARRAY not in group:
            return None
        self.rows_done = int(attrs["progress"]["rows_done"])
        return group

    def _progress(self) -> dict[str, int]:
        return {"rows_done": self.rows_done, "tiles_done": self.grid.first_row_for(self.rows_done) * self.grid.cols}

    def _write_error(self, exc: OSError) -> DinosawError:
        return DinosawError(
            f"cannot write {self.partial}: {exc.strerror or exc}; free space or fix the target, "
            "then rerun the same command to resume"
        )

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        """Hand over finished patch rows [start, start + n) as (C, n, w); rows come in order.
        Rows already on disk (a resumed run recomputes a little) are skipped."""
        skip = max(self._next - start, 0)
        if skip >= rows.shape[1]:
            return
        if start + skip != self._next:
            raise ValueError(f"rows must arrive in order: expected row {self._next}, got {start + skip}")
        self._pending.append(rows[:, skip:])
        self._next += rows.shape[1] - skip
        end = self._next if self._next == self.grid.grid_h else self._next - self._next % CHUNK
        if end > self.rows_done:
            self._flush(end)

    def _flush(self, end: int) -> None:
        block = np.concatenate(self._pending, axis=1)
        n = end - self.rows_done
        try:
            self._array[:, self.rows_done : end] = block[:, :n].astype(self._array.dtype)
            self.rows_done = end
            self._group.attrs["progress"] = self._progress()
        except OSError as exc:
            raise self._write_error(exc) from None
        self._pending = [block[:, n:]] if block.shape[1] > n else []

    def mark_written(self) -> None:
        """Record every row as on disk: for runs that wrote the array directly, block by block
        (``dinosaw_deploy.cluster``), before :meth:`finish`."""
        self.rows_done = self._next = self.grid.grid_h
        try:
            self._group.attrs["progress"] = self._progress()
        except OSError as exc:
            raise self._write_error(exc) from None

    def finish(self) -> Path:
        """Mark the store complete and move it to its final name (replacing an old one)."""
        if self.rows_done != self.grid.grid_h:
            raise ValueError(f"store incomplete: {self.rows_done} of {self.grid.grid_h} rows written")
        try:
            self._group.attrs["complete"] = True
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            if self.path.exists():
                os.replace(self.path, old)
            os.replace(self.partial, self.path)
        except OSError as exc:
            raise self._write_error(exc) from None
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists():
            old.unlink()
        return self.path
