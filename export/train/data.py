"""Image-folder dataset: any PNG/JPEG/TIFF, grayscale replicated to RGB, resize + centre crop."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dinosaw_deploy.engine.preprocess import preprocess
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import scale_intensity
from dinosaw_deploy.image.reader import read_image, to_channels_last

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every PNG/JPEG/TIFF under ``root`` (recursively), in a stable sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise DinosawError(f"image folder not found: {root}")
    paths = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    if not paths:
        raise DinosawError(f"no PNG/JPEG/TIFF images in {root}")
    return paths


def load_training_image(path: Path, size: int, patch_size: int = 14) -> np.ndarray:
    """Normalised float32 (3, size, size): short side resized to ``size`` (bilinear, antialiased),
    centre-cropped, then the runtime's own :func:`preprocess` (ImageNet mean/std)."""
    try:
        rgb = scale_intensity(to_channels_last(read_image(path)))
    except DinosawError as exc:
        raise DinosawError(f"{path}: {exc}") from None
    height, width = rgb.shape[:2]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = image[:, top : top + size, left : left + size].clamp(0.0, 1.0)
    return preprocess(crop.permute(1, 2, 0).numpy(), patch_size=patch_size)


class ImageFolder(Dataset):
    """``dataset[i] -> (i, pixels (3, size, size))``; the index lets precomputed targets be looked up."""

    def __init__(self, paths: list[Path], size: int, patch_size: int = 14) -> None:
        self.paths, self.size, self.patch_size = list(paths), size, patch_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, torch.from_numpy(load_training_image(self.paths[index], self.size, self.patch_size))
