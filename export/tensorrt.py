"""Build TensorRT plans from the exported ONNX: ``dinosaw-deploy export --fp16`` on a GPU host,
or ``dinosaw-deploy export --from-onnx engines/x.fp16.onnx`` (no torch needed).

Precision comes from the ONNX. The ``.fp16.onnx`` (fp16 matmuls/convs, fp32 LayerNorm, softmax
and residual stream, bias cast to the logits' dtype so attention gets a bias of Q's dtype, as
TensorRT's fused attention requires) is built as a strongly typed network — the only mode of
TensorRT 11, where ``BuilderFlag.FP16`` is gone. On TensorRT 10 the fp32 ONNX can also be built
with ``BuilderFlag.FP16`` (precision ``fp16-flag``), with LayerNorm and softmax pinned to fp32.

One optimisation profile covers square tiles ``min_tile..max_tile`` px (and rectangles between)
and batches 1..``max_batch``, with ``pixel_values`` and ``attn_bias`` shapes kept consistent
(T = 5 + h*w). Builder tactic timings persist in ``<engines>/timing-sm<cc>-trt<version>.cache``.
Every plan is verified against ONNX Runtime (CPU) before it gets its final name and manifest.

UNVERIFIED here: no GPU or TensorRT on the development machines. Written against the documented
TensorRT 10.x/11.x Python API (``tensorrt``, imported lazily); our own logic is tested on CPU
with a fake ``tensorrt`` module (tests/test_tensorrt.py).
"""
from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.engine.backends.cuda import CudaRuntime
from dinosaw_deploy.engine.backends.ort import OrtBackend
from dinosaw_deploy.engine.backends.plan_manifest import (
    MachineInfo,
    plan_manifest,
    plan_path_for,
    timing_cache_path,
    version_tuple,
)
from dinosaw_deploy.engine.backends.profile import TileProfile, make_profile
from dinosaw_deploy.engine.backends.tensorrt import TensorRTBackend, import_tensorrt
from dinosaw_deploy.engine.bias import BiasConfig, attention_bias
from dinosaw_deploy.engine.manifest import sidecar_path, write_manifest
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path, atomic_write_bytes, check_output, file_sha256, output_lock

from .verify import PLAN_CRITERIA, compare, verify_outputs


@dataclass(frozen=True)
class PlanOptions:
    """Build options (the ``export`` command's TensorRT flags)."""

    tile: int = 518
    min_tile: int | None = None
    max_tile: int | None = None
    max_batch: int = 64
    workspace_gib: float | None = None  # None: TensorRT's default (the GPU's memory)
    opt_level: int = 3  # builder optimisation level 0..5
    fp16_flag: bool = False  # fp32 ONNX + BuilderFlag.FP16 (TensorRT 10 only)
    hardware_compatible: bool = False  # any Ampere+ GPU (HardwareCompatibilityLevel.AMPERE_PLUS)
    version_compatible: bool = False  # later TensorRT versions too (BuilderFlag.VERSION_COMPATIBLE)

    def __post_init__(self) -> None:
        """Refuse tile order and batch mistakes before any slow work. Tiles must also be multiples of the
        model's patch, which only its manifest knows: :meth:`profile` checks that."""
        self.profile({"architecture": {"patch_size": 1, "num_heads": 1}, "bias": {}})

    def profile(self, manifest: dict[str, Any]) -> TileProfile:
        """The optimisation profile for the model ``manifest`` describes (its patch size, bias heads)."""
        return make_profile(tile=self.tile, min_tile=self.min_tile, max_tile=self.max_tile,
                            max_batch=self.max_batch, manifest=manifest)


