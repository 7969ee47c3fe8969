"""dinosaw-deploy: ALiBi-Dv2 features and scribble segmentation for large micrographs.

The runtime never imports torch; the build side lives in :mod:`dinosaw_deploy.export`.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .bias import BiasConfig, attention_bias
from .errors import DinosawError
from .extractor import FeatureExtractor

__all__ = ["BiasConfig", "DinosawError", "FeatureExtractor", "Segmenter", "__version__", "attention_bias"]


def __getattr__(name: str):
    """``Segmenter`` is imported on first use, so ``import dinosaw_deploy`` stays light."""
    if name == "Segmenter":
        from .segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
