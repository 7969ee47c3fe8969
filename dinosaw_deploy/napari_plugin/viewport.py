"""What part of an image a napari canvas shows, in full-resolution pixels (no Qt needed)."""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from dinosaw_deploy.image.box import Box

FALLBACK_SIDE = 2048  # shown before the canvas has drawn: the top-left corner of this size


def visible_box(corner_pixels: np.ndarray, downsample: Sequence[float], shape: tuple[int, int]) -> Box:
    """The level-0 box of an image layer's view. ``corner_pixels`` is napari's (2, ndim) top-left and
    bottom-right of the view in the coordinates of the displayed level (the last two axes are y, x),
    ``downsample`` that level's (y, x) factor. A view that has not been drawn (all zeros, or empty)
    gives the top-left :data:`FALLBACK_SIDE` square."""
    height, width = shape
    corners = np.asarray(corner_pixels, float)[:, -2:]
    factor = np.asarray(downsample, float)[-2:]
    y0, x0 = np.floor(corners[0] * factor).astype(int)
    y1, x1 = np.ceil((corners[1] + 1) * factor).astype(int)
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
    if not corners.any() or y1 <= y0 or x1 <= x0:
        return 0, min(height, FALLBACK_SIDE), 0, min(width, FALLBACK_SIDE)
    return int(y0), int(y1), int(x0), int(x1)


def paint_region(view: Box, shape: tuple[int, int], side: int) -> Box:
    """The whole image when it fits ``side`` x ``side``; else that square (clipped) centred on ``view``."""
    y0, y1, x0, x1 = view
    out = []
    for lo, hi, size in ((y0, y1, shape[0]), (x0, x1, shape[1])):
        start = min(max((lo + hi) // 2 - side // 2, 0), max(size - side, 0))
        out += [start, min(start + side, size)]
    return tuple(out)


def box_pixels(box: Box) -> int:
    y0, y1, x0, x1 = box
    return (y1 - y0) * (x1 - x0)


class Generations:
    """A counter of requests: each new request makes every older one stale (thread-safe)."""

    def __init__(self) -> None:
        self._current = 0
        self._lock = threading.Lock()

    def new(self) -> int:
        with self._lock:
            self._current += 1
            return self._current

    def is_current(self, token: int) -> bool:
        with self._lock:
            return token == self._current
