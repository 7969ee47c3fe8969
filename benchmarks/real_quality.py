"""Segmentation quality on real micrographs: ours under each intensity normalisation against the
simplest peer, same run.

    .venv/bin/python benchmarks/real_quality.py [--shared ../shared] [--images 22] [--modal R]
        [--protocols isb,ebc,multi,exposure] [--normalize dtype,minmax,percentile,zscore]

Data (in ``../shared``, never copied here; the script says so and stops when it is absent):

* EBC: 22 real SEM cross-sections (1024² uint8), dense ground truth 0 background / 1 oxide / 2 crack
  (``data/ebc``, README there). Scribbles: ``tools/scribbles.py`` ``scribbles(gt, seed=i)``, i = the
  image's index in sorted order: ~1 % of the pixels in short strokes, class c -> label c + 1.
* ISB ``1.tif`` (518², 2 classes) with its own scribbles ``1_labels.tif`` (5.3 %, method.md §6),
  and with ``scribbles(gt, seed=0)`` on 1 %.

Protocols: ``isb`` and ``ebc`` per image (train on an image's scribbles, score every pixel of it);
``multi``: one model trained on the scribbles of the first 5 EBC images, scoring the other 17;
``exposure``: the same on copies of the EBC images whose exposure was changed as SEM sessions change
it (per image, seeded by its index, generated here and never written: gamma 0.7-1.4, gain 0.6-1.4,
offset +-20 grey levels, Gaussian noise sigma 0-4, rounded and clipped to uint8).
Methods, each on the same scribbles: ``peer`` = scikit-image ``multiscale_basic_features(sigma_min=1,
sigma_max=16)`` + ``RandomForestClassifier(100)`` on image / 255; ``peer-mm`` = the same on each
image min-max stretched to [0, 1]; ``<rule>`` = ``Segmenter(normalize=<rule>)`` (defaults otherwise).
mIoU = mean of ``labels.class_iou`` over the classes of the ground truth.

Prints per image mIoU of each method and best ours - best peer; per-class IoU means (crack is the
hard one); train / predict CPU seconds (this process, all threads: steadier than wall time on a
shared machine).
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


def change_exposure(image: np.ndarray, seed: int) -> np.ndarray:
    """``image`` (uint8) as another SEM session might record it: gamma, gain, offset, noise (seeded)."""
    rng = np.random.default_rng((19, seed))
    gamma, gain, offset, noise = rng.uniform(0.7, 1.4), rng.uniform(0.6, 1.4), rng.uniform(-20, 20), rng.uniform(0, 4)
    out = 255.0 * (image / 255.0) ** gamma * gain + offset + rng.normal(0.0, noise, image.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Peer:
    """scikit-image features + RandomForest(100), trained on the scribbled pixels of one or more images;
    ``minmax``: each image stretched to [0, 1] first (else image / 255)."""

    def __init__(self, minmax: bool = False) -> None:
        from sklearn.ensemble import RandomForestClassifier

        self.forest = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0)
        self.minmax = minmax

    def features(self, image: np.ndarray) -> np.ndarray:
        from skimage.feature import multiscale_basic_features

        image = image.astype(np.float32)
        if self.minmax:
            image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
        else:
            image = image / 255
        return multiscale_basic_features(image, sigma_min=1, sigma_max=16)

    def fit(self, images, labels) -> Peer:
        x = np.concatenate([self.features(im)[lab > 0] for im, lab in zip(images, labels)])
        y = np.concatenate([lab[lab > 0] for lab in labels])
        self.forest.fit(x, y)
        return self

    def predict(self, image: np.ndarray, modal: int = 0) -> np.ndarray:
        feats = self.features(image)
        return self.forest.predict(feats.reshape(-1, feats.shape[-1])).reshape(image.shape) - 1


class Ours:
    """A Segmenter with the intensity rule ``normalize``; predictions mapped back to ground-truth
    values (label value - 1)."""

    def __init__(self, normalize: str) -> None:
        from dinosaw_deploy.segment.segmenter import Segmenter

        self.seg = Segmenter(normalize=normalize)

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
    with ``modal``, also ``<rule>+mR``: our predictions through a modal filter of radius R."""
    from dinosaw_deploy.segment.metrics import class_iou

    out = {}
    for name, make in methods.items():
        model, train_s = timed(lambda: make().fit([t[1] for t in train], [t[3] for t in train]))
        ours = not name.startswith("peer")
        variants = {name: {}} if not ours or not modal else {name: {}, f"{name}+m{modal}": {"modal": modal}}
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
    """Per image rows, then mean mIoU, each of ours vs the better peer (mean, images ahead, worst
    image), per-class means and CPU seconds."""
    print(f"\n{title}")
    peers = [m for m in methods if m.startswith("peer")]
    ours = [m for m in methods if m not in peers]
    print(f"  {'image':32s} " + " ".join(f"{m:>10s}" for m in methods))
    miou = {m: np.array([iou.mean() for r in results for iou in r[m]["iou"]]) for m in methods}
    for i, name in enumerate(names):
        print(f"  {name[:32]:32s} " + " ".join(f"{miou[m][i]:10.4f}" for m in methods))
    print(f"  {'mean mIoU':32s} " + " ".join(f"{miou[m].mean():10.4f}" for m in methods))
    best_peer = max(peers, key=lambda m: miou[m].mean())
    for m in ours:
        delta = miou[m] - miou[best_peer]
        print(f"  {m} - {best_peer}: {delta.mean():+.4f}, ahead on {int((delta > 0).sum())} of {len(delta)}, "
              f"worst image {delta.min():+.4f} ({names[int(delta.argmin())]})")
    for m in methods:
        merged = {"iou": [x for r in results for x in r[m]["iou"]],
                  "classes": [x for r in results for x in r[m]["classes"]]}
        train = sum(r[m]["train"] for r in results)
        predict = sum(sum(r[m]["predict"]) for r in results)
        print(f"  {m:10s} per-class IoU: {class_means(merged, class_names)};  CPU s: train {train:.1f}, "
              f"predict {predict:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared folder (data/, tools/)")
    parser.add_argument("--images", type=int, default=22, help="first N EBC images for the per-image protocol")
    parser.add_argument("--modal", type=int, default=0, help="also score ours + a modal filter of radius R")
    parser.add_argument("--protocols", default="isb,ebc,multi,exposure", help="comma-separated protocols to run")
    parser.add_argument("--normalize", default="dtype,minmax,percentile,zscore",
                        help="comma-separated intensity rules of ours to compare")
    args = parser.parse_args()
    if not (args.shared / "data" / "ebc").is_dir() or not (args.shared / "tools" / "scribbles.py").is_file():
        print(f"skipped: {args.shared}/data/ebc or tools/scribbles.py not found (the data stays in ../shared)")
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    protocols = set(args.protocols.split(","))
    methods = {"peer": Peer, "peer-mm": lambda: Peer(minmax=True)}
    for rule in args.normalize.split(","):
        methods[rule] = lambda rule=rule: Ours(rule)
    names = list(methods) + [f"{m}+m{args.modal}" for m in methods if args.modal and not m.startswith("peer")]

    if "isb" in protocols:
        isb = isb_images(args.shared)
        results = [evaluate(methods, [item], [item], args.modal) for item in isb]
        summarise("ISB 1.tif, per image", [item[0] for item in isb], results, names, ISB_CLASSES)

    ebc = ebc_images(args.shared, 22)
    if "ebc" in protocols:
        results = []
        for item in ebc[: args.images]:
            results.append(evaluate(methods, [item], [item], args.modal))
            print(f"  ... {item[0]}: " + " ".join(f"{m} {results[-1][m]['iou'][0].mean():.4f}" for m in names),
                  flush=True)
        summarise(f"EBC per image ({len(results)} images, scribbles on ~1 % of pixels)",
                  [item[0] for item in ebc[: args.images]], results, names)
    if "multi" in protocols:
        result = evaluate(methods, ebc[:5], ebc[5:], args.modal)
        summarise("EBC multi-image: one model on the scribbles of images 0-4, scoring images 5-21",
                  [item[0] for item in ebc[5:]], [result], names)
    if "exposure" in protocols:
        changed = [(name, change_exposure(image, i), truth, marks) for i, (name, image, truth, marks) in enumerate(ebc)]
        result = evaluate(methods, changed[:5], changed[5:], args.modal)
        summarise("EBC multi-image with exposure changes (gamma, gain, offset, noise per image): train on 0-4, "
                  "score 5-21", [item[0] for item in changed[5:]], [result], names)


if __name__ == "__main__":
    main()
