"""Which int8 quantisation for CPU engines: ONNX Runtime dynamic vs static (calibrated on micrographs).

    python benchmarks/int8_methods.py [--tile 518] [--repeats 3] [--threads N] [--calibration 8]

Full-size ViT-S/14 with random weights drawn like the golden reference's (benchmarks/vit_cpu.py).
Static quantisation is calibrated (MinMax) on 224-px tiles of generated micrographs and quantises the
MatMuls (QDQ, per-channel weights). Every variant is checked like ``export --int8`` (random batches
on two grids and a flat image) plus two micrograph tiles of ``--tile`` px; its time is a ratio to
the fp32 ONNX measured in the same run. ``export --int8`` uses the variant chosen here (dynamic,
per tensor: the fastest at cosine >= 0.99, and it needs no calibration data); see export/quantize.py.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from vit_cpu import golden_like_weights, ort_session, time_it

from dinosaw_deploy.engine.bias import BiasConfig, attention_bias
from dinosaw_deploy.engine.preprocess import preprocess
from dinosaw_deploy.export.model import ViT, ViTConfig
from dinosaw_deploy.export.onnx_export import export_onnx, verification_inputs
from dinosaw_deploy.export.verify import token_cosine
from dinosaw_deploy.synthetic import synthetic_micrograph


def micrograph_tiles(n: int, side: int, seed: int) -> list[np.ndarray]:
    """``n`` preprocessed (1, 3, side, side) crops of a generated micrograph."""
    image = synthetic_micrograph(2 * side, 2 * side, seed=seed)[0]
    rng = np.random.default_rng(seed)
    return [preprocess(image[y : y + side, x : x + side])[None] for y, x in rng.integers(0, side, (n, 2))]


class Calibration(CalibrationDataReader):
    def __init__(self, tiles: list[np.ndarray], heads: int) -> None:
        grid = tiles[0].shape[2] // 14
        bias = np.array(attention_bias(grid, grid, heads))
        self._feeds = iter([{"pixel_values": t, "attn_bias": bias} for t in tiles])

    def get_next(self):
        return next(self._feeds, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calibration", type=int, default=8, help="calibration tiles (static)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = golden_like_weights(ViT(ViTConfig())).eval()
    heads, grid = model.config.num_heads, args.tile // 14
    cases = list(verification_inputs(model, BiasConfig()))
    bias = np.array(attention_bias(grid, grid, heads))
    cases += [(f"micrograph{k}_{args.tile}", t, bias) for k, t in enumerate(micrograph_tiles(2, args.tile, seed=99))]
    with torch.no_grad():
        reference = {n: model(torch.from_numpy(x), torch.from_numpy(b)).numpy() for n, x, b in cases}

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "vits14.onnx"
        export_onnx(model, fp32, BiasConfig(), {"model": "benchmark"})
        variants = {"dynamic, per tensor": Path(tmp) / "dyn.onnx", "dynamic, per channel": Path(tmp) / "dynpc.onnx",
                    "static MinMax QDQ": Path(tmp) / "static.onnx"}
        quantize_dynamic(str(fp32), str(variants["dynamic, per tensor"]), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8)
        quantize_dynamic(str(fp32), str(variants["dynamic, per channel"]), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8, per_channel=True)
        quantize_static(str(fp32), str(variants["static MinMax QDQ"]),
                        Calibration(micrograph_tiles(args.calibration, 224, seed=11), heads),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"], per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        feeds = {"pixel_values": cases[-1][1], "attn_bias": bias}
        session = ort_session(fp32, args.threads)
        t_fp32 = time_it(lambda: session.run(None, feeds), args.repeats)
        print(f"ViT-S/14, {args.tile}-px tile, {args.threads} threads, median of {args.repeats}; "
              f"fp32 ONNX {t_fp32 * 1e3:.0f} ms")
        print(f"{'variant':<22}{'ms':>8}{'x fp32':>8}  min per-token cosine vs PyTorch")
        for name, path in variants.items():
            session = ort_session(path, args.threads)
            cosines = {n: token_cosine(session.run(None, {"pixel_values": x, "attn_bias": b})[0], reference[n]).min()
                       for n, x, b in cases}
            seconds = time_it(lambda: session.run(None, feeds), args.repeats)
            print(f"{name:<22}{seconds * 1e3:>8.0f}{seconds / t_fp32:>8.2f}  "
                  + ", ".join(f"{n} {c:.4f}" for n, c in cosines.items()))


if __name__ == "__main__":
    main()
