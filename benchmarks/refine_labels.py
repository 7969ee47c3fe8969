"""Labels refined from the classifier's grid vs the most probable class of every pixel, on real images.

    .venv/bin/python benchmarks/refine_labels.py [--ebc 6] [--shared ../shared]

Per image (the first ``--ebc`` EBC images with ``tools/scribbles.py`` strokes, and ISB 1.tif with its own
scribbles): a default classical segmenter trained on the scribbles, then the labels of the whole image
both ways from the same features: pixels whose labels differ, the share of pixels the classifier saw,
classifier seconds (features computed once, outside the timing) and mIoU against the dense ground
truth. The module notes of ``dinosaw_deploy/segment/refine.py`` quote this table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_quality import ebc_images, isb_images  # noqa: E402


def miou(labels: np.ndarray, truth: np.ndarray, classes: int) -> float:
    ious = [np.sum((labels == c) & (truth == c)) / np.sum((labels == c) | (truth == c))
            for c in range(classes) if np.any(truth == c)]
    return float(np.mean(ious))


class CountingBooster:
    """The segmenter's booster, counting the pixels it classifies."""

    def __init__(self, booster) -> None:
        self.booster, self.pixels = booster, 0

    def inplace_predict(self, features):
        self.pixels += len(features)
        return self.booster.inplace_predict(features)


def compare(name: str, image: np.ndarray, truth: np.ndarray, scribbles: np.ndarray) -> tuple[float, float, float]:
    from dinosaw_deploy.segment.segmenter import Segmenter

    seg = Segmenter().fit(image, scribbles)
    prepared = seg.prepare(image)
    for tile in prepared.covering_tiles((0, image.shape[0], 0, image.shape[1])):  # features in the cache
        seg.predict_box(prepared, tile, probabilities=False)
    values = np.array([c.source_value[0] - 1 for c in seg.label_classes])
    rows = {}
    for exact in (True, False):
        seg.booster = counting = CountingBooster(seg.booster)
        start = time.perf_counter()
        labels = prepared.labels(exact=exact)
        rows[exact] = (values[labels - 1], time.perf_counter() - start, counting.pixels / labels.size)
        seg.booster = counting.booster
    (every, t_every, _), (refined, t_refined, share) = rows[True], rows[False]
    k = len(seg.label_classes)
    differ = float(np.mean(every != refined))
    print(f"{name[:28]:28s} differ {differ * 100:6.3f} %  classified {share * 100:5.1f} %  classifier "
          f"{t_every:5.2f} s -> {t_refined:5.2f} s ({t_every / t_refined:4.1f}x)  mIoU {miou(every, truth, k):.4f} "
          f"-> {miou(refined, truth, k):.4f}", flush=True)
    return differ, share, t_every / t_refined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ebc", type=int, default=6, help="how many EBC images")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    args = parser.parse_args()
    if not (args.shared / "data" / "ebc").is_dir():
        print(f"skipped: {args.shared}/data/ebc not found (the data stays in ../shared)")
        return
    images = ebc_images(args.shared, args.ebc) + isb_images(args.shared)[:1]
    results = np.array([compare(*item) for item in images])
    print(f"{'all':28s} differ {results[:, 0].min() * 100:.3f}-{results[:, 0].max() * 100:.3f} %  classified "
          f"{results[:, 1].mean() * 100:.1f} % (mean)  classifier speed-up {np.median(results[:, 2]):.1f}x (median)")


if __name__ == "__main__":
    main()
