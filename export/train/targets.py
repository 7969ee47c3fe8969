"""Distillation targets (the teacher's final-normed patch tokens, chosen channels zeroed), the loss,
and an optional on-disk cache of targets computed once per stage."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dinosaw_deploy.files import atomic_path, atomic_write_bytes

from ..model import ViT
from .data import ImageFolder


def distill_targets(teacher: ViT, pixel_values: torch.Tensor, zero_channels: Sequence[int]) -> torch.Tensor:
    """Teacher features (B, C, h, w) in float32 with ``zero_channels`` set to exactly zero."""
    with torch.no_grad():
        target = teacher(pixel_values, None).float()
    target[:, list(zero_channels)] = 0.0
    return target


def cosine_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over tokens of (1 - cosine(student token, target token)); channels on dim 1."""
    return (1.0 - F.cosine_similarity(features.float(), target.float(), dim=1, eps=1e-8)).mean()


class TargetCache:
    """Precomputed targets of one stage: ``targets_<size>px.npy`` (float16, (N, C, h, w), memory-mapped)
    and a ``.json`` beside it recording what they were computed from; stale files are recomputed."""

    def __init__(self, folder: Path, dataset: ImageFolder, key: dict) -> None:
        self.path = Path(folder) / f"targets_{dataset.size}px.npy"
        self.meta_path = self.path.with_suffix(".json")
        self.dataset = dataset
        self.key = {**key, "image_size": dataset.size, "images": [str(p) for p in dataset.paths], "dtype": "float16"}
        self._array: np.ndarray | None = None

    def is_fresh(self) -> bool:
        try:
            return self.path.is_file() and json.loads(self.meta_path.read_text()) == self.key
        except (OSError, json.JSONDecodeError):
            return False

    def build(
        self,
        teacher: ViT,
        zero_channels: Sequence[int],
        *,
        batch_size: int,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager],
        workers: int = 0,
    ) -> None:
        """Run the teacher over every image once and write the targets (temp name, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
        with atomic_path(self.path) as tmp:
            out = None
            for index, pixels in loader:
                with autocast():
                    target = distill_targets(teacher, pixels.to(device), zero_channels)
                if out is None:
                    out = np.lib.format.open_memmap(tmp, "w+", np.float16, (len(self.dataset), *target.shape[1:]))
                out[index.numpy()] = target.cpu().numpy().astype(np.float16)
            out.flush()
            del out
        atomic_write_bytes(self.meta_path, json.dumps(self.key, indent=1).encode())
        self._array = None

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        """float32 targets of the images numbered ``index`` (a 1-D tensor)."""
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(self._array[index.numpy()].astype(np.float32))
