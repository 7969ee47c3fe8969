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
cosine >= 0.99. The exported int8 engine must reach the ``int8`` row of
:data:`dinosaw_deploy.export.verify.CRITERIA` on the export's verification inputs (random batches on
two grids and a flat image) or it is not kept.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dinosaw_deploy.engine.manifest import METADATA_KEY, manifest_json
from dinosaw_deploy.errors import quiet_logger

QUANTIZATION = {"method": "onnxruntime dynamic", "weights": "int8, per tensor", "activations": "uint8, per call",
                "ops": ["MatMul"]}


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write the dynamic-int8 version of the fp32 ONNX ``fp32_path`` to ``out_path``, with
    ``metadata`` (the manifest, ``precision: int8``) embedded."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    with quiet_logger():  # the quantiser's advice to pre-process (shape inference): not needed, result verified
        quantize_dynamic(str(fp32_path), str(out_path), op_types_to_quantize=QUANTIZATION["ops"],
                         weight_type=QuantType.QInt8, per_channel=False)
    graph = onnx.load(str(out_path))
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {METADATA_KEY: manifest_json(metadata)})
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out_path))
    return out_path
