"""Segmentation quality on real micrographs (issue #12): ours against the simplest peer, same run.

    .venv/bin/python benchmarks/real_quality.py [--shared ../shared] [--images 22] [--modal R] [--no-multi]

Data (in ``../shared``, never copied here; the script says so and stops when it is absent):

* EBC: 22 real SEM cross-sections (1024² uint8), dense ground truth 0 background / 1 oxide / 2 crack
  (``data/ebc``, README there). Scribbles: ``tools/scribbles.py`` ``scribbles(gt, seed=i)``, i = the
  image's index in sorted order: ~1 % of the pixels in short strokes, class c -> label c + 1.
* ISB ``1.tif`` (518², 2 classes) with its own scribbles ``1_labels.tif`` (5.3 %, method.md §6),
  and with ``scribbles(gt, seed=0)`` on 1 %.

Protocols: per image (train on an image's scribbles, score every pixel of it) on EBC and ISB, and
multi-image (one model trained on the scribbles of the first 5 EBC images, scoring the other 17).
Methods, each on the same scribbles: the peer = scikit-image ``multiscale_basic_features(sigma_min=1,
sigma_max=16)`` + ``RandomForestClassifier(100)``; ``old`` = our defaults before issue 12 (58 filter
channels, equal class priors); ``new`` = ``Segmenter()`` defaults. mIoU = mean of
``labels.class_iou`` over the classes of the ground truth.

Prints per image mIoU of each method and new - peer; per-class IoU means (crack is the hard one);
train / predict CPU seconds (this process, all threads: steadier than wall time on a shared
machine) and the ratio new / old of training + prediction. Targets (issue 12):
EBC mean mIoU >= peer + 0.03 per image and multi-image; ISB >= peer; no image more than 0.03 below
the peer; new / old time <= 1.5.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EBC_CLASSES = ("background", "oxide", "crack")
ISB_CLASSES = ("class 0", "class 1")


def load_scribble_tool(shared: Path):
    spec = importlib.util.spec_from_file_location("scribbles", shared / "tools" / "scribbles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scribbles


def ebc_images(shared: Path, count: int):
    """[(name, image uint8, ground truth 0..2, scribbles 0 | 1..3)] in sorted order."""
    import tifffile
    from PIL import Image

    scribbles = load_scribble_tool(shared)
    root = shared / "data" / "ebc"
    out = []
    for i, path in enumerate(sorted((root / "images").glob("*.tif"))[:count]):
        truth = np.asarray(Image.open(root / "labels" / f"{path.stem}_label.png")).astype(np.uint8)
        out.append((path.stem, tifffile.imread(path), truth, scribbles(truth, seed=i)))
    return out


def isb_images(shared: Path):
    """ISB 1.tif with its own scribbles, and with generated 1 % scribbles (seed 0)."""
    from dinosaw_deploy.image.reader import read_image
    from dinosaw_deploy.segment.labels import scribbles_from_array

    root = shared / "data" / "isb"
    image = read_image(root / "1.tif")
    truth = scribbles_from_array(read_image(root / "1_ground_truth.tif")).to_image() - 1
    own = scribbles_from_array(read_image(root / "1_labels.tif")).to_image()
    generated = load_scribble_tool(shared)(truth, seed=0)
    return [("ISB 1.tif (its scribbles)", image, truth, own), ("ISB 1.tif (1 %, seed 0)", image, truth, generated)]


class Peer:
    """scikit-image features + RandomForest(100), trained on the scribbled pixels of one or more images."""

    def __init__(self) -> None:
        from sklearn.ensemble import RandomForestClassifier

        self.forest = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0)

    @staticmethod
    def features(image: np.ndarray) -> np.ndarray:
        from skimage.feature import multiscale_basic_features

        return multiscale_basic_features(image.astype(np.float32) / 255, sigma_min=1, sigma_max=16)

    def fit(self, images, labels) -> Peer:
        x = np.concatenate([self.features(im)[lab > 0] for im, lab in zip(images, labels)])
        y = np.concatenate([lab[lab > 0] for lab in labels])
        self.forest.fit(x, y)
        return self

    def predict(self, image: np.ndarray, modal: int = 0) -> np.ndarray:
        feats = self.features(image)
        return self.forest.predict(feats.reshape(-1, feats.shape[-1])).reshape(image.shape) - 1


class Ours:
    """A Segmenter; predictions mapped back to ground-truth values (label value - 1)."""

    def __init__(self, old: bool) -> None:
        from dinosaw_deploy.segment.filters import FilterBankConfig
        from dinosaw_deploy.segment.segmenter import Segmenter

        if old:  # the defaults before issue 12
            self.seg = Segmenter(filter_bank=FilterBankConfig(structure_scales=(), variance_sigmas=()),
                                 estimate_prior=False)
        else:
            self.seg = Segmenter()

    def fit(self, images, labels) -> Ours:
        self.seg.fit(list(images), list(labels))
        return self

    def predict(self, image: np.ndarray, modal: int = 0) -> np.ndarray:
        values = np.array([0] + [c.source_value[0] - 1 for c in self.seg.label_classes], np.uint8)
        return values[self.seg.predict(image, modal=modal)]


def timed(call):
    """(result, CPU seconds of this process, all threads): steadier than wall time on a shared machine."""
    start = time.process_time()
    result = call()
    return result, time.process_time() - start


def evaluate(methods: dict, train: list, test: list, modal: int = 0) -> dict:
    """{method: {"iou": [per test image per-class IoU], "classes": [...], "train": s, "predict": [s]}};
    with ``modal``, also ``new+mR``: the new model's predictions through a modal filter of radius R."""
    from dinosaw_deploy.segment.labels import class_iou

    out = {}
    for name, make in methods.items():
        model, train_s = timed(lambda: make().fit([t[1] for t in train], [t[3] for t in train]))
        variants = {name: {}} if name != "new" or not modal else {name: {}, f"new+m{modal}": {"modal": modal}}
        for variant, options in variants.items():
            ious, classes, predict_s = [], [], []
            for _, image, truth, _ in test:
                pred, seconds = timed(lambda: model.predict(image, **options))
                ious.append(class_iou(pred, truth))
                classes.append(np.unique(truth))
                predict_s.append(seconds)
            out[variant] = {"iou": ious, "classes": classes, "train": train_s, "predict": predict_s}
    return out


