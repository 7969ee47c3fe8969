"""Turn any micrograph array into the model's normalised (3, H, W) input.

Rules (documented in the README):

* layout: (H, W) grayscale; (H, W, C) or (C, H, W) with C in {1, 3, 4}; an alpha channel is
  dropped; one channel is replicated to three.
* intensity to [0, 1]: with ``intensity_range=(lo, hi)`` values are mapped linearly and clipped;
  otherwise integers are divided by their dtype's maximum (uint8 / 255, uint16 / 65535), booleans
  become 0/1, and floats already inside [0, 1] are kept while other floats are min-max scaled over
  the image.
* ImageNet mean/std normalisation.
* crop to the 14-px grid: the trailing ``H % 14`` rows and ``W % 14`` columns are dropped
  (top-left crop), exactly what the reference's unpadded stride-14 patch embedding does.
"""
from __future__ import annotations

import numpy as np

from dinosaw_deploy.engine.contract import IMAGENET_MEAN, IMAGENET_STD
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import scale_intensity
from dinosaw_deploy.image.reader import to_channels_last


def grid_shape(height: int, width: int, patch_size: int = 14) -> tuple[int, int]:
    """Patch grid (h, w) = (floor(H / p), floor(W / p)); refuses images smaller than one patch."""
    h, w = height // patch_size, width // patch_size
    if h < 1 or w < 1:
        raise DinosawError(f"image of {height}x{width} px is smaller than one {patch_size}-px patch")
    return h, w


def preprocess(
    image: np.ndarray,
    *,
    patch_size: int = 14,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    intensity_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Any supported image -> normalised float32 (3, 14h, 14w), cropped top-left to the grid."""
    rgb = to_channels_last(image)
    h, w = grid_shape(rgb.shape[0], rgb.shape[1], patch_size)
    rgb = scale_intensity(rgb[: h * patch_size, : w * patch_size], intensity_range)
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((rgb - mean_arr) / std_arr).transpose(2, 0, 1), dtype=np.float32)
