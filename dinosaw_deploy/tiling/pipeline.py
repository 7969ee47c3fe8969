"""The tiled core: tile grid -> reader thread -> batched engine -> row merger -> a sink.

Every tile is a pure function of (image region, fitted state)::

    pixels = source.read_region(*grid.pixel_region(tile))
    x = preprocess(pixels, patch_size=..., mean=..., std=..., intensity_range=fitted_range)
    features = extractor.run(x[None])[0]

:func:`run_tiles` computes exactly that, but reads one band of tile rows at a time (a tile row's
tiles share it) in a background thread that also preprocesses and batches, while the calling thread
runs the engine and merges. Finished patch rows go to the sink as soon as no later tile can touch
them, so memory is O(tile height x image width) whatever the image height. Batches never span two
tile rows, so a resumed run feeds the engine exactly the batches of an uninterrupted one.

The source is any :class:`~dinosaw_deploy.image.reader.RegionSource` (a file reader or an in-memory
array); the sink any :class:`~dinosaw_deploy.tiling.sinks.RowSink` (in memory, the resumable zarr
store). Front doors: :func:`extract_tiled` (file -> store) and :func:`patch_features` (array -> array).
"""
from __future__ import annotations

import queue
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.engine.preprocess import preprocess
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import cached_sha256, fingerprint, output_lock
from dinosaw_deploy.image.intensity import fit_intensity_range
from dinosaw_deploy.image.reader import ArrayRegions, ImageReader, RegionSource
from dinosaw_deploy.tiling.grid import RowMerger, Tile, TileGrid
from dinosaw_deploy.tiling.sinks import ArraySink, RowSink
from dinosaw_deploy.tiling.store import FeatureStoreWriter

DTYPES = ("float16", "float32")
_DONE = object()


