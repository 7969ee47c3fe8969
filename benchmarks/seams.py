"""Seam measurements for tiled features (issue #3, item 6), recomputed from the written zarr stores.

    python benchmarks/seams.py [--side 8192] [--configs central:0 central:4 blend:4 central:8 blend:8]
                               [--weights W.pth --config C.json] [--samples 128] [--workdir DIR]

Generates a heterogeneous synthetic micrograph with the project's generator (Voronoi grains, grain
boundaries, particles, pores, noise, left-to-right brightness gradient; not periodic), runs the
tiled pipeline once per merge:overlap configuration (stores in the default float16), then reports

* seam ratio: mean L2 difference of 4-neighbour tokens straddling a seam / the same for all other
  neighbour pairs (1.0 = invisible), from the store (:func:`dinosaw_deploy.tiling.seams.seam_stats`);
* centre agreement: cosine between stitched tokens and the same tokens computed at the centre of a
  tile of their own, for uniformly sampled tokens and for tokens next to a seam.

Default model: the tiny test engine (depth 2, dim 96, random weights), so the figures say how the
tiling behaves, not how a trained ViT-S/14 does; pass ``--weights/--config`` for another model.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.image.reader import open_image
from dinosaw_deploy.synthetic import write_synthetic_tiff
from dinosaw_deploy.tiling.pipeline import extract_tiled
from dinosaw_deploy.tiling.seams import center_agreement, seam_stats
from dinosaw_deploy.tiling.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "alibi_dv2_tiny"


def build_engine(workdir: Path, weights: Path, config: Path) -> Path:
    engine = workdir / f"{weights.parent.name}.onnx"
    if not engine.is_file():
        from dinosaw_deploy.export.build import run_export

        run_export(weights, out_dir=workdir, name=engine.stem, config_path=config)
    return engine


def measure(image: Path, extractor: FeatureExtractor, store_path: Path, window: str, overlap: int,
            samples: int) -> dict:
    with open_image(image) as reader:
        run = extract_tiled(reader, extractor, store_path, overlap=overlap, window=window)
        store = FeatureStore.open(store_path)
        grid = store.grid
        seams = seam_stats(store.array, grid.cuts_y, grid.cuts_x)
        agreement = center_agreement(store, reader, extractor, n=samples)
    shutil.rmtree(store_path)
    return {"merge": window, "overlap": overlap, "tiles": run["tiles"], "seconds": run["seconds"],
            **{f"seam_{k}" if not k.startswith("seam") else k: v for k, v in seams.items()},
            **{f"cos_{k}": v for k, v in agreement.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=8192, help="Synthetic image side in px.")
    parser.add_argument("--configs", nargs="+", default=["central:0", "central:4", "blend:4", "central:8", "blend:8"])
    parser.add_argument("--weights", type=Path, default=TINY / "weights_timm.pth")
    parser.add_argument("--config", type=Path, default=TINY / "config.json")
    parser.add_argument("--samples", type=int, default=128, help="Tokens per centre-agreement set.")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dinosaw-seams-"))
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / f"heterogeneous_{args.side}_seed{args.seed}.tif"
    if not image.is_file():
        write_synthetic_tiff(image, args.side, args.side, seed=args.seed, compression="zlib")
    extractor = FeatureExtractor(build_engine(workdir, args.weights, args.config), batch_size=4)
    rows = []
    for spec in args.configs:
        window, overlap = spec.split(":")
        rows.append(measure(image, extractor, workdir / "seams.zarr", window, int(overlap), args.samples))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nmodel {args.weights}, image {args.side}x{args.side} px, store float16, "
          f"{args.samples} tokens per cosine set")
    print(f"{'merge':>8} {'overlap':>7} {'tiles':>6} {'seam ratio':>10} {'seam pairs':>10} "
          f"{'cos all':>8} {'cos seam':>8} {'min seam':>8}")
    for r in rows:
        print(f"{r['merge']:>8} {r['overlap']:>7} {r['tiles']:>6} {r['seam_ratio']:>10.4f} {r['seam_pairs']:>10} "
              f"{r['cos_all_mean']:>8.5f} {r['cos_seam_mean']:>8.5f} {r['cos_seam_min']:>8.5f}")


if __name__ == "__main__":
    main()
