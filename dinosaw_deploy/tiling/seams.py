"""How visible tile seams are in a stitched feature map (used by ``benchmarks/seams.py`` and the probe).

* :func:`seam_stats`: the mean L2 feature difference between 4-neighbour tokens
  that straddle a seam (they come from different tiles) divided by the same mean for all other
  neighbour pairs. 1.0 means seams are invisible; it streams the array in row bands, so it works
  on a gigapixel zarr store.
* :func:`center_agreement`: cosine similarity between each sampled token's stitched feature and
  the feature it gets at the centre of a tile of its own (clamped at the image border).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.image.reader import ImageReader
from dinosaw_deploy.tiling.grid import Tile
from dinosaw_deploy.tiling.pipeline import tile_input
from dinosaw_deploy.tiling.store import FeatureStore

BAND = 128


def seam_stats(features: Any, cuts_y: Sequence[int], cuts_x: Sequence[int], band: int = BAND) -> dict[str, float]:
    """Seam and interior neighbour differences of a (C, h, w) array (numpy or zarr)."""
    _, h, w = features.shape
    seam_col = np.zeros(max(w - 1, 0), bool)
    seam_col[[c - 1 for c in cuts_x if 0 < c < w]] = True
    seam_row = np.zeros(max(h - 1, 0), bool)
    seam_row[[c - 1 for c in cuts_y if 0 < c < h]] = True
    sums = {"seam": 0.0, "interior": 0.0}
    counts = {"seam": 0, "interior": 0}

    def add(diff: np.ndarray, seam: np.ndarray) -> None:
        sums["seam"] += float(diff[seam].sum())
        counts["seam"] += int(seam.sum())
        sums["interior"] += float(diff[~seam].sum())
        counts["interior"] += int((~seam).sum())

    for y0 in range(0, h, band):
        y1 = min(y0 + band + 1, h)  # one extra row for the vertical pairs into the next band
        block = np.asarray(features[:, y0:y1], dtype=np.float32)
        rows = min(band, h - y0)
        dx = np.linalg.norm(block[:, :rows, 1:] - block[:, :rows, :-1], axis=0)
        add(dx, np.broadcast_to(seam_col, dx.shape))
        if block.shape[1] > 1:
            dy = np.linalg.norm(block[:, 1:] - block[:, :-1], axis=0)
            add(dy, np.broadcast_to(seam_row[y0 : y0 + dy.shape[0], None], dy.shape))
    mean = {k: sums[k] / counts[k] if counts[k] else float("nan") for k in sums}
    return {
        "seam_mean": mean["seam"],
        "interior_mean": mean["interior"],
        "ratio": _ratio(mean["seam"], mean["interior"]),
        "seam_pairs": counts["seam"],
        "interior_pairs": counts["interior"],
    }


def _ratio(seam: float, interior: float) -> float:
    """seam / interior; a constant map (both 0) has invisible seams (1.0), seams on a flat interior inf."""
    if interior == 0:
        return 1.0 if seam == 0 else float("inf")
    return seam / interior


def _sample_tokens(store: FeatureStore, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` uniformly random tokens and ``n`` tokens on either side of a seam, as (y, x) rows."""
    _, h, w = store.shape
    grid = store.grid
    out = {"all": np.stack([rng.integers(0, h, n), rng.integers(0, w, n)], 1)}
    seams = [("y", c) for c in grid.cuts_y] + [("x", c) for c in grid.cuts_x]
    if seams:
        picks = []
        for k in rng.integers(0, len(seams), n):
            axis, cut = seams[k]
            across = cut - int(rng.integers(0, 2))  # the token just before or just after the seam
            along = int(rng.integers(0, w if axis == "y" else h))
            picks.append((across, along) if axis == "y" else (along, across))
        out["seam"] = np.array(picks)
    return out


def center_agreement(
    store: FeatureStore, reader: ImageReader, extractor: FeatureExtractor, *, n: int = 128, seed: int = 0
) -> dict[str, float]:
    """Cosine between stitched features and centred-tile features, for random and seam tokens."""
    grid = store.grid
    rng = np.random.default_rng(seed)
    result: dict[str, float] = {}
    for name, tokens in _sample_tokens(store, n, rng).items():
        cosines = []
        for start in range(0, len(tokens), extractor.batch_size):
            chunk = tokens[start : start + extractor.batch_size]
            tiles = [
                Tile(-1, -1, int(np.clip(y - grid.tile_h // 2, 0, grid.grid_h - grid.tile_h)),
                     int(np.clip(x - grid.tile_w // 2, 0, grid.grid_w - grid.tile_w)))
                for y, x in chunk
            ]
            inputs = np.stack([tile_input(reader.read_region(*grid.pixel_region(t)), extractor, store.intensity_range)
                               for t in tiles])
            feats = extractor.run(inputs)
            for (y, x), t, f in zip(chunk, tiles, feats):
                a = f[:, y - t.y0, x - t.x0]
                b = store.read(int(y), int(x), 1, 1)[:, 0, 0]
                cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
        result[f"{name}_mean"] = float(np.mean(cosines))
        result[f"{name}_min"] = float(np.min(cosines))
    return result
