"""The one box convention: ``(y0, y1, x0, x1)``, half-open, in pixels of the image it refers to."""
from __future__ import annotations

Box = tuple[int, int, int, int]
