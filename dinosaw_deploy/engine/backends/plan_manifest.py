"""TensorRT plan manifests, and the decision whether a plan may be deserialised on this machine.

A serialised TensorRT engine is only valid for the TensorRT version and GPU it was built for;
loading it elsewhere fails inside TensorRT (a null engine or worse). So every ``.plan`` carries a
sidecar manifest (see :mod:`dinosaw_deploy.engine.manifest`) recording the TensorRT version, GPU name and
compute capability, optimisation profile, precision, builder flags, source ONNX sha256 and package
version, and :func:`check_plan` compares it with the machine *before* TensorRT sees the bytes.
A mismatch raises :class:`StaleEngineError` with the exact command that rebuilds the plan.
"""
from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dinosaw_deploy._version import __version__
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import file_sha256

log = logging.getLogger(__name__)

PLAN_KIND = "tensorrt-plan"
PRECISIONS = ("fp32", "fp16", "fp16-flag")  # fp16-flag: fp32 ONNX + BuilderFlag.FP16 (TensorRT 10 only)
HARDWARE_LEVELS = ("none", "ampere_plus")


class StaleEngineError(DinosawError):
    """The plan was built for another TensorRT, GPU or ONNX: rebuild it (the message says how)."""


@dataclass(frozen=True)
class MachineInfo:
    """What a plan must match: the TensorRT library and the GPU that will run it."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"


def plan_path_for(onnx_path: str | Path, precision: str) -> Path:
    """``x.fp16.onnx`` -> ``x.fp16.plan``; ``x.onnx`` -> ``x.plan`` (fp32) or ``x.fp16-flag.plan``."""
    onnx_path = Path(onnx_path)
    if precision == "fp16-flag":
        return onnx_path.with_suffix(".fp16-flag.plan")
    return onnx_path.with_suffix(".plan")


def timing_cache_path(directory: str | Path, machine: MachineInfo) -> Path:
    """One persistent timing cache per GPU architecture and TensorRT version, in ``directory``."""
    sm = machine.compute_capability.replace(".", "")
    version = re.sub(r"[^0-9.]", "", machine.tensorrt_version)
    return Path(directory) / f"timing-sm{sm}-trt{version}.cache"


def version_tuple(text: str) -> tuple[int, ...]:
    """"10.8.0.43" -> (10, 8, 0, 43); non-digits separate fields."""
    return tuple(int(x) for x in re.findall(r"\d+", str(text)))


def plan_manifest(
    onnx_manifest: dict[str, Any],
    *,
    plan_name: str,
    source_onnx: Path,
    precision: str,
    machine: MachineInfo,
    profile: dict[str, Any],
    builder: dict[str, Any],
    plan_sha256: str,
) -> dict[str, Any]:
    """The plan's record: the source ONNX's contract (architecture, bias, preprocessing, io)
    plus what the engine is bound to. ``builder`` holds the build options (see export.tensorrt)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    dropped = ("format", "format_version", "verification", "onnx_sha256", "created")
    inherited = {k: v for k, v in onnx_manifest.items() if k not in dropped}
    return {
        **inherited,
        "kind": PLAN_KIND,
        "artifact": plan_name,
        "precision": precision,
        "plan_sha256": plan_sha256,
        "source_onnx": {
            "file": source_onnx.name,
            "sha256": file_sha256(source_onnx),
            "precision": onnx_manifest.get("precision"),
        },
        "tensorrt": {"version": machine.tensorrt_version, **builder},
        "gpu": {"name": machine.gpu_name, "compute_capability": machine.compute_capability},
        "profile": profile,
        "package_version": __version__,
    }


def rebuild_command(manifest: dict[str, Any], plan_path: str | Path) -> str:
    """The ``dinosaw-deploy export`` line that rebuilds this plan from its ONNX on this machine."""
    plan_path = Path(plan_path)
    source = plan_path.parent / manifest.get("source_onnx", {}).get("file", "MODEL.onnx")
    profile = manifest.get("profile", {})
    trt = manifest.get("tensorrt", {})
    args = ["dinosaw-deploy", "export", "--from-onnx", str(source)]
    for flag, key in (("--tile", "opt_tile"), ("--min-tile", "min_tile"),
                      ("--max-tile", "max_tile"), ("--max-batch", "max_batch")):
        if key in profile:
            args += [flag, str(profile[key])]
    if manifest.get("precision") == "fp16-flag":
        args.append("--fp16")
    if trt.get("workspace_gib"):
        args += ["--workspace", f"{trt['workspace_gib']:g}"]
    if trt.get("opt_level") is not None:
        args += ["--opt-level", str(trt["opt_level"])]
    if trt.get("hardware_compatibility", "none") != "none":
        args.append("--hardware-compatible")
    if trt.get("version_compatible"):
        args.append("--version-compatible")
    args.append("--overwrite")
    return " ".join(shlex.quote(a) for a in args)


