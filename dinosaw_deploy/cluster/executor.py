"""The client side: cut the job into blocks, ship the fitted state once, submit the blocks not yet
done, wait, and fail with the name of the block that failed.

:class:`DaskTiles` replaces ``run_tiles`` in ``tiling.pipeline.extract_tiled`` (the feature store);
:class:`DaskExecutor` runs both tiled stages of ``segment.run.segment_scan`` / ``apply_scan``::

    with connect("local:2") as client:
        extract_tiled(reader, fx, "feats.zarr", runner=DaskTiles(client))
        segment_scan("scan.tif", "scribbles.png", "seg.ome.zarr", extractor=fx,
                     run=RunOptions(executor=DaskExecutor(client)))

Fitting (intensity range, CLAHE, PCA, XGBoost) and the final files stay on the client; it never
holds more than one block's worth of any full-resolution plane.
"""
from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dinosaw_deploy.cluster.blocks import (
    DEFAULT_BLOCK,
    DEFAULT_LABEL_BLOCK,
    block_name,
    extent,
    feature_blocks,
    label_blocks,
)
from dinosaw_deploy.cluster.connect import CONNECT_TIMEOUT_S, connect
from dinosaw_deploy.cluster.tasks import FeatureJob, ImageRef, PredictJob, feature_block, predict_block
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import fingerprint
from dinosaw_deploy.image.reader import ImageReader
from dinosaw_deploy.segment.merger import ZarrMerger
from dinosaw_deploy.segment.options import PredictOptions
from dinosaw_deploy.segment.prepared import PreparedImage
from dinosaw_deploy.tiling.grid import TileGrid
from dinosaw_deploy.tiling.pipeline import extract_tiled
from dinosaw_deploy.tiling.store import ARRAY, FeatureStoreWriter

MARKERS = "blocks"
Progress = Callable[[int, int], None]


def image_ref(reader: ImageReader) -> ImageRef:
    """How workers reopen ``reader``'s page/level/crop."""
    info = reader.info
    return ImageRef(str(Path(reader.path).resolve()), info.page, info.level, info.databar_rows > 0)


def run_blocks(client: Any, func: Callable, job: Any, blocks: list[tuple[str, Any]], *, stage: str,
               progress: Progress | None = None) -> dict[str, Any]:
    """Run ``func(job, arg)`` for every ``(name, arg)`` on the cluster, ``job`` scattered once to
    every worker. A worker that dies has its blocks rerun elsewhere (by the scheduler); a block
    that raises stops the run with a DinosawError naming it; a scheduler that dies, with one saying how to
    resume (the blocks already written keep their markers). Returns timing figures."""
    from distributed import as_completed

    started = time.perf_counter()
    state = client.scatter(job, broadcast=True, hash=False)
    token = uuid.uuid4().hex[:8]
    futures = {client.submit(func, state, arg, key=f"dinosaw-{stage}-{name}-{token}", retries=0): name
               for name, arg in blocks}
    results = []

    def lost() -> DinosawError:
        return DinosawError(f"lost the dask scheduler during the {stage} stage ({len(results)} of {len(futures)} "
                            "blocks finished, and kept): restart the scheduler and its workers, then rerun the same "
                            "command to resume")

    try:
        for future in as_completed(futures):
            if future.status == "error":
                exc = future.exception()
                raise DinosawError(f"{stage} block {futures[future]} failed: {type(exc).__name__}: {exc}")
            if future.status != "finished":  # cancelled or lost: the scheduler went away under us
                raise lost()
            results.append(future.result())
            if progress:
                progress(len(results), len(futures))
    except (OSError, CancelledError):  # the scheduler's connection closed while we waited or gathered (a
        raise lost() from None          # finished future's result is then cancelled: FutureCancelledError)
    finally:
        client.cancel(list(futures))
    seconds = time.perf_counter() - started
    busy = sum(r["seconds"] for r in results)
    return {"blocks": len(results), "seconds": seconds, "block_seconds": busy,
            "tiles": sum(r["tiles"] for r in results),
            "worker_peak_rss_mb": max((r["peak_rss_mb"] for r in results), default=0.0)}


def _todo(markers: Path, names: list[str]) -> set[str]:
    markers.mkdir(parents=True, exist_ok=True)
    return {n for n in names if not (markers / n).exists()}


