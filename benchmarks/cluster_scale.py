"""`features` and `segment` on dask.distributed vs one process: wall-time ratios, peak RSS per
process, scheduler overhead per block.

    nice -n 10 .venv/bin/python benchmarks/cluster_scale.py --sizes 64 [256] [--workdir /tmp/dsw-cluster]
        [--engine X.onnx] [--stages features segment]

Inputs: a square synthetic SEM scan of about N Mpx (``dinosaw_deploy.synthetic.write_synthetic_tiff``,
tiled zlib TIFF) and scribbles on 0.5 % of the pixels of one 2048² window per 16 Mpx (from the
generated ground truth). Engine: ``--engine``, else the depth-2 ViT-S/14 golden model from
../shared exported here (2 of 12 blocks: the per-tile cost of the full model is ~6x higher).
``segment`` runs classical features only (``--no-vit``, as benchmarks/segment_scale.py).

Per size and stage, three configurations, each a fresh child process (``/usr/bin/time -v``):

* ``single``: the single-process job (2 threads);
* ``1x2``: ``LocalCluster(n_workers=1, threads_per_worker=2)``, one thread per task;
* ``2x1``: ``LocalCluster(n_workers=2, threads_per_worker=1)``, one thread per task.

Printed: wall time and its ratio to ``single``; peak RSS of the client and of each worker
(``VmHWM``, workers started fresh per run); blocks; scheduler overhead per block =
(stage wall time - block compute seconds / min(task slots, blocks)) / blocks. Targets (issue #14): 2x1 within
1.15x of single, per-worker RSS <= 1.5 GiB. On 2 shared cores no speed-up can show; overhead can.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WINDOW = 2048
TILE = 512
CONFIGS = {"single": None, "1x2": (1, 2), "2x1": (2, 1)}


def make_inputs(root: Path, megapixels: int) -> tuple[Path, Path]:
    """scan_N.tif and scribbles_N.tif (side a multiple of 2048 px)."""
    import tifffile

    from dinosaw_deploy.image.reader import open_image
    from dinosaw_deploy.synthetic import synthetic_scribbles, write_synthetic_tiff

    side = max(WINDOW, int(round(np.sqrt(megapixels * 1e6) / WINDOW)) * WINDOW)
    scan, truth, scribbles = (root / f"{kind}_{megapixels}.tif" for kind in ("scan", "truth", "scribbles"))
    if scan.is_file() and scribbles.is_file():
        return scan, scribbles
    write_synthetic_tiff(scan, side, side, seed=1, compression="zlib")
    write_synthetic_tiff(truth, side, side, seed=1, compression="zlib", labels=True)
    per_row = side // WINDOW
    chosen = {int(k) for k in np.linspace(0, per_row**2 - 1, max(1, round(side * side / 16e6)))}
    with open_image(truth) as labels:

        def tiles():
            for y in range(0, side, TILE):
                for x in range(0, side, TILE):
                    if (y // WINDOW) * per_row + x // WINDOW not in chosen:
                        yield np.zeros((TILE, TILE), np.uint8)
                    else:
                        yield synthetic_scribbles(labels.read_region(y, x, TILE, TILE), fraction=0.005,
                                                  seed=y * side + x)

        tifffile.imwrite(scribbles, tiles(), shape=(side, side), dtype=np.uint8, tile=(TILE, TILE),
                         compression="zlib", bigtiff=True, photometric="minisblack")
    truth.unlink()
    return scan, scribbles


def default_engine(root: Path) -> Path:
    """The depth-2 golden ViT-S/14 from ../shared, exported once into ``root``."""
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "golden" / "alibi_dv2_depth2"
    out = root / "depth2.onnx"
    if not out.is_file():
        from dinosaw_deploy.export.build import run_export

        run_export(shared / "weights_timm.pth", out_dir=root, name="depth2", config_path=shared / "config.json")
    return out


def child(args: argparse.Namespace) -> None:
    """One run in this process; prints a JSON line with the stage's figures."""
    from dinosaw_deploy.cluster import DaskExecutor, connect
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.image.reader import open_image
    from dinosaw_deploy.segment.run import RunOptions, segment_scan
    from dinosaw_deploy.tiling.pipeline import extract_tiled

    started = time.perf_counter()
    stats: dict = {}
    if args.address:
        connection = connect(args.address)
        client = connection.__enter__()
        executor = DaskExecutor(client, threads=1, backend="cpu")
    else:
        executor = None
    if args.child == "features":
        fx = FeatureExtractor(args.engine, batch_size=4, backend="cpu")
        with open_image(args.scan) as reader:
            summary = extract_tiled(reader, fx, args.out, runner=executor.runner) if executor else \
                extract_tiled(reader, fx, args.out)
        stats = {"blocks": summary.get("blocks", 0), "stage_seconds": summary["seconds"],
                 "block_seconds": summary.get("block_seconds", 0.0), "tiles": summary["tiles_computed"]}
    else:
        segment_scan(args.scan, args.labels, args.out, run=RunOptions(threads=2, executor=executor, overwrite=True))
        if executor:
            s = executor.stats["predict"]
            stats = {"blocks": s["blocks"], "stage_seconds": s["seconds"], "block_seconds": s["block_seconds"]}
    stats["seconds"] = time.perf_counter() - started
    if executor:
        connection.__exit__(None, None, None)
    print("RESULT " + json.dumps(stats), flush=True)