def tensorrt_available() -> bool:
    """Whether ``import tensorrt`` would find a package (without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def plan_precision(onnx_precision: str, fp16_flag: bool, tensorrt_major: int) -> str:
    """``fp16`` (fp16 ONNX, strongly typed), ``fp32`` or ``fp16-flag`` (fp32 ONNX + FP16 flag)."""
    if onnx_precision == "fp16":
        return "fp16"
    if not fp16_flag:
        return "fp32"
    if tensorrt_major >= 11:
        raise DinosawError(
            "TensorRT 11 builds strongly typed networks only (no FP16 builder flag): build the fp16 plan "
            "from the .fp16.onnx (dinosaw-deploy export --fp16 writes it)"
        )
    return "fp16-flag"


def network_flags(trt: Any, precision: str) -> int:
    """Strongly typed unless the FP16 builder flag is wanted. The bit comes from the enum, whose value moved:
    ``STRONGLY_TYPED`` is 1 on TensorRT 10 (0 is the ignored ``EXPLICIT_BATCH``) and 0 on TensorRT 11, where
    every network is strongly typed and the flag is accepted but ignored (1 is ``PREFER_JIT_PYTHON_PLUGINS``)."""
    if precision == "fp16-flag":
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def pin_fp32_islands(trt: Any, network: Any) -> int:
    """Weakly typed fp16 builds (TensorRT 10 only): keep LayerNorm and softmax in fp32 (overflow-prone in fp16).
    Strongly typed networks reject layer precisions and output types, and TensorRT 11 has neither."""
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX):
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def configure(trt: Any, builder: Any, network: Any, config: Any, options: PlanOptions,
              precision: str, profile: TileProfile) -> None:
    """Builder config: memory, optimisation level, precision flags, compatibility, the profile."""
    if options.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    config.builder_optimization_level = options.opt_level
    if precision == "fp16-flag":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        pin_fp32_islands(trt, network)
    elif precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls have fp16's mantissa: keep fp32 plans fp32
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    opt_profile = builder.create_optimization_profile()
    for name, (smallest, optimal, largest) in profile.shapes().items():
        opt_profile.set_shape(name, smallest, optimal, largest)
    config.add_optimization_profile(opt_profile)


def attach_timing_cache(config: Any, saved: bytes, echo: Callable[[str], None]) -> bool:
    """Give the builder the saved tactic timings, or a new empty cache if TensorRT refuses them (corrupt, or
    from another GPU/TensorRT: ``set_timing_cache`` returns False); False if it takes no cache at all."""
    for blob in (saved, b"") if saved else (b"",):
        cache = config.create_timing_cache(blob)  # None for bytes TensorRT cannot read
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        if blob:
            echo("TensorRT refused the saved timing cache (corrupt, or from another GPU); starting a new one")
    echo("TensorRT accepted no timing cache: building without one (tactics are timed afresh)")
    return False


def build_serialized(trt: Any, onnx_path: Path, options: PlanOptions, precision: str, profile: TileProfile,
                     timing_cache: bytes, echo: Callable[[str], None]) -> tuple[bytes, bytes | None]:
    """Parse ``onnx_path`` and build: (serialised plan, updated timing cache or None when there is none)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, precision))
    if network is None:
        raise DinosawError(f"TensorRT {trt.__version__} could not create a network definition (see its log above)")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DinosawError(f"TensorRT could not parse {onnx_path.name}: {errors or 'unknown error'}")
    config = builder.create_builder_config()
    configure(trt, builder, network, config, options, precision, profile)
    cached = attach_timing_cache(config, timing_cache, echo)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DinosawError(f"TensorRT failed to build a plan from {onnx_path.name} (see its log above)")
    cache = config.get_timing_cache() if cached else None
    return bytes(plan), None if cache is None else bytes(cache.serialize())