def tile_input(pixels: np.ndarray, extractor: FeatureExtractor, intensity_range: tuple[float, float]) -> np.ndarray:
    """One tile's engine input (3, H, W) from its pixels and the image's fitted intensity range."""
    return preprocess(
        pixels, patch_size=extractor.patch_size, mean=extractor.mean, std=extractor.std, intensity_range=intensity_range
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB: ``VmHWM`` (reset by exec, unlike ``ru_maxrss``,
    which a spawned worker inherits from the process that forked it), else ``ru_maxrss`` (in KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tile_batch(band: np.ndarray, band_x0: int, tiles: list[Tile], grid: TileGrid, extractor: FeatureExtractor,
               intensity_range: tuple[float, float]) -> np.ndarray:
    """Engine inputs (B, 3, H, W) of ``tiles`` of one tile row, cut from ``band`` (that row's pixels from
    column ``band_x0`` px on); NaN or infinite pixels are refused."""
    p, tw = grid.patch_size, grid.tile_w * grid.patch_size
    inputs = np.stack([tile_input(band[:, t.x0 * p - band_x0 : t.x0 * p - band_x0 + tw], extractor, intensity_range)
                       for t in tiles])
    if not np.isfinite(inputs).all():
        raise DinosawError(f"tile row {tiles[0].row} contains NaN or infinite pixel values")
    return inputs


def _batches(
    reader: RegionSource,
    grid: TileGrid,
    extractor: FeatureExtractor,
    intensity_range: tuple[float, float],
    first_row: int,
    batch: int,
):
    """Yield (tile row, tiles, inputs (B, 3, H, W), last batch of its row?) from ``first_row`` on."""
    p = grid.patch_size
    th = grid.tile_h * p
    for row in range(first_row, grid.rows):
        band = reader.read_region(grid.origins_y[row] * p, 0, th, grid.grid_w * p)
        chunks = grid.batches(row, batch)
        for k, chunk in enumerate(chunks):
            yield row, chunk, tile_batch(band, 0, chunk, grid, extractor, intensity_range), k == len(chunks) - 1


class _Prefetcher(threading.Thread):
    """Runs a generator in a thread, handing items (or its exception) over a small queue."""

    def __init__(self, items, depth: int = 2):
        super().__init__(daemon=True, name="dinosaw-reader")
        self._items, self.queue, self._stop = items, queue.Queue(maxsize=depth), threading.Event()

    def run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self._stop.set()


def run_tiles(
    source: RegionSource,
    extractor: FeatureExtractor,
    grid: TileGrid,
    sink: RowSink,
    intensity_range: tuple[float, float],
    *,
    batch: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every tile from the sink's first unfinished row on and hand finished patch rows to
    ``sink``; returns timing figures (tiles computed, seconds, engine-busy seconds)."""
    if batch < 1:
        raise DinosawError("batch must be >= 1")
    first_row = grid.first_row_for(sink.rows_done)
    merger = RowMerger(grid, extractor.embed_dim, first_row)
    done = first_row * grid.cols
    if progress:
        progress(done, grid.num_tiles)
    started, busy = time.perf_counter(), 0.0
    prefetch = _Prefetcher(_batches(source, grid, extractor, intensity_range, first_row, batch))
    prefetch.start()
    try:
        while (item := prefetch.queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            row, tiles, inputs, row_done = item
            t0 = time.perf_counter()
            feats = extractor.run(inputs)
            busy += time.perf_counter() - t0
            for t, f in zip(tiles, feats):
                merger.add(t, f)
            if row_done:
                sink.write_rows(*merger.release(row))
            done += len(tiles)
            if progress:
                progress(done, grid.num_tiles)
    finally:
        prefetch.stop()
    sink.finish()
    return {"tiles_computed": done - first_row * grid.cols, "resumed_at_tile": first_row * grid.cols,
            "seconds": time.perf_counter() - started, "engine_seconds": busy}


def patch_features(
    image: np.ndarray,
    extractor: FeatureExtractor,
    *,
    tile: int = 518,
    overlap: int = 4,
    window: str = "blend",
    batch: int = 4,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """(C, H // p, W // p) float32 stitched patch features of an in-memory image, by the same tiles,
    intensity rule and merge as :func:`extract_tiled` on a file (nothing touches the disk)."""
    source = ArrayRegions(image)
    grid = TileGrid.for_image(*source.shape, tile=tile, overlap=overlap, patch_size=extractor.patch_size,
                              window=window)
    sink = ArraySink(extractor.embed_dim, grid.grid_h, grid.grid_w)
    run_tiles(source, extractor, grid, sink, fit_intensity_range(source, intensity_range=intensity_range),
              batch=batch)
    return sink.array


def extract_tiled(
    reader: ImageReader,
    extractor: FeatureExtractor,
    output: str | Path,
    *,
    tile: int = 518,
    overlap: int = 4,
    window: str = "blend",
    batch: int = 4,
    dtype: str = "float16",
    intensity_range: tuple[float, float] | None = None,
    percentiles: tuple[float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    runner: Callable[..., dict[str, Any]] = run_tiles,
) -> dict[str, Any]:
    """Write the (C, H // 14, W // 14) feature map of ``reader``'s image to the zarr store ``output``,
    resuming a matching unfinished run. Returns the run summary (tiles, tiles/s, engine-busy
    fraction, peak RSS...). ``runner`` computes the tiles into the store (same signature as
    :func:`run_tiles`, the default; ``dinosaw_deploy.cluster.DaskTiles`` runs them on a cluster)."""
    if dtype not in DTYPES:
        raise DinosawError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    output = Path(output)
    height, width = reader.shape
    grid = TileGrid.for_image(height, width, tile=tile, overlap=overlap, patch_size=extractor.patch_size, window=window)
    lo_hi = fit_intensity_range(reader, intensity_range=intensity_range, percentiles=percentiles)
    image = reader.info.to_dict()
    engine = {"path": str(extractor.model_path), "sha256": cached_sha256(extractor.model_path),
              "name": extractor.manifest.get("model"), **getattr(extractor, "feature_settings", {})}
    run = {"image": {**image, **fingerprint(reader.path)}, "engine_sha256": engine["sha256"],
           "feature_settings": getattr(extractor, "feature_settings", {}),
           "grid": grid.to_dict(), "dtype": dtype, "intensity_range": lo_hi}
    with output_lock([output]):  # one writer per store, for the whole run
        writer = FeatureStoreWriter(
            output,
            grid=grid,
            channels=extractor.embed_dim,
            dtype=dtype,
            attrs={"image": image, "intensity_range": lo_hi, "engine": engine, "dtype": dtype},
            run=run,
        )
        stats = runner(reader, extractor, grid, writer, lo_hi, batch=batch, progress=progress)
    seconds, computed = stats["seconds"], stats["tiles_computed"]
    return {
        "output": str(output),
        "shape": [extractor.embed_dim, grid.grid_h, grid.grid_w],
        "dtype": dtype,
        "megapixels": height * width / 1e6,
        "tiles": grid.num_tiles,
        "tiles_computed": computed,
        "resumed_at_tile": stats["resumed_at_tile"],
        "tile": [grid.tile_h * grid.patch_size, grid.tile_w * grid.patch_size],
        "overlap": grid.overlap,
        "window": grid.window,
        "batch": batch,
        "intensity_range": list(lo_hi),
        "pixel_size": image["pixel_size"],
        "seconds": seconds,
        "tiles_per_s": computed / seconds if seconds > 0 else 0.0,
        "engine_busy": stats["engine_seconds"] / seconds if seconds > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
        **stats.get("extra", {}),
    }
