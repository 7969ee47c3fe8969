"""Classical filter bank speed and memory vs scikit-image's multiscale_basic_features, same run.

    .venv/bin/python benchmarks/filters.py [--size 1536] [--threads 2] [--tile 512]

Each method runs in its own subprocess (so peak RSS is its own) on the same synthetic micrograph.
Ours: the default bank (74 channels since issue 12; 58 before), tile by tile with the exact halo,
tiles consumed as they come (as `segment` does). scikit-image: intensity + edges + texture at 5 σ
from 1 to 16 (20 channels) on the whole image with the same number of workers. Mpx per
CPU-second is printed too: on a machine shared with other work, wall-clock speed understates what
idle cores give.
Target (issue #4): >= 2 Mpx/s, peak RSS <= 400 MiB at 1536².
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def _image(size: int) -> np.ndarray:
    from dinosaw_deploy.synthetic import synthetic_micrograph

    return synthetic_micrograph(size, size, seed=0)[0].astype(np.float32) / 255


def run_ours(size: int, threads: int, tile: int) -> dict:
    from dinosaw_deploy.segment.filters import FilterBank
    from dinosaw_deploy.tiling.grid import tile_boxes
    from dinosaw_deploy.tiling.parallel import map_ordered

    image = _image(size)
    bank = FilterBank()
    bank.region(image, (0, 64, 0, 64))  # warm-up: imports, FFT plans
    start, cpu = time.perf_counter(), time.process_time()
    checksum = 0.0
    for feats in map_ordered(lambda box: bank.region(image, box), tile_boxes(image.shape, tile), threads):
        checksum += float(feats[:, ::64, ::64].sum())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"method": f"dinosaw FilterBank ({bank.num_channels} ch, {tile}-px tiles, halo {bank.halo})",
            "seconds": seconds, "cpu_seconds": cpu, "channels": bank.num_channels}


def run_skimage(size: int, threads: int, tile: int) -> dict:
    from skimage.feature import multiscale_basic_features

    image = _image(size)
    multiscale_basic_features(image[:64, :64], sigma_min=1, sigma_max=16, num_sigma=5)
    start, cpu = time.perf_counter(), time.process_time()
    feats = multiscale_basic_features(image, sigma_min=1, sigma_max=16, num_sigma=5, workers=threads)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"method": "scikit-image multiscale_basic_features (whole image)", "seconds": seconds,
            "cpu_seconds": cpu, "channels": feats.shape[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--only", choices=["ours", "skimage"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        result = (run_ours if args.only == "ours" else run_skimage)(args.size, args.threads, args.tile)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = []
    for which in ("ours", "skimage"):
        cmd = [sys.executable, __file__, "--only", which, "--size", str(args.size), "--threads", str(args.threads),
               "--tile", str(args.tile)]
        results.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    mpx = args.size * args.size / 1e6
    print(f"{args.size}x{args.size} px ({mpx:.2f} Mpx), {args.threads} threads")
    for r in results:
        print(f"  {r['method']}: {r['channels']} channels, {r['seconds']:.2f} s = {mpx / r['seconds']:.2f} Mpx/s, "
              f"{r['channels'] * mpx / r['seconds']:.0f} channel-Mpx/s, {mpx / r['cpu_seconds']:.2f} Mpx per CPU-s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    ours, ref = results
    print(f"  speed ratio ours/scikit-image: {ref['seconds'] / ours['seconds']:.2f}x (per pixel), "
          f"{(ours['channels'] / ours['seconds']) / (ref['channels'] / ref['seconds']):.2f}x (per channel-pixel)")
    print(f"  target >= 2 Mpx/s: {'met' if mpx / ours['seconds'] >= 2 else 'NOT met'}; "
          f"peak RSS <= 400 MiB: {'met' if ours['peak_rss_mib'] <= 400 else 'NOT met'}")


if __name__ == "__main__":
    main()
