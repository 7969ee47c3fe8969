"""Trace ALiBi-Dv2 to ONNX with the attention bias as an input, and check it against PyTorch.

The contract (relied on by the runtime, benchmarks and outside checks):
inputs ``pixel_values`` float32 (B, 3, H, W) and ``attn_bias`` float32 (1, 1 or heads, T, T),
T = 5 + (H/14)(W/14); output ``features`` float32 (B, C, H/14, W/14); B, H, W, T dynamic.
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinosaw_deploy.engine.bias import BiasConfig, attention_bias
from dinosaw_deploy.engine.contract import INPUT_NAMES, OUTPUT_NAME
from dinosaw_deploy.engine.manifest import METADATA_KEY, manifest_json

from .model import ViT, to_mixed_precision
from .verify import compare, verify_outputs

OPSET = 17
DYNAMIC_AXES = {
    "pixel_values": {0: "batch", 2: "height", 3: "width"},
    "attn_bias": {1: "bias_heads", 2: "tokens", 3: "tokens"},
    "features": {0: "batch", 2: "grid_h", 3: "grid_w"},
}
# Grids the export is checked on: one square, one not (the ONNX must not bake in a shape).
VERIFY_GRIDS = ((6, 6), (4, 7))


def _bias_tensor(h: int, w: int, model: ViT, bias: BiasConfig) -> torch.Tensor:
    return torch.from_numpy(np.array(attention_bias(h, w, model.config.num_heads, bias)))


def export_onnx(
    model: ViT,
    path: str | os.PathLike,
    bias: BiasConfig,
    metadata: dict[str, Any],
    *,
    fp16: bool = False,
    trace_grid: tuple[int, int] = (4, 5),
) -> Path:
    """Write ``model`` (fp32, or fp16 compute with fp32 islands) to ``path``."""
    import onnx

    path = Path(path)
    model = to_mixed_precision(copy.deepcopy(model)) if fp16 else model
    h, w = trace_grid
    p = model.config.patch_size
    pixel_values = torch.zeros(1, 3, h * p, w * p)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter; real failures still raise
        torch.onnx.export(
            model.eval(),
            (pixel_values, _bias_tensor(h, w, model, bias)),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=DYNAMIC_AXES,
            do_constant_folding=True,
        )
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {METADATA_KEY: manifest_json(metadata)})
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def verification_inputs(
    model: ViT, bias: BiasConfig, grids=VERIFY_GRIDS, seed: int = 0
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, pixel_values, attn_bias) triples: a random batch of 2 per grid plus a flat image."""
    rng = np.random.default_rng(seed)
    p = model.config.patch_size
    cases = []
    for h, w in grids:
        pixel_values = rng.normal(size=(2, 3, h * p, w * p)).astype(np.float32)
        cases.append((f"random_{h}x{w}", pixel_values, np.array(attention_bias(h, w, model.config.num_heads, bias))))
    h, w = grids[0]
    flat = np.full((1, 3, h * p, w * p), 0.25, dtype=np.float32)
    cases.append((f"flat_{h}x{w}", flat, np.array(attention_bias(h, w, model.config.num_heads, bias))))
    return cases


def verify_onnx(
    model: ViT, onnx_path: str | os.PathLike, bias: BiasConfig, *, precision: str = "fp32",
    artifact: str | None = None,
) -> dict[str, Any]:
    """Run the ONNX with ONNX Runtime (CPU) against fp32 PyTorch; raise if it disagrees
    (criteria by precision in :data:`dinosaw_deploy.export.verify.CRITERIA`; a flat image is among the cases);
    ``artifact`` names it in the error (the file may still carry a temporary name)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    cases = {}
    for name, pixel_values, attn_bias in verification_inputs(model, bias):
        with torch.no_grad():
            expected = model(torch.from_numpy(pixel_values), torch.from_numpy(attn_bias)).numpy()
        (got,) = session.run([OUTPUT_NAME], {"pixel_values": pixel_values, "attn_bias": attn_bias})
        cases[name] = {"shape": list(pixel_values.shape), **compare(expected, got, f"{onnx_path} on {name}")}
    verdict = verify_outputs(cases, precision)
    verdict.require(artifact or Path(onnx_path).name, "PyTorch")
    return {"runtime": f"onnxruntime {ort.__version__} CPU", **verdict.report()}
