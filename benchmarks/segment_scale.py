"""`segment` at scale: peak RSS, time per megapixel from 16 Mpx up, and kill/resume equality.

    .venv/bin/python benchmarks/segment_scale.py --sizes 16 64 256 1024 [--workdir /tmp/dsw-scale]
    .venv/bin/python benchmarks/segment_scale.py --sizes 16 --resume      # kill -9 mid-run, rerun, compare

Inputs: a synthetic SEM scan (`dinosaw_deploy.synthetic`) made by tiling one rendered 2048² block
(rendering every pixel of 1 Gpx would take ~20 min), written as a tiled, zlib-compressed TIFF;
scribbles: synthetic strokes (0.5 % of the pixels) in one 2048² window per 16 Mpx, so the
labelled area grows with the image. Each `segment` run (`--no-vit`, default settings) goes
through `/usr/bin/time -v`; the script prints wall time and CPU time (user + system: steadier than
wall time on a shared machine) per Mpx relative to the smallest size, and peak RSS.
Targets (issue #4): peak RSS <= 2 GiB, s/Mpx within ±15 % from 16 to 256 Mpx.
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BLOCK = 2048
TILE = 512


def _block(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from dinosaw_deploy.synthetic import synthetic_micrograph

    return synthetic_micrograph(BLOCK, BLOCK, seed=seed)


def _write_tiled(path: Path, side: int, source) -> None:
    """A side x side tiled TIFF whose tile (y, x) is ``source(y, x)`` (TILE x TILE uint8)."""
    import tifffile

    tiles = (source(y, x) for y in range(0, side, TILE) for x in range(0, side, TILE))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(tiles, shape=(side, side), dtype=np.uint8, tile=(TILE, TILE), compression="zlib",
                  photometric="minisblack")


def make_inputs(root: Path, megapixels: int) -> tuple[Path, Path]:
    """scan.tif and scribbles.tif for a square image of about ``megapixels`` Mpx (side multiple of 2048)."""
    from dinosaw_deploy.synthetic import synthetic_scribbles

    side = max(BLOCK, int(round(np.sqrt(megapixels * 1e6) / BLOCK)) * BLOCK)
    scan, labels = root / f"scan_{megapixels}.tif", root / f"scribbles_{megapixels}.tif"
    if scan.is_file() and labels.is_file():
        return scan, labels
    image, truth = _block()
    strokes = synthetic_scribbles(truth, fraction=0.005, seed=1)
    blocks = (side // BLOCK) ** 2
    windows = {int(k) for k in np.linspace(0, blocks - 1, max(1, round(side * side / 16e6)))}
    per_row = side // BLOCK

    def scan_tile(y: int, x: int) -> np.ndarray:
        return image[y % BLOCK : y % BLOCK + TILE, x % BLOCK : x % BLOCK + TILE]

    def label_tile(y: int, x: int) -> np.ndarray:
        if (y // BLOCK) * per_row + x // BLOCK not in windows:
            return np.zeros((TILE, TILE), np.uint8)
        return strokes[y % BLOCK : y % BLOCK + TILE, x % BLOCK : x % BLOCK + TILE]

    _write_tiled(scan, side, scan_tile)
    _write_tiled(labels, side, label_tile)
    return scan, labels


def segment(scan: Path, labels: Path, out: Path, threads: int | None) -> dict:
    """One timed `segment` run: wall seconds and peak RSS (MiB) from /usr/bin/time -v."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "dinosaw_deploy.cli", "segment", str(scan), "--labels",
           str(labels), "-o", str(out), "--no-vit", "--overwrite"] + (["--threads", str(threads)] if threads else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"segment failed:\n{proc.stdout}\n{proc.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1)) for kind in ("User", "System"))
    return {"seconds": wall, "cpu_seconds": cpu, "rss_mib": rss}


def resume_check(scan: Path, labels: Path, root: Path, reference: Path, threads: int | None) -> bool:
    """kill -9 a run once some prediction tiles are done, rerun it, compare with ``reference``."""
    import tifffile

    out = root / "resumed.ome.tif"
    done = root / "resumed.ome.tif.work" / "done"
    cmd = [sys.executable, "-m", "dinosaw_deploy.cli", "segment", str(scan), "--labels", str(labels), "-o", str(out),
           "--no-vit", "--overwrite"] + (["--threads", str(threads)] if threads else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not (done.is_dir() and len(list(done.iterdir())) >= 8):
        time.sleep(0.2)
    if proc.poll() is not None:
        raise SystemExit("the run finished before it could be killed; use a larger --sizes")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    tiles_before = len(list(done.iterdir()))
    subprocess.run(cmd, check=True, capture_output=True)
    same = np.array_equal(tifffile.imread(out), tifffile.imread(reference))
    print(f"resume: killed after {tiles_before} tiles, rerun finished; output identical to uninterrupted run: {same}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256], help="image sizes in Mpx")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dsw-scale"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="also kill/resume the smallest size")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        scan, labels = make_inputs(args.workdir, size)
        import tifffile

        with tifffile.TiffFile(scan) as tif:
            height, width = tif.pages[0].shape
        result = segment(scan, labels, args.workdir / f"seg_{size}.ome.tif", args.threads)
        mpx = height * width / 1e6
        rows.append((size, mpx, result))
        base, cpu_base = (rows[0][2][k] / rows[0][1] for k in ("seconds", "cpu_seconds"))
        per, cpu = result["seconds"] / mpx, result["cpu_seconds"] / mpx
        print(f"{mpx:8.1f} Mpx  wall {result['seconds']:7.1f} s = {per:6.3f} s/Mpx ({per / base:5.2f}x of smallest)  "
              f"CPU {cpu:6.3f} s/Mpx ({cpu / cpu_base:5.2f}x)  peak RSS {result['rss_mib']:6.0f} MiB", flush=True)
    if args.resume:
        size = args.sizes[0]
        scan, labels = make_inputs(args.workdir, size)
        if not resume_check(scan, labels, args.workdir, args.workdir / f"seg_{size}.ome.tif", args.threads):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
