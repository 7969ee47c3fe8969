"""Quickstart: the main job on a generated SEM-like scan.

    python examples/quickstart.py [--checkpoint PATH|hf://OWNER/REPO/FILE] [--size 2048] [--out examples/output]

1. writes a synthetic micrograph (grains, particles, pores, brightness gradient, noise) as a tiled
   TIFF, its ground truth, and scribbles drawn on ~1 % of the pixels;
2. exports ALiBi-Dv2 to a verified ONNX engine;
3. runs the segment job (:func:`dinosaw_deploy.segment_scan`, what ``dinosaw-deploy segment`` calls: classical filter bank + ViT features + XGBoost) into a
   pyramidal OME-TIFF with a preview PNG, and scores it against the ground truth.

Without --checkpoint the engine is the tiny random-weight golden model shipped in tests/data (the
released weights need the Hugging Face hub): every step runs for real, but its ViT features carry
no meaning, so expect no gain over classical features.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tifffile

from dinosaw_deploy import DinosawError, FeatureExtractor, segment_scan
from dinosaw_deploy.export.build import run_export
from dinosaw_deploy.segment.metrics import class_iou
from dinosaw_deploy.segment.run import RunOptions
from dinosaw_deploy.synthetic import CLASS_NAMES, synthetic_scribbles, write_synthetic_tiff

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "alibi_dv2_tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--size", type=int, default=2048, help="side of the generated scan in px")
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "output")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)  # the example's own folder: a rerun replaces what it wrote there

    scan = write_synthetic_tiff(args.out / "sample_scan.tif", args.size, args.size, seed=1)
    truth_path = write_synthetic_tiff(args.out / "sample_truth.tif", args.size, args.size, seed=1, labels=True)
    truth = tifffile.imread(truth_path)
    scribbles = args.out / "sample_scribbles.tif"
    tifffile.imwrite(scribbles, synthetic_scribbles(truth, fraction=0.01, seed=1))
    print(f"1. generated {scan.name} ({args.size}x{args.size}), its ground truth and {scribbles.name}")

    if args.checkpoint:
        result = run_export(args.checkpoint, out_dir=args.out, echo=print, overwrite=True)
    else:
        print("   no --checkpoint: exporting the tiny random-weight test model")
        result = run_export(TINY / "weights_timm.pth", out_dir=args.out, name="tiny_demo",
                            config_path=TINY / "config.json", echo=print, overwrite=True)
    engine = result.artifacts[0]
    print(f"2. exported {engine.name}, verified against PyTorch")

    output = args.out / "sample_segmentation.ome.tif"
    print(f"3. segment_scan({scan.name}, {scribbles.name}) -- what `dinosaw-deploy segment` runs")
    segment_scan(scan, scribbles, output, extractor=FeatureExtractor(engine), save_model=args.out / "sample_model.dsw",
                 run=RunOptions(overwrite=True, echo=lambda line: print("   " + line)))

    ious = class_iou(tifffile.imread(output), truth)
    per_class = ", ".join(f"{name} {iou:.3f}" for name, iou in zip(CLASS_NAMES, ious))
    print(f"   mIoU vs ground truth: {ious.mean():.3f} ({per_class}); preview: {output.with_suffix('').with_suffix('')}.preview.png")


if __name__ == "__main__":
    try:
        main()
    except DinosawError as exc:
        sys.exit(f"Error: {exc}")
