"""Tiled, pyramidal OME-TIFF written tile by tile (opens in Fiji / QuPath / napari).

The full-resolution level is read tile by tile from any sliceable array (numpy, zarr) of shape
(H, W) or (C, H, W); each lower level (2x, 4x, ... smaller, nearest-neighbour, right for label
images) is read from the same array with a stride, one tile at a time, until the image fits one
tile. Levels go into SubIFDs as the OME-TIFF pyramid convention asks; the pixel size goes into the
OME-XML (µm) and the TIFF resolution tags (pixels per cm). Memory: one tile per level at a time.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path

DEFAULT_TILE = 512


def pyramid_factors(height: int, width: int, tile: int = DEFAULT_TILE) -> list[int]:
    """Downsampling factors 1, 2, 4, ... until the level fits in one tile."""
    factors = [1]
    while max(-(-height // factors[-1]), -(-width // factors[-1])) > tile:
        factors.append(factors[-1] * 2)
    return factors


def _tiles(array: Any, factor: int, tile: int) -> Iterator[np.ndarray]:
    """Tiles (tile x tile, zero-padded) of ``array[..., ::factor, ::factor]``, channel by channel."""
    channels = array.shape[0] if len(array.shape) == 3 else None
    height, width = array.shape[-2:]
    for c in range(channels or 1):
        for y in range(0, height, tile * factor):
            for x in range(0, width, tile * factor):
                window = (slice(y, min(y + tile * factor, height), factor),
                          slice(x, min(x + tile * factor, width), factor))
                block = np.asarray(array[(c, *window)] if channels else array[window])
                if block.shape != (tile, tile):
                    padded = np.zeros((tile, tile), block.dtype)
                    padded[: block.shape[0], : block.shape[1]] = block
                    block = padded
                yield block


def write_ome_pyramid(
    path: str | os.PathLike,
    array: Any,
    *,
    pixel_size: tuple[float, float] | None = None,
    channel_names: Sequence[str] | None = None,
    tile: int = DEFAULT_TILE,
    compression: str = "zlib",
    name: str | None = None,
) -> Path:
    """Write ``array`` ((H, W) or (C, H, W), uint8/uint16...) as a tiled pyramidal OME-TIFF.

    Args:
        pixel_size: (y, x) metres per pixel of the full-resolution level, or None.
        channel_names: one name per channel (C) for the OME metadata.
        tile: tile size in px (a multiple of 16).
        compression: a tifffile compression name (``zlib`` = deflate, readable everywhere).
    """
    import tifffile

    path = Path(path)
    if tile % 16:
        raise DinosawError(f"OME-TIFF tiles must be a multiple of 16 px, got {tile}")
    shape = tuple(array.shape)
    if len(shape) not in (2, 3):
        raise DinosawError(f"can only write (H, W) or (C, H, W) arrays, got shape {shape}")
    height, width = shape[-2:]
    dtype = np.dtype(array.dtype)
    factors = pyramid_factors(height, width, tile)
    metadata: dict[str, Any] = {"axes": "CYX" if len(shape) == 3 else "YX"}
    if name:
        metadata["Name"] = name
    if channel_names is not None:
        metadata["Channel"] = {"Name": list(channel_names)}
    options: dict[str, Any] = {"tile": (tile, tile), "compression": compression, "dtype": dtype,
                               "photometric": "minisblack"}
    resolution = None
    if pixel_size is not None:
        size_y, size_x = (float(v) * 1e6 for v in pixel_size)  # µm
        metadata.update({"PhysicalSizeY": size_y, "PhysicalSizeYUnit": "µm",
                         "PhysicalSizeX": size_x, "PhysicalSizeXUnit": "µm"})
        options["resolutionunit"] = "CENTIMETER"
        resolution = (1e4 / size_x, 1e4 / size_y)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            for level, factor in enumerate(factors):
                level_shape = (*shape[:-2], -(-height // factor), -(-width // factor))
                extra = {"subifds": len(factors) - 1, "metadata": metadata} if level == 0 else {"subfiletype": 1}
                if resolution is not None:
                    extra["resolution"] = (resolution[0] / factor, resolution[1] / factor)
                tif.write(_tiles(array, factor, tile), shape=level_shape, **options, **extra)
    return path
