"""`dinosaw-deploy export`: checkpoint -> verified ONNX (fp32, optionally fp16, int8) + manifests,
and on a TensorRT host a verified plan from the last of them."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dinosaw_deploy._version import __version__
from dinosaw_deploy.engine.backends.plan_manifest import plan_path_for
from dinosaw_deploy.engine.contract import IMAGENET_MEAN, IMAGENET_STD, INPUT_NAMES, OUTPUT_NAME
from dinosaw_deploy.engine.manifest import sidecar_path, write_manifest
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path, check_output, file_sha256, output_lock

from . import tensorrt as plans
from .checkpoint import LoadedCheckpoint, load_checkpoint
from .onnx_export import OPSET, export_onnx, verify_onnx
from .quantize import QUANTIZATION, quantize_int8

DEFAULT_NAMES = {"alibi-dv2": "alibi_dv2_vits14", "dinov2": "dinov2_vits14", "nope": "nope_vits14",
                 "locat": "locat_vits14"}


@dataclass
class ExportResult:
    artifacts: list[Path] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan: Path | None = None


def artifact_metadata(loaded: LoadedCheckpoint, name: str, precision: str) -> dict[str, Any]:
    """What the runtime needs to feed and trust an exported graph (embedded and in the sidecar)."""
    import onnx
    import torch

    config = loaded.model.config
    return {
        "model": name,
        "family": config.family,
        "kind": "onnx",
        "precision": precision,
        "architecture": {**config.to_dict(), "num_prefix_tokens": config.num_prefix_tokens},
        "bias": loaded.bias.to_dict(),
        "preprocessing": {
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "channels": 3,
            "patch_size": config.patch_size,
            "crop": "top-left to the patch grid (trailing H % p rows, W % p columns dropped)",
        },
        "io": {
            "inputs": {
                INPUT_NAMES[0]: {"dtype": "float32", "shape": ["batch", 3, "height", "width"]},
                INPUT_NAMES[1]: {"dtype": "float32", "shape": [1, "1 or num_heads", "tokens", "tokens"]},
            },
            "outputs": {OUTPUT_NAME: {"dtype": "float32", "shape": ["batch", config.embed_dim, "height/p", "width/p"]}},
            "tokens": f"{config.num_prefix_tokens} + (height/p)*(width/p)",
        },
        "opset": OPSET,
        "checkpoint": {"source": loaded.source, "sha256": loaded.sha256},
        "package_version": __version__,
        "exporter": {"torch": torch.__version__, "onnx": onnx.__version__},
    }


def _export_verified(loaded: LoadedCheckpoint, path: Path, name: str, precision: str,
                     fp32_path: Path | None = None) -> dict[str, Any]:
    """Export (``fp32``, ``fp16``; ``int8``: quantise ``fp32_path``) to a temporary name, verify,
    then rename: a failed check leaves nothing behind."""
    metadata = artifact_metadata(loaded, name, precision)
    with atomic_path(path) as tmp:
        if precision == "int8":
            quantize_int8(fp32_path, tmp, metadata)
        else:
            export_onnx(loaded.model, tmp, loaded.bias, metadata, fp16=precision == "fp16")
        report = verify_onnx(loaded.model, tmp, loaded.bias, precision=precision, artifact=path.name)
        if precision == "int8":
            report["quantization"] = QUANTIZATION
    write_manifest(
        path,
        {
            **metadata,
            "artifact": path.name,
            "onnx_sha256": file_sha256(path),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "verification": report,
        },
    )
    return report


def run_export(
    checkpoint: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike = "engines",
    name: str | None = None,
    family: str | None = None,
    fp16: bool = False,
    int8: bool = False,
    config_path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    echo: Callable[[str], None] = lambda _msg: None,
    overwrite: bool = False,
    tensorrt: bool | None = False,
    plan_options: plans.PlanOptions = plans.PlanOptions(),
) -> ExportResult:
    """Load ``checkpoint`` (of ``family``, or the one its tensors show) and write ``<out_dir>/<name>.onnx``
    (default name by family; and ``.fp16.onnx``, ``.int8.onnx``: the fp32 graph dynamically quantised for
    CPUs), each verified against PyTorch and described by a ``.json`` manifest. With ``tensorrt`` (``None``: when ``fp16`` and TensorRT is installed) also build
    a plan from the fp16 (else fp32) ONNX with ``plan_options``.

    Everything that can be refused is refused before anything is written: existing artifacts (replaced
    only with ``overwrite``; the checkpoint and config never), a missing TensorRT and tiles that the
    checkpoint's patch does not divide. The outputs are locked while written."""
    loaded = load_checkpoint(checkpoint, config_path=config_path, overrides=overrides, family=family)
    name = name or DEFAULT_NAMES[loaded.model.config.family]
    out = Path(out_dir)
    extra = [p for p, wanted in (("fp16", fp16), ("int8", int8)) if wanted]
    targets = [(out / f"{name}.onnx", "fp32")] + [(out / f"{name}.{p}.onnx", p) for p in extra]
    onnx_outputs = [p for path, _ in targets for p in (path, sidecar_path(path))]
    inputs = [Path(p) for p in (checkpoint, config_path) if p is not None and Path(p).exists()]
    build_plans = tensorrt if tensorrt is not None else (fp16 and plans.tensorrt_available())
    plan_source = targets[1][0] if fp16 else targets[0][0]
    if build_plans:
        plans.import_tensorrt()  # a clear error now rather than after the slow export
    plan_output = [plan_path_for(plan_source, "fp16" if fp16 else "fp32")] if build_plans else []
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DinosawError(f"cannot create output directory {out}: {exc.strerror}") from None
    for path in onnx_outputs + plan_output:
        check_output(path, inputs, overwrite)
    with output_lock(onnx_outputs):  # build_plan takes the plan's own lock
        result = _export_all(loaded, targets, name, echo, plan_options if build_plans else None)
    if build_plans:
        result.plan = plans.build_plan(plan_source, plan_options, overwrite=overwrite, echo=echo)
    elif fp16 and tensorrt is None:
        echo(f"TensorRT is not installed here, so no plan was built. On the GPU host run: "
             f"dinosaw-deploy export --from-onnx {plan_source}")
    return result


def _export_all(loaded: LoadedCheckpoint, targets: list[tuple[Path, str]], name: str,
                echo: Callable[[str], None], plan_options: plans.PlanOptions | None) -> ExportResult:
    if plan_options is not None:  # the plan's tiles against this checkpoint's patch, before any ONNX is written
        plan_options.profile(artifact_metadata(loaded, name, "fp32"))
    config = loaded.model.config
    echo(f"loaded {loaded.source} ({config.family}, {config.depth} blocks, dim {config.embed_dim})")
    result = ExportResult()
    for path, precision in targets:
        report = _export_verified(loaded, path, name, precision, targets[0][0])
        result.artifacts.append(path)
        result.reports[path.name] = report
        echo(
            f"wrote {path} (verified vs PyTorch: max abs {report['max_abs_error']:.2e}, "
            f"min token cosine {report['min_token_cosine']:.6f})"
        )
    return result