def _stale(plan_path: Path, manifest: dict[str, Any], reason: str) -> StaleEngineError:
    return StaleEngineError(
        f"{plan_path} cannot run here: {reason}. Rebuild it on this machine with: "
        f"{rebuild_command(manifest, plan_path)}"
    )


def check_plan(manifest: dict[str, Any], machine: MachineInfo, plan_path: str | Path) -> list[str]:
    """Raise :class:`StaleEngineError` unless the plan may be deserialised on ``machine``.

    Refused: another TensorRT version (a version-compatible plan accepts the same or a later
    one), another compute capability (a hardware-compatible plan accepts any >= 8.0), or a
    source ONNX beside the plan whose sha256 changed since the build. Returned as warnings
    (logged, not fatal): another GPU model of the same compute capability, another package version.
    """
    plan_path = Path(plan_path)
    if manifest.get("kind") != PLAN_KIND:
        kind = manifest.get("kind")
        raise DinosawError(f"{plan_path}: its manifest does not describe a TensorRT plan (kind {kind!r})")
    missing = [k for k in ("tensorrt", "gpu", "profile", "architecture", "bias", "preprocessing") if k not in manifest]
    if missing:
        raise DinosawError(f"{plan_path}: its manifest lacks {', '.join(missing)}; rebuild the plan with "
                           "`dinosaw-deploy export --from-onnx <its .onnx> --overwrite`")
    trt = manifest.get("tensorrt", {})
    built_version = str(trt.get("version", "unknown"))
    if trt.get("version_compatible"):
        if version_tuple(machine.tensorrt_version) < version_tuple(built_version):
            raise _stale(plan_path, manifest, f"it was built with TensorRT {built_version} (version-compatible, so "
                         f"{built_version} or later), this machine has TensorRT {machine.tensorrt_version}")
    elif version_tuple(machine.tensorrt_version) != version_tuple(built_version):
        raise _stale(plan_path, manifest, f"it was built with TensorRT {built_version}, this machine has TensorRT "
                     f"{machine.tensorrt_version} (plans load only in the TensorRT version that built them)")

    gpu = manifest.get("gpu", {})
    built_cc = str(gpu.get("compute_capability", "unknown"))
    if trt.get("hardware_compatibility", "none") == "ampere_plus":
        if version_tuple(machine.compute_capability) < (8, 0):
            raise _stale(plan_path, manifest, f"it is hardware-compatible for Ampere or newer GPUs (compute capability "
                         f">= 8.0), this GPU ({machine.gpu_name}) has {machine.compute_capability}")
    elif version_tuple(machine.compute_capability) != version_tuple(built_cc):
        raise _stale(plan_path, manifest, f"it was built for {gpu.get('name', 'another GPU')} (compute capability "
                     f"{built_cc}), this GPU is {machine.gpu_name} ({machine.compute_capability})")

    source = manifest.get("source_onnx", {})
    onnx_path = plan_path.parent / source.get("file", "")
    if source.get("file") and onnx_path.is_file() and file_sha256(onnx_path) != source.get("sha256"):
        raise _stale(plan_path, manifest, f"{onnx_path.name} beside it changed since the plan was built (re-exported?)")

    warnings = []
    if gpu.get("name") and gpu.get("name") != machine.gpu_name and trt.get("hardware_compatibility", "none") == "none":
        warnings.append(f"{plan_path.name} was built on {gpu['name']}, this GPU is {machine.gpu_name} (same compute "
                        "capability, so it loads; TensorRT advises rebuilding for best speed)")
    if manifest.get("package_version") != __version__:
        built_by = manifest.get("package_version")
        warnings.append(f"{plan_path.name} was built by dinosaw-deploy {built_by}, this is {__version__}")
    for message in warnings:
        log.warning(message)
    return warnings
