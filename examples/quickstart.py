"""Quickstart: a generated SEM-like scan -> exported ALiBi-Dv2 engine -> patch features.

    python examples/quickstart.py [--checkpoint PATH|hf://OWNER/REPO/FILE] [--out examples/output]

Without --checkpoint this uses the tiny random-weight golden model shipped in tests/data (the
released weights need the Hugging Face hub): every step runs for real, but the features of random
weights carry no meaning.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dinosaw_deploy import FeatureExtractor
from dinosaw_deploy.export.build import run_export
from dinosaw_deploy.synthetic import write_synthetic_tiff

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "alibi_dv2_tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "output")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    scan = write_synthetic_tiff(args.out / "sample_scan.tif", 1036, 1036, seed=1)
    labels = write_synthetic_tiff(args.out / "sample_truth.tif", 1036, 1036, seed=1, labels=True)
    print(f"1. generated {scan} (1036x1036 SEM-like) and its ground truth {labels}")

    if args.checkpoint:
        result = run_export(args.checkpoint, out_dir=args.out, echo=print)
    else:
        print("   (no --checkpoint: using the tiny random-weight test model)")
        result = run_export(TINY / "weights_timm.pth", out_dir=args.out, name="tiny_demo",
                            config_path=TINY / "config.json", echo=print)
    engine = result.artifacts[0]
    print(f"2. exported {engine}, verified against PyTorch")

    import tifffile

    extractor = FeatureExtractor(engine)
    features = extractor(tifffile.imread(scan))
    np.save(args.out / "sample_features.npy", features)
    print(f"3. features {features.shape} float32 -> {args.out / 'sample_features.npy'}")


if __name__ == "__main__":
    main()
