"""A quick look at a feature store: 3-component PCA of the features as an RGB PNG.

PCA is fitted on a token sample (:func:`~dinosaw_deploy.tiling.tokens.sample_tokens`), then the store is streamed once in row
bands and every ``step``-th token of every ``step``-th row is projected, so memory stays small.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from dinosaw_deploy.files import atomic_write_bytes
from dinosaw_deploy.tiling.store import CHUNK, FeatureStore
from dinosaw_deploy.tiling.tokens import fit_pca, sample_tokens

MAX_SIDE = 1024


def preview_path(output: str | os.PathLike) -> Path:
    """``feats.zarr`` -> ``feats.preview.png``."""
    output = Path(output)
    return output.with_name(output.stem + ".preview.png")


def render_preview(store: FeatureStore, *, max_side: int = MAX_SIDE, seed: int = 0) -> np.ndarray:
    """(ph, pw, 3) uint8: PCA->RGB of every ``step``-th token, ``step`` = ceil(max(h, w) / max_side)."""
    _, h, w = store.shape
    mean, comps = fit_pca(sample_tokens(store, seed=seed))
    step = max(1, math.ceil(max(h, w) / max_side))
    rows = []
    for y0 in range(0, h, CHUNK * step):  # bands whose height is a multiple of step keep the stride global
        block = np.asarray(store.array[:, y0 : y0 + CHUNK * step : step, ::step], dtype=np.float32)
        rows.append(np.moveaxis(np.tensordot(comps, block - mean[:, None, None], axes=(1, 0)), 0, -1))
    pcs = np.concatenate(rows, axis=0)
    lo, hi = np.percentile(pcs.reshape(-1, pcs.shape[-1]), (1, 99), axis=0)
    scaled = (pcs - lo) / np.where(hi > lo, hi - lo, 1.0)
    rgb = np.zeros(pcs.shape[:2] + (3,), np.uint8)  # fewer than 3 channels: the rest stays black
    rgb[..., : pcs.shape[-1]] = np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)
    return rgb


def write_preview(store: FeatureStore, path: str | os.PathLike, *, max_side: int = MAX_SIDE) -> Path:
    """Render and write the preview PNG (temp name + rename)."""
    import imagecodecs

    path = Path(path)
    atomic_write_bytes(path, imagecodecs.png_encode(render_preview(store, max_side=max_side)))
    return path
