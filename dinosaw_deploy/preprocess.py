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

from .errors import DinosawError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_channels_last(image: np.ndarray) -> np.ndarray:
    """(H, W) / (H, W, C) / (C, H, W) -> (H, W, 3), alpha dropped, gray replicated."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise DinosawError(
            f"expected a 2D grayscale or 3D RGB(A) image, got an array of shape {image.shape}"
        )
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image


def scale_intensity(image: np.ndarray, intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map intensities to float32 [0, 1] by the module's rules."""
    image = np.asarray(image)
    if image.size == 0:
        raise DinosawError("the image is empty")
    if intensity_range is not None:
        lo, hi = map(float, intensity_range)
        if not hi > lo:
            raise DinosawError(f"intensity range must have hi > lo, got ({lo}, {hi})")
        return np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        if info.min < 0:
            return (image.astype(np.float32) - info.min) / float(info.max - info.min)
        return image.astype(np.float32) / float(info.max)
    if np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise DinosawError("the image contains NaN or infinite values")
        lo, hi = float(image.min()), float(image.max())
        if lo >= 0.0 and hi <= 1.0:
            return image
        return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    raise DinosawError(f"unsupported pixel type {image.dtype}")


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
