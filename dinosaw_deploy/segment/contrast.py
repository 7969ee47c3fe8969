"""Optional contrast equalisation before the filter bank: CLAHE that tiles exactly.

Contrast-limited adaptive histogram equalisation (as in scikit-image's ``equalize_adapthist``
defaults: a ``grid`` x ``grid`` layout of contextual regions over the whole image, histograms of
256 bins clipped at ``clip_limit`` of each region's pixels, the excess spread evenly). Fitting
reads the image once, region by region, and keeps one look-up table per region; applying maps a
pixel through the tables of the four nearest region centres, bilinearly weighted by its global
position, so any tile gives the same values as the whole image. It evens out uneven illumination
(e.g. a brightness gradient across an SEM scan); it is fitted per image, so an applied model
equalises each new image by the same rule.
"""
from __future__ import annotations

from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from dinosaw_deploy.errors import DinosawError

MAX_CLAHE_GRID, MAX_CLAHE_BINS = 256, 65536


class ClaheConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """CLAHE settings: ``grid`` x ``grid`` regions, ``clip_limit`` of a region's pixels, histogram ``bins``."""

    grid: Annotated[int, Meta(ge=1, le=MAX_CLAHE_GRID)] = 8
    clip_limit: Annotated[float, Meta(gt=0, le=1)] = 0.01
    bins: Annotated[int, Meta(ge=2, le=MAX_CLAHE_BINS)] = 256

    def __post_init__(self) -> None:
        if self.grid < 1 or self.bins < 2 or not 0 < self.clip_limit <= 1:
            raise DinosawError(f"invalid CLAHE settings {self}")


class Clahe:
    """Fitted look-up tables; :meth:`apply` equalises any region of the fitted image."""

    def __init__(self, config: ClaheConfig, luts: np.ndarray, region: tuple[int, int]) -> None:
        self.config, self.luts, self.region = config, luts, region

    @classmethod
    def fit(cls, gray: Any, config: ClaheConfig | None = None) -> Clahe:
        """Tables for the (H, W) float image ``gray`` in [0, 1] (sliceable, read region by region)."""
        config = config or ClaheConfig()
        height, width = gray.shape
        kh, kw = -(-height // config.grid), -(-width // config.grid)
        ny, nx = -(-height // kh), -(-width // kw)
        luts = np.empty((ny, nx, config.bins), np.float32)
        for i in range(ny):
            for j in range(nx):
                block = np.asarray(gray[i * kh : min((i + 1) * kh, height), j * kw : min((j + 1) * kw, width)])
                hist = np.bincount(_bins(block, config.bins).ravel(), minlength=config.bins).astype(np.float64)
                limit = max(config.clip_limit * block.size, 1.0)
                excess = np.maximum(hist - limit, 0).sum()
                hist = np.minimum(hist, limit) + excess / config.bins
                luts[i, j] = np.cumsum(hist) / hist.sum()
        return cls(config, luts, (kh, kw))

    def apply(self, values: np.ndarray, y0: int, x0: int) -> np.ndarray:
        """Equalised float32 values of the region whose top-left pixel is (y0, x0)."""
        b = _bins(values, self.config.bins)
        ny, nx = self.luts.shape[:2]
        i0, i1, fy = _neighbours(y0, values.shape[0], self.region[0], ny)
        j0, j1, fx = _neighbours(x0, values.shape[1], self.region[1], nx)
        i0, i1, fy = i0[:, None], i1[:, None], fy[:, None]
        top = self.luts[i0, j0, b] * (1 - fx) + self.luts[i0, j1, b] * fx
        bottom = self.luts[i1, j0, b] * (1 - fx) + self.luts[i1, j1, b] * fx
        return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _bins(values: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((np.asarray(values, np.float32) * bins).astype(np.int64), bins - 1).clip(0)


def _neighbours(start: int, count: int, size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower / upper region index and weight per pixel along one axis (region centres, clamped)."""
    u = np.clip((np.arange(start, start + count) + 0.5) / size - 0.5, 0, cells - 1)
    lower = np.floor(u).astype(np.int64)
    return lower, np.minimum(lower + 1, cells - 1), (u - lower).astype(np.float32)
