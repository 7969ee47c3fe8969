"""Per-frame latency of live segmentation: the bare work vs through LiveProcessor, fp32 vs int8 engines.

    python benchmarks/frame_latency.py [--repeats 3] [--full-repeats 1] [--no-full] [--engine-batch 1] [--workdir DIR]

Frames: 1024x1024, and 2048x1768 FEI-style (a 2048x1886 frame whose bottom 118 rows are the data
bar, cut by ``crop_bottom``), generated micrographs. Models: classical only; with ViT channels from
the tiny test engine and from a full-size ViT-S/14 with random weights (benchmarks/vit_cpu.py's
recipe), each fp32 and int8 (``export --int8``). Every configuration runs in a fresh process (no
torch there, as on an acquisition PC), so its peak RSS is its own. The engine runs one tile per call
(``FeatureExtractor(batch_size=1)``: as fast on a CPU as batches of 4, and ONNX Runtime's activation
arena stays ~3x smaller). Per configuration:

* bare work: the engine (``PreparedImage.grid``), then filter bank + classifier
  (``PreparedImage.labels``), called directly on the cropped frame;
* LiveProcessor, one frame at a time (the result awaited before the next submit), alternating with
  the bare work: per-stage p50/p95 of ``FrameResult.timings``;
* LiveProcessor, frames submitted back to back (``on_full="block"``): frames/s.

Targets, as ratios measured in the same run: LiveProcessor p50 end-to-end <= 1.10x the bare work;
int8 engine time <= 0.6x fp32 at per-token cosine >= 0.99 (int8 vs fp32 features of the same
frame); peak RSS <= 1.5 GiB for 2048x1768 frames with the full-size engine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.live import LiveProcessor
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles
from dinosaw_deploy.tiling.pipeline import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "alibi_dv2_tiny"
DATABAR = 118  # FEI: 1768 image rows + 118 data-bar rows
FRAMES = {"1024x1024": (1024, 1024, 0), "2048x1768 FEI": (1768, 2048, DATABAR)}


# -- parent: engines, models, frames -----------------------------------------------------------
def build_engines(workdir: Path, full: bool) -> dict[str, Path]:
    """{name: fp32 .onnx} (the .int8.onnx beside each): the tiny test model and a random ViT-S/14."""
    import torch
    from vit_cpu import golden_like_weights

    from dinosaw_deploy.export.build import run_export
    from dinosaw_deploy.export.model import ViT, ViTConfig

    run_export(TINY / "weights_timm.pth", out_dir=workdir, name="tiny", int8=True, config_path=TINY / "config.json")
    engines = {"tiny": workdir / "tiny.onnx"}
    if full:
        weights = workdir / "vits14_random.pth"
        torch.save(golden_like_weights(ViT(ViTConfig())).state_dict(), weights)
        run_export(weights, out_dir=workdir, name="vits14", int8=True)
        engines["ViT-S/14"] = workdir / "vits14.onnx"
    return engines


def train_models(workdir: Path, engines: dict[str, Path]) -> dict[str, Path]:
    """{name: .dsw}: classical, and one ViT model per engine (trained with its fp32 engine)."""
    image, truth = synthetic_micrograph(448, 448, seed=21)
    scribbles = synthetic_scribbles(truth, fraction=0.02, seed=21)
    models = {"classical": Segmenter(classifier=ClassifierParams(rounds=50)).fit(image, scribbles)
              .save(workdir / "classical.dsw")}
    for name, engine in engines.items():
        seg = Segmenter(extractor=FeatureExtractor(engine, backend="cpu"), classifier=ClassifierParams(rounds=50))
        models[name] = seg.fit(image, scribbles).save(workdir / f"{engine.stem}.dsw")
    return models


def write_frame(workdir: Path, label: str) -> Path:
    """A generated micrograph frame (with an FEI-style data bar where the size asks for one)."""
    height, width, bar = FRAMES[label]
    image = synthetic_micrograph(height, width, seed=33)[0]
    if bar:
        rng = np.random.default_rng(33)
        databar = np.full((bar, width), 20, np.uint8)
        text = rng.random((bar // 6, width // 6)) > 0.85  # blocky "text" like the vendor's bar
        databar[: text.shape[0] * 6, : text.shape[1] * 6][np.kron(text, np.ones((6, 6), bool))] = 235
        image = np.concatenate([image, databar])
    path = workdir / f"frame_{height}x{width}.npy"
    np.save(path, image)
    return path


# -- child: one configuration -------------------------------------------------------------------
def pct(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}


def bare_work(seg: Segmenter, image: np.ndarray) -> tuple[float, float, object]:
    """The work without LiveProcessor: engine, then filter bank + classifier; (engine ms, classify ms, grid)."""
    t0 = time.perf_counter()
    prepared = seg.prepare(image, cache_bytes=0)
    grid = prepared.grid
    t1 = time.perf_counter()
    labels = prepared.labels()
    np.bincount(labels.ravel(), minlength=len(seg.label_classes) + 1)
    return (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3, grid


def run_config(cfg: dict) -> dict:
    """Measure one (frame, model, engine) configuration in this process. Bare and LiveProcessor
    frames alternate, so a change in the (shared) machine's load hits both alike."""
    frame = np.load(cfg["frame"])
    bar = cfg["databar"]
    image = frame[: frame.shape[0] - bar]
    fx = FeatureExtractor(cfg["engine"], backend="cpu", batch_size=cfg["engine_batch"]) if cfg["engine"] else None
    seg = Segmenter.load(cfg["model"], extractor=fx)
    side = 518
    seg.predict(image[:side, :side])  # sessions, allocations, bias cache
    engine_ms, classify_ms, live_s = [], [], 0.0
    stages: dict[str, list[float]] = {}
    with LiveProcessor(seg, queue_size=2, on_full="block", crop_bottom=bar,
                       warmup_shape=(side + bar, side)) as proc:
        for _ in range(cfg["repeats"]):
            engine, classify, grid = bare_work(seg, image)
            engine_ms.append(engine)
            classify_ms.append(classify)
            start = time.perf_counter()
            res = proc.submit(frame).result()  # one at a time: latency
            live_s += time.perf_counter() - start
            for stage, ms in res.timings.items():
                stages.setdefault(stage, []).append(ms)
        start = time.perf_counter()
        futures = [proc.submit(frame) for _ in range(cfg["repeats"])]  # back to back: throughput
        for fut in futures:
            fut.result()
        back_to_back_s = time.perf_counter() - start
    if grid is not None and cfg["features_out"]:
        np.save(cfg["features_out"], grid.array)
    bare_ms = [e + c for e, c in zip(engine_ms, classify_ms)]
    return {
        "engine_ms": pct(engine_ms), "classify_ms": pct(classify_ms), "bare_ms": pct(bare_ms),
        "live_ms": {stage: pct(values) for stage, values in stages.items()},
        "fps_serial": 1e3 / float(np.mean(bare_ms)),
        "fps_live_one_at_a_time": cfg["repeats"] / live_s,
        "fps_live_back_to_back": cfg["repeats"] / back_to_back_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def child(cfg: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"configuration {cfg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="frames per measurement (classical, tiny engine)")
    parser.add_argument("--full-repeats", type=int, default=1, help="frames per measurement, full-size engine")
    parser.add_argument("--no-full", action="store_true", help="skip the full-size ViT-S/14")
    parser.add_argument("--engine-batch", type=int, default=1, help="tiles per engine call")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_config(json.loads(args.child))))
        return

    from dinosaw_deploy.export.verify import token_cosine  # the export's own check (torch: parent only)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="frame_latency_"))
    workdir.mkdir(parents=True, exist_ok=True)
    engines = build_engines(workdir, not args.no_full)
    models = train_models(workdir, engines)
    rows = []
    for label, (height, width, bar) in FRAMES.items():
        frame = write_frame(workdir, label)
        runs = [("classical", None, None)] + [(name, engine, p) for name, engine in engines.items()
                                                for p in ("fp32", "int8")]
        for model, engine, precision in runs:
            path = None if engine is None else (engine if precision == "fp32" else engine.with_suffix(".int8.onnx"))
            features = workdir / f"features_{label.split()[0]}_{model.replace('/', '')}_{precision}.npy"
            cfg = {"frame": str(frame), "databar": bar, "model": str(models[model]),
                   "engine": None if path is None else str(path),
                   "features_out": None if path is None else str(features), "engine_batch": args.engine_batch,
                   "repeats": args.full_repeats if model == "ViT-S/14" else args.repeats}
            result = child(cfg)
            rows.append({"frame": label, "model": model, "precision": precision or "-", **result,
                         "features": features if path else None})
            print(f"done: {label} {model} {precision or ''}: bare {result['bare_ms']['p50']:.0f} ms, "
                  f"live {result['live_ms']['total']['p50']:.0f} ms", flush=True)

    print(f"\nframes: {', '.join(FRAMES)}; repeats {args.repeats} (full-size engine {args.full_repeats}); "
          "ms are p50/p95 over the repeats; peak RSS per configuration (own process)")
    head = (f"{'frame':<14}{'model':<11}{'prec':<6}{'engine':>13}{'classify':>13}{'bare':>8}"
            f"{'live queue':>12}{'live feat':>12}{'live class':>12}{'live total':>13}{'x bare':>8}"
            f"{'fps ser':>9}{'fps live':>9}{'fps b2b':>9}{'RSS MiB':>9}")
    print(head)
    for r in rows:
        live = r["live_ms"]
        print(f"{r['frame']:<14}{r['model']:<11}{r['precision']:<6}"
              f"{r['engine_ms']['p50']:>6.0f}/{r['engine_ms']['p95']:<6.0f}"
              f"{r['classify_ms']['p50']:>6.0f}/{r['classify_ms']['p95']:<6.0f}{r['bare_ms']['p50']:>8.0f}"
              f"{live['queue']['p50']:>12.1f}{live['features']['p50']:>12.0f}{live['classify']['p50']:>12.0f}"
              f"{live['total']['p50']:>7.0f}/{live['total']['p95']:<5.0f}"
              f"{live['total']['p50'] / r['bare_ms']['p50']:>8.2f}{r['fps_serial']:>9.2f}"
              f"{r['fps_live_one_at_a_time']:>9.2f}{r['fps_live_back_to_back']:>9.2f}{r['peak_rss_mb']:>9.0f}")

    print("\ntargets")
    worst = max(rows, key=lambda r: r["live_ms"]["total"]["p50"] / r["bare_ms"]["p50"])
    ratio = worst["live_ms"]["total"]["p50"] / worst["bare_ms"]["p50"]
    print(f"  LiveProcessor p50 / bare work <= 1.10: worst {ratio:.2f} ({worst['frame']}, {worst['model']} "
          f"{worst['precision']}) -> {'met' if ratio <= 1.10 else 'NOT met'}")
    for label in FRAMES:
        for name in engines:
            fp32, int8 = (next(r for r in rows if r["frame"] == label and r["model"] == name and r["precision"] == p)
                          for p in ("fp32", "int8"))
            speed = int8["engine_ms"]["p50"] / fp32["engine_ms"]["p50"]
            cos = float(token_cosine(np.load(int8["features"])[None], np.load(fp32["features"])[None]).min())
            verdict = "met" if speed <= 0.6 and cos >= 0.99 else "NOT met"
            print(f"  int8 / fp32 engine time <= 0.6 at cosine >= 0.99: {label}, {name}: {speed:.2f} "
                  f"(min token cosine {cos:.4f}) -> {verdict}")
    for r in rows:
        if r["frame"] == "2048x1768 FEI" and r["model"] == "ViT-S/14":
            gib = r["peak_rss_mb"] / 1024
            print(f"  peak RSS <= 1.5 GiB, 2048x1768, full-size engine {r['precision']}: {gib:.2f} GiB -> "
                  f"{'met' if gib <= 1.5 else 'NOT met'}")
    print(f"(work files in {workdir})")


if __name__ == "__main__":
    main()
