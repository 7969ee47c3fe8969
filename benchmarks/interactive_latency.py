"""Stroke -> updated labels of the visible region in the napari plugin, beside the bare work.

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/interactive_latency.py [--strokes 20] [--pan 60]
        [--scan-strokes 20]

1. An EBC mosaic (2 x 2 images of ../shared/data/ebc, 2048² px), viewer at 1:1 zoom showing about
   1024² screen pixels: first scribbles, then ``--strokes`` strokes of ~100 px each inside the view
   (``--anywhere``: over the whole mosaic, reaching tiles never shown). For each stroke:
   the time from the paint event to the last visible tile shown (``gui``: what the user waits; it
   includes the paint debounce), and the same work with the library alone in this process (``bare``:
   ``LiveSession.train`` + ``predict`` of the same box, features already cached). p50/p95 of both
   and their ratio (gui minus the debounce, over bare).
2. A synthetic 40 000² tiled scan (``--side``; written once to a temporary folder; the scribbles layer
   covers 8192² px around the first view): first scribbles, ``--pan`` seconds of panning, predicting
   each new view (peak RSS, the feature cache's bytes against its limit), then back in the first view
   ``--scan-strokes`` strokes measured as in 1. (its bare session's memory comes after the panning's).
Classical features (``--engine``: ViT features too), 2 threads. Targets (issue 18): p50 <= 1.0 s, p95 <= 2.0 s
(with the tiny ViT engine p50 <= 1.5 s); first view of a new region <= 3 s; plugin overhead <= 1.15x; panning
RSS <= 2 GiB.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pct(values: list[float]) -> str:
    return f"p50 {np.percentile(values, 50):.2f} s, p95 {np.percentile(values, 95):.2f} s"


def ebc_mosaic() -> tuple[np.ndarray, np.ndarray]:
    import tifffile
    from PIL import Image

    names = sorted((SHARED / "data" / "ebc" / "images").iterdir())[:4]
    images, truths = [], []
    for path in names:
        images.append(tifffile.imread(path)[:1024, :1024])
        gt = np.asarray(Image.open(SHARED / "data" / "ebc" / "labels" / f"{path.stem}_label.png"))[:1024, :1024]
        truths.append(np.searchsorted(np.unique(gt), gt))
    rows = [np.hstack(images[:2]), np.hstack(images[2:])]
    truth_rows = [np.hstack(truths[:2]), np.hstack(truths[2:])]
    return np.vstack(rows), np.vstack(truth_rows)


def strokes(truth: np.ndarray, count: int, seed: int, box=None) -> list[np.ndarray]:
    """``count`` label images of ``truth``'s shape, each one short stroke (3 px wide, <= 40 px long)
    inside one class, within ``box`` (y0, y1, x0, x1) when given (where a user can paint: the view)."""
    sys.path.insert(0, str(SHARED / "tools"))
    from scribbles import scribbles

    y0, y1, x0, x1 = box or (0, truth.shape[0], 0, truth.shape[1])
    area = truth[y0:y1, x0:x1]
    out, rng = [], np.random.default_rng(seed)
    while len(out) < count:
        marks = scribbles(area, seed=int(rng.integers(1 << 30)), frac=0.0002 * truth.size / area.size)
        value = rng.choice(np.unique(marks[marks > 0]))
        one = np.zeros(truth.shape, np.uint8)
        one[y0:y1, x0:x1] = np.where(marks == value, marks, 0)
        if one.any():
            out.append(one)
    return out


def paint(layer, labels: np.ndarray, offset=(0, 0)) -> None:
    """Paint ``labels`` (0 = nothing) into ``layer``, whose pixel (0, 0) is ``offset`` of ``labels``' frame."""
    for value in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == value)
        layer.data_setitem((ys - offset[0], xs - offset[1]), int(value))