class DaskTiles:
    """A ``runner`` for ``extract_tiled``: feature blocks on the cluster, written straight into the
    store (``FeatureStoreWriter``'s ``.partial``), resumable from per-block markers."""

    def __init__(self, client: Any, *, block: int = DEFAULT_BLOCK, threads: int = 1, backend: str = "auto") -> None:
        self.client, self.block, self.threads, self.backend = client, block, threads, backend

    def __call__(self, source: ImageReader, extractor: FeatureExtractor, grid: TileGrid, sink: FeatureStoreWriter,
                 intensity_range: tuple[float, float], *, batch: int = 4,
                 progress: Progress | None = None) -> dict[str, Any]:
        if not isinstance(sink, FeatureStoreWriter) or not isinstance(source, ImageReader):
            raise DinosawError("a cluster run reads an image file and writes a zarr feature store")
        markers = sink.partial.resolve() / MARKERS
        boxes = {block_name(b): b for b in feature_blocks(grid, self.block)}
        todo = _todo(markers, list(boxes))
        stamp = fingerprint(extractor.model_path)
        job = FeatureJob(image=image_ref(source), engine=stamp["path"],
                         engine_stamp=(stamp["bytes"], stamp["mtime_ns"]), backend=self.backend,
                         engine_batch=extractor.batch_size, threads=self.threads,
                         grid=grid.to_dict(), intensity_range=tuple(intensity_range), batch=batch,
                         array=str(sink.partial.resolve() / ARRAY), markers=str(markers),
                         bias_jitter=extractor.bias_jitter, jitter_seed=extractor.jitter_seed,
                         debias=None if extractor.debias is None else extractor.debias.to_bytes())
        stats = run_blocks(self.client, feature_block, job, [(n, b) for n, b in boxes.items() if n in todo],
                           stage="features", progress=progress)
        sink.mark_written()
        shutil.rmtree(markers)
        sink.finish()
        return {"tiles_computed": stats["tiles"], "resumed_at_tile": 0, "seconds": stats["seconds"],
                "engine_seconds": stats["block_seconds"],
                "extra": {"blocks": len(boxes), "blocks_computed": stats["blocks"],
                          "block_seconds": stats["block_seconds"],
                          "worker_peak_rss_mb": stats["worker_peak_rss_mb"]}}


class DaskExecutor:
    """The :class:`dinosaw_deploy.segment.options.Executor` of a cluster: ``segment_scan(...,
    run=RunOptions(executor=DaskExecutor(client)))``. ``block``: block edge in px (default: 2688 for features,
    1024 for labels); ``threads``: CPU threads per task (ONNX Runtime, XGBoost); ``backend``: the
    engine backend on the workers."""

    def __init__(self, client: Any, *, block: int | None = None, threads: int = 1, backend: str = "auto") -> None:
        self.client, self.block, self.threads, self.backend = client, block, threads, backend
        self.stats: dict[str, dict[str, Any]] = {}

    @property
    def runner(self) -> DaskTiles:
        """The ``extract_tiled`` runner with these settings."""
        return DaskTiles(self.client, block=self.block or DEFAULT_BLOCK, threads=self.threads, backend=self.backend)

    def extract(self, reader: ImageReader, extractor: FeatureExtractor, store: Path,
                intensity_range: tuple[float, float], progress: Progress | None) -> None:
        self.stats["features"] = extract_tiled(reader, extractor, store, intensity_range=intensity_range,
                                               progress=progress, runner=self.runner)

    def predict(self, prepared: PreparedImage, merger: ZarrMerger, options: PredictOptions, *,
                echo: Callable[[str], None], progress: Progress | None) -> None:
        seg, gray, grid = prepared.segmenter, prepared.gray, prepared.grid
        merger = merger.within(MARKERS)  # per-block markers, apart from an in-process run's per-tile ones
        groups = {block_name(extent(g)): g for g in label_blocks(tuple(gray.shape), seg.tile,
                                                                           self.block or DEFAULT_LABEL_BLOCK)}
        todo = {name for name in groups if not merger.done(name)}
        if len(todo) < len(groups):
            echo(f"{len(groups) - len(todo)} of {len(groups)} blocks already predicted")
        echo(f"predicting {len(todo)} blocks on the cluster ...")
        bundle = seg.to_bytes()
        store = getattr(grid, "path", None)
        if grid is not None and store is None:
            raise DinosawError("a cluster run reads ViT features from a feature store on disk")
        job = PredictJob(image=image_ref(gray.source), bundle=bundle, threads=self.threads,
                         intensity_range=gray.intensity_range, contrast=gray.contrast,
                         store=None if store is None else str(Path(store).resolve()), modal=options.modal,
                         crf=options.crf, exact=options.exact, merger=merger)
        self.stats["predict"] = run_blocks(self.client, predict_block, job,
                                           [(n, g) for n, g in groups.items() if n in todo], stage="predict",
                                           progress=progress)


@contextmanager
def cluster_executor(spec: str, *, block: int | None = None, threads: int = 1, backend: str = "auto",
                     connect_timeout: float = CONNECT_TIMEOUT_S) -> Iterator[DaskExecutor]:
    """``connect(spec, connect_timeout)`` and a :class:`DaskExecutor` on it, for the job's duration."""
    with connect(spec, connect_timeout) as client:
        yield DaskExecutor(client, block=block, threads=threads, backend=backend)