def verify_plan(plan_path: Path, manifest: dict[str, Any], reference_onnx: Path) -> dict[str, Any]:
    """Run the plan on the native backend against ONNX Runtime (CPU) on ``reference_onnx``; raise unless
    it meets its precision's criterion (:data:`dinosaw_deploy.export.verify.PLAN_CRITERIA`)."""
    profile = TileProfile.from_dict(manifest["profile"])
    bias_config = BiasConfig.from_dict(manifest["bias"])
    heads = int(manifest["architecture"]["num_heads"])
    rng = np.random.default_rng(0)
    lo, hi = profile.min_tile, profile.max_tile
    cases = {
        f"random_{lo}x{hi}": rng.normal(size=(min(2, profile.max_batch), 3, lo, hi)).astype(np.float32),
        f"flat_{lo}x{lo}": np.full((1, 3, lo, lo), 0.25, np.float32),
    }
    plan = TensorRTBackend(plan_path, manifest=manifest)
    reference = OrtBackend(reference_onnx, "cpu")
    results = {}
    try:
        for name, pixels in cases.items():
            bias = attention_bias(pixels.shape[2] // profile.patch_size, pixels.shape[3] // profile.patch_size,
                                  heads, bias_config)
            results[name] = compare(reference.run(pixels, bias), plan.run(pixels, bias), f"{plan_path.name} on {name}")
    finally:
        plan.close()
    verdict = verify_outputs(results, manifest["precision"], PLAN_CRITERIA)
    verdict.require(plan_path.name, reference_onnx.name)
    return {"reference": f"{reference_onnx.name} on onnxruntime CPU", **verdict.report()}


def build_plan(
    onnx_path: str | Path,
    options: PlanOptions = PlanOptions(),
    *,
    overwrite: bool = False,
    echo: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Build, verify and write ``<onnx dir>/<name>[.fp16].plan`` with its manifest; return its path."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise DinosawError(f"ONNX not found: {onnx_path} (run `dinosaw-deploy export` first)")
    source = OrtBackend(onnx_path, "cpu")  # checks the I/O contract and reads the manifest
    onnx_manifest, source_precision = source.manifest, source.manifest.get("precision", "fp32")
    del source
    profile = options.profile(onnx_manifest)  # tiles against this model's patch size, before TensorRT loads
    trt = import_tensorrt()
    precision = plan_precision(source_precision, options.fp16_flag, version_tuple(trt.__version__)[0])
    plan_path = plan_path_for(onnx_path, precision)
    device = CudaRuntime().device_info()
    machine = MachineInfo(str(trt.__version__), device.name, device.compute_capability)
    cache_path = timing_cache_path(onnx_path.parent, machine)
    with output_lock([plan_path, sidecar_path(plan_path), cache_path]):  # one builder per plan
        check_output(plan_path, [onnx_path], overwrite)  # under the lock: a plan finished meanwhile counts
        cached = cache_path.read_bytes() if cache_path.is_file() else b""
        echo(f"building {plan_path.name} ({precision}, tiles {profile.min_tile}..{profile.max_tile} px, batch <= "
             f"{profile.max_batch}) with TensorRT {trt.__version__} on {device.name}; this takes minutes")
        start = time.perf_counter()
        plan_bytes, cache_bytes = build_serialized(trt, onnx_path, options, precision, profile, cached, echo)
        seconds = time.perf_counter() - start
        if cache_bytes is not None:
            atomic_write_bytes(cache_path, cache_bytes)
        builder = {
            "strongly_typed": precision != "fp16-flag",
            "opt_level": options.opt_level,
            "workspace_gib": options.workspace_gib,
            "hardware_compatibility": "ampere_plus" if options.hardware_compatible else "none",
            "version_compatible": options.version_compatible,
            "timing_cache": cache_path.name if cache_bytes is not None else None,
        }
        reference = onnx_path.with_name(onnx_path.name.replace(".fp16.onnx", ".onnx"))
        with atomic_path(plan_path) as tmp:
            tmp.write_bytes(plan_bytes)
            record = plan_manifest(onnx_manifest, plan_name=plan_path.name, source_onnx=onnx_path, precision=precision,
                                   machine=machine, profile=profile.to_dict(), builder=builder,
                                   plan_sha256=file_sha256(tmp))
            report = verify_plan(tmp, record, reference if reference.is_file() else onnx_path)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record.update(created=created, build_seconds=round(seconds, 1), verification=report)
        write_manifest(plan_path, record)
        echo(f"wrote {plan_path} in {seconds:.0f} s (verified vs {report['reference']}: max abs "
             f"{report['max_abs_error']:.2e}, min token cosine {report['min_token_cosine']:.6f})")
    return plan_path