def stroke_latency(widget, source, painted: np.ndarray, view: tuple, area: tuple, marks: list[np.ndarray],
                   debounce: float) -> None:
    """Paint each of ``marks`` (label images of the image's box ``area``) in the widget and wait for the labels
    of ``view``; then do the same work with a bare ``LiveSession`` on ``source``, whose scribbles
    (``painted``: the scribbles layer's labels so far) grow alike. Prints p50/p95 of both and their ratio."""
    from dinosaw_deploy.napari_plugin.session import LiveSession
    from dinosaw_deploy.napari_plugin.widget import _in_image
    from dinosaw_deploy.segment.labels import scribbles_from_array

    offset = widget.paint_box[::2]
    shape = widget.session.prepared.shape
    y0, y1, x0, x1 = area

    def in_image(labels: np.ndarray):  # the scribbles layer's labels in image coordinates, as the widget reads them
        return _in_image(scribbles_from_array(labels), offset, shape)

    bare_session = LiveSession(source, extractor=widget.session.segmenter.extractor, threads=2)
    token = bare_session.generations.new()
    bare_session.train(in_image(painted), token)
    list(bare_session.predict(view, token))  # its cache warm, as the widget's is after the first view
    gui, gui_look, bare, bare_look = [], [], [], []
    for mark in marks:
        start = time.monotonic()
        paint(widget.scribbles, mark, (offset[0] - y0, offset[1] - x0))
        widget.wait()
        gui.append(time.monotonic() - start)
        gui_look.append(widget.previewed - start)
        window = painted[y0 - offset[0] : y1 - offset[0], x0 - offset[1] : x1 - offset[1]]
        window[mark > 0] = mark[mark > 0]
        start = time.monotonic()
        token = bare_session.generations.new()
        bare_session.train(in_image(painted), token)
        list(bare_session.predict(view, token, preview=True))
        bare_look.append(time.monotonic() - start)
        list(bare_session.predict(view, token))
        bare.append(time.monotonic() - start)
    print(f"stroke -> first look at the whole view (strided, gui, incl. {debounce:.2f} s debounce): {pct(gui_look)}")
    print(f"stroke -> full-resolution labels shown (gui): {pct(gui)}")
    print(f"bare work (train + predict of the box, features cached): first look {pct(bare_look)}, full {pct(bare)}")
    print(f"plugin overhead: {np.median(gui) - debounce:.2f} s / {np.median(bare):.2f} s = "
          f"{(np.median(gui) - debounce) / np.median(bare):.2f}x (median, debounce excluded)")


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def write_tiled_scan(scan: Path, truth_path: Path, side: int, block: int = 4096, tile: int = 512) -> None:
    """A ``side``² tiled, zlib-compressed scan made by repeating one rendered ``block``² synthetic micrograph
    (rendering every pixel of 1.6 Gpx takes over 20 min here), and that block's ground truth."""
    import tifffile

    from dinosaw_deploy.synthetic import synthetic_micrograph

    image, truth = synthetic_micrograph(block, block, seed=3)
    tifffile.imwrite(truth_path, truth.astype(np.uint8), tile=(tile, tile), compression="zlib")
    tiles = (image[y % block : y % block + tile, x % block : x % block + tile]  # block is a multiple of tile
             for y in range(0, side, tile) for x in range(0, side, tile))
    tifffile.imwrite(scan, tiles, shape=(side, side), dtype=np.uint8, tile=(tile, tile), compression="zlib",
                     bigtiff=True, photometric="minisblack")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strokes", type=int, default=20, help="strokes on the EBC mosaic (0: skip that part)")
    parser.add_argument("--pan", type=float, default=60.0, help="seconds of panning on the large scan (0: skip)")
    parser.add_argument("--side", type=int, default=40_000)
    parser.add_argument("--scan-strokes", type=int, default=20,
                        help="strokes on the large scan after panning, in its first view (0: skip)")
    parser.add_argument("--engine", type=Path, help="ViT features through this engine (.onnx/.plan) as well as "
                                                    "the filter bank (default: classical features only)")
    parser.add_argument("--anywhere", action="store_true",
                        help="strokes anywhere on the mosaic, outside the view too (default: inside the view, "
                             "as a user paints)")
    args = parser.parse_args()
    if not os.environ.get("DISPLAY"):
        sys.exit("run under a display, e.g. xvfb-run -a -s '-screen 0 1600x1200x24' python " + sys.argv[0])
    if not (SHARED / "data" / "ebc").is_dir():
        sys.exit(f"needs the EBC images in {SHARED / 'data' / 'ebc'}")
    import napari
    import tifffile

    from dinosaw_deploy.napari_plugin import widget as widget_module
    from dinosaw_deploy.tiling.pipeline import peak_rss_mb

    debounce = widget_module.PAINT_DEBOUNCE_MS / 1e3
    image, truth = ebc_mosaic()
    sys.path.insert(0, str(SHARED / "tools"))
    from scribbles import scribbles

    first = scribbles(truth, seed=0, frac=0.003)
    with tempfile.TemporaryDirectory() as tmp:
        if args.strokes > 0:  # --strokes 0: the panning part alone
            path = Path(tmp) / "mosaic.tif"
            tifffile.imwrite(path, image, tile=(512, 512), compression="zlib")
            viewer = napari.Viewer(show=True)
            viewer.window._qt_window.resize(1600, 1200)
            viewer.open(str(path), plugin="dinosaw-deploy")
            widget = widget_module.SegmentWidget(viewer)
            viewer.window.add_dock_widget(widget)
            if args.engine:
                widget.engine.setText(str(args.engine))
                widget.use_vit.setChecked(True)
            widget.start()
            widget.session.segmenter.threads = 2
            viewer.scene.camera.zoom = 1.0
            viewer.scene.camera.center = (0, 1024, 1024)
            widget.wait()
            start = time.perf_counter()
            paint(widget.scribbles, first)
            widget.wait()
            box = widget._shown[0]
            print(f"EBC mosaic {image.shape[0]}x{image.shape[1]}, visible box {box} "
                  f"({(box[1] - box[0]) * (box[3] - box[2]) / 1e6:.2f} Mpx): first view {time.perf_counter() - start:.2f} s")
            area = (0, image.shape[0], 0, image.shape[1]) if args.anywhere else box
            marks = [m[area[0]:area[1], area[2]:area[3]]
                     for m in strokes(truth, args.strokes, seed=1, box=None if args.anywhere else box)]
            stroke_latency(widget, image, first.copy(), box, area, marks, debounce)
            print(f"cache: {widget.session.prepared.cache_stats}")
            viewer.close()
        if args.pan <= 0 and args.scan_strokes <= 0:
            return
        scan = Path(tmp) / "big.tif"
        start = time.perf_counter()
        truth_path = Path(tmp) / "big_truth.tif"
        import multiprocessing  # written in a child, so its rendering does not count in this process's RSS

        child = multiprocessing.get_context("spawn").Process(target=write_tiled_scan,
                                                             args=(scan, truth_path, args.side))
        child.start()
        child.join()
        print(f"wrote the {args.side}² scan in {time.perf_counter() - start:.0f} s")
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1600, 1200)
        start = time.perf_counter()
        viewer.open(str(scan), plugin="dinosaw-deploy")
        widget = widget_module.SegmentWidget(viewer)
        viewer.window.add_dock_widget(widget)
        print(f"opened in {time.perf_counter() - start:.1f} s, RSS {rss_mb():.0f} MiB (process peak so far "
              f"{peak_rss_mb():.0f} MiB)")
        viewer.scene.camera.zoom = 1.0
        viewer.scene.camera.center = (0, 1024, 1024)
        widget.wait()
        widget.start()
        widget.session.segmenter.threads = 2
        area = tifffile.imread(truth_path)[: widget.paint_box[1], : widget.paint_box[3]]
        paint(widget.scribbles, scribbles(area, seed=0, frac=0.003)[widget.paint_box[0]:, widget.paint_box[2]:])
        widget.wait()
        rng, views, looks, start, highest = np.random.default_rng(0), [], [], time.perf_counter(), rss_mb()
        while time.perf_counter() - start < args.pan:
            shown = time.monotonic()
            viewer.scene.camera.center = (0, *rng.uniform(1024, args.side - 1024, 2))
            widget.wait()
            views.append(time.monotonic() - shown)
            looks.append(widget.previewed - shown)
            highest = max(highest, rss_mb())
        stats = widget.session.prepared.cache_stats
        if views:
            print(f"pan -> first look at a new view (features computed): {pct(looks)}; full labels: {pct(views)}")
            print(f"panned {len(views)} views in {args.pan:.0f} s: RSS up to {highest:.0f} MiB (sampled after each view; "
                  f"process peak {peak_rss_mb():.0f} MiB, the stroke part included); cache {stats.nbytes / 2**20:.0f} "
                  f"MiB of {stats.max_bytes / 2**20:.0f} MiB, {stats.evictions} evictions")
        if args.scan_strokes > 0:  # back to the first view, inside the scribbles layer, and paint there
            viewer.scene.camera.center = (0, 1024, 1024)
            widget.wait()
            view = widget._shown[0]
            block = tifffile.imread(truth_path)  # the scan repeats this block
            y0, y1, x0, x1 = view
            view_truth = block[np.ix_(np.arange(y0, y1) % len(block), np.arange(x0, x1) % len(block))]
            print(f"{args.side}² scan, visible box {view}, scribbles layer {widget.paint_box}:")
            stroke_latency(widget, widget.image_layer.data[0].reader, np.array(widget.scribbles.data), view, view,
                           strokes(view_truth, args.scan_strokes, seed=1), debounce)
        viewer.close()


if __name__ == "__main__":
    main()
