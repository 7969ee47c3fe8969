"""napari reader: a scan opened lazily as a multiscale image over our region reader.

Each level is an array-like (``shape``, ``dtype``, ``ndim``, ``__getitem__``) that reads only the
requested region of the file: the file's own pyramid levels where it has them, and for a large
image without a pyramid, levels that read level 0 with a stride (the coarsest is then slow to draw
once, as every tile of the file is decoded; write scans with a pyramid to avoid that). The layer's
scale is the pixel size in micrometres when the file gives it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.reader import TIFF_SUFFIXES, ImageReader, open_image

COARSEST_SIDE = 2048  # levels are added until the smallest fits this
BAND_ROWS = 512  # level-0 rows read at a time for a strided level


class Level:
    """One resolution level of a scan as a lazy 2D (or RGB: 3D) array; ``stride`` > 1 subsamples ``reader``."""

    def __init__(self, reader: ImageReader, stride: int = 1) -> None:
        self.reader, self.stride = reader, stride
        height, width = reader.shape
        channels = reader.info.channels
        self.shape = (-(-height // stride), -(-width // stride)) + ((channels,) if channels > 1 else ())
        self.dtype = reader.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows, cols = (key + (slice(None),) * 2)[:2]
        y0, y1 = _bounds(rows, self.shape[0])
        x0, x1 = _bounds(cols, self.shape[1])
        region = self._read(y0, y1, x0, x1)
        squeeze = tuple(0 if isinstance(k, (int, np.integer)) else slice(None) for k in (rows, cols))
        return region[squeeze + tuple(key[2:])]

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows y0..y1, columns x0..x1 of this level: level-0 bands of about :data:`BAND_ROWS` rows read and
        subsampled one at a time, so memory stays that of one band, never of the whole region at full size."""
        s = self.stride
        height, width = self.reader.shape
        cols = min(x1 * s, width) - x0 * s
        if s == 1:
            return self.reader.read_region(y0, x0, y1 - y0, cols)
        rows_per_band = max(1, BAND_ROWS // s)  # output rows per band
        bands = []
        for y in range(y0, y1, rows_per_band):
            top, stop = y * s, min(min(y + rows_per_band, y1) * s, height)
            band = self.reader.read_region(top, x0 * s, stop - top, cols)
            bands.append(band[::s, ::s].copy())  # a copy: a strided view would keep the whole band alive
        return np.concatenate(bands, axis=0)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        region = self[:, :]
        return region if dtype is None else region.astype(dtype)


def _bounds(index: Any, size: int) -> tuple[int, int]:
    """[start, stop) of an int or unit-step slice along an axis of ``size``."""
    if isinstance(index, (int, np.integer)):
        start = int(index) % size
        return start, start + 1
    start, stop, step = index.indices(size)
    if step != 1:
        raise IndexError("only unit-step slices of a scan level are supported")
    return start, max(stop, start + 1)


def scan_levels(path: str | os.PathLike) -> list[Level]:
    """The levels of ``path``, finest first: the file's pyramid, then strided levels of the last one
    until the coarsest fits :data:`COARSEST_SIDE`."""
    base = open_image(path)
    levels = [Level(base)]
    for index in range(1, len(base.info.levels)):
        levels.append(Level(open_image(path, level=index)))
    while max(levels[-1].shape[:2]) > COARSEST_SIDE:
        last = levels[-1]
        levels.append(Level(last.reader, last.stride * 2))
    return levels


def layer_scale(reader: ImageReader) -> tuple[float, float]:
    """(y, x) micrometres per pixel, or (1, 1) when the file does not say."""
    size = reader.info.pixel_size
    return (1.0, 1.0) if size is None else (size[0] * 1e6, size[1] * 1e6)


def read_scan(path: str | list[str]) -> list[tuple]:
    """The napari ReaderFunction: one multiscale image layer."""
    path = path[0] if isinstance(path, list) else path
    levels = scan_levels(path)
    base = levels[0].reader
    metadata = {"path": str(Path(path).resolve()), "pixel_size": base.info.pixel_size}
    kwargs = {"name": Path(path).name, "multiscale": len(levels) > 1, "scale": layer_scale(base),
              "rgb": base.info.channels > 1, "metadata": metadata}
    return [(levels if len(levels) > 1 else levels[0], kwargs, "image")]


def get_reader(path: str | list[str]):
    """``read_scan`` for one TIFF we can open, else None (napari then asks other readers)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        open_image(path).close()
    except DinosawError:
        return None
    return read_scan
