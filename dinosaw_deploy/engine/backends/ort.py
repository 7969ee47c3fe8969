"""ONNX Runtime backends: CPU, CUDA, and TensorRT through ONNX Runtime's TensorRT provider.

The TensorRT provider builds its own engine on first use (minutes for ViT-S) and keeps it, with
its timing cache, in ``<model dir>/ort_trt_cache`` so later sessions start in seconds. Delete
that folder after re-exporting the ONNX or upgrading TensorRT. Precision comes from the graph
(``trt_fp16_enable`` stays off: run the ``.fp16.onnx`` for fp16).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.engine.backends.base import Backend
from dinosaw_deploy.engine.backends.profile import TileProfile
from dinosaw_deploy.engine.contract import INPUT_NAMES, OUTPUT_NAME
from dinosaw_deploy.engine.manifest import METADATA_KEY, parse_manifest, read_manifest, sidecar_path
from dinosaw_deploy.engine.manifest_schema import check_agrees, check_engine_manifest, check_graph, check_onnx_hash
from dinosaw_deploy.errors import DinosawError

log = logging.getLogger(__name__)

# backend name -> ONNX Runtime provider that must end up first in the session
ORT_BACKENDS = {
    "ort-tensorrt": "TensorrtExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
ORT_TRT_CACHE = "ort_trt_cache"


class ProviderStartError(DinosawError):
    """ONNX Runtime listed the provider but could not start it (missing CUDA/TensorRT libraries)."""


def provider_list(name: str, cache_dir: Path, profile: TileProfile | None = None) -> list[Any]:
    """The ``providers=`` argument for ``InferenceSession`` for one of :data:`ORT_BACKENDS`."""
    if name == "cpu":
        return ["CPUExecutionProvider"]
    chain: list[Any] = [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]
    if name == "ort-cuda":
        return chain
    options: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": False,  # precision comes from the ONNX (run the .fp16.onnx for fp16)
    }
    if profile is not None:
        options.update(profile.ort_provider_options())
    return [("TensorrtExecutionProvider", options), *chain]


class OrtBackend(Backend):
    """An ONNX Runtime session on one provider chain; refuses to fall back silently to the CPU."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        name: str = "cpu",
        *,
        threads: int | None = None,
        profile: TileProfile | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        if name not in ORT_BACKENDS:
            raise DinosawError(f"unknown ONNX Runtime backend {name!r} (choose from {', '.join(ORT_BACKENDS)})")
        self.name = name
        self.model_path = Path(model_path)
        self.max_batch = profile.max_batch if profile is not None else None
        self.profile = profile
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        cache_dir = self.model_path.parent / ORT_TRT_CACHE
        if name == "ort-tensorrt":
            cache_dir.mkdir(exist_ok=True)
        chain = providers or provider_list(name, cache_dir, profile)
        sidecar = sidecar_path(self.model_path)
        manifest = None
        if sidecar.is_file():  # checked before ONNX Runtime parses a byte of the model
            manifest = read_manifest(self.model_path)
            check_engine_manifest(manifest, sidecar)
            check_onnx_hash(self.model_path, manifest, sidecar)
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=chain)
        except Exception as exc:  # ORT raises its own pybind types for corrupt/unsupported files
            raise DinosawError(f"{self.model_path}: not a loadable ONNX model ({exc})") from None
        wanted = ORT_BACKENDS[name] if providers is None else providers[0]
        if self.session.get_providers()[0] != wanted:
            raise ProviderStartError(
                f"ONNX Runtime could not start {wanted} for {self.model_path.name} (it offered "
                f"{', '.join(self.session.get_providers())}; see its log above). Fix the CUDA/TensorRT "
                "installation, or choose backend 'cpu' knowingly"
            )
        if manifest is not None and self._embedded_record() is not None:
            check_agrees(manifest, parse_manifest(self._embedded_record(), str(self.model_path)), sidecar)
        self.manifest = manifest or self._embedded_manifest()
        check_graph(self.manifest, [(i.name, i.shape) for i in self.session.get_inputs()],
                    [(o.name, o.shape) for o in self.session.get_outputs()], self.model_path)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _embedded_record(self) -> str | None:
        return self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)

    def _embedded_manifest(self) -> dict[str, Any]:
        embedded = self._embedded_record()
        if embedded is None:
            raise DinosawError(f"{self.model_path}: no manifest beside it and none embedded in the model")
        source = f"{self.model_path} (embedded manifest)"
        manifest = parse_manifest(embedded, source)
        check_engine_manifest(manifest, source)
        return manifest

    def check_input(self, batch: int, height: int, width: int) -> None:
        if self.profile is not None:
            self.profile.check(batch, height, width)

    def run(self, pixel_values: np.ndarray, attn_bias: np.ndarray) -> np.ndarray:
        (features,) = self.session.run([OUTPUT_NAME], {INPUT_NAMES[0]: pixel_values, INPUT_NAMES[1]: attn_bias})
        return features
