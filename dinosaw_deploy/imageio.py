"""Read whole images (small ones; the tiled reader for gigapixel scans builds on tifffile too)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DinosawError

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8"}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A whole image as a numpy array: TIFF via tifffile, ``.npy``, else PNG/JPEG/... via imagecodecs."""
    path = Path(path)
    if not path.is_file():
        raise DinosawError(f"image not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            image = tifffile.imread(path)
        elif suffix == ".npy":
            image = np.load(path, allow_pickle=False)
        else:
            import imagecodecs

            image = imagecodecs.imread(str(path))
    except Exception as exc:  # codec errors come in many types; all mean "unreadable"
        raise DinosawError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    image = np.asarray(image)
    if image.size == 0:
        raise DinosawError(f"cannot read image {path}: it holds no pixels")
    return image
