"""GPU throughput of ALiBi-Dv2 ViT-S/14 at 518 px: TensorRT plans and ONNX Runtime CUDA vs PyTorch.

    python benchmarks/gpu.py [--batches 1,8,16,32,64] [--tile 518] [--iters 20] [--no-compile]
    python benchmarks/gpu.py --device cpu        # smoke test of this script on a CPU machine

Measured in one run, on device-resident inputs (engine time only) unless marked host<->host:
PyTorch eager fp32 (the baseline of every ratio), eager AMP fp16, ``torch.compile`` AMP fp16,
TensorRT fp16 and fp32 plans (plain and CUDA-graph replay), ONNX Runtime CUDA on the fp16 ONNX,
and the native TensorRT backend host<->host (pinned copies included). Accuracy: per-token cosine
of each engine vs PyTorch fp32 on synthetic micrograph tiles and a flat tile. Goal (issue #6):
>= 3000 tiles/s fp16 on one H100 (arithmetic limit ~8500).

Random weights drawn like the golden reference's (see vit_cpu.py), so blocks are not the identity
and the cosines mean something. Building the two plans takes a few minutes (timing cache in the
work directory). Needs torch with CUDA, TensorRT + cuda-bindings, optionally onnxruntime-gpu.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from vit_cpu import golden_like_weights

from dinosaw_deploy.engine.backends.ort import OrtBackend
from dinosaw_deploy.engine.bias import BiasConfig, attention_bias
from dinosaw_deploy.engine.preprocess import preprocess
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.export.build import artifact_metadata
from dinosaw_deploy.export.checkpoint import LoadedCheckpoint
from dinosaw_deploy.export.model import ViT, ViTConfig
from dinosaw_deploy.export.onnx_export import export_onnx
from dinosaw_deploy.export.verify import token_cosine
from dinosaw_deploy.synthetic import render_region


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tile", type=int, default=None, help="px (default 518; 56 with --device cpu)")
    parser.add_argument("--batches", default=None, help="comma-separated (default 1,8,16,32,64; 1,2 on cpu)")
    parser.add_argument("--depth", type=int, default=None, help="blocks (default 12; 2 on cpu)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep ONNX/plans/timing cache here")
    args = parser.parse_args()
    cpu = args.device == "cpu"
    args.tile = args.tile or (56 if cpu else 518)
    args.batches = [int(b) for b in (args.batches or ("1,2" if cpu else "1,8,16,32,64")).split(",")]
    args.depth = args.depth or (2 if cpu else 12)
    return args


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def tiles_per_second(fn: Callable[[], object], batch: int, iters: int, device: str) -> float:
    for _ in range(3):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return batch * iters / (time.perf_counter() - start)


def export_pair(model: ViT, work: Path) -> tuple[Path, Path]:
    """fp32 and fp16 ONNX of ``model`` with embedded manifests (what build_plan and the backends read)."""
    loaded = LoadedCheckpoint(model=model, bias=BiasConfig(), source="random (golden-like, benchmark)", sha256="-")
    paths = []
    for name, fp16 in (("bench.onnx", False), ("bench.fp16.onnx", True)):
        meta = artifact_metadata(loaded, "bench", "fp16" if fp16 else "fp32")
        paths.append(export_onnx(model, work / name, loaded.bias, meta, fp16=fp16))
    return paths[0], paths[1]


def synthetic_tiles(count: int, tile: int) -> np.ndarray:
    tiles = [render_region(0, i * tile, tile, tile, full_shape=(tile, count * tile), seed=1)[0] for i in range(count)]
    flat = np.full((tile, tile), 128, np.uint8)
    return np.stack([preprocess(t) for t in [*tiles, flat]])


class Row:
    def __init__(self, label: str, batch: int, rate: float | None, note: str = "") -> None:
        self.label, self.batch, self.rate, self.note = label, batch, rate, note


def main() -> None:
    args = parse_args()
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch; use --device cpu for a smoke test")
    torch.manual_seed(0)
    model = golden_like_weights(ViT(ViTConfig(depth=args.depth))).eval()
    grid = args.tile // 14
    bias_np = np.array(attention_bias(grid, grid, model.config.num_heads))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dinosaw-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    onnx32, onnx16 = export_pair(model, work)

    plans: dict[str, Path] = {}
    notes: list[str] = []
    if dev == "cuda":
        try:
            from dinosaw_deploy.export.tensorrt import PlanOptions, build_plan

            options = PlanOptions(tile=args.tile, min_tile=args.tile, max_tile=args.tile, max_batch=max(args.batches))
            for precision, source in (("fp16", onnx16), ("fp32", onnx32)):
                plans[precision] = build_plan(source, options, overwrite=True, echo=print)
        except DinosawError as exc:
            notes.append(f"TensorRT rows skipped: {exc}")

    model = model.to(dev)
    bias_t = torch.from_numpy(bias_np).to(dev)
    compiled = None
    if dev == "cuda" and not args.no_compile:
        compiled = torch.compile(model)
    def amp() -> torch.autocast:
        return torch.autocast(dev, dtype=torch.float16, enabled=dev == "cuda")

    rows: list[Row] = []

    def trt_rows(batch: int, x: torch.Tensor) -> None:
        from dinosaw_deploy.engine.backends.tensorrt import TensorRTBackend

        for precision, plan in plans.items():
            backend = TensorRTBackend(plan)
            ctx, out = backend.context, torch.empty(batch, model.config.embed_dim, grid, grid, device=dev)
            ctx.set_input_shape("pixel_values", tuple(x.shape))
            ctx.set_input_shape("attn_bias", tuple(bias_t.shape))
            for name, tensor in (("pixel_values", x), ("attn_bias", bias_t), ("features", out)):
                ctx.set_tensor_address(name, tensor.data_ptr())
            stream = torch.cuda.current_stream()
            rows.append(Row(f"TensorRT {precision}", batch,
                            tiles_per_second(lambda: ctx.execute_async_v3(stream.cuda_stream), batch, args.iters, dev)))
            ctx.execute_async_v3(stream.cuda_stream)  # TensorRT wants one plain enqueue before a capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
            rows.append(Row(f"TensorRT {precision} + CUDA graph", batch,
                            tiles_per_second(graph.replay, batch, args.iters, dev)))
            host = x.cpu().numpy()
            rows.append(Row(f"TensorRT {precision} host<->host", batch,
                            tiles_per_second(lambda: backend.run(host, bias_np), batch, max(3, args.iters // 4), dev)))
            backend.close()

    def ort_rows(batch: int, x: torch.Tensor) -> None:
        name = "ort-cuda" if dev == "cuda" else "cpu"
        for label, path in (("fp16", onnx16), ("fp32", onnx32)):
            try:
                session = OrtBackend(path, name).session
            except DinosawError as exc:
                notes.append(f"ONNX Runtime {name} skipped: {exc}")
                return
            if dev == "cuda":
                out = torch.empty(batch, model.config.embed_dim, grid, grid, device=dev)
                io = session.io_binding()
                for key, tensor in (("pixel_values", x), ("attn_bias", bias_t)):
                    io.bind_input(key, "cuda", 0, np.float32, tuple(tensor.shape), tensor.data_ptr())
                io.bind_output("features", "cuda", 0, np.float32, tuple(out.shape), out.data_ptr())
                rows.append(Row(f"ORT CUDA {label}", batch,
                                tiles_per_second(lambda: session.run_with_iobinding(io), batch, args.iters, dev)))
            else:
                feed = {"pixel_values": x.numpy(), "attn_bias": bias_np}
                rows.append(Row(f"ORT CPU {label}", batch,
                                tiles_per_second(lambda: session.run(None, feed), batch, args.iters, dev)))

    with torch.inference_mode():
        for batch in args.batches:
            x = torch.randn(batch, 3, args.tile, args.tile, device=dev)
            rows.append(Row("PyTorch eager fp32", batch,
                            tiles_per_second(lambda: model(x, bias_t), batch, args.iters, dev)))
            if dev == "cuda":
                def eager_amp():
                    with amp():
                        return model(x, bias_t)
                rows.append(Row("PyTorch eager AMP fp16", batch, tiles_per_second(eager_amp, batch, args.iters, dev)))
                if compiled is not None:
                    def compiled_amp():
                        with amp():
                            return compiled(x, bias_t)
                    rows.append(Row("torch.compile AMP fp16", batch,
                                    tiles_per_second(compiled_amp, batch, args.iters, dev)))
                trt_rows(batch, x)
            ort_rows(batch, x)

        accuracy = accuracy_report(model, compiled, plans, onnx16, onnx32, args, bias_np, dev, amp)
    print_report(rows, accuracy, notes, args, dev, work)


def accuracy_report(model, compiled, plans, onnx16, onnx32, args, bias_np, dev, amp) -> dict[str, tuple[float, float]]:
    """{engine: (min, mean) per-token cosine vs PyTorch fp32} on synthetic tiles + a flat tile."""
    from dinosaw_deploy.engine.backends.tensorrt import TensorRTBackend

    pixels = synthetic_tiles(7, args.tile)
    x = torch.from_numpy(pixels).to(dev)
    bias_t = torch.from_numpy(bias_np).to(dev)
    reference = model(x, bias_t).float().cpu().numpy()
    outputs: dict[str, np.ndarray] = {}
    if dev == "cuda":
        with amp():
            outputs["PyTorch eager AMP fp16"] = model(x, bias_t).float().cpu().numpy()
            if compiled is not None:
                outputs["torch.compile AMP fp16"] = compiled(x, bias_t).float().cpu().numpy()
    for precision, plan in plans.items():
        backend = TensorRTBackend(plan)
        outputs[f"TensorRT {precision}"] = np.concatenate(
            [backend.run(pixels[i : i + backend.max_batch], bias_np) for i in range(0, len(pixels), backend.max_batch)])
        backend.close()
    name = "ort-cuda" if dev == "cuda" else "cpu"
    for label, path in (("fp16", onnx16), ("fp32", onnx32)):
        try:
            outputs[f"ORT {name} {label}"] = OrtBackend(path, name).run(pixels, bias_np)
        except DinosawError:
            pass
    result = {}
    for engine, got in outputs.items():
        cos = token_cosine(got, reference)
        result[engine] = (float(cos.min()), float(cos.mean()))
    return result


def print_report(rows: list[Row], accuracy: dict, notes: list[str], args, dev: str, work: Path) -> None:
    name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    print(f"\nALiBi-Dv2 ViT-S/14 (depth {args.depth}), {args.tile}x{args.tile} tiles, {name}, "
          f"torch {torch.__version__}; work dir {work}")
    baseline = {r.batch: r.rate for r in rows if r.label == "PyTorch eager fp32"}
    compiled = {r.batch: r.rate for r in rows if r.label == "torch.compile AMP fp16"}
    print(f"{'engine':36s} {'batch':>5s} {'tiles/s':>10s} {'x eager fp32':>13s} {'x compile AMP':>14s}")
    for r in rows:
        vs_compile = f"{r.rate / compiled[r.batch]:13.2f}x" if r.batch in compiled else f"{'-':>14s}"
        print(f"{r.label:36s} {r.batch:5d} {r.rate:10.1f} {r.rate / baseline[r.batch]:12.2f}x {vs_compile}")
    print("\naccuracy vs PyTorch fp32 (per-token cosine on synthetic tiles + a flat tile):")
    for engine, (lo, mean) in accuracy.items():
        print(f"  {engine:34s} min {lo:.6f}  mean {mean:.6f}")
    fp16 = [r.rate for r in rows if r.label.startswith("TensorRT fp16") and "host" not in r.label]
    if fp16:
        print(f"\nbest TensorRT fp16: {max(fp16):.0f} tiles/s (goal >= 3000 on one H100)")
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()
