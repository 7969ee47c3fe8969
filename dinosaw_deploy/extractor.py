"""FeatureExtractor: load an exported ALiBi-Dv2 once, call it per image (no torch)."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bias import BiasConfig, attention_bias
from .errors import DinosawError
from .manifest import METADATA_KEY, parse_manifest, read_manifest, sidecar_path
from .preprocess import preprocess

log = logging.getLogger(__name__)

INPUT_NAMES = ("pixel_values", "attn_bias")
OUTPUT_NAME = "features"
# Preferred ONNX Runtime execution providers, best first.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def select_providers(available: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
    """The execution providers to use: ``requested`` if all exist, else the best available."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise DinosawError(
                f"ONNX Runtime provider(s) {', '.join(missing)} not available here "
                f"(available: {', '.join(available)})"
            )
        return list(requested)
    chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    return chosen or list(available)


class FeatureExtractor:
    """ALiBi-Dv2 patch features from an exported ONNX model.

    >>> fx = FeatureExtractor("engines/alibi_dv2_vits14.onnx")
    >>> feats = fx(image)            # (C, h, w) float32, h = H // 14, w = W // 14

    Args:
        model_path: the ``.onnx`` written by ``dinosaw-deploy export``.
        providers: ONNX Runtime execution providers; default: TensorRT, CUDA, CPU, whichever exist.
        batch_size: images per engine call in :meth:`run`.
        intensity_range: fixed (lo, hi) mapped to [0, 1]; default: per-dtype rules of
            :mod:`dinosaw_deploy.preprocess`.
        threads: CPU threads for ONNX Runtime (default: all cores).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        batch_size: int = 8,
        intensity_range: tuple[float, float] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise DinosawError(f"model not found: {self.model_path} (run `dinosaw-deploy export` first)")
        if batch_size < 1:
            raise DinosawError("batch_size must be >= 1")
        self.batch_size = batch_size
        self.intensity_range = intensity_range

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        chosen = select_providers(ort.get_available_providers(), providers)
        try:
            self.session = ort.InferenceSession(str(self.model_path), options, providers=chosen)
        except Exception as exc:  # ORT raises its own pybind types for corrupt/unsupported files
            raise DinosawError(f"{self.model_path}: not a loadable ONNX model ({exc})") from None
        self._check_io()
        self.manifest = self._load_manifest()
        arch = self.manifest["architecture"]
        self.embed_dim: int = int(arch["embed_dim"])
        self.num_heads: int = int(arch["num_heads"])
        self.patch_size: int = int(arch["patch_size"])
        self.bias_config = BiasConfig.from_dict(self.manifest["bias"])
        pre = self.manifest["preprocessing"]
        self.mean = tuple(pre["mean"])
        self.std = tuple(pre["std"])
        log.info("FeatureExtractor %s on %s", self.model_path.name, ", ".join(self.providers))

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _check_io(self) -> None:
        inputs = tuple(i.name for i in self.session.get_inputs())
        outputs = tuple(o.name for o in self.session.get_outputs())
        if inputs != INPUT_NAMES or outputs != (OUTPUT_NAME,):
            raise DinosawError(
                f"{self.model_path}: not an ALiBi-Dv2 export (inputs {inputs}, outputs {outputs}; "
                f"expected {INPUT_NAMES} -> ({OUTPUT_NAME!r},))"
            )

    def _load_manifest(self) -> dict[str, Any]:
        if sidecar_path(self.model_path).is_file():
            return read_manifest(self.model_path)
        embedded = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if embedded is None:
            raise DinosawError(f"{self.model_path}: no manifest beside it and none embedded in the model")
        return parse_manifest(embedded, f"{self.model_path} (embedded manifest)")

    def bias(self, h: int, w: int) -> np.ndarray:
        """The cached ``attn_bias`` input for an (h, w) patch grid."""
        return attention_bias(h, w, self.num_heads, self.bias_config)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """Image -> normalised (3, 14h, 14w) float32, by the model's manifest."""
        return preprocess(
            image,
            patch_size=self.patch_size,
            mean=self.mean,
            std=self.std,
            intensity_range=self.intensity_range,
        )

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        """Normalised (B, 3, 14h, 14w) float32 -> features (B, C, h, w) float32, in batches."""
        pixel_values = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise DinosawError(f"pixel_values must be (B, 3, H, W), got {pixel_values.shape}")
        h, w = pixel_values.shape[2] // self.patch_size, pixel_values.shape[3] // self.patch_size
        if h < 1 or w < 1:
            raise DinosawError(f"input of {pixel_values.shape[2:]} px is smaller than one patch")
        bias = self.bias(h, w)
        out = np.empty((pixel_values.shape[0], self.embed_dim, h, w), dtype=np.float32)
        for start in range(0, pixel_values.shape[0], self.batch_size):
            chunk = pixel_values[start : start + self.batch_size]
            (result,) = self.session.run(
                [OUTPUT_NAME], {"pixel_values": chunk, "attn_bias": bias}
            )
            out[start : start + len(chunk)] = result
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One image (any layout/dtype of :mod:`preprocess`) -> (C, h, w) float32 features."""
        return self.run(self.preprocess(image)[None])[0]

    def extract_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Same-sized images -> (B, C, h, w) float32, run ``batch_size`` at a time."""
        if not len(images):
            raise DinosawError("no images given")
        batch = [self.preprocess(img) for img in images]
        if len({b.shape for b in batch}) != 1:
            raise DinosawError("extract_batch needs images of one size; call the extractor per image")
        return self.run(np.stack(batch))
