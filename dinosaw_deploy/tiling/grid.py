"""The tile grid: split an image's patch grid into equal engine-sized tiles, merge their features back.

All positions are in patches (1 patch = ``patch_size`` px). Tiles have one shape (``tile_h`` x
``tile_w`` patches, the engine size, or the whole grid along an axis that is smaller), origins are
``tile - overlap`` apart, and the last tile of a row/column is shifted inward instead of padded,
so every tile is real image and the engine sees one shape (one cached bias).

Merging weights each tile's tokens with a separable window and divides by the summed weights:

* ``blend`` (default): linear cross-fade across each overlap; weights of neighbouring tiles sum to 1.
* ``central``: every token comes from the tile where it is most central. Ownership changes at
  ``cuts`` (midway between neighbouring tile centres), the weights are 0/1 and the stitched
  features are exactly one tile's output.

Either way the seams (:attr:`TileGrid.cuts_y`, :attr:`TileGrid.cuts_x`) are the ownership
boundaries: the middle of each overlap, where a blend gives both tiles equal weight.

The choice of default was measured (``benchmarks/seams.py``, ``docs/tiled-features.md``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from dinosaw_deploy.engine.preprocess import grid_shape
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.box import Box

WINDOWS = ("central", "blend")


@dataclass(frozen=True)
class Tile:
    """One tile: its (row, col) in the grid and its top-left patch (y0, x0)."""

    row: int
    col: int
    y0: int
    x0: int


def tile_origins(grid: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Origins along one axis: stride ``tile - overlap``, the last one shifted inward to end at ``grid``."""
    if grid <= tile:
        return (0,)
    stride = tile - overlap
    count = math.ceil((grid - tile) / stride) + 1
    return tuple(min(k * stride, grid - tile) for k in range(count))


