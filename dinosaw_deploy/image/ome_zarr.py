"""Label (and probability) images as OME-Zarr: an NGFF 0.5 multiscale image in a zarr v3 group.

Layout of ``seg.ome.zarr``::

    zarr.json     {"ome": {"version": "0.5", "multiscales": [...]}}: axes y, x (or c, y, x) in
                  micrometres when the pixel size is known, one ``scale`` transform per level
    0/ 1/ ...     levels: full resolution, then 2x, 4x, ... smaller until a level fits one chunk;
                  nearest neighbour (every 2nd pixel of the level above, as the OME-TIFF writer
                  does: right for label images)

Level 0 is written first, chunk-aligned (by one process tile by tile, or by many workers, no two
writing one chunk); :func:`build_levels` then computes each level from the one above, block by
block (:func:`downsample_block`, a pure function of the level above, so the blocks of one level can
run anywhere). Metadata is written by hand (a dozen keys), so writing needs only zarr; any NGFF
reader (``ome-zarr``, napari, Fiji's n5 viewer, QuPath) opens the result.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.box import Box
from dinosaw_deploy.image.ome_writer import pyramid_factors

NGFF_VERSION = "0.5"
SUFFIX = ".ome.zarr"
MapFn = Callable[[Callable[[Box], Any], list[Box]], Iterable[Any]]


def level_shapes(height: int, width: int, chunk: int) -> list[tuple[int, int]]:
    """(h, w) of every level: full size, then halved (rounding up) until one chunk holds it -- the
    levels of the OME-TIFF pyramid (:func:`~dinosaw_deploy.image.ome_writer.pyramid_factors`)."""
    return [(-(-height // f), -(-width // f)) for f in pyramid_factors(height, width, chunk)]


def _metadata(shape: tuple[int, ...], levels: int, pixel_size: tuple[float, float] | None,
              name: str | None) -> dict[str, Any]:
    unit = {} if pixel_size is None else {"unit": "micrometer"}
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    size = (1.0, 1.0) if pixel_size is None else tuple(float(v) * 1e6 for v in pixel_size)
    channel = len(shape) == 3
    if channel:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = [{"path": str(k), "coordinateTransformations": [
        {"type": "scale", "scale": [*([1.0] if channel else []), size[0] * 2**k, size[1] * 2**k]}]}
        for k in range(levels)]
    multiscale = {"axes": axes, "datasets": datasets, "type": "subsample (every 2nd pixel)"}
    if name:
        multiscale["name"] = name
    return {"version": NGFF_VERSION, "multiscales": [multiscale]}


def create_ome_zarr(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    *,
    dtype: str = "uint8",
    chunk: int = 512,
    pixel_size: tuple[float, float] | None = None,
    channel_names: Sequence[str] | None = None,
    name: str | None = None,
) -> Path:
    """Create (replacing) an empty OME-Zarr of ``shape`` ((H, W) or (C, H, W)) with all its levels
    and metadata; fill level 0 (:func:`open_level`), then call :func:`build_levels`.

    Args:
        chunk: chunk edge in px; write level 0 in blocks whose edges lie on multiples of it.
        pixel_size: (y, x) metres per pixel of level 0, or None (unit-less scale 1).
        channel_names: names of the C channels (``omero`` metadata), for (C, H, W) images.
    """
    import zarr

    path = Path(path)
    if len(shape) not in (2, 3):
        raise DinosawError(f"OME-Zarr images must be (H, W) or (C, H, W), got shape {shape}")
    shapes = level_shapes(shape[-2], shape[-1], chunk)
    group = zarr.open_group(path, mode="w", zarr_format=3)
    lead = tuple(shape[:-2])
    dims = ("c", "y", "x")[-len(shape):]
    for k, (h, w) in enumerate(shapes):
        group.create_array(str(k), shape=(*lead, h, w), chunks=(*(1 for _ in lead), chunk, chunk), dtype=dtype,
                           fill_value=0, dimension_names=dims)
    attrs: dict[str, Any] = {"ome": _metadata(tuple(shape), len(shapes), pixel_size, name)}
    if channel_names is not None:
        attrs["ome"]["omero"] = {"channels": [{"label": str(n), "active": True} for n in channel_names]}
    group.attrs.update(attrs)
    return path


def open_level(path: str | os.PathLike, level: int = 0, mode: str = "r+"):
    """One level of an OME-Zarr written by :func:`create_ome_zarr`, as a zarr array."""
    import zarr

    return zarr.open_array(Path(path) / str(level), mode=mode)


def num_levels(path: str | os.PathLike) -> int:
    import zarr

    return len(zarr.open_group(path, mode="r").attrs["ome"]["multiscales"][0]["datasets"])


def level_boxes(path: str | os.PathLike, level: int, block: int) -> list[Box]:
    """Row-major (y0, y1, x0, x1) blocks of ``level`` with edges on multiples of ``block`` (a
    multiple of the chunk, so no two blocks write one chunk)."""
    array = open_level(path, level, mode="r")
    chunk = array.chunks[-1]
    if block % chunk:
        raise DinosawError(f"block {block} px is not a multiple of the chunk ({chunk} px)")
    height, width = array.shape[-2:]
    return [(y, min(y + block, height), x, min(x + block, width))
            for y in range(0, height, block) for x in range(0, width, block)]


def downsample_block(path: str | os.PathLike, level: int, box: Box) -> Box:
    """Write ``box`` of ``level`` (>= 1) as every 2nd pixel of ``level - 1``; returns ``box``."""
    y0, y1, x0, x1 = box
    source = open_level(path, level - 1, mode="r")
    block = np.asarray(source[..., 2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2])
    open_level(path, level)[..., y0:y1, x0:x1] = block
    return box


def build_levels(path: str | os.PathLike, *, block: int | None = None, map_fn: MapFn | None = None) -> None:
    """Compute levels 1, 2, ... from level 0 (which must be complete), one level after the other.

    ``map_fn(func, boxes)`` runs ``downsample_block`` on every box of a level and returns when all
    are done (default: here, one after the other; the cluster passes a distributed map).
    Memory per block: 5 x block^2 x channels x itemsize."""
    run = map_fn or (lambda func, items: [func(item) for item in items])
    for level in range(1, num_levels(path)):
        size = block or open_level(path, level, mode="r").chunks[-1]
        list(run(lambda box, lv=level: downsample_block(path, lv, box), level_boxes(path, level, size)))


def publish(built: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move the finished OME-Zarr ``built`` to ``path`` (same filesystem), replacing an old one only
    once the new one is in place."""
    built, path = Path(built), Path(path)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(built, path)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()
    return path
