"""What a worker runs: one block, a pure function of (image region, fitted state), written
chunk-aligned into a zarr array, then a done-marker.

The fitted state (:class:`FeatureJob`, :class:`PredictJob`) is scattered to every worker once; a
worker opens the image itself (a path on a filesystem it shares with the client) and keeps the
engine and the segmenter it loads in this process (:data:`_CACHE`), so a block costs its compute
and its writes only. A marker is written only after the block's data, so a rerun skips exactly the
blocks that are on disk; a block cut short by a killed worker has no marker and is redone.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.cluster.blocks import block_batches, block_name, extent
from dinosaw_deploy.engine.debias import PositionalSubspace
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.image.reader import open_image
from dinosaw_deploy.segment.contrast import Clahe
from dinosaw_deploy.segment.merger import ZarrMerger
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.tiling.grid import Box, TileGrid
from dinosaw_deploy.tiling.pipeline import peak_rss_mb, tile_batch
from dinosaw_deploy.tiling.store import CHUNK, FeatureStore

_CACHE: dict[tuple, Any] = {}  # engines and segmenters of this worker process, newest last
_CACHE_SIZE = 4
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageRef:
    """How a worker opens the image: ``open_image(path, page=, level=, crop_databar=)``."""

    path: str
    page: int = 0
    level: int = 0
    crop_databar: bool = False

    def open(self):
        return open_image(self.path, page=self.page, level=self.level, crop_databar=self.crop_databar)


@dataclass(frozen=True)
class FeatureJob:
    """Everything a feature block needs besides its box."""

    image: ImageRef
    engine: str
    engine_stamp: tuple[int, int]  # (bytes, mtime_ns): a replaced engine file is reloaded
    backend: str
    engine_batch: int
    threads: int
    grid: dict[str, Any]
    intensity_range: tuple[float, float]
    batch: int
    array: str  # the store's features array
    markers: str
    bias_jitter: float = 0.0
    jitter_seed: int = 0
    debias: bytes | None = None  # a PositionalSubspace's bytes


@dataclass(frozen=True)
class PredictJob:
    """Everything a label block needs besides its tiles: the model as ``.dsw`` bytes."""

    image: ImageRef
    bundle: bytes
    threads: int
    intensity_range: tuple[float, float]
    contrast: Clahe | None
    store: str | None  # the ViT feature store, for ViT models
    modal: int
    crf: bool
    exact: bool
    merger: ZarrMerger  # the labels / probabilities arrays and the block markers


def _cached(key: tuple, make):
    with _LOCK:
        if key not in _CACHE:
            while len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = make()
        return _CACHE[key]


def _engine(job: FeatureJob) -> FeatureExtractor:
    debias = None if job.debias is None else hashlib.sha256(job.debias).hexdigest()
    key = ("engine", job.engine, job.engine_stamp, job.backend, job.engine_batch, job.threads, job.bias_jitter,
           job.jitter_seed, debias)
    return _cached(key, lambda: FeatureExtractor(
        job.engine, backend=job.backend, batch_size=job.engine_batch, threads=job.threads,
        bias_jitter=job.bias_jitter, jitter_seed=job.jitter_seed,
        debias=None if job.debias is None else PositionalSubspace.from_bytes(job.debias)))


def _segmenter(job: PredictJob) -> Segmenter:
    digest = hashlib.sha256(job.bundle).hexdigest()

    return _cached(("segmenter", digest, job.threads), lambda: Segmenter.from_bytes(job.bundle, threads=job.threads))


def _done(markers: str, name: str) -> None:
    Path(markers, name).touch()


def feature_block(job: FeatureJob, box: Box) -> dict[str, float]:
    """Stitched (C, r1-r0, c1-c0) features of patch box ``box``, written into ``job.array``."""
    import zarr

    started = time.perf_counter()
    grid = TileGrid.from_dict(job.grid)
    fx = _engine(job)
    p = grid.patch_size
    r0, r1, c0, c1 = box
    acc = np.zeros((fx.embed_dim, r1 - r0, c1 - c0), np.float32)
    wsum = np.zeros((r1 - r0, c1 - c0), np.float32)
    th, tw = grid.tile_h * p, grid.tile_w * p
    tiles = 0
    with job.image.open() as reader:
        for chunk in block_batches(grid, box, job.batch):
            x_lo = chunk[0].x0 * p
            band = reader.read_region(chunk[0].y0 * p, x_lo, th, chunk[-1].x0 * p + tw - x_lo)
            inputs = tile_batch(band, x_lo, chunk, grid, fx, job.intensity_range)
            for t, f in zip(chunk, fx.run(inputs)):
                grid.accumulate(t, f, acc, wsum, r0, c0)
            tiles += len(chunk)
    array = zarr.open_array(job.array, mode="r+")
    acc /= wsum  # in place; cast and written one chunk row at a time: the block's memory is acc + wsum
    for r in range(0, r1 - r0, CHUNK):
        array[:, r0 + r : min(r0 + r + CHUNK, r1), c0:c1] = acc[:, r : r + CHUNK].astype(array.dtype, copy=False)
    _done(job.markers, block_name(box))
    return {"tiles": tiles, "seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}


def predict_block(job: PredictJob, boxes: list[Box]) -> dict[str, float]:
    """Labels (and probabilities) of the prediction tiles ``boxes``, written into ``job.targets``."""
    started = time.perf_counter()
    seg = _segmenter(job)
    grid = FeatureStore.open(job.store) if job.store else None
    with job.image.open() as reader:
        prepared = seg.prepare(reader, intensity_range=job.intensity_range, contrast=job.contrast, grid=grid,
                               cache_bytes=0)
        tiles = prepared.tiles(boxes, modal=job.modal, crf=job.crf, exact=job.exact,
                               probabilities=job.merger.stores_probabilities)
        for box, tile_labels, tile_probs in tiles:
            job.merger.aggregate(box, tile_labels, tile_probs)
    job.merger.mark(block_name(extent(boxes)))
    return {"tiles": len(boxes), "seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}

