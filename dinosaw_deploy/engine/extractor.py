"""FeatureExtractor: load an exported engine (any family) once, call it per image (no torch)."""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dinosaw_deploy.engine.backends import Backend, open_backend
from dinosaw_deploy.engine.bias import BiasConfig, attention_bias
from dinosaw_deploy.engine.contract import INPUT_NAMES, MAX_WHOLE_IMAGE_TOKENS, OUTPUT_NAME
from dinosaw_deploy.engine.debias import PositionalSubspace
from dinosaw_deploy.engine.manifest_schema import check_engine_manifest
from dinosaw_deploy.engine.preprocess import preprocess
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import check_pixels
from dinosaw_deploy.image.reader import to_channels_last

__all__ = ["INPUT_NAMES", "OUTPUT_NAME", "FeatureExtractor"]
_KEEP = object()  # FeatureExtractor.configured: keep this setting


class FeatureExtractor:
    """ALiBi-Dv2 patch features from an exported model (``.onnx``, or a TensorRT ``.plan``).

    >>> fx = FeatureExtractor("engines/alibi_dv2_vits14.onnx")
    >>> feats = fx(image)            # (C, h, w) float32, h = H // 14, w = W // 14

    Args:
        model_path: the ``.onnx`` or ``.plan`` written by ``dinosaw-deploy export``.
        providers: ONNX Runtime execution providers (implies the matching ORT backend).
        batch_size: images per engine call in :meth:`run` (a plan also caps it at its profile).
        intensity_range: fixed (lo, hi) mapped to [0, 1]; default: per-dtype rules of
            :mod:`dinosaw_deploy.engine.preprocess`.
        threads: CPU threads for ONNX Runtime (default: all cores).
        backend: ``auto`` (plan -> TensorRT; onnx -> ORT TensorRT, CUDA or CPU, best present),
            ``tensorrt``, ``ort-tensorrt``, ``ort-cuda``, ``cpu``, or an opened
            :class:`~dinosaw_deploy.engine.backends.Backend` (e.g. ``TensorRTBackend(plan, cuda_graphs=True)``).
        max_tokens: most patches one image may have in one pass (default
            :data:`~dinosaw_deploy.engine.contract.MAX_WHOLE_IMAGE_TOKENS`); larger images: use the tiled path.
        bias_jitter: standard deviation of Gaussian noise added to the ALiBi distance matrix (paper S4: removes
            faint structure on flat inputs); one seeded draw per grid size (see
            :func:`~dinosaw_deploy.engine.bias.attention_bias`), so tiles stay exact and repeatable.
        jitter_seed: the seed of those draws.
        debias: a :class:`~dinosaw_deploy.engine.debias.PositionalSubspace` (or its ``.npz``) projected out of
            every feature vector.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        batch_size: int = 8,
        intensity_range: tuple[float, float] | None = None,
        threads: int | None = None,
        backend: str | Backend = "auto",
        max_tokens: int = MAX_WHOLE_IMAGE_TOKENS,
        bias_jitter: float = 0.0,
        jitter_seed: int = 0,
        debias: PositionalSubspace | str | os.PathLike | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise DinosawError(f"model not found: {self.model_path} (run `dinosaw-deploy export` first)")
        if batch_size < 1:
            raise DinosawError("batch_size must be >= 1")
        self.intensity_range = intensity_range
        self.max_tokens = max_tokens
        self._lock = threading.Lock()  # one engine call at a time: a TensorRT context is single-stream
        if isinstance(backend, Backend):
            if backend.model_path.resolve() != self.model_path.resolve():
                raise DinosawError(f"the backend runs {backend.model_path}, not {self.model_path}")
            self.backend = backend
        else:
            self.backend = open_backend(self.model_path, backend, providers=providers, threads=threads)
        self.batch_size = min(batch_size, self.backend.max_batch or batch_size)
        self.manifest = self.backend.manifest
        check_engine_manifest(self.manifest, self.model_path)
        arch = self.manifest["architecture"]
        self.embed_dim: int = int(arch["embed_dim"])
        self.num_heads: int = int(arch["num_heads"])
        self.patch_size: int = int(arch["patch_size"])
        self.bias_config = BiasConfig.from_dict(self.manifest["bias"])
        pre = self.manifest["preprocessing"]
        self.mean = tuple(pre["mean"])
        self.std = tuple(pre["std"])
        if not (np.isfinite(bias_jitter) and 0 <= bias_jitter <= 1):
            raise DinosawError(f"bias_jitter must be in [0, 1] (the distances are normalised to [0, 1]), "
                               f"got {bias_jitter}")
        if bias_jitter and self.bias_config.kind != "alibi":
            raise DinosawError(f"{self.model_path.name}: bias jitter perturbs ALiBi distances, and this engine's "
                               f"family ({self.manifest.get('family', 'alibi-dv2')}) has none")
        self.bias_jitter = float(bias_jitter)
        self.jitter_seed = int(jitter_seed)
        if debias is not None and not isinstance(debias, PositionalSubspace):
            debias = PositionalSubspace.load(debias)
        if debias is not None and debias.channels != self.embed_dim:
            raise DinosawError(f"the positional subspace is for {debias.channels}-channel features; "
                               f"{self.model_path.name} gives {self.embed_dim}")
        self.debias = debias

    @property
    def feature_settings(self) -> dict:
        """What this extractor does to the engine's features beyond the engine itself (recorded by models)."""
        return {"bias_jitter": self.bias_jitter, "jitter_seed": self.jitter_seed,
                "debias": None if self.debias is None else {"sha256": self.debias.sha256, "rank": self.debias.rank}}

    def configured(self, *, bias_jitter: float | None = None, jitter_seed: int | None = None,
                   debias: PositionalSubspace | None | object = _KEEP) -> FeatureExtractor:
        """A new extractor on the same opened backend with other feature settings (each left out: this one's)."""
        return FeatureExtractor(
            self.model_path, batch_size=self.batch_size, intensity_range=self.intensity_range, backend=self.backend,
            max_tokens=self.max_tokens, bias_jitter=self.bias_jitter if bias_jitter is None else bias_jitter,
            jitter_seed=self.jitter_seed if jitter_seed is None else jitter_seed,
            debias=self.debias if debias is _KEEP else debias)

    @property
    def providers(self) -> list[str]:
        return self.backend.providers

    @property
    def plan(self) -> Path | None:
        """The TensorRT plan being run, if the backend is native TensorRT."""
        return self.model_path if self.backend.name == "tensorrt" else None

    def bias(self, h: int, w: int) -> np.ndarray:
        """The cached ``attn_bias`` input for an (h, w) patch grid (jittered if asked)."""
        return attention_bias(h, w, self.num_heads, self.bias_config, jitter=self.bias_jitter, seed=self.jitter_seed)

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
        """Normalised (B, 3, H, W) float32 -> features (B, C, H//14, W//14) float32, in batches.

        Trailing H % 14 rows and W % 14 columns are dropped first (what the stride-14 patch
        embedding does anyway), so every backend sees whole patches; NaN, infinite or complex input is refused
        (every backend is reached through here). Thread-safe: calls from
        several threads take turns on the backend (each call already uses every CPU core).
        """
        pixel_values = np.asarray(pixel_values)
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise DinosawError(f"pixel_values must be (B, 3, H, W), got {pixel_values.shape}")
        h, w = pixel_values.shape[2] // self.patch_size, pixel_values.shape[3] // self.patch_size
        if h < 1 or w < 1:
            raise DinosawError(f"input of {pixel_values.shape[2:]} px is smaller than one patch")
        self._check_tokens(h, w)
        check_pixels(pixel_values)  # NaN/inf/complex: the frame door's refusal, for batches given directly
        p = self.patch_size
        pixel_values = np.ascontiguousarray(pixel_values[:, :, : h * p, : w * p], dtype=np.float32)
        self.backend.check_input(min(pixel_values.shape[0], self.batch_size), h * p, w * p)
        bias = self.bias(h, w)
        out = np.empty((pixel_values.shape[0], self.embed_dim, h, w), dtype=np.float32)
        for start in range(0, pixel_values.shape[0], self.batch_size):
            chunk = pixel_values[start : start + self.batch_size]
            with self._lock:
                out[start : start + len(chunk)] = self.backend.run(chunk, bias)
        return out if self.debias is None else self.debias.apply(out)

    def _check_tokens(self, h: int, w: int) -> None:
        if h * w > self.max_tokens:
            raise DinosawError(
                f"{h}x{w} patches is too many for one engine pass (attention memory grows with tokens²; limit "
                f"{self.max_tokens} = max_tokens): use the tiled path, dinosaw_deploy.tiling.pipeline.patch_features "
                "(in memory) or extract_tiled / `dinosaw-deploy features -o X.zarr`"
            )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """One image (any layout/dtype of :mod:`preprocess`) -> (C, h, w) float32 features; images
        above :attr:`max_tokens` patches are refused before preprocessing (tile them instead)."""
        shape = to_channels_last(np.asarray(image)).shape if np.ndim(image) == 3 else np.shape(image)
        if len(shape) >= 2:
            self._check_tokens(shape[0] // self.patch_size, shape[1] // self.patch_size)
        return self.run(self.preprocess(image)[None])[0]

    def extract_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Same-sized images -> (B, C, h, w) float32, run ``batch_size`` at a time."""
        if not len(images):
            raise DinosawError("no images given")
        batch = [self.preprocess(img) for img in images]
        if len({b.shape for b in batch}) != 1:
            raise DinosawError("extract_batch needs images of one size; call the extractor per image")
        return self.run(np.stack(batch))
