"""Roll-equivariance check of an engine: wrap ALiBi without absolute position commutes with cyclic shifts."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dinosaw_deploy.errors import DinosawError

if TYPE_CHECKING:
    from dinosaw_deploy.engine.extractor import FeatureExtractor


def default_shifts(h: int, w: int) -> list[tuple[int, int]]:
    """Whole-patch shifts to test: one row, one column, and about half the grid each way."""
    return [(1, 0), (0, 1), (h // 2, w // 2)]


def roll_check(
    extractor: FeatureExtractor, image: np.ndarray, shifts: Sequence[tuple[int, int]] | None = None
) -> dict:
    """Cyclic-shift equivariance: ``features(roll(img, 14 k)) == roll(features(img), k)``.

    Exact for wrap ALiBi without a positional embedding, whatever the weights; absolute position
    (a bias without wrap, a learned embedding) breaks it. A wrapped bias of the wrong metric or
    scale is shift-invariant too, so this check cannot see it. The roll is applied
    to the normalised input, so intensity scaling plays no part. Returns the max abs deviation per
    shift and overall, and the features' max abs value for scale.
    """
    pixels = extractor.preprocess(image)
    p = extractor.patch_size
    h, w = pixels.shape[1] // p, pixels.shape[2] // p
    shifts = [(int(ky) % h, int(kx) % w) for ky, kx in (shifts or default_shifts(h, w))]
    shifts = [s for i, s in enumerate(shifts) if s != (0, 0) and s not in shifts[:i]]
    if not shifts:
        raise DinosawError(f"no shift to test: on a {h}x{w} grid every given shift is a whole turn (0, 0)")
    batch = np.stack([pixels] + [np.roll(pixels, (ky * p, kx * p), axis=(1, 2)) for ky, kx in shifts])
    feats = extractor.run(batch)
    deviations = [
        float(np.abs(feats[i + 1] - np.roll(feats[0], s, axis=(1, 2))).max()) for i, s in enumerate(shifts)
    ]
    return {
        "grid": [h, w],
        "shifts": [list(s) for s in shifts],
        "max_abs_deviation": deviations,
        "max_deviation": max(deviations),
        "feature_max_abs": float(np.abs(feats[0]).max()),
    }
