"""Token samples of a stitched feature grid and the PCA fitted on them (segmentation channels, previews)."""
from __future__ import annotations

import numpy as np

from dinosaw_deploy.tiling.store import PatchGrid

SAMPLE_TOKENS = 65536
SAMPLE_WINDOW = 16


def sample_tokens(grid: PatchGrid, max_tokens: int = SAMPLE_TOKENS, seed: int = 0) -> np.ndarray:
    """(N, C) tokens: the whole grid when small, else seeded random 16x16-token windows."""
    channels, height, width = grid.shape
    if height * width <= max_tokens:
        return grid.read(0, 0, height, width).reshape(channels, -1).T
    rng = np.random.default_rng(seed)
    wy, wx = min(SAMPLE_WINDOW, height), min(SAMPLE_WINDOW, width)
    count = -(-max_tokens // (wy * wx))
    ys = rng.integers(0, height - wy + 1, count)
    xs = rng.integers(0, width - wx + 1, count)
    return np.concatenate(
        [grid.read(int(y), int(x), wy, wx).reshape(channels, -1).T for y, x in zip(ys, xs)]
    )


def fit_pca(tokens: np.ndarray, components: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(mean (C,), components (k, C)) of (N, C) tokens, from the (C, C) covariance (cheap for N >> C)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.float64)
    mean = tokens.mean(0)
    centred = tokens - mean
    _, vectors = np.linalg.eigh(centred.T @ centred)  # eigenvalues ascending
    return mean.astype(np.float32), vectors[:, ::-1][:, :components].T.astype(np.float32)
