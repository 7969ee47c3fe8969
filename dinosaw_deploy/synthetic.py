"""Synthetic SEM-like micrographs with ground truth, for examples, tests and benchmarks.

The picture: polycrystalline matrix (Voronoi grains of varying brightness, dark grain
boundaries), bright particles, dark pores, a left-to-right brightness gradient and pixel noise.
Every pixel is a pure function of its global coordinates and the seed, so any region can be
rendered on its own (:func:`render_region`) and a gigapixel TIFF can be written tile by tile
in bounded memory (:func:`write_synthetic_tiff`).

Classes in the label image: 1 matrix (grains and boundaries), 2 particle, 3 pore.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dinosaw_deploy.files import atomic_path

CELL = 96  # px per jitter cell: one grain seed, maybe one particle, maybe one pore
CLASS_NAMES = ("matrix", "particle", "pore")


def _cell_table(seed: int, cy0: int, cx0: int, ny: int, nx: int) -> dict[str, np.ndarray]:
    """Per-cell random attributes for cells [cy0, cy0+ny) x [cx0, cx0+nx), hashed from indices."""
    cy = np.arange(cy0, cy0 + ny, dtype=np.uint64)[:, None]
    cx = np.arange(cx0, cx0 + nx, dtype=np.uint64)[None, :]
    def uniform(salt: int) -> np.ndarray:
        return _hash01(cy * np.uint64(0x9E3779B1) + cx * np.uint64(0x85EBCA77), seed * 1000 + salt)
    return {
        "gy": uniform(1), "gx": uniform(2), "tone": uniform(3),          # grain seed + brightness
        "has_p": uniform(4) < 0.45, "py": uniform(5), "px": uniform(6), "pr": uniform(7),
        "has_o": uniform(8) < 0.3, "oy": uniform(9), "ox": uniform(10), "or": uniform(11),
    }


def _hash01(keys: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) from integer keys (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def render_region(
    y0: int, x0: int, height: int, width: int, *, full_shape: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [y0:y0+height, x0:x0+width] of the image of ``full_shape``: (uint8 image, uint8 labels)."""
    ys = np.arange(y0, y0 + height, dtype=np.float64)[:, None]
    xs = np.arange(x0, x0 + width, dtype=np.float64)[None, :]
    cy0, cx0 = y0 // CELL - 1, x0 // CELL - 1
    ny, nx = (y0 + height - 1) // CELL - cy0 + 2, (x0 + width - 1) // CELL - cx0 + 2
    cells = _cell_table(seed, cy0 + (1 << 20), cx0 + (1 << 20), ny, nx)  # offset keeps indices >= 0
    iy = (ys // CELL).astype(np.int64) - cy0
    ix = (xs // CELL).astype(np.int64) - cx0

    d1 = np.full((height, width), np.inf)
    d2 = np.full((height, width), np.inf)
    tone = np.zeros((height, width))
    particle = np.zeros((height, width))
    pore = np.zeros((height, width))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            cy, cx = iy + dy, ix + dx
            base_y, base_x = (cy + cy0) * CELL, (cx + cx0) * CELL
            # Voronoi grains: nearest and second-nearest seed
            d = np.hypot(ys - (base_y + cells["gy"][cy, cx] * CELL), xs - (base_x + cells["gx"][cy, cx] * CELL))
            closer = d < d1
            d2 = np.where(closer, d1, np.minimum(d2, d))
            tone = np.where(closer, cells["tone"][cy, cx], tone)
            d1 = np.where(closer, d, d1)
            # particles (radius 8-30 px) and pores (4-12 px), soft-edged discs
            for key, y_key, x_key, r_key, rmin, rmax, out in (
                ("has_p", "py", "px", "pr", 8, 30, particle),
                ("has_o", "oy", "ox", "or", 4, 12, pore),
            ):
                r = rmin + cells[r_key][cy, cx] * (rmax - rmin)
                dist = np.hypot(ys - (base_y + cells[y_key][cy, cx] * CELL), xs - (base_x + cells[x_key][cy, cx] * CELL))
                cover = np.clip(r - dist + 0.5, 0.0, 1.0) * cells[key][cy, cx]
                np.maximum(out, cover, out=out)

    image = 0.35 + 0.25 * tone
    image = np.where(d2 - d1 < 2.0, 0.18, image)  # grain boundaries
    image = image * (1 - particle) + 0.88 * particle
    image = image * (1 - pore) + 0.06 * pore
    image *= 0.8 + 0.35 * (xs / max(full_shape[1] - 1, 1))  # brightness gradient
    keys = (ys.astype(np.uint64) * np.uint64(full_shape[1]) + xs.astype(np.uint64))
    noise = _hash01(keys, seed * 7 + 1) + _hash01(keys, seed * 7 + 2) - 1.0  # triangular, sd ~0.41
    image += 0.06 * noise
    labels = np.ones((height, width), dtype=np.uint8)
    labels[particle >= 0.5] = 2
    labels[pore >= 0.5] = 3
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), labels


def synthetic_micrograph(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A whole synthetic micrograph: (uint8 image, uint8 labels 1..3)."""
    return render_region(0, 0, height, width, full_shape=(height, width), seed=seed)


def _tiles(height: int, width: int, tile: int, seed: int, want_labels: bool) -> Iterator[np.ndarray]:
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            h, w = min(tile, height - y), min(tile, width - x)
            image, labels = render_region(y, x, h, w, full_shape=(height, width), seed=seed)
            out = labels if want_labels else image
            padded = np.zeros((tile, tile), np.uint8)
            padded[:h, :w] = out
            yield padded


def write_synthetic_tiff(
    path: str | os.PathLike,
    height: int,
    width: int,
    *,
    seed: int = 0,
    tile: int = 512,
    compression: str | None = None,
    labels: bool = False,
) -> Path:
    """Stream a synthetic micrograph (or, with ``labels=True``, its ground truth) into a tiled
    (Big)TIFF without ever holding the whole image."""
    import tifffile

    path = Path(path)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=height * width > 2**31) as tif:
            tif.write(
                _tiles(height, width, tile, seed, labels),
                shape=(height, width),
                dtype=np.uint8,
                tile=(tile, tile),
                compression=compression,
                photometric="minisblack",
            )
    return path


def synthetic_scribbles(truth: np.ndarray, *, fraction: float = 0.01, seed: int = 0, width: int = 3) -> np.ndarray:
    """Scribble-like labels from a ground-truth class image (0 = no class): straight strokes of
    24 x ``width`` px at random places and angles, kept inside their class (eroded by ``width``),
    until about ``fraction`` of the pixels are labelled. For tests and benchmarks."""
    from scipy import ndimage

    truth = np.asarray(truth)
    rng = np.random.default_rng(seed)
    out = np.zeros(truth.shape, np.uint8)
    classes = [int(c) for c in np.unique(truth) if c != 0]
    inner = {c: np.flatnonzero(ndimage.binary_erosion(truth == c, iterations=width)) for c in classes}
    classes = [c for c in classes if inner[c].size]
    steps = np.arange(-12, 12)
    offsets = np.arange(width) - width // 2
    labelled, target = 0, fraction * truth.size
    while classes and labelled < target:
        c = classes[rng.integers(len(classes))]
        y, x = np.unravel_index(inner[c][rng.integers(inner[c].size)], truth.shape)
        angle = rng.uniform(0, np.pi)
        yy = (y + np.rint(steps * np.sin(angle)).astype(int))[:, None] + offsets[None, :]
        xx = (x + np.rint(steps * np.cos(angle)).astype(int))[:, None] + offsets[None, :]
        yy, xx = np.broadcast_arrays(yy[:, :, None], xx[:, None, :])
        ok = (yy >= 0) & (yy < truth.shape[0]) & (xx >= 0) & (xx < truth.shape[1])
        flat = np.unique(yy[ok] * truth.shape[1] + xx[ok])
        flat = flat[(truth.flat[flat] == c) & (out.flat[flat] == 0)]
        out.flat[flat] = c
        labelled += flat.size
    return out
