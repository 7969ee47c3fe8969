"""Where predicted tiles go: one interface for every front door (MONAI's ``Merger``).

``aggregate(box, labels, probabilities)`` once per predicted tile, ``finalize()`` once at the end.
:class:`ArrayMerger` assembles a region in memory (the Python API, the live processor, the viewer);
:class:`ZarrMerger` writes into zarr arrays on disk (a job's work store, or the level 0 of an OME-Zarr
target) with done markers, so a cut job resumes where it stopped; it is a small picklable value, so a
cluster worker gets the same object the job made and never builds a work-folder path itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinosaw_deploy.image.box import Box


class ArrayMerger:
    """Labels (h, w) uint8 and optionally probabilities (classes, h, w) float32 of ``box``; tiles that reach
    past it are cropped to it."""

    def __init__(self, box: Box, classes: int, probabilities: bool = True) -> None:
        self.box = box
        y0, y1, x0, x1 = box
        self.labels = np.empty((y1 - y0, x1 - x0), np.uint8)
        self.probabilities = np.empty((classes, y1 - y0, x1 - x0), np.float32) if probabilities else None

    def aggregate(self, box: Box, labels: np.ndarray, probabilities: np.ndarray | None) -> None:
        (ty0, ty1, tx0, tx1), (y0, y1, x0, x1) = box, self.box
        inner = (slice(max(ty0, y0) - ty0, min(ty1, y1) - ty0), slice(max(tx0, x0) - tx0, min(tx1, x1) - tx0))
        out = (slice(max(ty0, y0) - y0, min(ty1, y1) - y0), slice(max(tx0, x0) - x0, min(tx1, x1) - x0))
        self.labels[out] = labels[inner]
        if self.probabilities is not None:
            self.probabilities[(slice(None), *out)] = probabilities[(slice(None), *inner)]

    def finalize(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self.labels, self.probabilities


@dataclass(frozen=True)
class ZarrMerger:
    """Whole tiles into existing zarr arrays: ``targets["labels"]`` (H, W) uint8 and optionally
    ``targets["probabilities"]`` (classes, H, W) uint8 (probability x 255, rounded); ``markers``: the folder of
    done markers (:meth:`mark`, :meth:`done`), one empty file per tile or block name."""

    targets: dict[str, str]
    markers: str

    @classmethod
    def at(cls, targets: dict[str, str | os.PathLike], markers: str | os.PathLike) -> ZarrMerger:
        """A merger on these arrays (absolute paths, so it means the same on a worker), creating ``markers``."""
        Path(markers).mkdir(parents=True, exist_ok=True)
        return cls({k: str(Path(v).resolve()) for k, v in targets.items()}, str(Path(markers).resolve()))

    @property
    def stores_probabilities(self) -> bool:
        """Whether ``targets`` hold probabilities (so a predictor must compute every pixel's)."""
        return "probabilities" in self.targets

    def within(self, folder: str) -> ZarrMerger:
        """The same arrays with markers in a subfolder (a cluster's per-block markers)."""
        return ZarrMerger.at(self.targets, Path(self.markers) / folder)

    def _open(self, key: str):
        import zarr

        return zarr.open_array(self.targets[key], mode="r+")

    def aggregate(self, box: Box, labels: np.ndarray, probabilities: np.ndarray | None) -> None:
        y0, y1, x0, x1 = box
        self._open("labels")[y0:y1, x0:x1] = labels
        if "probabilities" in self.targets:
            self._open("probabilities")[:, y0:y1, x0:x1] = np.rint(probabilities * 255).astype(np.uint8)

    def mark(self, name: str) -> None:
        Path(self.markers, name).touch()

    def done(self, name: str) -> bool:
        return Path(self.markers, name).exists()

    def finalize(self):
        """(labels, probabilities or None) zarr arrays, for writing the outputs."""
        return self._open("labels"), self._open("probabilities") if "probabilities" in self.targets else None