def class_means(result: dict, class_names: tuple[str, ...]) -> str:
    per_class = {c: [] for c in range(len(class_names))}
    for ious, classes in zip(result["iou"], result["classes"]):
        for iou, c in zip(ious, classes):
            per_class[int(c)].append(iou)
    return " ".join(f"{class_names[c]} {np.mean(v):.3f}" for c, v in per_class.items() if v)


def summarise(title: str, names: list[str], results: list[dict], methods: list[str],
              class_names: tuple[str, ...] = EBC_CLASSES) -> None:
    """Per image rows, then mean mIoU, per-class means, worst image vs the peer, seconds, time ratio."""
    print(f"\n{title}")
    print(f"  {'image':32s} " + " ".join(f"{m:>8s}" for m in methods) + "  new-peer")
    miou = {m: np.array([iou.mean() for r in results for iou in r[m]["iou"]]) for m in methods}
    for i, name in enumerate(names):
        print(f"  {name[:32]:32s} " + " ".join(f"{miou[m][i]:8.4f}" for m in methods)
              + f"  {miou['new'][i] - miou['peer'][i]:+8.4f}")
    print(f"  {'mean mIoU':32s} " + " ".join(f"{miou[m].mean():8.4f}" for m in methods)
          + f"  {miou['new'].mean() - miou['peer'].mean():+8.4f}")
    delta = miou["new"] - miou["peer"]
    print(f"  new vs peer: ahead on {int((delta > 0).sum())} of {len(delta)}, worst image {delta.min():+.4f} "
          f"({names[int(delta.argmin())]})")
    for m in methods:
        merged = {"iou": [x for r in results for x in r[m]["iou"]],
                  "classes": [x for r in results for x in r[m]["classes"]]}
        train = sum(r[m]["train"] for r in results)
        predict = sum(sum(r[m]["predict"]) for r in results)
        print(f"  {m:6s} per-class IoU: {class_means(merged, class_names)};  CPU s: train {train:.1f}, predict {predict:.1f}")
    total = {m: sum(r[m]["train"] + sum(r[m]["predict"]) for r in results) for m in ("old", "new")}
    print(f"  CPU time new / old (train + predict): {total['new'] / total['old']:.2f}  (target <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared folder (data/, tools/)")
    parser.add_argument("--images", type=int, default=22, help="first N EBC images for the per-image protocol")
    parser.add_argument("--modal", type=int, default=0, help="also score the new model + a modal filter of radius R")
    parser.add_argument("--no-multi", action="store_true", help="skip the train-on-5 / score-17 protocol")
    args = parser.parse_args()
    if not (args.shared / "data" / "ebc").is_dir() or not (args.shared / "tools" / "scribbles.py").is_file():
        print(f"skipped: {args.shared}/data/ebc or tools/scribbles.py not found (the data stays in ../shared)")
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    methods = {"peer": Peer, "old": lambda: Ours(old=True), "new": lambda: Ours(old=False)}
    names = list(methods) + ([f"new+m{args.modal}"] if args.modal else [])

    isb = isb_images(args.shared)
    results = [evaluate(methods, [item], [item], args.modal) for item in isb]
    summarise("ISB 1.tif, per image", [item[0] for item in isb], results, names, ISB_CLASSES)

    ebc = ebc_images(args.shared, 22 if not args.no_multi else args.images)
    results = []
    for item in ebc[: args.images]:
        results.append(evaluate(methods, [item], [item], args.modal))
        print(f"  ... {item[0]}: " + " ".join(f"{m} {results[-1][m]['iou'][0].mean():.4f}" for m in names),
              flush=True)
    summarise(f"EBC per image ({len(results)} images, scribbles on ~1 % of pixels)",
              [item[0] for item in ebc[: args.images]], results, names)

    if not args.no_multi:
        result = evaluate(methods, ebc[:5], ebc[5:], args.modal)
        summarise("EBC multi-image: one model on the scribbles of images 0-4, scoring images 5-21",
                  [item[0] for item in ebc[5:]], [result], names)


if __name__ == "__main__":
    main()
