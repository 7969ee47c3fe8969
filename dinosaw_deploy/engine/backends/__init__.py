"""Engine backends behind one interface (:class:`Backend`), and the choice between them.

========================  ==============================================================
``tensorrt``              a ``.plan`` on the native TensorRT runtime (fastest; GPU host)
``ort-tensorrt``          an ``.onnx`` through ONNX Runtime's TensorRT provider
``ort-cuda``              an ``.onnx`` through ONNX Runtime's CUDA provider
``cpu``                   an ``.onnx`` through ONNX Runtime on the CPU
========================  ==============================================================

``auto`` takes a ``.plan`` to ``tensorrt`` and an ``.onnx`` to the best ONNX Runtime provider
present (TensorRT, then CUDA, then CPU) -- except an ``int8`` ONNX (dynamic quantisation, a CPU
format), which ``auto`` always runs on the CPU; when ONNX Runtime lists a provider it cannot start
(e.g. onnxruntime-gpu without TensorRT libraries), ``auto`` logs a warning and tries the next.
It logs its choice. A forced backend that cannot run is an error, never a silent fallback.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from dinosaw_deploy.engine.backends.base import Backend
from dinosaw_deploy.engine.backends.ort import ORT_BACKENDS, ProviderStartError
from dinosaw_deploy.engine.backends.profile import TileProfile, make_profile
from dinosaw_deploy.engine.contract import INPUT_NAMES, OUTPUT_NAME, check_io_names
from dinosaw_deploy.engine.manifest import read_manifest, sidecar_path
from dinosaw_deploy.errors import DinosawError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", *ORT_BACKENDS)

__all__ = [
    "BACKENDS", "INPUT_NAMES", "OUTPUT_NAME", "Backend", "TileProfile",
    "check_io_names", "choose_backend", "make_profile", "open_backend",
]


def choose_backend(
    model_path: str | os.PathLike,
    requested: str = "auto",
    *,
    available_providers: Sequence[str],
    providers: Sequence[str] | None = None,
    precision: str | None = None,
) -> str:
    """Which backend runs ``model_path``: pure logic over the file type, its manifest's ``precision`` and what
    ONNX Runtime offers."""
    if requested not in BACKENDS:
        raise DinosawError(f"unknown backend {requested!r} (choose from {', '.join(BACKENDS)})")
    is_plan = Path(model_path).suffix == ".plan"
    if is_plan:
        if requested not in ("auto", "tensorrt") or providers:
            raise DinosawError(
                f"{Path(model_path).name} is a TensorRT plan: only backend 'tensorrt' runs it "
                "(for ONNX Runtime backends pass the .onnx it was built from)"
            )
        return "tensorrt"
    if requested == "tensorrt":
        raise DinosawError(
            f"backend 'tensorrt' runs .plan files; build one from {Path(model_path).name} with "
            f"`dinosaw-deploy export --from-onnx {model_path}` on the GPU host and pass the .plan, "
            "or use backend 'ort-tensorrt'"
        )
    if providers:
        missing = [p for p in providers if p not in available_providers]
        if missing:
            raise DinosawError(
                f"ONNX Runtime provider(s) {', '.join(missing)} not available here "
                f"(available: {', '.join(available_providers)})"
            )
        by_provider = {v: k for k, v in ORT_BACKENDS.items()}
        implied = by_provider.get(providers[0])
        if implied is None or requested not in ("auto", implied):
            raise DinosawError(f"providers {list(providers)} do not match backend {requested!r}")
        return implied
    if requested == "auto" and precision == "int8":
        if any(p != ORT_BACKENDS["cpu"] for p in available_providers):
            log.info("%s is an int8 engine (a CPU format): backend auto runs it on the CPU", Path(model_path).name)
        return "cpu"
    if requested == "auto":
        return next(name for name, provider in ORT_BACKENDS.items() if provider in available_providers or name == "cpu")
    if ORT_BACKENDS[requested] not in available_providers:
        hint = " (install onnxruntime-gpu: pip install 'dinosaw-deploy[gpu]')" if requested != "cpu" else ""
        raise DinosawError(
            f"backend {requested!r} needs ONNX Runtime's {ORT_BACKENDS[requested]}, not available here "
            f"(available: {', '.join(available_providers)}){hint}"
        )
    return requested


def _precision(model_path: str | os.PathLike) -> str | None:
    """The ``precision`` an ONNX's sidecar manifest declares (None without one; the backend validates it)."""
    if Path(model_path).suffix != ".onnx" or not sidecar_path(model_path).is_file():
        return None
    precision = read_manifest(model_path).get("precision")
    return precision if isinstance(precision, str) else None


def open_backend(
    model_path: str | os.PathLike,
    backend: str = "auto",
    *,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> Backend:
    """Open ``model_path`` (``.onnx`` or ``.plan``) on the chosen backend and log which one."""
    import onnxruntime as ort

    name = choose_backend(model_path, backend, available_providers=ort.get_available_providers(), providers=providers,
                          precision=_precision(model_path))
    if name == "tensorrt":
        from dinosaw_deploy.engine.backends.tensorrt import TensorRTBackend

        opened: Backend = TensorRTBackend(model_path)
    else:
        from dinosaw_deploy.engine.backends.ort import OrtBackend

        chain = list(ORT_BACKENDS)[list(ORT_BACKENDS).index(name):] if backend == "auto" and not providers else [name]
        for candidate in chain:
            try:
                opened = OrtBackend(model_path, candidate, threads=threads,
                                    providers=list(providers) if providers else None)
                break
            except ProviderStartError as exc:
                if candidate == chain[-1]:
                    raise
                log.warning("%s; trying the next backend", exc)
        name = opened.name
    log.info("backend %s for %s (%s)%s", name, Path(model_path).name, ", ".join(opened.providers),
             " [auto]" if backend == "auto" else "")
    return opened
