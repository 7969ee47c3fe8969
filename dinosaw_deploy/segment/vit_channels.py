"""ALiBi-Dv2 patch features as per-pixel segmentation channels (method.md §5).

Fit once on a token sample: per-channel standard scaling, PCA to ``k`` components (default 9),
per-component min-max to [0, 1] (values outside the sample's range are clipped). Per output tile,
the needed patch rows/columns are read from the stitched feature grid, projected, and upsampled
bilinearly to pixels. Pixel (y, x) samples the grid at ``((y + 0.5) / p - 0.5, (x + 0.5) / p - 0.5)``
(patch centres, clamped at the grid's edge) in global coordinates, so a tile's values do not
depend on where the tile starts: there are no seams from upsampling.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.box import Box
from dinosaw_deploy.tiling.store import PatchGrid
from dinosaw_deploy.tiling.tokens import SAMPLE_TOKENS, fit_pca, sample_tokens


@dataclass
class PcaFeatures:
    """Fitted scaler + PCA + min-max; :meth:`region` gives per-pixel channels of a box."""

    mean: np.ndarray  # (C,)
    scale: np.ndarray  # (C,)
    components: np.ndarray  # (k, C)
    lo: np.ndarray  # (k,)
    hi: np.ndarray  # (k,)
    patch_size: int = 14

    @classmethod
    def fit(cls, grid: PatchGrid | Sequence[PatchGrid], *, n_components: int = 9, patch_size: int = 14,
            seed: int = 0) -> PcaFeatures:
        """Fit on a token sample of one grid, or on equal shares of the token budget pooled from several."""
        grids = [grid] if not isinstance(grid, Sequence) else list(grid)
        share = -(-SAMPLE_TOKENS // len(grids))
        tokens = np.concatenate([sample_tokens(g, share, seed=seed) for g in grids]).astype(np.float64)
        if tokens.shape[0] < 2:
            raise DinosawError("too few patch tokens to fit the ViT feature PCA (image smaller than 2 patches)")
        mean = tokens.mean(axis=0)
        scale = tokens.std(axis=0)
        scale[scale == 0] = 1.0
        standard = (tokens - mean) / scale
        k = min(n_components, *standard.shape)
        components = fit_pca(standard, k)[1].astype(np.float64)
        projected = standard @ components.T
        lo, hi = projected.min(axis=0), projected.max(axis=0)
        hi = np.where(hi > lo, hi, lo + 1.0)
        return cls(mean.astype(np.float32), scale.astype(np.float32), components.astype(np.float32),
                   lo.astype(np.float32), hi.astype(np.float32), patch_size)

    def fingerprint(self) -> bytes:
        """A digest of the fitted arrays: equal for equal fits (a refit on the same tokens), for cache keys."""
        digest = hashlib.blake2b(str(self.patch_size).encode(), digest_size=16)
        for array in (self.mean, self.scale, self.components, self.lo, self.hi):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.digest()

    @property
    def num_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"vit_pca{i}" for i in range(self.num_components))

    def project(self, features: np.ndarray) -> np.ndarray:
        """(C, h, w) patch features -> (k, h, w) float32 in [0, 1]."""
        channels, h, w = features.shape
        if channels != self.mean.shape[0]:
            raise DinosawError(f"patch features have {channels} channels; the model was fitted on {self.mean.shape[0]}")
        standard = (features.reshape(channels, -1).T - self.mean) / self.scale
        projected = (standard @ self.components.T - self.lo) / (self.hi - self.lo)
        return np.clip(projected, 0.0, 1.0).T.reshape(-1, h, w).astype(np.float32)

    def region(self, grid: PatchGrid, box: Box) -> np.ndarray:
        """Bilinearly upsampled (k, y1-y0, x1-x0) float32 channels of pixel box (y0, y1, x0, x1)."""
        y0, y1, x0, x1 = box
        _, gh, gw = grid.shape
        rows, fy = _sample_positions(y0, y1, gh, self.patch_size)
        cols, fx = _sample_positions(x0, x1, gw, self.patch_size)
        r0, r1, c0, c1 = rows.min(), rows.max() + 2, cols.min(), cols.max() + 2
        r1, c1 = min(r1, gh), min(c1, gw)
        block = self.project(np.asarray(grid.read(int(r0), int(c0), int(r1 - r0), int(c1 - c0)), np.float32))
        i0, i1 = rows - r0, np.minimum(rows + 1, gh - 1) - r0
        j0, j1 = cols - c0, np.minimum(cols + 1, gw - 1) - c0
        fy, fx = fy[None, :, None], fx[None, None, :]
        along_y = block[:, i0] * (1 - fy) + block[:, i1] * fy
        return (along_y[:, :, j0] * (1 - fx) + along_y[:, :, j1] * fx).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"vit_mean": self.mean, "vit_scale": self.scale, "vit_components": self.components,
                "vit_lo": self.lo, "vit_hi": self.hi}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], patch_size: int) -> PcaFeatures:
        try:
            return cls(*(np.asarray(arrays[k], np.float32) for k in
                         ("vit_mean", "vit_scale", "vit_components", "vit_lo", "vit_hi")), patch_size=patch_size)
        except KeyError as exc:
            raise DinosawError(f"model bundle lacks the ViT array {exc}") from None


def _sample_positions(start: int, stop: int, size: int, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """For pixels start..stop-1: lower grid index and interpolation weight, clamped to the grid."""
    u = np.clip((np.arange(start, stop, dtype=np.float64) + 0.5) / patch - 0.5, 0.0, size - 1)
    index = np.minimum(np.floor(u).astype(np.int64), size - 1)
    return index, (u - index).astype(np.float32)