def run(stage: str, config: str, scan: Path, labels: Path, engine: Path, out: Path) -> dict:
    """A timed child run under ``config``; adds client/worker peak RSS (MiB)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    if out.is_file():
        out.unlink()
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", stage, "--scan", str(scan), "--labels",
           str(labels), "--engine", str(engine), "--out", str(out)]
    shape = CONFIGS[config]
    cluster = client = None
    if shape:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=shape[0], threads_per_worker=shape[1], processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")
        client = Client(cluster)
        cmd += ["--address", cluster.scheduler_address]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{stage} {config} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
        result["client_rss_mib"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)",
                                                 proc.stderr).group(1)) / 1024
        if client is not None:
            from dinosaw_deploy.tiling.pipeline import peak_rss_mb

            result["worker_rss_mib"] = sorted(client.run(peak_rss_mb).values())
            result["slots"] = shape[0] * shape[1]
    finally:
        if client is not None:
            client.close()
            cluster.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="scan sizes in Mpx")
    parser.add_argument("--stages", nargs="+", default=["segment", "features"], choices=["segment", "features"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dsw-cluster"))
    parser.add_argument("--engine", type=Path, default=None)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                        help="configurations to run (the first is the ratios' baseline)")
    for name in ("child", "scan", "labels", "out", "address"):
        parser.add_argument(f"--{name}", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    engine = args.engine or default_engine(args.workdir)
    for size in args.sizes:
        scan, labels = make_inputs(args.workdir, size)
        for stage in args.stages:
            suffix = ".zarr" if stage == "features" else ".ome.zarr"
            base = None
            for config in args.configs:
                r = run(stage, config, scan, labels, engine, args.workdir / f"{stage}_{size}_{config}{suffix}")
                base = base or r["seconds"]
                line = (f"{size:4d} Mpx {stage:8s} {config:6s} wall {r['seconds']:7.1f} s ({r['seconds'] / base:5.2f}x)"
                        f"  client RSS {r['client_rss_mib']:6.0f} MiB")
                if "worker_rss_mib" in r:
                    slots = min(r["slots"], max(r["blocks"], 1))
                    overhead = (r["stage_seconds"] - r["block_seconds"] / slots) / max(r["blocks"], 1)
                    line += (f"  worker RSS {', '.join(f'{v:.0f}' for v in r['worker_rss_mib'])} MiB"
                             f"  {r['blocks']} blocks, overhead {overhead:6.2f} s/block")
                print(line, flush=True)


if __name__ == "__main__":
    main()
