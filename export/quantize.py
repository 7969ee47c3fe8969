"""int8 CPU engines: ONNX Runtime's dynamic quantisation of the verified fp32 ONNX, checked against PyTorch.

Dynamic quantisation stores the weights of every MatMul as int8 (per tensor) and quantises each
activation on the fly from its own range, so no calibration data is needed. It was chosen over
static quantisation (activation ranges calibrated on generated micrographs, QDQ MatMuls, per-channel
weights) by measurement on the full-size ViT-S/14 with random weights, 518-px tiles, 2 CPU threads
(``python benchmarks/int8_methods.py``, two runs on a shared machine, so the times are rough):

=====================  ================  ===============================================
                       time vs fp32 ORT  min per-token cosine vs PyTorch (random / flat /
                                         micrograph)
=====================  ================  ===============================================
dynamic, per tensor    0.29x-0.56x       0.9994 / 0.9991 / 0.9979
dynamic, per channel   0.46x-0.71x       0.9995 / 0.9994 / 0.9985
static (MinMax, QDQ)   0.94x-0.97x       0.9961 / 0.9832 / 0.9903
=====================  ================  ===============================================

Static was both slower (ONNX Runtime's CPU kernels gain little from pre-computed activation scales
here, and the QDQ pairs cost time) and less faithful (attention activations have outliers that one
calibrated range clips; the flat image fails the 0.99 bar). Dynamic per tensor is the fastest at
cosine >= 0.99. The exported int8 engine must reach :data:`INT8_MIN_COSINE` on the export's
verification inputs (random batches on two grids and a flat image) or it is not kept.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinosaw_deploy.engine.bias import BiasConfig
from dinosaw_deploy.engine.contract import OUTPUT_NAME
from dinosaw_deploy.engine.manifest import METADATA_KEY, manifest_json
from dinosaw_deploy.errors import DinosawError

from .model import AlibiDv2
from .onnx_export import token_cosine, verification_inputs

INT8_MIN_COSINE = 0.99
QUANTIZATION = {"method": "onnxruntime dynamic", "weights": "int8, per tensor", "activations": "uint8, per call",
                "ops": ["MatMul"]}


@contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantiser logs advice to run its pre-processing (shape inference) on the root
    logger; dynamic quantisation works without it and the result is verified, so keep it off screen."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write the dynamic-int8 version of the fp32 ONNX ``fp32_path`` to ``out_path``, with
    ``metadata`` (the manifest, ``precision: int8``) embedded."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    with _quiet_root_logger():
        quantize_dynamic(str(fp32_path), str(out_path), op_types_to_quantize=QUANTIZATION["ops"],
                         weight_type=QuantType.QInt8, per_channel=False)
    graph = onnx.load(str(out_path))
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {METADATA_KEY: manifest_json(metadata)})
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out_path))
    return out_path


def verify_int8(model: AlibiDv2, onnx_path: str | os.PathLike, bias: BiasConfig) -> dict[str, Any]:
    """Run the int8 ONNX with ONNX Runtime (CPU) against fp32 PyTorch; raise unless every token's
    cosine is >= :data:`INT8_MIN_COSINE` on every verification input (random and flat images)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    report: dict[str, Any] = {"runtime": f"onnxruntime {ort.__version__} CPU", "quantization": QUANTIZATION,
                              "cases": {}}
    for name, pixel_values, attn_bias in verification_inputs(model, bias):
        with torch.no_grad():
            expected = model(torch.from_numpy(pixel_values), torch.from_numpy(attn_bias)).numpy()
        (got,) = session.run([OUTPUT_NAME], {"pixel_values": pixel_values, "attn_bias": attn_bias})
        if got.shape != expected.shape:
            raise DinosawError(f"{onnx_path}: output shape {got.shape} != PyTorch {expected.shape} on {name}")
        report["cases"][name] = {
            "shape": list(pixel_values.shape),
            "max_abs_error": float(np.abs(got - expected).max()),
            "min_token_cosine": float(token_cosine(got, expected).min()),
        }
    worst = min(report["cases"].items(), key=lambda item: item[1]["min_token_cosine"])
    report.update(max_abs_error=max(c["max_abs_error"] for c in report["cases"].values()),
                  min_token_cosine=worst[1]["min_token_cosine"],
                  criterion=f"min per-token cosine >= {INT8_MIN_COSINE}")
    report["passed"] = bool(report["min_token_cosine"] >= INT8_MIN_COSINE)
    if not report["passed"]:
        raise DinosawError(
            f"the int8 engine disagrees with PyTorch (min token cosine {report['min_token_cosine']:.4f} on "
            f"{worst[0]}; needs >= {INT8_MIN_COSINE}); not keeping it: use the fp32 engine for this model"
        )
    return report
