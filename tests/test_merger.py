"""The label mergers: in memory (a region, tiles cropped to it) and zarr (whole tiles, markers, picklable)."""
from __future__ import annotations

import pickle

import numpy as np
import zarr

from dinosaw_deploy.segment.merger import ArrayMerger, ZarrMerger


def _tile(box, value):
    y0, y1, x0, x1 = box
    labels = np.full((y1 - y0, x1 - x0), value, np.uint8)
    return labels, np.stack([labels / 10.0, 1 - labels / 10.0]).astype(np.float32)


def test_array_merger_crops_tiles_to_its_box():
    merger = ArrayMerger((5, 15, 5, 25), classes=2)
    for box, value in (((0, 10, 0, 10), 1), ((0, 10, 10, 20), 2), ((0, 10, 20, 30), 3),
                       ((10, 20, 0, 10), 4), ((10, 20, 10, 20), 5), ((10, 20, 20, 30), 6)):
        merger.aggregate(box, *_tile(box, value))
    labels, probs = merger.finalize()
    expected = np.repeat(np.repeat(np.array([[1, 2, 3], [4, 5, 6]], np.uint8), 10, 0), 10, 1)[5:15, 5:25]
    assert np.array_equal(labels, expected)
    assert np.allclose(probs[0], expected / 10.0)
    assert ArrayMerger((0, 4, 0, 4), classes=2, probabilities=False).finalize()[1] is None


def test_zarr_merger_writes_whole_tiles_marks_them_and_travels(tmp_path):
    for key, shape in (("labels", (20, 30)), ("probabilities", (2, 20, 30))):
        zarr.open_array(tmp_path / f"{key}.zarr", mode="w", shape=shape, chunks=shape, dtype="uint8", fill_value=0)
    merger = ZarrMerger.at({k: tmp_path / f"{k}.zarr" for k in ("labels", "probabilities")}, tmp_path / "done")
    worker = pickle.loads(pickle.dumps(merger))  # what a cluster task receives
    worker.aggregate((0, 10, 10, 20), *_tile((0, 10, 10, 20), 7))
    worker.mark("0_10")
    assert merger.done("0_10") and not merger.done("0_0")
    labels, probs = merger.finalize()
    assert labels[:10, 10:20].min() == 7 and labels[:, :10].max() == 0
    assert probs[0, 0, 10] == 178 and probs[1, 0, 10] == 76  # 0.7 and 0.3 (float32: 0.29999998) x 255, rounded
    blocks = merger.within("blocks")
    blocks.mark("0-10_10-20")
    assert blocks.done("0-10_10-20") and not merger.done("0-10_10-20")
