"""An image prepared once for a segmenter: what it sees (:class:`GrayImage`), its patch features, and a
bounded cache of the classical features already computed.

>>> prepared = seg.prepare(image)                  # intensity rule, CLAHE, ViT patch grid: once
>>> seg.fit_prepared([(prepared, scribbles)])      # features of the scribbled tiles, cached
>>> probs = prepared.probabilities((0, 512, 0, 512))   # the same tiles again: no filter bank runs
>>> prepared.cache_stats.hits

Boxes are (y0, y1, x0, x1), half-open, in image pixels. :meth:`PreparedImage.labels` and
:meth:`PreparedImage.probabilities` work on the segmenter's tile grid (``seg.tile``), so overlapping or
repeated requests share tiles, and a box's labels are exactly those of ``seg.predict`` of the whole
image. Features are cached per exact box they were computed for (a filter bank run on a different box
gives equal values only to rounding, so nothing is stitched from a neighbour's cache entry).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.box import Box
from dinosaw_deploy.image.intensity import fit_intensity_range, intensity_histogram, scale_intensity
from dinosaw_deploy.image.reader import ArrayRegions, RegionSource
from dinosaw_deploy.segment.contrast import Clahe, ClaheConfig
from dinosaw_deploy.segment.filters import FilterBank
from dinosaw_deploy.segment.merger import ArrayMerger
from dinosaw_deploy.segment.vit_channels import PcaFeatures
from dinosaw_deploy.tiling.cache import DEFAULT_CACHE_BYTES, CacheStats, FeatureCache
from dinosaw_deploy.tiling.pipeline import patch_features
from dinosaw_deploy.tiling.store import ArrayGrid, PatchGrid

VIT_NEEDS_ENGINE = "this model uses ViT features: load it with extractor=FeatureExtractor(engine)"


class Model(Protocol):
    """What a prepared image reads from its segmenter (:class:`~dinosaw_deploy.segment.segmenter.Segmenter`)."""

    bank: FilterBank
    contrast: ClaheConfig | None
    normalize: str
    extractor: Any
    pca: PcaFeatures | None
    tile: int
    label_classes: list

    def predict_tiles(self, prepared: PreparedImage, boxes: Iterable[Box], *, modal: int = 0, crf: bool = False,
                      exact: bool = False, probabilities: bool = True
                      ) -> Iterator[tuple[Box, np.ndarray, np.ndarray | None]]: ...


class GrayImage:
    """Grayscale float32 [0, 1] view of a :class:`RegionSource` under one fixed intensity range;
    sliceable (``gray[y0:y1, x0:x1]``) as the filter bank expects."""

    def __init__(self, source: RegionSource, intensity_range: tuple[float, float], contrast: Clahe | None = None):
        self.source = source
        self.intensity_range = tuple(float(v) for v in intensity_range)
        self.contrast = contrast
        self.shape = tuple(source.shape[:2])

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        region = self.source.read_region(rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
        try:  # every pixel as it is read: a NaN block outside the intensity sample is refused here
            scaled = scale_intensity(region, self.intensity_range)
        except DinosawError as exc:
            raise DinosawError(f"{exc} (region y {rows.start}..{rows.stop}, x {cols.start}..{cols.stop})") from None
        if scaled.ndim == 3:
            scaled = scaled[..., :3].mean(axis=-1) if scaled.shape[-1] in (3, 4) else scaled[..., 0]
        if self.contrast is not None:
            return self.contrast.apply(scaled, rows.start, cols.start)
        return scaled.astype(np.float32, copy=False)


class PreparedImage:
    """One image as ``segmenter`` sees it, built once (see the module notes).

    Args:
        segmenter: whose filter bank, CLAHE setting, ViT engine and tile size apply. Refitting it is
            fine: its classifier and PCA are read at each call; a new filter bank, CLAHE or
            normalisation setting empties the cache and refits the view.
        image: an in-memory array or any region source (a file reader, a zarr array view).
        intensity_range: the (lo, hi) mapped to [0, 1]; default: the segmenter's ``normalize`` rule
            fitted on ``image`` (:func:`~dinosaw_deploy.image.intensity.fit_intensity_range`).
        contrast: a CLAHE already fitted (e.g. on the client of a cluster run); default: fitted on
            ``image`` when the segmenter asks for CLAHE.
        grid: the image's patch features (a feature store, an array grid); default for an in-memory
            image of a ViT model: computed with the segmenter's engine on first use.
        cache_bytes: the classical-feature cache budget (0: keep nothing, for one pass over an image).
    """

    def __init__(self, segmenter: Model, image: np.ndarray | RegionSource, *,
                 intensity_range: tuple[float, float] | None = None, contrast: Clahe | None = None,
                 grid: PatchGrid | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.segmenter = segmenter
        self.source = ArrayRegions(image) if isinstance(image, np.ndarray) else image
        self.shape: tuple[int, int] = tuple(int(v) for v in self.source.shape[:2])
        self._array = image if isinstance(image, np.ndarray) else None
        self._grid, self._grid_engine = grid, None
        self._grid_version = 0  # part of the cache keys of ViT channels: a new grid makes them stale
        self.cache = FeatureCache(cache_bytes)
        self._fixed_range = intensity_range
        self._histogram: tuple[tuple[float, float], np.ndarray] | None = None  # (range, histogram)
        self.gray = GrayImage(self.source, self._fit_range(), contrast)
        self._settings = self._feature_settings()
        if contrast is None and segmenter.contrast is not None:
            self.gray.contrast = Clahe.fit(self.gray, segmenter.contrast)

    # -- what the features depend on ------------------------------------------------------
    def _feature_settings(self) -> tuple[Any, ...]:
        seg = self.segmenter
        return seg.bank.config, seg.contrast, seg.normalize

    def _fit_range(self) -> tuple[float, float]:
        if self._fixed_range is not None:
            return fit_intensity_range(self.source, intensity_range=self._fixed_range)
        return fit_intensity_range(self.source, normalize=self.segmenter.normalize)

    @property
    def intensity_range(self) -> tuple[float, float]:
        """The (lo, hi) this image's pixels map to [0, 1] (for the filter bank and the ViT engine)."""
        self._check_settings()
        return self.gray.intensity_range

    def intensity_histogram(self) -> np.ndarray:
        """The image's intensity histogram under :attr:`intensity_range` (a pixel sample; see
        :func:`~dinosaw_deploy.image.intensity.intensity_histogram`), computed once per range."""
        key = tuple(self.intensity_range)
        if self._histogram is None or self._histogram[0] != key:
            histogram = intensity_histogram(self.source, key)
            histogram.flags.writeable = False
            self._histogram = (key, histogram)
        return self._histogram[1]

    def _check_settings(self) -> None:
        settings = self._feature_settings()
        if settings != self._settings:
            if settings[2] != self._settings[2]:
                self.gray.intensity_range = self._fit_range()
                if self._grid_engine is not None:
                    self._grid = self._grid_engine = None  # computed here under the old range
            self._settings = settings
            self.cache.clear()
            self.gray.contrast = None if self.segmenter.contrast is None else Clahe.fit(self.gray,
                                                                                       self.segmenter.contrast)

    @property
    def grid(self) -> PatchGrid | None:
        """The patch features the ViT channels are read from (None for a classical segmenter)."""
        self._check_settings()
        extractor = self.segmenter.extractor
        if self._grid is None or (self._grid_engine is not None and self._grid_engine is not extractor):
            if extractor is None:
                if self.segmenter.pca is not None:
                    raise DinosawError(VIT_NEEDS_ENGINE)
                return None
            if self._array is None:
                raise DinosawError("this model uses ViT features: pass the image's patch features (grid=...), "
                                   "e.g. a feature store written by `dinosaw-deploy features`")
            grid = patch_features(self._array, extractor, intensity_range=self.intensity_range)
            self._grid, self._grid_engine = ArrayGrid(grid), extractor
            self._grid_version += 1
        stored = getattr(self._grid, "intensity_range", None)  # a feature store records its range
        if stored is not None and not np.allclose(stored, self.gray.intensity_range, rtol=1e-6, atol=0):
            lo, hi = self.gray.intensity_range
            raise DinosawError(f"the patch features were computed with the intensity range {tuple(stored)}, but "
                               f"this model maps the image to ({lo:g}, {hi:g}) (normalize={self.segmenter.normalize}"
                               f"): recompute them with --intensity-range {lo:g} {hi:g}")
        return self._grid

    def set_grid(self, grid: PatchGrid | None) -> None:
        """Read the ViT channels from ``grid`` (e.g. a feature store computed under :attr:`intensity_range`)."""
        self._grid, self._grid_engine = grid, None
        self._grid_version += 1

    # -- features and predictions ---------------------------------------------------------
    def classical(self, box: Box) -> np.ndarray:
        """(C, h, w) float32 filter-bank channels of ``box`` (read-only, from the cache when computed before)."""
        self._check_settings()
        box = tuple(int(v) for v in box)
        return self.cache.get(box, lambda: self.segmenter.bank.region(self.gray, box))

    def pixel_features(self, box: Box, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """(n, C) float32 features of the pixels (``ys``, ``xs``) (image coordinates inside ``box``) as
        computed for ``box``: the values of ``features(box)[:, ys - y0, xs - x0].T``. The cache keeps
        these classical rows (keyed by the box and the pixels), not the box's whole stack: a few
        hundred KB per scribbled tile instead of tens of MB, so training boxes do not push the
        prediction tiles out."""
        self._check_settings()
        box = tuple(int(v) for v in box)
        y0, _, x0, _ = box
        ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        key = ("pixels", box, hashlib.blake2b(ys.tobytes() + xs.tobytes(), digest_size=16).digest())

        def compute() -> np.ndarray:
            stack = self.cache.peek(box)
            stack = self.segmenter.bank.region(self.gray, box) if stack is None else stack
            return np.ascontiguousarray(stack[:, ys - y0, xs - x0].T)

        rows = self.cache.get(key, compute)
        if self.segmenter.pca is None:
            return rows

        vit_key = self._vit_key(box)

        def vit_rows() -> np.ndarray:
            stack = self.cache.peek(vit_key)
            stack = self._vit_region(box) if stack is None else stack
            return np.ascontiguousarray(stack[:, ys - y0, xs - x0].T)

        return np.concatenate([rows, self.cache.get((*vit_key, key[2]), vit_rows)], axis=1)

    def features(self, box: Box) -> np.ndarray:
        """(C, h, w) float32 feature stack of ``box``: classical channels, then the fitted PCA's ViT channels
        (both from the cache when computed before, the ViT ones under the same PCA and patch features)."""
        classical = self.classical(box)
        if self.segmenter.pca is None:
            return classical
        box = tuple(int(v) for v in box)
        return np.concatenate([classical, self.cache.get(self._vit_key(box), lambda: self._vit_region(box))])

    def _vit_key(self, box: Box) -> tuple:
        return ("vit", self._grid_version, self.segmenter.pca.fingerprint(), box)

    def _vit_region(self, box: Box) -> np.ndarray:
        return self.segmenter.pca.region(self.grid, box)

    def tiles(self, boxes: Iterable[Box], *, modal: int = 0, crf: bool = False, exact: bool = False,
              probabilities: bool = True) -> Iterator[tuple[Box, np.ndarray, np.ndarray | None]]:
        """(box, labels, probabilities or None) of every box, in order (the segmenter's ``predict_tiles``)."""
        return self.segmenter.predict_tiles(self, boxes, modal=modal, crf=crf, exact=exact,
                                            probabilities=probabilities)

    def predict(self, box: Box | None = None, *, modal: int = 0, crf: bool = False, exact: bool = False,
                probabilities: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels (h, w) uint8 1..K, probabilities (K, h, w) float32 or None) of ``box`` (default: the
        whole image), computed tile by tile on the segmenter's tile grid (``exact``: see the segmenter's
        ``predict_box``)."""
        box = self.check_box(box)
        merger = ArrayMerger(box, len(self.segmenter.label_classes), probabilities)
        tiles = self.tiles(self.covering_tiles(box), modal=modal, crf=crf, exact=exact, probabilities=probabilities)
        for tile, tile_labels, tile_probs in tiles:
            merger.aggregate(tile, tile_labels, tile_probs)
        return merger.finalize()

    def labels(self, box: Box | None = None, *, modal: int = 0, crf: bool = False, exact: bool = False
               ) -> np.ndarray:
        """(h, w) uint8 labels 1..K of ``box`` (default: the whole image)."""
        return self.predict(box, modal=modal, crf=crf, exact=exact, probabilities=False)[0]

    def probabilities(self, box: Box | None = None) -> np.ndarray:
        """(K, h, w) float32 class probabilities of ``box`` (default: the whole image)."""
        return self.predict(box)[1]

    @property
    def cache_stats(self) -> CacheStats:
        """Hits, misses, evictions and bytes of the feature cache."""
        return self.cache.stats

    def check_box(self, box: Box | None) -> Box:
        """``box`` as four ints inside the image (None: the whole image), or one clear error."""
        height, width = self.shape
        if box is None:
            return 0, height, 0, width
        try:
            y0, y1, x0, x1 = (int(v) for v in box)
        except (TypeError, ValueError):
            raise DinosawError(f"a box is (y0, y1, x0, x1), got {box!r}") from None
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise DinosawError(f"box {(y0, y1, x0, x1)} is empty or outside the {height}x{width} image")
        return y0, y1, x0, x1

    def covering_tiles(self, box: Box) -> list[Box]:
        """The segmenter's tiles (those of :func:`tile_boxes`) that overlap ``box``, row-major."""
        y0, y1, x0, x1 = box
        (height, width), tile = self.shape, self.segmenter.tile
        return [(y, min(y + tile, height), x, min(x + tile, width))
                for y in range(y0 // tile * tile, y1, tile) for x in range(x0 // tile * tile, x1, tile)]