def ownership_cuts(origins: tuple[int, ...], tile: int) -> tuple[int, ...]:
    """Where ownership passes from tile k to k+1: midway between their centres."""
    return tuple((a + b + tile) // 2 for a, b in zip(origins, origins[1:]))


@lru_cache(maxsize=16)
def _axis_weights(origins: tuple[int, ...], tile: int, window: str) -> list[np.ndarray]:
    """Per-tile 1D weights (length ``tile``) along one axis."""
    cuts = ownership_cuts(origins, tile)
    out = []
    for k, origin in enumerate(origins):
        pos = origin + np.arange(tile)
        w = np.ones(tile, dtype=np.float32)
        if window == "central":
            lo = cuts[k - 1] if k else 0
            hi = cuts[k] if k < len(cuts) else origin + tile
            w[(pos < lo) | (pos >= hi)] = 0.0
        else:
            if k:  # ramp up across the overlap with the previous tile
                start, end = origin, origins[k - 1] + tile
                ramp = (pos >= start) & (pos < end)
                w[ramp] = (pos[ramp] - start + 0.5) / (end - start)
            if k + 1 < len(origins):  # ramp down across the overlap with the next tile
                start, end = origins[k + 1], origin + tile
                ramp = (pos >= start) & (pos < end)
                w[ramp] *= (end - pos[ramp] - 0.5) / (end - start)
        out.append(w)
    return out


@dataclass(frozen=True)
class TileGrid:
    """Tiles covering a (grid_h, grid_w) patch grid; build with :meth:`for_image`."""

    grid_h: int
    grid_w: int
    tile_h: int
    tile_w: int
    overlap: int
    patch_size: int = 14
    window: str = "blend"
    origins_y: tuple[int, ...] = field(init=False)
    origins_x: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise DinosawError(f"window must be one of {', '.join(WINDOWS)}, not {self.window!r}")
        tiled = [t for t, g in ((self.tile_h, self.grid_h), (self.tile_w, self.grid_w)) if g > t]
        if self.overlap < 0 or any(self.overlap >= t for t in tiled):
            limit = f" < tile size in patches ({min(tiled)})" if tiled else ""
            raise DinosawError(f"overlap must be 0 <= overlap{limit}, got {self.overlap}")
        object.__setattr__(self, "origins_y", tile_origins(self.grid_h, self.tile_h, self.overlap))
        object.__setattr__(self, "origins_x", tile_origins(self.grid_w, self.tile_w, self.overlap))

    @classmethod
    def for_image(
        cls,
        height: int,
        width: int,
        *,
        tile: int = 518,
        overlap: int = 4,
        patch_size: int = 14,
        window: str = "blend",
    ) -> TileGrid:
        """Grid for an image of ``height`` x ``width`` px; ``tile`` in px (a multiple of
        ``patch_size``), ``overlap`` in patches. Axes shorter than a tile get one tile spanning them."""
        if tile < patch_size or tile % patch_size:
            raise DinosawError(f"tile must be a positive multiple of {patch_size} px, got {tile}")
        gh, gw = grid_shape(height, width, patch_size)
        tp = tile // patch_size
        return cls(gh, gw, min(tp, gh), min(tp, gw), overlap, patch_size, window)

    @property
    def rows(self) -> int:
        return len(self.origins_y)

    @property
    def cols(self) -> int:
        return len(self.origins_x)

    @property
    def num_tiles(self) -> int:
        return self.rows * self.cols

    @property
    def cuts_y(self) -> tuple[int, ...]:
        """Seam rows: token rows r-1 and r come from different tiles for every r here."""
        return ownership_cuts(self.origins_y, self.tile_h)

    @property
    def cuts_x(self) -> tuple[int, ...]:
        """Seam columns (see :attr:`cuts_y`)."""
        return ownership_cuts(self.origins_x, self.tile_w)

    def tiles(self, row: int | None = None) -> list[Tile]:
        """All tiles row-major, or those of one tile row."""
        rows = range(self.rows) if row is None else (row,)
        return [Tile(i, j, self.origins_y[i], x) for i in rows for j, x in enumerate(self.origins_x)]

    def batches(self, row: int, batch: int) -> list[list[Tile]]:
        """The engine batches of tile row ``row``: ``batch`` consecutive tiles each (the last may be shorter).
        The in-process pipeline and the cluster's feature blocks both batch this way, so their outputs match."""
        tiles = self.tiles(row)
        return [tiles[k : k + batch] for k in range(0, len(tiles), batch)]

    def pixel_region(self, tile: Tile) -> tuple[int, int, int, int]:
        """(y0, x0, height, width) in pixels of ``tile``'s image region, as ``read_region`` takes them."""
        p = self.patch_size
        return tile.y0 * p, tile.x0 * p, self.tile_h * p, self.tile_w * p

    def weights(self, tile: Tile) -> np.ndarray:
        """The merge weights of ``tile``: (tile_h, tile_w) float32."""
        wy = _axis_weights(self.origins_y, self.tile_h, self.window)[tile.row]
        wx = _axis_weights(self.origins_x, self.tile_w, self.window)[tile.col]
        return np.outer(wy, wx)

    def accumulate(self, tile: Tile, features: np.ndarray, acc: np.ndarray, wsum: np.ndarray, y0: int,
                   x0: int) -> None:
        """Add ``tile``'s weighted (C, tile_h, tile_w) features to ``acc`` (C, h, w) and its weights to
        ``wsum`` (h, w), accumulators whose first element is patch (y0, x0). The part of the tile outside
        them is left out: it weighs 0 there, or belongs to another block of a distributed run."""
        h, w = wsum.shape
        ys = slice(max(tile.y0, y0), min(tile.y0 + self.tile_h, y0 + h))
        xs = slice(max(tile.x0, x0), min(tile.x0 + self.tile_w, x0 + w))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            return
        local = (slice(ys.start - tile.y0, ys.stop - tile.y0), slice(xs.start - tile.x0, xs.stop - tile.x0))
        out = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        weights = self.weights(tile)[local]
        acc[(slice(None), *out)] += features[(slice(None), *local)] * weights
        wsum[out] += weights

    def row_support(self, row: int) -> tuple[int, int]:
        """Patch rows [start, end) that tile row ``row`` contributes to (non-zero weight)."""
        w = _axis_weights(self.origins_y, self.tile_h, self.window)[row]
        nz = np.flatnonzero(w)
        return self.origins_y[row] + int(nz[0]), self.origins_y[row] + int(nz[-1]) + 1

    def first_row_for(self, patch_row: int) -> int:
        """The first tile row whose output reaches patch rows >= ``patch_row`` (where a resume starts)."""
        return next((i for i in range(self.rows) if self.row_support(i)[1] > patch_row), self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": [self.grid_h, self.grid_w],
            "tile": [self.tile_h, self.tile_w],
            "overlap": self.overlap,
            "patch_size": self.patch_size,
            "window": self.window,
            "origins_y": list(self.origins_y),
            "origins_x": list(self.origins_x),
            "cuts_y": list(self.cuts_y),
            "cuts_x": list(self.cuts_x),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileGrid:
        return cls(*data["grid"], *data["tile"], data["overlap"], data["patch_size"], data["window"])


class RowMerger:
    """Accumulates weighted tile features one tile row at a time and releases finished patch rows.

    Memory: (C, about two tile heights, grid_w) float32, whatever the image height.
    """

    def __init__(self, grid: TileGrid, channels: int, first_tile_row: int = 0):
        self.grid = grid
        self.channels = channels
        self.base = grid.row_support(first_tile_row)[0] if first_tile_row < grid.rows else grid.grid_h
        self._acc = np.zeros((channels, 0, grid.grid_w), np.float32)
        self._wsum = np.zeros((0, grid.grid_w), np.float32)

    def _grow(self, end: int) -> None:
        extra = end - self.base - self._wsum.shape[0]
        if extra > 0:
            self._acc = np.concatenate([self._acc, np.zeros((self.channels, extra, self.grid.grid_w), np.float32)], 1)
            self._wsum = np.concatenate([self._wsum, np.zeros((extra, self.grid.grid_w), np.float32)], 0)

    def add(self, tile: Tile, features: np.ndarray) -> None:
        """Merge one tile's (C, tile_h, tile_w) features."""
        last = int(np.flatnonzero(self.grid.weights(tile).any(1))[-1])  # rows below weigh 0: no room needed
        self._grow(tile.y0 + last + 1)
        self.grid.accumulate(tile, features, self._acc, self._wsum, self.base, 0)

    def release(self, done_tile_row: int) -> tuple[int, np.ndarray]:
        """After tile row ``done_tile_row`` is merged: (first patch row, (C, n, grid_w) final rows)."""
        end = self.grid.row_support(done_tile_row + 1)[0] if done_tile_row + 1 < self.grid.rows else self.grid.grid_h
        n = end - self.base
        rows = self._acc[:, :n] / self._wsum[:n]
        start = self.base
        self._acc, self._wsum, self.base = self._acc[:, n:], self._wsum[n:], end
        return start, rows




def tile_boxes(shape: tuple[int, int], tile: int) -> list[Box]:
    """Row-major pixel boxes (y0, y1, x0, x1) of ``tile`` px covering an image of ``shape``."""
    height, width = shape
    return [(y, min(y + tile, height), x, min(x + tile, width))
            for y in range(0, height, tile) for x in range(0, width, tile)]
