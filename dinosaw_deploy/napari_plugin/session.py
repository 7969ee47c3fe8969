"""The interactive loop for one image, without any GUI: train on the scribbles, predict the tiles of
a box that the current model has not predicted yet, and stop as soon as a newer request arrives.

One :class:`LiveSession` per image. Its :class:`~dinosaw_deploy.segment.prepared.PreparedImage` keeps
the features of every tile computed in the session (bounded by ``cache_bytes``), so a retrain after a
stroke recomputes only the features of boxes whose scribbles changed, and predicting a tile again
runs only the classifier. Jobs run one at a time (a lock); a job whose token is stale when it gets
the lock, or between two tiles, stops without touching anything.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.box import Box
from dinosaw_deploy.image.intensity import DEFAULT_NORMALIZE
from dinosaw_deploy.image.reader import RegionSource
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.labels import Scribbles, scribbles_from_array
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.tiling.parallel import map_ordered
from dinosaw_deploy.tiling.store import PatchGrid

from .viewport import Generations

LIVE_TILE, LIVE_ROUNDS, LIVE_MAX_BIN = 256, 30, 64
# The feature cache of a session: a viewer panning a 40 000² scan peaked at 1.96-2.03 GiB of RSS with 1 GiB
# (napari, Qt and the workers' buffers hold the rest), too close to a 2 GiB budget.
LIVE_CACHE_BYTES = 768 << 20


class LiveSession:
    """Paint -> train -> predict what is visible, for one image (see the module notes).

    Args:
        image: an in-memory array or a region source (a file reader).
        extractor: a ``FeatureExtractor`` for ViT channels, or None for classical features only.
        grid: the image's patch features when ``image`` is a reader and ``extractor`` is set.
        classifier: XGBoost settings (default: 30 rounds, as prediction time grows with the trees and every
            stroke re-predicts the visible tiles; 64 histogram bins, which train 1.6x faster than 256 at
            the same mIoU on 10 EBC images, 0.592 vs 0.594).
        tile: the prediction tile (default 256 px: a view is covered by tiles that overshoot it less).
        normalize: the intensity rule (``Segmenter(normalize=...)``), saved with the model.
    """

    def __init__(self, image: np.ndarray | RegionSource, *, extractor=None, grid: PatchGrid | None = None,
                 classifier: ClassifierParams | None = None, tile: int = LIVE_TILE, threads: int | None = None,
                 cache_bytes: int = LIVE_CACHE_BYTES, normalize: str = DEFAULT_NORMALIZE) -> None:
        classifier = classifier or ClassifierParams(rounds=LIVE_ROUNDS, max_bin=LIVE_MAX_BIN)
        self.segmenter = Segmenter(extractor=extractor, classifier=classifier,
                                   tile=tile, threads=threads, normalize=normalize)
        self.prepared = self.segmenter.prepare(image, grid=grid, cache_bytes=cache_bytes)
        self.generations = Generations()
        self._tiles: dict[Box, np.ndarray] = {}  # labels of tiles under the current model
        self._previews: dict[Box, np.ndarray] = {}  # strided labels of tiles under the current model
        self._work = threading.Lock()

    @property
    def trained(self) -> bool:
        return self.segmenter.booster is not None

    def train(self, scribbles: np.ndarray | Scribbles, token: int) -> bool:
        """Fit on ``scribbles`` (a label array of the image's shape, 0 = unlabelled); False when
        ``token`` went stale first (nothing changed then)."""
        marks = scribbles if isinstance(scribbles, Scribbles) else scribbles_from_array(np.asarray(scribbles))
        with self._work:
            if not self.generations.is_current(token):
                return False
            self.segmenter.fit_prepared([(self.prepared, marks)])
            self._tiles.clear()
            self._previews.clear()
            return True

    def predict(self, box: Box, token: int, *, preview: bool = False) -> Iterator[tuple[Box, np.ndarray]]:
        """(tile box, labels) of every tile overlapping ``box``, computed on the segmenter's threads only where
        the current model has not done so yet; stops when ``token`` goes stale. ``preview``: the labels of the
        classifier's grid (every 3rd pixel of every 3rd row, 9x cheaper) of the tiles that have no full
        labels yet, for a first look."""
        if not self.trained:
            raise DinosawError("paint scribbles of at least two classes first")
        store = self._previews if preview else self._tiles

        def work(tile: Box) -> np.ndarray | None:  # None: the token went stale first
            labels = store.get(tile)
            if labels is None and self.generations.is_current(token):
                labels = self.segmenter.predict_box(self.prepared, tile, preview=preview, probabilities=False)[0]
            return labels

        with self._work:
            tiles = [tile for tile in self.prepared.covering_tiles(self.prepared.check_box(box))
                     if not (preview and tile in self._tiles)]
            for tile, labels in zip(tiles, map_ordered(work, tiles, self.segmenter.threads)):
                if labels is None or not self.generations.is_current(token):
                    return
                store[tile] = labels
                yield tile, labels

    def region(self, box: Box) -> np.ndarray:
        """Labels of ``box`` from the tiles predicted so far (0 where none is yet)."""
        y0, y1, x0, x1 = box
        out = np.zeros((y1 - y0, x1 - x0), np.uint8)
        for tiles in (self._previews, self._tiles):  # full labels over previews
            for tile, labels in list(tiles.items()):
                paste(out, box, tile, labels)
        return out

    def fractions(self) -> dict[str, float]:
        """Each class's share of the pixels predicted so far."""
        counts = np.zeros(len(self.segmenter.label_classes) + 1, np.int64)
        for labels in list(self._tiles.values()):
            counts += np.bincount(labels.ravel(), minlength=len(counts))[: len(counts)]
        total = max(int(counts[1:].sum()), 1)
        return {c.name: float(n) / total for c, n in zip(self.segmenter.label_classes, counts[1:])}


def paste(out: np.ndarray, out_box: Box, tile_box: Box, tile: np.ndarray) -> None:
    """Copy the part of ``tile`` (covering ``tile_box``) that lies inside ``out_box`` into ``out``."""
    y0, y1, x0, x1 = out_box
    ty0, ty1, tx0, tx1 = tile_box
    iy0, iy1, ix0, ix1 = max(y0, ty0), min(y1, ty1), max(x0, tx0), min(x1, tx1)
    if iy0 < iy1 and ix0 < ix1:
        out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = tile[iy0 - ty0 : iy1 - ty0, ix0 - tx0 : ix1 - tx0]
