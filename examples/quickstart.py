"""Quickstart: the main job on a generated SEM-like scan.

    python examples/quickstart.py [--checkpoint PATH|hf://OWNER/REPO/FILE] [--size 2048] [--out examples/output]

1. writes a synthetic micrograph (grains, particles, pores, brightness gradient, noise) as a tiled
   TIFF, its ground truth, and scribbles drawn on ~1 % of the pixels;
2. exports ALiBi-Dv2 to a verified ONNX engine;
3. runs ``dinosaw-deploy segment`` (classical filter bank + ViT features + XGBoost) into a
   pyramidal OME-TIFF with a preview PNG, and scores it against the ground truth.

Without --checkpoint the engine is the tiny random-weight golden model shipped in tests/data (the
released weights need the Hugging Face hub): every step runs for real, but its ViT features carry
no meaning, so expect no gain over classical features.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import tifffile

from dinosaw_deploy.export.build import run_export
from dinosaw_deploy.labels import class_iou, synthetic_scribbles
from dinosaw_deploy.synthetic import CLASS_NAMES, write_synthetic_tiff

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "alibi_dv2_tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--size", type=int, default=2048, help="side of the generated scan in px")
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "output")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    scan = write_synthetic_tiff(args.out / "sample_scan.tif", args.size, args.size, seed=1)
    truth_path = write_synthetic_tiff(args.out / "sample_truth.tif", args.size, args.size, seed=1, labels=True)
    truth = tifffile.imread(truth_path)
    scribbles = args.out / "sample_scribbles.tif"
    tifffile.imwrite(scribbles, synthetic_scribbles(truth, fraction=0.01, seed=1))
    print(f"1. generated {scan.name} ({args.size}x{args.size}), its ground truth and {scribbles.name}")

    if args.checkpoint:
        result = run_export(args.checkpoint, out_dir=args.out, echo=print)
    else:
        print("   no --checkpoint: exporting the tiny random-weight test model")
        result = run_export(TINY / "weights_timm.pth", out_dir=args.out, name="tiny_demo",
                            config_path=TINY / "config.json", echo=print)
    engine = result.artifacts[0]
    print(f"2. exported {engine.name}, verified against PyTorch")

    output = args.out / "sample_segmentation.ome.tif"
    command = ["segment", str(scan), "--labels", str(scribbles), "--engine", str(engine),
               "-o", str(output), "--save-model", str(args.out / "sample_model.dsw"), "--overwrite"]
    print("3. dinosaw-deploy " + " ".join(command))
    subprocess.run([sys.executable, "-m", "dinosaw_deploy.cli", *command], check=True)

    ious = class_iou(tifffile.imread(output), truth)
    per_class = ", ".join(f"{name} {iou:.3f}" for name, iou in zip(CLASS_NAMES, ious))
    print(f"   mIoU vs ground truth: {ious.mean():.3f} ({per_class}); preview: {output.with_suffix('').with_suffix('')}.preview.png")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
