"""Where the tiled core puts finished patch rows: one interface, in memory or on disk.

A sink receives (C, n, grid_w) blocks of final patch rows in order (:meth:`RowSink.write_rows`),
reports how many rows it already holds (``rows_done``, where a resumed run starts) and is told when
the last row arrived (:meth:`RowSink.finish`). :class:`ArraySink` keeps them in memory;
:class:`~dinosaw_deploy.tiling.store.FeatureStoreWriter` is the resumable zarr store.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class RowSink(Protocol):
    """Receives finished patch rows from :func:`dinosaw_deploy.tiling.pipeline.run_tiles`."""

    rows_done: int

    def write_rows(self, start: int, rows: np.ndarray) -> None: ...

    def finish(self) -> object: ...


class ArraySink:
    """Collects the stitched (C, h, w) float32 feature map in memory (``.array``)."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        self.array = np.zeros((channels, height, width), np.float32)
        self.rows_done = 0

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        if start != self.rows_done:
            raise ValueError(f"rows must arrive in order: expected row {self.rows_done}, got {start}")
        self.array[:, start : start + rows.shape[1]] = rows
        self.rows_done = start + rows.shape[1]

    def finish(self) -> np.ndarray:
        if self.rows_done != self.array.shape[1]:
            raise ValueError(f"incomplete: {self.rows_done} of {self.array.shape[1]} rows written")
        return self.array
