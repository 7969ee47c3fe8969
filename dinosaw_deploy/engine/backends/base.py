"""The one interface every engine backend implements, and the ONNX I/O contract it serves."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class Backend(ABC):
    """Runs the exported ALiBi-Dv2 on one batch: normalised pixels + the grid's bias -> features.

    Attributes:
        name: ``tensorrt``, ``ort-tensorrt``, ``ort-cuda`` or ``cpu``.
        model_path: the ``.onnx`` or ``.plan`` it runs.
        manifest: the artifact's manifest (architecture, bias, preprocessing, ...).
        max_batch: the largest batch one :meth:`run` accepts (None: unbounded).
    """

    name: str
    model_path: Path
    manifest: dict[str, Any]
    max_batch: int | None = None

    @property
    def providers(self) -> list[str]:
        """What executes the graph (ONNX Runtime providers, or the native runtime's name)."""
        return [self.name]

    def check_input(self, batch: int, height: int, width: int) -> None:
        """Raise :class:`DinosawError` if one call cannot take (batch, 3, height, width) (default: any)."""

    @abstractmethod
    def run(self, pixel_values: np.ndarray, attn_bias: np.ndarray) -> np.ndarray:
        """float32 (B, 3, 14h, 14w) and (1, 1|heads, T, T) -> float32 (B, C, h, w); B <= max_batch."""

    def close(self) -> None:
        """Release device resources (a no-op where there are none)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_path.name!r}, providers={self.providers})"
