"""LiveProcessor: segment (or featurise) microscope frames on a worker thread, as they arrive.

>>> proc = LiveProcessor(Segmenter.load("seg.dsw", extractor=fx), queue_size=4, on_full="drop_oldest")
>>> fut = proc.submit(frame, meta)     # returns at once: a concurrent.futures.Future
>>> res = fut.result()                 # FrameResult: labels, class_fractions, timings, meta
>>> proc.stats(); proc.close()

One worker thread runs the frames one at a time (the engine, filter bank and classifier already use
every core). ``submit`` copies the frame (the acquisition may reuse its buffer), checks its layout
and dtype, and queues it; a full queue drops the oldest or the newest frame, or blocks the
producer. Every future resolves: with a :class:`FrameResult`, with :class:`FrameDropped` (queue
full), with :class:`FrameError` (a bad frame or a failing engine: the worker goes on with the next
frame), or cancelled (``close(cancel=True)``, or by its owner). Frames are tiled in memory exactly
like files, so a frame's labels equal ``Segmenter.predict(frame)`` bit for bit. Memory is bounded:
``queue_size + 1`` frames, and the latency window of :meth:`LiveProcessor.stats`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.reader import to_channels_last
from dinosaw_deploy.segment.prepared import VIT_NEEDS_ENGINE
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.tiling.pipeline import patch_features

log = logging.getLogger(__name__)

ON_FULL = ("drop_oldest", "drop_newest", "block")
STAGES = ("queue", "features", "classify", "total")


class FrameDropped(DinosawError):
    """The frame was never processed: the queue was full (``on_full`` dropped it)."""


class FrameError(DinosawError):
    """The frame could not be processed (bad layout or dtype, NaN pixels, an engine error)."""


@dataclass
class FrameResult:
    """What one frame gave.

    labels: (H, W) uint8 classes 1..K (None for a bare ``FeatureExtractor``).
    features: (C, H // 14, W // 14) float32 patch features (the extractor's result; a ViT
        segmenter's only with ``return_features=True``), else None.
    meta: what was passed to :meth:`LiveProcessor.submit`.
    timings: milliseconds: ``queue`` (waiting), ``features`` (the ViT engine), ``classify``
        (filter bank + classifier), ``total`` (submit to result).
    class_fractions: {class name: fraction of the frame's pixels} (empty without labels).
    """

    labels: np.ndarray | None
    features: np.ndarray | None
    meta: Any
    timings: dict[str, float]
    class_fractions: dict[str, float] = field(default_factory=dict)


@dataclass
class _Job:
    seq: int
    frame: np.ndarray | None
    meta: Any
    future: Future
    submitted: float


class _Stats:
    """Counters and a bounded window of per-stage latencies (ms)."""

    def __init__(self, window: int) -> None:
        self.lock = threading.Lock()
        self.counts = {"done": 0, "dropped": 0, "failed": 0, "cancelled": 0}
        self.latency = {stage: deque(maxlen=window) for stage in STAGES}

    def count(self, outcome: str, timings: dict[str, float] | None = None) -> None:
        with self.lock:
            self.counts[outcome] += 1
            for stage, ms in (timings or {}).items():
                self.latency[stage].append(ms)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = dict(self.counts)
            windows = {stage: np.asarray(values, np.float64) for stage, values in self.latency.items()}
        out["latency_ms"] = {
            stage: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}
            for stage, v in windows.items() if v.size
        }
        return out


class LiveProcessor:
    """Per-frame segmentation (or features) on one worker thread, with a bounded queue.

    Args:
        target: a trained :class:`Segmenter` (result: labels + class fractions) or a
            :class:`FeatureExtractor` (result: features).
        queue_size: frames waiting at most (the one being processed not counted).
        on_full: ``drop_oldest`` (keep the freshest frames), ``drop_newest`` (refuse the new one)
            or ``block`` (the producer waits: back-pressure on the acquisition).
        ordered: resolve futures strictly in submission order (drops and bad frames included).
        crop_bottom: rows cut off the bottom of every frame (an SEM data bar).
        warmup_shape: run one frame of this shape before returning, so the first real one is not slow.
        return_features: also return a ViT segmenter's patch features.
        window: frames the latency statistics cover (the most recent).
    """

    def __init__(
        self,
        target: Segmenter | FeatureExtractor,
        *,
        queue_size: int = 4,
        on_full: str = "drop_oldest",
        ordered: bool = False,
        crop_bottom: int = 0,
        warmup_shape: tuple[int, ...] | None = None,
        return_features: bool = False,
        window: int = 1000,
    ) -> None:
        if isinstance(target, Segmenter):
            target.check_fitted()
            if target.pca is not None and target.extractor is None:
                raise DinosawError(VIT_NEEDS_ENGINE)
        elif not isinstance(target, FeatureExtractor):
            raise DinosawError(f"target must be a Segmenter or a FeatureExtractor, not {type(target).__name__}")
        if on_full not in ON_FULL:
            raise DinosawError(f"on_full must be one of {', '.join(ON_FULL)}, not {on_full!r}")
        if queue_size < 1 or window < 1 or crop_bottom < 0:
            raise DinosawError("queue_size and window must be >= 1, crop_bottom >= 0")
        self.target, self.queue_size, self.on_full = target, queue_size, on_full
        self.ordered, self.crop_bottom, self.return_features = ordered, crop_bottom, return_features
        self._stats = _Stats(window)
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._seq = 0
        self._order_lock = threading.RLock()
        self._next_out = 0
        self._held: dict[int, tuple[Future, Any, BaseException | None]] = {}
        if warmup_shape is not None:
            self.warmup(warmup_shape)
        self._worker = threading.Thread(target=self._run, name="dinosaw-live", daemon=True)
        self._worker.start()

    # -- producer side ----------------------------------------------------------------------
    def submit(self, frame: np.ndarray, meta: Any = None) -> Future:
        """Queue ``frame`` (copied) and return a Future of its :class:`FrameResult`; never raises
        for a bad frame (the future carries the error). Raises only once the processor is closed."""
        submitted = time.perf_counter()
        if self._closed:
            raise DinosawError("the LiveProcessor is closed")
        job = _Job(-1, None, meta, Future(), submitted)
        error: BaseException | None = None
        try:
            job.frame = self._prepare(frame)  # outside the lock: the worker goes on meanwhile
        except Exception as exc:  # noqa: BLE001 - a bad frame (or one too big to copy) fails alone
            error = exc
        dropped: _Job | None = None
        with self._cond:
            if self._closed:
                raise DinosawError("the LiveProcessor is closed")
            job.seq, self._seq = self._seq, self._seq + 1
            if error is not None:
                error = _frame_error(job.seq, error)
            elif self.on_full == "block":
                while len(self._pending) >= self.queue_size and not self._closed:
                    self._cond.wait()
                if self._closed:
                    error = FrameDropped(f"frame {job.seq}: the processor closed while it waited")
            elif len(self._pending) >= self.queue_size:
                if self.on_full == "drop_oldest":
                    dropped = self._pending.popleft()
                else:
                    error = FrameDropped(f"frame {job.seq}: queue full ({self.queue_size} frames waiting)")
            if error is None:
                self._pending.append(job)
                self._cond.notify_all()
        if dropped is not None:
            dropped.frame = None
            self._finish(dropped, "dropped", error=FrameDropped(
                f"frame {dropped.seq}: dropped for a newer one (queue full, {self.queue_size} frames waiting)"))
        if error is not None:
            job.frame = None
            self._finish(job, "dropped" if isinstance(error, FrameDropped) else "failed", error=error)
        return job.future

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """A private copy of the frame, checked and cropped (cheap checks only; NaN is the worker's)."""
        try:
            array = np.asarray(frame)
        except Exception as exc:  # ragged lists and the like
            raise DinosawError(f"not an image array ({type(exc).__name__}: {exc})") from None
        if array.dtype.kind not in "biuf":
            raise DinosawError(f"pixel type {array.dtype} is not an image type (bool, integer or float)")
        if array.ndim == 3:
            array = to_channels_last(array)  # the layout rule of the readers; refuses odd channel counts
        elif array.ndim != 2:
            raise DinosawError(f"expected a 2D grayscale or 3D RGB(A) image, got an array of shape {array.shape}")
        height = array.shape[0] - self.crop_bottom
        if height < 1 or array.shape[1] < 1:
            raise DinosawError(f"frame of {array.shape[:2]} px is empty after cropping {self.crop_bottom} rows")
        return np.array(array[:height], copy=True)

    # -- worker side ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
                self._cond.notify_all()  # a blocked producer may go on
            if not job.future.set_running_or_notify_cancel():
                self._finish(job, "cancelled")
                continue
            started = time.perf_counter()
            try:
                result = self._process(job.frame, job.meta)
            except Exception as exc:
                if not isinstance(exc, DinosawError):
                    log.warning("frame %d failed unexpectedly", job.seq, exc_info=True)
                job.frame = None
                self._finish(job, "failed", error=_frame_error(job.seq, exc))
                continue
            job.frame = None
            end = time.perf_counter()
            result.timings["queue"] = (started - job.submitted) * 1e3
            result.timings["total"] = (end - job.submitted) * 1e3
            self._finish(job, "done", result=result)

    def _process(self, frame: np.ndarray, meta: Any) -> FrameResult:
        """One frame -> its result (the work itself, timed per stage)."""
        if frame.dtype.kind == "f" and not np.isfinite(frame).all():
            raise DinosawError("the frame contains NaN or infinite pixel values")
        t0 = time.perf_counter()
        if isinstance(self.target, FeatureExtractor):
            features = patch_features(frame, self.target)
            return FrameResult(None, features, meta, {"features": (time.perf_counter() - t0) * 1e3, "classify": 0.0})
        seg = self.target
        prepared = seg.prepare(frame, cache_bytes=0)
        grid = prepared.grid  # the engine stage, timed apart; then exactly Segmenter.predict
        t1 = time.perf_counter()
        labels = prepared.labels()
        counts = np.bincount(labels.ravel(), minlength=len(seg.label_classes) + 1)[1:]
        fractions = {c.name: float(n) / labels.size for c, n in zip(seg.label_classes, counts)}
        t2 = time.perf_counter()
        features = grid.array if self.return_features and grid is not None else None
        timings = {"features": (t1 - t0) * 1e3, "classify": (t2 - t1) * 1e3}
        return FrameResult(labels, features, meta, timings, fractions)

    def _finish(self, job: _Job, outcome: str, *, result: FrameResult | None = None,
                error: BaseException | None = None) -> None:
        """Count the outcome and resolve the future (in ``ordered`` mode: once all earlier ones are)."""
        self._stats.count(outcome, result.timings if result is not None else None)
        if not self.ordered:
            _settle(job.future, result, error)
            return
        with self._order_lock:  # re-entrant: a done-callback may submit
            self._held[job.seq] = (job.future, result, error)
            while self._next_out in self._held:
                _settle(*self._held.pop(self._next_out))
                self._next_out += 1

    # -- control ----------------------------------------------------------------------------
    def warmup(self, shape: tuple[int, ...]) -> None:
        """Run one random uint8 frame of ``shape`` (before cropping) through the work, in the
        calling thread, so sessions, allocations and the bias cache are ready; not counted."""
        frame = np.random.default_rng(0).integers(0, 256, size=tuple(shape), dtype=np.uint8)
        self._process(self._prepare(frame), None)

    def stats(self) -> dict[str, Any]:
        """Frames done / dropped / failed / cancelled, frames queued now, and latency p50 / p95 /
        max (ms) per stage over the last ``window`` frames done."""
        out = self._stats.summary()
        with self._cond:
            out["queued"] = len(self._pending)
        return out

    def close(self, cancel: bool = False) -> None:
        """Stop taking frames; process those queued (``cancel=False``) or cancel them, and wait
        for the worker (unless called from a result callback, which runs on the worker)."""
        with self._cond:
            self._closed = True
            cancelled = list(self._pending) if cancel else []
            if cancel:
                self._pending.clear()
            self._cond.notify_all()
        for job in cancelled:
            job.future.cancel()
            job.frame = None
            self._finish(job, "cancelled")
        if threading.current_thread() is not self._worker:
            self._worker.join()

    def __enter__(self) -> LiveProcessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _frame_error(seq: int, exc: BaseException) -> FrameError:
    """The clear error a failed frame's future carries (the original as its cause)."""
    reason = str(exc) if isinstance(exc, DinosawError) else f"{type(exc).__name__}: {exc}"
    error = FrameError(f"frame {seq}: {reason}")
    error.__cause__ = exc
    return error


def _settle(future: Future, result: FrameResult | None, error: BaseException | None) -> None:
    """Resolve ``future`` unless its owner already cancelled it."""
    try:
        if error is not None:
            future.set_exception(error)
        elif result is not None:
            future.set_result(result)
    except InvalidStateError:
        pass
